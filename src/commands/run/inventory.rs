//! The batched reads behind the dry run and the pre-flight: the device inventory and the open offboard
//! actions, read with a handful of list calls whatever the size of the input, then joined with the input.
//!
//! Cost: the inventory is read in pages of `$top=10000` with `$skip`, up to the first short page; the open
//! offboard actions with one filtered list per open status (`(type eq 'Offboard' or type eq 'OffboardMachine')
//! and status eq 'Pending'`, then `'InProgress'`, see [`ActionStatus::OPEN`]: either type is an offboard
//! action, see [`crate::domain::OFFBOARD_TYPES`]), paged the same way. So a
//! fleet of 25,000 machines costs 3 + 2 calls for 10 ids or 100,000. An input of one id is cheaper by id:
//! `GET /api/machines/{id}` and that machine's offboard actions (filtered by `machineId`), 2 calls.
//!
//! Paging, as integrators report the service: `@odata.nextLink` is never followed, machines are de-duplicated
//! by id, a 404 carrying the service's JSON error is an empty page (see [`Api::list_page`]), and a page that
//! starts with the same entry as an earlier page means `$skip` was ignored: the reading stops there rather than
//! loop. Only a list read to its end may say a machine is not in it: a repeated page, the page cap, or a 404
//! that is not the service's (an HTML page from a wrong base URL) fail the reads ([`LoadError::Incomplete`],
//! [`LoadError::Read`]), so that the pre-flight never calls an unseen machine `not_found`.
//!
//! Memory stays flat in the size of the input and of the inventory: nothing is kept in memory per machine.
//! A machine the input may ask about (its key passes the scan's [`Filter`]) has its facts (name, platform,
//! health, last seen) written to a temporary [`Store`] and a fixed-size record sorted by id (or, by name,
//! by name key) in a [`Sorter`]; open actions likewise. Once everything is read, [`Inventory::join`]
//! merges those sorted streams with the input's sorted keys ([`Scan::firsts`]) and sorts what it decides
//! per input line ([`Decision`]), which the run then reads in the input's order ([`Joined::take`]).
//! Every step streams; what is sorted spills to disk beyond a few MiB.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;

use super::guard::{Guard, Kept, Why};
use crate::defender::api::{
    ActionQuery, Api, Failure, MachineAction, MachineQuery, Page, Text, each_in_page, each_in_page_by_hand, plain,
};
use crate::defender::timestamp;
use crate::domain::{ActionStatus, MachineId};
use crate::files::extsort::{Cursor, Field, Frozen, Record, RecordFile, RecordReader, Ref, Sorter, Store, record};
use crate::input::{Entry, Filter, Key, Keys, Lookup, Scan, normalise_aad_device_id, normalise_name};

/// `$top` of every list call: the most the API allows (Microsoft's documentation).
pub const PAGE_SIZE: usize = 10_000;
/// Pages read from one list at most (100 million entries at `$top=10000`): a guard against a service that never
/// ends a list.
pub const MAX_PAGES: usize = 10_000;
/// Candidates of an ambiguous name kept for its message.
pub const AMBIGUOUS_LISTED: usize = 5;

/// Inputs of up to this many ids may be read by id instead of in pages (see [`by_id_is_cheaper`]).
pub const PER_ID_MAX: usize = 2;
/// The read buffer of the decisions, read in the list's order at the pace of the run's calls (for each tenant
/// of a run of many, while the run lasts): a few kilobytes, not the external sort's 32 KB.
const DECISIONS_BUFFER: usize = 4 << 10;

/// The statuses of the offboard actions the reads list: the open ones (the machine is `already_pending`)
/// and `Succeeded` (it may be `already_offboarded`), one paged list each.
pub const LISTED_STATUSES: [ActionStatus; 3] =
    [ActionStatus::Pending, ActionStatus::InProgress, ActionStatus::Succeeded];

/// Whether reading `n` ids one by one costs fewer calls than the least the batched reads can cost (one
/// inventory page and one list per listed status): one GET per id, plus, per id, its actions by `machineId`
/// or the global lists, whichever is fewer. True for a single id (2 calls against at least 4).
pub fn by_id_is_cheaper(n: usize) -> bool {
    let batched_floor = 1 + LISTED_STATUSES.len();
    n <= PER_ID_MAX && n + n.min(LISTED_STATUSES.len()) < batched_floor
}

record! {
    /// A machine read, by id: where its facts are.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Found {
        id: MachineId,
        facts: Ref,
    }
}

record! {
    /// A machine read, by one of its name keys (input by name).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Named {
        key: Key,
        id: MachineId,
        facts: Ref,
    }
}

record! {
    /// A `Succeeded` offboard action of a machine: when it last changed (milliseconds since 1970), and where
    /// its facts are. Sorted by machine, then time: the last of a machine's is its latest.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Done {
        id: MachineId,
        updated: u64,
        facts: Ref,
    }
}

record! {
    /// An input line that names one machine: the line, and the machine's facts. Sorted by machine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Claim {
        id: MachineId,
        line: u64,
        facts: Ref,
    }
}

record! {
    /// What the reads say of one input line. Lines without a decision name no machine in the inventory.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Decision {
        pub line: u64,
        /// The candidate's place, for an ambiguous name; 0 otherwise.
        index: u8,
        pub kind: DecisionKind,
        pub machine: MachineId,
        facts: Ref,
        /// The machine's open offboard action, or [`Ref::NONE`].
        action: Ref,
        /// Machines an ambiguous name may mean.
        pub count: u32,
        /// The machine's latest `Succeeded` offboard action, when it has not reported since (it is
        /// `already_offboarded`), or [`Ref::NONE`].
        done: Ref,
        /// Why the guard keeps the machine ([`Why::code`]), or 0.
        guard: u8,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum DecisionKind {
    /// The line's machine is in the inventory.
    Found = 0,
    /// A name meaning the same machine as an earlier line's name.
    Claimed = 1,
    /// One of the machines an ambiguous name may mean.
    Candidate = 2,
}

impl Field for DecisionKind {
    const SIZE: usize = 1;
    fn put(&self, out: &mut [u8]) {
        out[0] = *self as u8;
    }
    fn get(bytes: &[u8]) -> Self {
        match bytes[0] {
            0 => DecisionKind::Found,
            1 => DecisionKind::Claimed,
            _ => DecisionKind::Candidate,
        }
    }
}

/// A machine as the inventory showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub computer_dns_name: String,
    pub os_platform: String,
    pub health_status: String,
    pub last_seen: String,
    pub rbac_group_name: String,
    pub machine_tags: Vec<String>,
}

/// The facts of a [`Machine`] a run's rows show, borrowed ([`Joined::machine_facts`]).
pub struct MachineFacts<'a> {
    pub computer_dns_name: &'a str,
    pub os_platform: &'a str,
    pub health_status: &'a str,
    pub last_seen: &'a str,
}

/// Separates a machine's tags in the pre-flight's store (a control character: no tag holds one that matters).
const TAG_SEPARATOR: char = '\u{1f}';

/// An open offboard action (or, for [`Joined::done_action`], the succeeded one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenAction {
    pub id: String,
    pub status: String,
    pub created: String,
    pub updated: String,
}

/// How many calls the reads took, by kind (logical calls; retries are in the API's counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// The inventory was read by id (`GET /api/machines/{id}`), not in pages.
    pub by_id: bool,
    pub inventory_pages: u64,
    pub machine_lookups: u64,
    pub action_pages: u64,
    /// HTTP calls made, retries included.
    pub http_calls: u64,
}

/// What the join found, in numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct ids or names the input asks about.
    pub wanted: u64,
    /// Distinct machines found (by name: named by one name alone).
    pub found: u64,
    /// Of those, machines with an open offboard action.
    pub open: u64,
    /// Of those, machines offboarded earlier and not reported since (no open action).
    pub offboarded: u64,
    /// Of the rest, machines the guard keeps, by reason.
    pub kept: Kept,
    /// Input by name: names naming no machine, and names naming several.
    pub unknown_names: u64,
    pub ambiguous_names: u64,
}

impl Tally {
    /// Offboard calls a real run makes after the reads: machines found with no open action, not offboarded
    /// earlier, and not kept by the guard.
    pub fn to_submit(&self) -> u64 {
        self.found - self.open - self.offboarded - self.kept.total()
    }
}

/// The part of a Machine the reads use, borrowed from the page where it can be; unknown fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineEntry<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    computer_dns_name: Option<Text<'a>>,
    #[serde(default, borrow)]
    aad_device_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    os_platform: Option<Text<'a>>,
    #[serde(default, borrow)]
    health_status: Option<Text<'a>>,
    #[serde(default, borrow)]
    last_seen: Option<Text<'a>>,
    #[serde(default, borrow)]
    rbac_group_name: Option<Text<'a>>,
    #[serde(default, borrow)]
    machine_tags: Option<Vec<Text<'a>>>,
}

impl<'a> MachineEntry<'a> {
    /// The entry at `at`, read by hand where serde would read the same (see [`plain::Cursor`]): every field a
    /// string (`id`) or a string or `null` (the others; `machineTags` an array of strings or `null`), each at
    /// most once; anything else is serde's to read (or refuse).
    fn by_hand(at: &mut plain::Cursor<'a>) -> Option<Self> {
        let mut entry = MachineEntry {
            id: Cow::Borrowed(""),
            computer_dns_name: None,
            aad_device_id: None,
            os_platform: None,
            health_status: None,
            last_seen: None,
            rbac_group_name: None,
            machine_tags: None,
        };
        // The fields met so far, one bit each: a second of any is serde's to refuse.
        let mut seen = 0u8;
        at.object(plain::ENTRY_DEPTH, |key, at| {
            let (bit, field) = match key {
                "id" => (0, None),
                "computerDnsName" => (1, Some(&mut entry.computer_dns_name)),
                "aadDeviceId" => (2, Some(&mut entry.aad_device_id)),
                "osPlatform" => (3, Some(&mut entry.os_platform)),
                "healthStatus" => (4, Some(&mut entry.health_status)),
                "lastSeen" => (5, Some(&mut entry.last_seen)),
                "rbacGroupName" => (6, Some(&mut entry.rbac_group_name)),
                "machineTags" => (7, None),
                _ => return at.value(plain::ENTRY_DEPTH),
            };
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            match (bit, field) {
                (_, Some(field)) => *field = at.string_or_null()?.map(Text::from),
                (0, None) => entry.id = Cow::Borrowed(at.string()?),
                _ if at.null() => entry.machine_tags = None,
                _ => {
                    let mut tags = Vec::new();
                    at.array(|at| {
                        tags.push(Text::from(at.string()?));
                        Some(())
                    })?;
                    entry.machine_tags = Some(tags);
                }
            }
            Some(())
        })?;
        Some(entry)
    }
}

/// Whether an inventory page is read alike by hand ([`MachineEntry::by_hand`], serde reading what it does
/// not) and by serde alone: the same entries, field by field, and the same count or error. (The unit tests
/// and the fuzz target `inventory_page` check it.)
#[doc(hidden)]
pub fn hand_reader_agrees(text: &str) -> bool {
    type Fields = (String, [Option<String>; 6], Option<Vec<String>>);
    let fields = |e: MachineEntry| -> Fields {
        let own = |t: &Option<Text>| t.as_deref().map(str::to_owned);
        let texts = [
            own(&e.computer_dns_name),
            own(&e.aad_device_id),
            own(&e.os_platform),
            own(&e.health_status),
            own(&e.last_seen),
            own(&e.rbac_group_name),
        ];
        (e.id.to_string(), texts, e.machine_tags.map(|tags| tags.iter().map(|t| t.to_string()).collect()))
    };
    let (mut by_hand, mut by_serde) = (Vec::new(), Vec::new());
    let hand = each_in_page_by_hand(text.as_bytes(), MachineEntry::by_hand, |e| by_hand.push(fields(e)));
    let serde = each_in_page(text.as_bytes(), |e| by_serde.push(fields(e)));
    hand == serde && by_hand == by_serde
}

/// Why the reads could not finish: what was being read, and the call's failure.
#[derive(Debug, Clone)]
pub struct ReadError {
    pub what: String,
    pub failure: Failure,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.failure.status.map(|s| format!("HTTP {s} ")).unwrap_or_default();
        // On one line: the message may be a page of HTML.
        let message = self.failure.message.split_whitespace().collect::<Vec<_>>().join(" ");
        write!(f, "cannot read {}: {status}{}: {message}", self.what, self.failure.code)?;
        if self.failure.status == Some(404) && !self.failure.is_service_error() {
            write!(f, " (a 404 that is not the API's JSON error: is the API base URL right?)")?;
        }
        Ok(())
    }
}

/// Why [`Inventory::load`] failed: a read, a list that could not be read to its end, or the local disk.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Read(ReadError),
    /// The list answered, but not to its end: what it did not show may exist.
    #[error("cannot read {what} to its end: {why}; what it did not show may exist, so no machine is called not found")]
    Incomplete { what: String, why: String },
    #[error("{}", crate::files::extsort::temp_message("use", error))]
    Disk {
        #[from]
        error: std::io::Error,
    },
}

impl From<ReadError> for LoadError {
    fn from(e: ReadError) -> Self {
        LoadError::Read(e)
    }
}

/// The reads under way: what they found so far, on its way to disk.
pub struct Inventory {
    by_name: bool,
    lookup: Lookup,
    keys: Keys,
    filter: Arc<Filter>,
    firsts: RecordFile<Entry>,
    machines: Sorter<Found>,
    names: Sorter<Named>,
    actions: Sorter<Found>,
    done: Sorter<Done>,
    store: Store,
    guard: Guard,
    pub reads: Reads,
}

impl Inventory {
    fn new(scan: &Scan, guard: Guard) -> Result<Inventory, LoadError> {
        Ok(Inventory {
            by_name: scan.by_name,
            lookup: scan.lookup,
            keys: scan.keys().clone(),
            filter: scan.filter(),
            firsts: scan.firsts().clone(),
            machines: Sorter::default(),
            names: Sorter::default(),
            actions: Sorter::default(),
            done: Sorter::default(),
            store: Store::new()?,
            guard,
            reads: Reads::default(),
        })
    }

    /// Reads what the scanned input asks about (by id for a tiny input of ids, in pages otherwise), and
    /// joins it with the input, `guard` judging the machines found.
    pub async fn load(api: &Api, scan: &Scan, guard: Guard) -> Result<Joined, LoadError> {
        let mut inventory = Inventory::new(scan, guard)?;
        let wanted = inventory.firsts.len();
        if wanted > 0 {
            if !inventory.by_name && by_id_is_cheaper(wanted as usize) {
                inventory.read_by_id(api).await?;
            } else {
                inventory.read_pages(api).await?;
                inventory.read_listed_actions(api).await?;
            }
        }
        match tokio::task::spawn_blocking(move || inventory.join()).await {
            Ok(joined) => joined,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn read_by_id(&mut self, api: &Api) -> Result<(), LoadError> {
        self.reads.by_id = true;
        let ids: Vec<MachineId> =
            self.firsts.read()?.map(|e| e.map(|e| MachineId::from_bytes(e.key))).collect::<std::io::Result<_>>()?;
        let mut found = Vec::new();
        for id in ids {
            let text = id.to_string();
            let result = api.get_machine(&text).await;
            self.reads.machine_lookups += 1;
            self.reads.http_calls += u64::from(result.attempts);
            match result.answer {
                Ok(reply) => {
                    let entry: MachineEntry<'_> = serde_json::from_slice(&reply.body).map_err(|e| ReadError {
                        what: format!("machine {text}"),
                        failure: Failure {
                            status: Some(reply.status),
                            code: "UnreadableAnswer".into(),
                            message: format!("the answer is not the expected JSON ({e})"),
                        },
                    })?;
                    if self.keep(&entry)? {
                        found.push(id);
                    }
                }
                // Not in the inventory, when the service says so; any other 404 is not an answer about the machine.
                Err(failure) if failure.status == Some(404) && failure.is_service_error() => {}
                Err(failure) => return Err(ReadError { what: format!("machine {text}"), failure }.into()),
            }
        }
        // Each machine found: its offboard actions by machineId, when that is fewer calls than the lists.
        if found.len() < LISTED_STATUSES.len() {
            for id in found {
                let query = ActionQuery::offboards(Page::nth(0, PAGE_SIZE)).of_machine(id);
                self.pages(api, query, "the machine's offboard actions").await?;
            }
        } else {
            self.read_listed_actions(api).await?;
        }
        Ok(())
    }

    /// Every page of the inventory, keeping the machines the input may ask about.
    async fn read_pages(&mut self, api: &Api) -> Result<(), LoadError> {
        const WHAT: &str = "the device inventory";
        let mut first_ids: Vec<String> = Vec::new();
        for page in 0..MAX_PAGES {
            let mut disk = None;
            let (attempts, answer) = api
                .list_machines(&MachineQuery::all(Page::nth(page, PAGE_SIZE)), |body| {
                    // Entry by entry as the page is parsed: its 10,000 entries are never held at once.
                    let (mut first, mut repeated) = (None::<String>, false);
                    let len = each_in_page_by_hand(body, MachineEntry::by_hand, |entry: MachineEntry| {
                        if first.is_none() {
                            let id = entry.id.to_string();
                            repeated = first_ids.contains(&id);
                            first = Some(id);
                        }
                        if !repeated && disk.is_none() {
                            disk = self.keep(&entry).err();
                        }
                    })?;
                    Ok((len, first, repeated))
                })
                .await;
            self.reads.inventory_pages += 1;
            self.reads.http_calls += u64::from(attempts);
            if let Some(e) = disk {
                return Err(e.into());
            }
            let (len, first, repeated) = answer.map_err(|failure| ReadError { what: WHAT.into(), failure })?;
            if repeated {
                return Err(repeated_page(WHAT, page));
            }
            first_ids.extend(first);
            tracing::debug!(page, len, "inventory page read");
            if len < PAGE_SIZE {
                return Ok(());
            }
        }
        Err(page_cap(WHAT))
    }

    /// The open and the succeeded offboard actions: one paged list per status in [`LISTED_STATUSES`].
    async fn read_listed_actions(&mut self, api: &Api) -> Result<(), LoadError> {
        for status in LISTED_STATUSES {
            let what = if status.is_open() { "the open offboard actions" } else { "the succeeded offboard actions" };
            let query = ActionQuery::offboards(Page::nth(0, PAGE_SIZE)).in_status(status);
            self.pages(api, query, what).await?;
        }
        Ok(())
    }

    /// Every page of an action list, keeping the open offboard actions of machines the input may ask about.
    async fn pages(&mut self, api: &Api, mut query: ActionQuery, what: &str) -> Result<(), LoadError> {
        let mut first_ids: Vec<Option<String>> = Vec::new();
        for page in 0..MAX_PAGES {
            query.page = Page::nth(page, PAGE_SIZE);
            let (attempts, answer) = api.list_actions(&query).await;
            self.reads.action_pages += 1;
            self.reads.http_calls += u64::from(attempts);
            let entries = answer.map_err(|failure| ReadError { what: what.into(), failure })?;
            let full = entries.len() >= PAGE_SIZE;
            if let Some(first) = entries.first() {
                if first_ids.contains(&first.id) {
                    return Err(repeated_page(what, page));
                }
                first_ids.push(first.id.clone());
            }
            for action in entries {
                self.keep_action(action)?;
            }
            if !full {
                return Ok(());
            }
        }
        Err(page_cap(what))
    }

    /// Keeps an open or a succeeded offboard action, unless the input surely does not ask about its machine.
    fn keep_action(&mut self, action: MachineAction) -> std::io::Result<()> {
        let open = action.status.as_ref().is_some_and(ActionStatus::is_open);
        let succeeded = action.status == Some(ActionStatus::Succeeded);
        let offboard = action.is_offboard();
        let Some(machine) = action.machine_id.as_deref().and_then(MachineId::parse) else { return Ok(()) };
        // By name the sieve holds names, not ids: every such action is kept.
        if !(open || succeeded) || !offboard || (!self.by_name && !self.filter.may_contain(&self.keys.id(&machine))) {
            return Ok(());
        }
        let text = |s: Option<&String>| s.map(String::as_str).unwrap_or_default().to_owned();
        let fields = [
            text(action.id.as_ref()),
            action.status.as_ref().map_or("", ActionStatus::as_str).to_owned(),
            text(action.creation_date_time_utc.as_ref()),
            text(action.updated_at()),
        ];
        let at = self.store.put(&fields.each_ref().map(String::as_str))?;
        if succeeded {
            // Without a readable time it cannot be the latest of anything: the earliest there is.
            let updated = action.updated_at().and_then(|t| timestamp::parse(t)).map_or(0, millis);
            return self.done.push(Done { id: machine, updated, facts: at });
        }
        self.actions.push(Found { id: machine, facts: at })
    }

    /// Keeps the machine unless the input surely does not ask about it (by id, or by its name or its name's
    /// first label); whether it was kept.
    fn keep(&mut self, entry: &MachineEntry) -> std::io::Result<bool> {
        let Some(id) = MachineId::parse(&entry.id) else { return Ok(false) };
        let name = entry.computer_dns_name.as_deref().unwrap_or("");
        let mut facts = Ref::NONE;
        if self.by_name {
            let keys: Vec<Key> = if self.lookup == Lookup::AadDeviceId {
                let aad = entry.aad_device_id.as_deref().and_then(normalise_aad_device_id);
                aad.iter().map(|a| self.keys.name(a)).collect()
            } else {
                let Some(normal) = normalise_name(name) else { return Ok(false) };
                name_keys(&normal).map(|k| self.keys.name(k)).collect()
            };
            for key in keys {
                if self.filter.may_contain(&key) {
                    if facts.is_none() {
                        facts = self.put_facts(&id, entry)?;
                    }
                    self.names.push(Named { key, id, facts })?;
                }
            }
        } else if self.filter.may_contain(&self.keys.id(&id)) {
            facts = self.put_facts(&id, entry)?;
            self.machines.push(Found { id, facts })?;
        }
        Ok(!facts.is_none())
    }

    fn put_facts(&mut self, id: &MachineId, entry: &MachineEntry) -> std::io::Result<Ref> {
        let id = id.hex();
        let tags: Vec<&str> = entry.machine_tags.iter().flatten().map(|tag| &**tag).collect();
        let tags = tags.join(&TAG_SEPARATOR.to_string());
        // In the order of [`facts`].
        let fields = [
            std::str::from_utf8(&id).expect("hexadecimal digits are ASCII"),
            entry.computer_dns_name.as_deref().unwrap_or_default(),
            entry.os_platform.as_deref().unwrap_or_default(),
            entry.health_status.as_deref().unwrap_or_default(),
            entry.last_seen.as_deref().unwrap_or_default(),
            entry.rbac_group_name.as_deref().unwrap_or_default(),
            &tags,
        ];
        self.store.put(&fields)
    }

    /// Joins what was read with the input's keys: every step a merge of sorted streams.
    fn join(self) -> Result<Joined, LoadError> {
        let store = self.store.freeze()?;
        let mut tally = Tally { wanted: self.firsts.len(), ..Tally::default() };
        let mut decisions = Sorter::<Decision>::default();
        let actions = first_of_each(self.actions.finish()?, |a| a.id);
        let done = last_of_each(self.done.finish()?);
        let mut decide =
            Decide { actions: Cursor::new(actions), done: Cursor::new(done), store: &store, guard: &self.guard };
        if self.by_name {
            let mut claims = Sorter::<Claim>::default();
            let mut named = Cursor::new(self.names.finish()?);
            // The machines each name may mean: the first few kept (for the message), all counted.
            let mut candidates: Vec<Named> = Vec::new();
            for entry in self.firsts.read()? {
                let entry = entry?;
                candidates.clear();
                let mut count = 0u32;
                let mut last: Option<MachineId> = None;
                while let Some(machine) = named.next_at(&entry.key, |n| n.key)? {
                    if last != Some(machine.id) {
                        last = Some(machine.id);
                        count = count.saturating_add(1);
                        if candidates.len() < AMBIGUOUS_LISTED {
                            candidates.push(machine);
                        }
                    }
                }
                match (count, candidates.first()) {
                    (0, _) | (_, None) => tally.unknown_names += 1,
                    (1, Some(one)) => claims.push(Claim { id: one.id, line: entry.line, facts: one.facts })?,
                    (count, Some(_)) => {
                        tally.ambiguous_names += 1;
                        for (index, c) in candidates.iter().enumerate() {
                            decisions.push(Decision {
                                line: entry.line,
                                index: index as u8,
                                kind: DecisionKind::Candidate,
                                machine: c.id,
                                facts: c.facts,
                                action: Ref::NONE,
                                count,
                                done: Ref::NONE,
                                guard: 0,
                            })?;
                        }
                    }
                }
            }
            decide.claims(claims.finish()?, &mut decisions, &mut tally)?;
        } else {
            let mut machines = Cursor::new(first_of_each(self.machines.finish()?, |m| m.id));
            let claims = self
                .firsts
                .read()?
                .map(|entry| {
                    let entry = entry?;
                    let found = machines.find(&MachineId::from_bytes(entry.key), |m| m.id)?;
                    Ok(found.map(|m| Claim { id: m.id, line: entry.line, facts: m.facts }))
                })
                .filter_map(Result::transpose);
            decide.claims(claims, &mut decisions, &mut tally)?;
        }
        // Kept in a file of their own, so they can be read again from the first line (see [`Joined::rewind`]).
        let sorted = RecordFile::write(decisions.finish()?)?;
        let decisions = Cursor::new(sorted.read_buffered(DECISIONS_BUFFER)?);
        Ok(Joined { sorted, decisions, store, tally, reads: self.reads, by_name: self.by_name, guard: self.guard })
    }
}

/// Page `page` (from 0) of `what` starts as an earlier page did: the service ignored `$skip`, and the pages
/// after it cannot be read.
fn repeated_page(what: &str, page: usize) -> LoadError {
    LoadError::Incomplete {
        what: what.into(),
        why: format!("page {} repeats an earlier page (the service ignored $skip)", page + 1),
    }
}

/// `what` did not end within [`MAX_PAGES`] pages.
fn page_cap(what: &str) -> LoadError {
    LoadError::Incomplete {
        what: what.into(),
        why: format!("it did not end within {MAX_PAGES} pages of {PAGE_SIZE}; reading stopped there"),
    }
}

/// The first record of each run of records with the same `key` (a list that shifted between pages shows a
/// machine twice).
fn first_of_each<R: Record>(
    records: impl Iterator<Item = std::io::Result<R>>,
    key: impl Fn(&R) -> MachineId,
) -> impl Iterator<Item = std::io::Result<R>> {
    let mut last: Option<MachineId> = None;
    records.filter(move |r| match r {
        Ok(r) if last == Some(key(r)) => false,
        Ok(r) => {
            last = Some(key(r));
            true
        }
        Err(_) => true,
    })
}

/// The last record of each run of [`Done`] records of the same machine: its latest succeeded offboard.
fn last_of_each(records: impl Iterator<Item = std::io::Result<Done>>) -> impl Iterator<Item = std::io::Result<Done>> {
    let mut records = records.peekable();
    std::iter::from_fn(move || {
        loop {
            let record = match records.next()? {
                Ok(record) => record,
                Err(e) => return Some(Err(e)),
            };
            match records.peek() {
                Some(Ok(next)) if next.id == record.id => continue,
                _ => return Some(Ok(record)),
            }
        }
    })
}

/// Milliseconds since 1970 (0 before it).
fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The last step of the join: each machine claimed, with its open action, its latest succeeded offboard and
/// the guard's verdict.
struct Decide<'a, A: Iterator<Item = std::io::Result<Found>>, D: Iterator<Item = std::io::Result<Done>>> {
    actions: Cursor<Found, A>,
    done: Cursor<Done, D>,
    store: &'a Frozen,
    guard: &'a Guard,
}

impl<A: Iterator<Item = std::io::Result<Found>>, D: Iterator<Item = std::io::Result<Done>>> Decide<'_, A, D> {
    /// `claims`, sorted by machine, with the actions, sorted the same way. The first line naming a machine
    /// gets it; a later one (input by name) names it again. An open action makes it `already_pending`; else a
    /// succeeded offboard it has not reported since (its `lastSeen` before the action's last update) makes it
    /// `already_offboarded` (one that reported since came back, re-onboarded); else the guard may keep it.
    fn claims(
        &mut self,
        claims: impl Iterator<Item = std::io::Result<Claim>>,
        decisions: &mut Sorter<Decision>,
        tally: &mut Tally,
    ) -> std::io::Result<()> {
        let mut last: Option<MachineId> = None;
        for claim in claims {
            let claim = claim?;
            let decision = Decision {
                line: claim.line,
                index: 0,
                kind: DecisionKind::Found,
                machine: claim.id,
                facts: claim.facts,
                action: Ref::NONE,
                count: 1,
                done: Ref::NONE,
                guard: 0,
            };
            if last == Some(claim.id) {
                decisions.push(Decision { kind: DecisionKind::Claimed, ..decision })?;
                continue;
            }
            last = Some(claim.id);
            tally.found += 1;
            let action = self.actions.find(&claim.id, |a| a.id)?.map_or(Ref::NONE, |a| a.facts);
            let done = self.done.find(&claim.id, |d| d.id)?;
            if !action.is_none() {
                tally.open += 1;
                decisions.push(Decision { action, ..decision })?;
                continue;
            }
            // The machine's facts read in place: offboarded earlier (the action's facts), or the guard's verdict.
            let verdict = self.store.get_with(claim.facts, |fields| {
                let field = |i: usize| fields.get(i).map_or("", |field| &**field);
                let last_seen = field(facts::LAST_SEEN);
                let seen = timestamp::parse(last_seen).map(millis);
                // A machine with no readable lastSeen has shown no report since.
                if let Some(done) = done.filter(|d| seen.is_none_or(|seen| seen < d.updated)) {
                    return Err(done.facts);
                }
                let tags = field(facts::TAGS).split(TAG_SEPARATOR).filter(|t| !t.is_empty());
                Ok(self.guard.judge(last_seen, field(facts::RBAC_GROUP_NAME), tags))
            })?;
            let why = match verdict {
                Err(done) => {
                    tally.offboarded += 1;
                    decisions.push(Decision { done, ..decision })?;
                    continue;
                }
                Ok(why) => why,
            };
            if let Some(why) = why {
                tally.kept.add(why);
            }
            decisions.push(Decision { guard: why.map_or(0, Why::code), ..decision })?;
        }
        Ok(())
    }
}

/// Where each fact of a machine is among its stored fields (see [`Inventory::put_facts`]).
mod facts {
    pub const ID: usize = 0;
    pub const COMPUTER_DNS_NAME: usize = 1;
    pub const OS_PLATFORM: usize = 2;
    pub const HEALTH_STATUS: usize = 3;
    pub const LAST_SEEN: usize = 4;
    pub const RBAC_GROUP_NAME: usize = 5;
    pub const TAGS: usize = 6;
}

/// A machine from its stored fields (see [`Inventory::put_facts`]).
fn machine_of(fields: &[Cow<str>]) -> Machine {
    let field = |i: usize| fields.get(i).map_or("", |field| &**field);
    Machine {
        id: field(facts::ID).to_owned(),
        computer_dns_name: field(facts::COMPUTER_DNS_NAME).to_owned(),
        os_platform: field(facts::OS_PLATFORM).to_owned(),
        health_status: field(facts::HEALTH_STATUS).to_owned(),
        last_seen: field(facts::LAST_SEEN).to_owned(),
        rbac_group_name: field(facts::RBAC_GROUP_NAME).to_owned(),
        machine_tags: field(facts::TAGS).split(TAG_SEPARATOR).filter(|t| !t.is_empty()).map(str::to_owned).collect(),
    }
}

/// What the reads decided, line by line, in the input's order.
pub struct Joined {
    sorted: RecordFile<Decision>,
    decisions: Cursor<Decision, RecordReader<Decision>>,
    store: Frozen,
    pub tally: Tally,
    pub reads: Reads,
    /// The input was by name.
    pub by_name: bool,
    guard: Guard,
}

impl Joined {
    /// Back to the first line: [`Joined::take`] reads the decisions again from the start.
    pub fn rewind(&mut self) -> std::io::Result<()> {
        self.decisions = Cursor::new(self.sorted.read_buffered(DECISIONS_BUFFER)?);
        Ok(())
    }

    /// The decisions for `line` (none: the line names no machine the inventory has). Lines must come in
    /// ascending order; lines skipped are passed over.
    pub fn take(&mut self, line: u64) -> std::io::Result<Vec<Decision>> {
        let mut found = Vec::new();
        while let Some(decision) = self.decisions.next_at(&line, |d| d.line)? {
            found.push(decision);
        }
        Ok(found)
    }

    /// The machine of a decision, as the inventory showed it.
    pub fn machine(&self, decision: &Decision) -> std::io::Result<Machine> {
        self.store.get_with(decision.facts, machine_of)
    }

    /// What a run's rows show of a decision's machine, lent to `read` (nothing copied).
    pub fn machine_facts<T>(&self, decision: &Decision, read: impl FnOnce(MachineFacts) -> T) -> std::io::Result<T> {
        self.store.get_with(decision.facts, |fields| {
            let field = |i: usize| fields.get(i).map_or("", |field| &**field);
            read(MachineFacts {
                computer_dns_name: field(facts::COMPUTER_DNS_NAME),
                os_platform: field(facts::OS_PLATFORM),
                health_status: field(facts::HEALTH_STATUS),
                last_seen: field(facts::LAST_SEEN),
            })
        })
    }

    /// The latest succeeded offboard action of a decision's machine, when the machine is
    /// `already_offboarded`.
    pub fn done_action(&self, decision: &Decision) -> std::io::Result<Option<OpenAction>> {
        if decision.done.is_none() {
            return Ok(None);
        }
        let mut fields = self.store.get(decision.done)?.into_iter();
        let mut next = || fields.next().unwrap_or_default();
        Ok(Some(OpenAction { id: next(), status: next(), created: next(), updated: next() }))
    }

    /// Why the guard keeps a decision's machine, if it does.
    pub fn kept(&self, decision: &Decision) -> Option<Why> {
        Why::from_code(decision.guard)
    }

    /// What the guard protected.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The open offboard action of a decision's machine, if it has one.
    pub fn open_action(&self, decision: &Decision) -> std::io::Result<Option<OpenAction>> {
        if decision.action.is_none() {
            return Ok(None);
        }
        let mut fields = self.store.get(decision.action)?.into_iter();
        let mut next = || fields.next().unwrap_or_default();
        Ok(Some(OpenAction { id: next(), status: next(), created: next(), updated: next() }))
    }
}

/// The keys a machine's normalised name is found under: the name, and its first label when it has a dot.
fn name_keys(name: &str) -> impl Iterator<Item = &str> {
    let first = name.split_once('.').map(|(label, _)| label).filter(|l| !l.is_empty());
    std::iter::once(name).chain(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::scan_reader;

    #[test]
    fn an_inventory_page_read_by_hand_is_what_serde_reads() {
        let service = r#"{"@odata.context":"http://127.0.0.1:1/api/$metadata#Machines","value":[{"id":"746af30839d0c0925055933e73723b9339b528c8","computerDnsName":"lnx-0001.contoso.local","firstSeen":"2026-01-20T19:27:56.0000000Z","lastSeen":"2026-11-25T19:27:56.0000000Z","osPlatform":"Linux","osProcessor":"x64","version":null,"lastIpAddress":"10.17.224.103","agentVersion":"10.85.20690","healthStatus":"Active","deviceValue":"Normal","rbacGroupId":101,"rbacGroupName":"Workstations","riskScore":"High","isAadJoined":false,"aadDeviceId":null,"machineTags":["Contoso-HQ"]},{"id":"5a90c6b0ee3d38422511cf74ce4b166e1414fcc7","computerDnsName":"ws-0001.contoso.local","lastSeen":"2026-11-24T19:51:56.0000000Z","osPlatform":"Windows11","healthStatus":"Active","rbacGroupId":101,"rbacGroupName":"Workstations","isAadJoined":true,"aadDeviceId":"28d5da28-33e3-471d-ad12-72f92d070528","machineTags":["Decommission","b"]}]}"#;
        let variants = [
            service.to_string(),
            " \r\n\t{ \"value\" : [ { \"id\" : \"a1\" , \"machineTags\":null,\"x\":[1,-20,{\"y\":[true,false,null,{}]},[]] } , {} ] , \"n\":{} } \n".into(),
            r#"{"value":[{"id":"é☃","machineTags":[],"n":-0,"m":[[[[[[1]]]]]]}],"@odata.nextLink":"x"}"#.into(),
            r#"{"value":[{"id":"a"},{"id":"b","deep":[[[[[[[1]]]]]]],"e":1.5}],"f":2e3}"#.into(),
            r#"{"value":[{"id":"a"},{"id":"b\"c","osPlatform":"x"}],"value":[]}"#.into(),
            r#"{"value":[{"id":"a","osPlatform":"x","lastSeen":null,"osPlatform":"y"}]}"#.into(),
            r#"{"value":[{"id":"a","machineTags":[1],"id":null,"healthStatus":5}]}"#.into(),
        ];
        let mut by_hand = 0;
        for variant in &variants {
            for case in plain::variants(variant.as_bytes()) {
                let Ok(text) = std::str::from_utf8(&case) else { continue };
                by_hand += usize::from(plain::page(text, MachineEntry::by_hand, drop));
                assert!(hand_reader_agrees(text), "{text}");
            }
        }
        // Most variants are read by hand; the pages with escapes, fractions, a second `value` or field, or a
        // field of another type, are not.
        assert!(by_hand > 1000, "{by_hand}");
        let mut ids = Vec::new();
        assert!(plain::page(service, MachineEntry::by_hand, |e| ids.push(e.id.into_owned())));
        assert_eq!(ids, ["746af30839d0c0925055933e73723b9339b528c8", "5a90c6b0ee3d38422511cf74ce4b166e1414fcc7"]);
        for not_by_hand in &variants[3..] {
            assert!(!plain::page(not_by_hand, MachineEntry::by_hand, drop), "{not_by_hand}");
        }
        // Where the hand reader gives up part way, serde hands over only the entries after those it read.
        let mut ids = Vec::new();
        let read = each_in_page_by_hand(variants[3].as_bytes(), MachineEntry::by_hand, |e| ids.push(e.id.into_owned()));
        assert_eq!((read, ids), (Ok(2), vec!["a".to_string(), "b".to_string()]));
    }

    fn entry(id: &str, name: &str) -> MachineEntry<'static> {
        MachineEntry {
            id: Cow::Owned(id.into()),
            computer_dns_name: Some(Text(Cow::Owned(name.into()))),
            aad_device_id: None,
            os_platform: Some("Windows11".into()),
            health_status: Some("Active".into()),
            last_seen: Some("2026-01-01T00:00:00Z".into()),
            rbac_group_name: Some("Workstations".into()),
            machine_tags: Some(vec!["Finance".into()]),
        }
    }

    fn hex(n: u64) -> String {
        format!("{:040x}", u128::from(n) * 0x1234_5678_9abc)
    }

    fn action(machine: &str, status: &str, kind: &str) -> MachineAction {
        MachineAction {
            id: Some(format!("{machine}-{status}")),
            kind: Some(kind.into()),
            status: Some(status.into()),
            machine_id: Some(machine.into()),
            creation_date_time_utc: Some("2026-01-01T00:00:00Z".into()),
            last_update_time_utc: Some("2026-01-01T00:01:00Z".into()),
            ..MachineAction::default()
        }
    }

    /// The decisions of lines `2..`, in order (the header is line 1).
    fn lines(joined: &mut Joined, rows: u64) -> Vec<Vec<Decision>> {
        (2..rows + 2).map(|line| joined.take(line).unwrap()).collect()
    }

    #[test]
    fn only_tiny_inputs_are_read_by_id() {
        assert!(by_id_is_cheaper(1));
        assert!(!by_id_is_cheaper(2));
        assert!(!by_id_is_cheaper(1000));
    }

    #[test]
    fn machines_asked_about_are_found_once_with_their_facts_and_actions() {
        let input = format!("MachineId\n{}\n{}\n{}\n{}\n", hex(1), hex(3).to_uppercase(), hex(9), hex(4));
        let scan = scan_reader(input.as_bytes(), None).unwrap();
        let mut inventory = Inventory::new(&scan, Guard::default()).unwrap();
        for n in 0..6 {
            inventory.keep(&entry(&hex(n), &format!("pc-{n}.contoso.local"))).unwrap();
        }
        // A shifted page shows machine 3 again.
        inventory.keep(&entry(&hex(3), "pc-3.contoso.local")).unwrap();
        inventory.keep_action(action(&hex(3), "Pending", "Offboard")).unwrap();
        inventory.keep_action(action(&hex(3), "InProgress", "Offboard")).unwrap();
        inventory.keep_action(action(&hex(1), "Succeeded", "Offboard")).unwrap();
        inventory.keep_action(action(&hex(4), "Pending", "Isolate")).unwrap();
        inventory.keep_action(action(&hex(5), "Pending", "Offboard")).unwrap();
        let mut joined = inventory.join().unwrap();
        // Machine 1's offboard succeeded after its last report: offboarded already, not to submit.
        assert_eq!(joined.tally, Tally { wanted: 4, found: 3, open: 1, offboarded: 1, ..Tally::default() });
        assert_eq!(joined.tally.to_submit(), 1);
        let found = lines(&mut joined, 4);
        assert_eq!(found.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 0, 1], "machine 9 is unknown");
        let m = joined.machine(&found[1][0]).unwrap();
        assert_eq!(m.id, hex(3));
        assert_eq!(m.computer_dns_name, "pc-3.contoso.local");
        assert_eq!((m.os_platform.as_str(), m.last_seen.as_str()), ("Windows11", "2026-01-01T00:00:00Z"));
        let open = joined.open_action(&found[1][0]).unwrap().unwrap();
        assert_eq!((open.status.as_str(), open.updated.as_str()), ("Pending", "2026-01-01T00:01:00Z"));
        assert_eq!(joined.open_action(&found[0][0]).unwrap(), None, "a finished action is not open");
        assert_eq!(joined.open_action(&found[3][0]).unwrap(), None, "an open action of another type is not");
    }

    #[test]
    fn both_offboard_types_are_offboard_actions_to_the_readers_and_the_filter() {
        let input = format!("MachineId\n{}\n{}\n", hex(1), hex(2));
        let scan = scan_reader(input.as_bytes(), None).unwrap();
        let mut inventory = Inventory::new(&scan, Guard::default()).unwrap();
        inventory.keep(&entry(&hex(1), "pc-1.contoso.local")).unwrap();
        inventory.keep(&entry(&hex(2), "pc-2.contoso.local")).unwrap();
        inventory.keep_action(action(&hex(1), "Pending", "OffboardMachine")).unwrap();
        inventory.keep_action(action(&hex(2), "InProgress", "offboard")).unwrap();
        let joined = inventory.join().unwrap();
        assert_eq!(joined.tally.open, 2, "the legacy type is an offboard action");

        for kind in crate::defender::api::OFFBOARD_TYPES {
            assert!(MachineAction { kind: Some(kind.into()), ..MachineAction::default() }.is_offboard());
        }
        assert!(!MachineAction { kind: Some("Isolate".into()), ..MachineAction::default() }.is_offboard());
    }

    #[test]
    fn names_match_whole_or_by_first_label_and_several_are_ambiguous() {
        let input = "Name\npc-1\npc-2.contoso.local\npc-2\nsrv\npc-3.other.local\nnone\nPC-1.contoso.local\n";
        let scan = scan_reader(input.as_bytes(), None).unwrap();
        assert!(scan.by_name);
        let mut inventory = Inventory::new(&scan, Guard::default()).unwrap();
        inventory.keep(&entry(&hex(1), "PC-1.contoso.local")).unwrap();
        inventory.keep(&entry(&hex(2), "pc-2.contoso.local")).unwrap();
        inventory.keep(&entry(&hex(3), "pc-2.contoso.local")).unwrap(); // reimaged: same name, new id
        inventory.keep(&entry(&hex(4), "srv.contoso.local")).unwrap();
        inventory.keep(&entry(&hex(5), "srv.fabrikam.local")).unwrap();
        inventory.keep(&entry(&hex(6), "pc-3.contoso.local")).unwrap();
        inventory.keep(&entry(&hex(7), "unrelated.contoso.local")).unwrap();
        inventory.keep(&entry(&hex(1), "PC-1.contoso.local")).unwrap();
        inventory.keep_action(action(&hex(1), "InProgress", "Offboard")).unwrap();
        let mut joined = inventory.join().unwrap();
        let found = lines(&mut joined, 7);
        let kinds = |d: &[Decision]| d.iter().map(|d| (d.kind, d.machine.to_string())).collect::<Vec<_>>();
        assert_eq!(kinds(&found[0]), vec![(DecisionKind::Found, hex(1))]);
        assert_eq!(found[1].len(), 2, "a full name two machines carry is ambiguous");
        assert!(found[1].iter().all(|d| d.kind == DecisionKind::Candidate && d.count == 2));
        assert_eq!(found[2].len(), 2);
        assert_eq!(found[3].len(), 2, "a short name shared by two domains is ambiguous");
        assert!(found[4].is_empty(), "a full name must match whole");
        assert!(found[5].is_empty());
        assert_eq!(kinds(&found[6]), vec![(DecisionKind::Claimed, hex(1))], "the same machine as line 2");
        assert_eq!(joined.machine(&found[6][0]).unwrap().computer_dns_name, "PC-1.contoso.local");
        assert!(joined.open_action(&found[0][0]).unwrap().is_some());
        assert_eq!(
            joined.tally,
            Tally { wanted: 7, found: 1, open: 1, unknown_names: 2, ambiguous_names: 3, ..Tally::default() },
            "machine 7 is named by no line"
        );
    }

    #[test]
    fn a_name_many_machines_carry_keeps_a_few_and_counts_them_all() {
        let scan = scan_reader(&b"Name\nlab\n"[..], None).unwrap();
        let mut inventory = Inventory::new(&scan, Guard::default()).unwrap();
        for n in 0..7 {
            inventory.keep(&entry(&hex(n + 1), &format!("lab.site{n}.contoso.local"))).unwrap();
        }
        let mut joined = inventory.join().unwrap();
        let found = joined.take(2).unwrap();
        assert_eq!(found.len(), AMBIGUOUS_LISTED);
        assert!(found.iter().all(|d| d.kind == DecisionKind::Candidate && d.count == 7));
        assert_eq!(joined.tally.ambiguous_names, 1);
    }

    #[test]
    fn a_large_join_spills_to_disk_and_stays_exact() {
        // More records than one sorter keeps in memory (4 MiB of 28-byte records: about 150,000).
        const N: u64 = 200_000;
        let mut input = String::from("MachineId\n");
        for n in 0..N {
            input.push_str(&hex(n * 7 % N + 1));
            input.push('\n');
        }
        let scan = scan_reader(input.as_bytes(), None).unwrap();
        let mut inventory = Inventory::new(&scan, Guard::default()).unwrap();
        // The inventory has the even machines, and more that the input does not ask about.
        for n in (0..2 * N).rev().filter(|n| n.is_multiple_of(2)) {
            inventory.keep(&entry(&hex(n + 1), &format!("pc-{n}"))).unwrap();
        }
        inventory.keep_action(action(&hex(1), "Pending", "Offboard")).unwrap();
        let mut joined = inventory.join().unwrap();
        assert_eq!(joined.tally, Tally { wanted: N, found: N / 2, open: 1, ..Tally::default() });
        for (i, decisions) in lines(&mut joined, N).into_iter().enumerate() {
            let n = i as u64 * 7 % N;
            assert_eq!(decisions.len(), usize::from(n.is_multiple_of(2)), "line {}", i + 2);
            if let Some(d) = decisions.first() {
                assert_eq!(d.machine, MachineId::parse(&hex(n + 1)).unwrap());
                if i % 10_000 == 0 {
                    assert_eq!(joined.machine(d).unwrap().computer_dns_name, format!("pc-{n}"));
                }
            }
        }
    }
}
