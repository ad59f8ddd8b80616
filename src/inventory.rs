//! The batched reads behind the dry run and the pre-flight: the device inventory and the open offboard
//! actions, read with a handful of list calls whatever the size of the input.
//!
//! Cost: the inventory is read in pages of `$top=10000` with `$skip`,
//! up to the first short page (or, for an input of ids, as soon as every id has been seen); the open offboard
//! actions with one filtered list per open status (`type eq 'Offboard' and status eq 'Pending'`, then
//! `'InProgress'`: the documented `$filter` joins clauses with `and` only), paged the same way. So a fleet of
//! 25,000 machines costs 3 + 2 calls for 10 ids or 100,000. An input of one id is cheaper by id:
//! `GET /api/machines/{id}` and that machine's offboard actions (filtered by `machineId`), 2 calls.
//!
//! Paging, as integrators report the service: `@odata.nextLink` is never followed, machines are de-duplicated
//! by id, a 404 is an empty page (see [`Api::list_page`]), and a page that starts with the same machine as an
//! earlier page means `$skip` was ignored: the reading stops there rather than loop.
//!
//! Memory stays flat in the size of the inventory: only machines the input asks about are kept. [`Wanted`]
//! holds one 64-bit hash per distinct id or name of the input (8 bytes each; 1,000,000 ids: 8 MB); each
//! machine kept is a 32-byte [`Known`] plus its name and `lastSeen` in one text arena. A hash shared by two
//! ids or names only makes a machine be kept that is not asked about: every lookup compares the real id or
//! name.

use std::borrow::Cow;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use serde::Deserialize;

use crate::api::{Api, Failure, ListPage, MachineAction};
use crate::input::normalise_name;

/// `$top` of every list call: the most the API allows (Microsoft's documentation).
pub const PAGE_SIZE: usize = 10_000;
/// The open statuses of a machine action (Microsoft's documentation).
pub const OPEN_STATUSES: [&str; 2] = ["Pending", "InProgress"];
/// Pages read from one list at most (100 million entries): a guard against a service that never ends a list.
const MAX_PAGES: usize = 10_000;

/// A machine id: 40 hexadecimal characters as 20 bytes.
pub type Id = [u8; 20];

/// The id in a string, any case; `None` unless it is 40 hexadecimal characters.
pub fn parse_id(text: &str) -> Option<Id> {
    let text = text.trim().as_bytes();
    if text.len() != 40 {
        return None;
    }
    let mut id = [0u8; 20];
    for (i, pair) in text.chunks(2).enumerate() {
        let hex = |b: u8| (b as char).to_digit(16);
        id[i] = (hex(pair[0])? << 4 | hex(pair[1])?) as u8;
    }
    Some(id)
}

/// The id as the API writes it: 40 lowercase hexadecimal characters.
pub fn id_text(id: &Id) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the input asks about: hashes of its distinct ids (their 20 bytes) or names (as [`normalise_name`]
/// gives them), sorted, as the input's scan made them ([`crate::input::Scan::keys`]).
pub struct Wanted {
    by_name: bool,
    hasher: RandomState,
    keys: Arc<Vec<u64>>,
    /// The ids themselves, for the per-id lookups of a tiny input (see [`by_id_is_cheaper`]).
    ids: Vec<Id>,
}

impl Wanted {
    /// `keys` sorted, by `hasher`; `ids` the input's ids when it is tiny (may be empty otherwise).
    pub fn new(by_name: bool, hasher: RandomState, keys: Arc<Vec<u64>>, ids: Vec<Id>) -> Wanted {
        debug_assert!(keys.is_sorted());
        Wanted { by_name, hasher, keys, ids }
    }

    /// From ids or names as text (tests, small inputs).
    pub fn of<'a>(by_name: bool, items: impl IntoIterator<Item = &'a str>) -> Wanted {
        let hasher = RandomState::new();
        let mut keys = Vec::new();
        let mut ids = Vec::new();
        for item in items {
            if by_name {
                keys.push(hasher.hash_one(item.as_bytes()));
            } else if let Some(id) = parse_id(item) {
                keys.push(hasher.hash_one(id));
                ids.push(id);
            }
        }
        keys.sort_unstable();
        keys.dedup();
        ids.sort_unstable();
        ids.dedup();
        Wanted::new(by_name, hasher, Arc::new(keys), ids)
    }

    /// Distinct ids or names (hashes) asked about.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn has_id(&self, id: &Id) -> bool {
        self.keys.binary_search(&self.hasher.hash_one(id)).is_ok()
    }

    fn name_slot(&self, name: &str) -> Option<usize> {
        self.keys.binary_search(&self.hasher.hash_one(name.as_bytes())).ok()
    }
}

/// Inputs of up to this many ids may be read by id instead of in pages (see [`by_id_is_cheaper`]).
pub const PER_ID_MAX: usize = 2;

/// Whether reading `n` ids one by one costs fewer calls than the least the batched reads can cost (one
/// inventory page and one list per open status): one GET per id, plus, per id, its actions by `machineId`
/// or the global open lists, whichever is fewer. True for a single id (2 calls against at least 3).
pub fn by_id_is_cheaper(n: usize) -> bool {
    let batched_floor = 1 + OPEN_STATUSES.len();
    n <= PER_ID_MAX && n + n.min(OPEN_STATUSES.len()) < batched_floor
}

/// One machine kept: 32 bytes; its texts live in [`Inventory::text`].
#[derive(Clone, Copy, Debug)]
struct Known {
    id: Id,
    /// Offset of `computerDnsName` then `lastSeen` in the arena.
    text: u32,
    name_len: u16,
    seen_len: u16,
    /// Index + 1 in [`Inventory::words`]; 0 for none.
    os: u8,
    health: u8,
}

/// A machine as the inventory showed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine<'a> {
    pub id: Id,
    pub computer_dns_name: &'a str,
    pub os_platform: Option<&'a str>,
    pub health_status: Option<&'a str>,
    pub last_seen: Option<&'a str>,
}

/// An open offboard action of a machine kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAction {
    pub machine: Id,
    pub id: String,
    pub status: String,
    pub created: Option<String>,
    pub updated: Option<String>,
}

/// The machines whose name (or first label) is one wanted name, as indexes into the sorted machines.
#[derive(Clone, Debug, Default)]
enum Candidates {
    #[default]
    None,
    One(u32),
    Many(Box<[u32]>),
}

impl Candidates {
    fn push(&mut self, i: u32) {
        *self = match std::mem::take(self) {
            Candidates::None => Candidates::One(i),
            Candidates::One(j) if j == i => Candidates::One(j),
            Candidates::One(j) => Candidates::Many(Box::new([j, i])),
            Candidates::Many(list) if list.contains(&i) => Candidates::Many(list),
            Candidates::Many(list) => Candidates::Many(list.iter().copied().chain([i]).collect()),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Candidates::None => &[],
            Candidates::One(i) => std::slice::from_ref(i),
            Candidates::Many(list) => list,
        }
    }
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

/// What the reads found about the machines the input asks about.
pub struct Inventory {
    wanted: Wanted,
    /// Sorted by id, unique.
    machines: Vec<Known>,
    text: String,
    /// Interned `osPlatform` and `healthStatus` values.
    words: Vec<Box<str>>,
    /// Sorted by machine id.
    open: Vec<OpenAction>,
    /// Input by name: per wanted key (same order as `wanted.keys`), the machines it may name.
    names: Vec<Candidates>,
    pub reads: Reads,
}

/// The part of a Machine the reads use, borrowed from the page where it can be; unknown fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineEntry<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    computer_dns_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    os_platform: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    health_status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    last_seen: Option<Cow<'a, str>>,
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
        write!(f, "cannot read {}: {status}{}: {}", self.what, self.failure.code, self.failure.message)
    }
}

impl Inventory {
    fn new(wanted: Wanted) -> Inventory {
        Inventory {
            wanted,
            machines: Vec::new(),
            text: String::new(),
            words: Vec::new(),
            open: Vec::new(),
            names: Vec::new(),
            reads: Reads::default(),
        }
    }

    /// Reads what `wanted` asks about: by id for a tiny input of ids, in pages otherwise.
    pub async fn load(api: &Api, wanted: Wanted) -> Result<Inventory, ReadError> {
        let by_id = !wanted.by_name && by_id_is_cheaper(wanted.len()) && wanted.ids.len() == wanted.len();
        let mut inventory = Inventory::new(wanted);
        if inventory.wanted.is_empty() {
            return Ok(inventory);
        }
        if by_id {
            inventory.read_by_id(api).await?;
        } else {
            inventory.read_pages(api).await?;
            inventory.read_open_actions(api).await?;
        }
        inventory.index_names();
        Ok(inventory)
    }

    async fn read_by_id(&mut self, api: &Api) -> Result<(), ReadError> {
        self.reads.by_id = true;
        for id in self.wanted.ids.clone() {
            let text = id_text(&id);
            let result = api.get(&format!("/api/machines/{text}"), true).await;
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
                    self.keep(&entry);
                }
                Err(failure) if failure.status == Some(404) => {}
                Err(failure) => return Err(ReadError { what: format!("machine {text}"), failure }),
            }
        }
        self.sort_machines();
        // Each machine found: its offboard actions by machineId, when that is fewer calls than the open lists.
        if self.machines.len() < OPEN_STATUSES.len() {
            for id in self.machines.iter().map(|m| m.id).collect::<Vec<_>>() {
                let filter = format!("machineId eq '{}' and type eq 'Offboard'", id_text(&id));
                let actions: Vec<MachineAction> =
                    self.pages(api, "/api/machineactions", &filter, "the machine's offboard actions", false).await?;
                for action in actions {
                    self.keep_action(action);
                }
            }
            self.open.sort_by_key(|a| a.machine);
        } else if !self.machines.is_empty() {
            self.read_open_actions(api).await?;
        }
        Ok(())
    }

    /// Every page of the inventory, keeping the machines asked about.
    async fn read_pages(&mut self, api: &Api) -> Result<(), ReadError> {
        let mut first_ids: Vec<String> = Vec::new();
        for page in 0..MAX_PAGES {
            let (attempts, answer) = api
                .list_page("/api/machines", None, PAGE_SIZE, page * PAGE_SIZE, |body| {
                    let entries =
                        serde_json::from_slice::<ListPage<MachineEntry>>(body).map_err(|e| e.to_string())?.value;
                    let first = entries.first().map(|e| e.id.to_string());
                    let repeated = first.as_ref().is_some_and(|f| first_ids.contains(f));
                    if !repeated {
                        for entry in &entries {
                            self.keep(entry);
                        }
                    }
                    Ok((entries.len(), first, repeated))
                })
                .await;
            self.reads.inventory_pages += 1;
            self.reads.http_calls += u64::from(attempts);
            let (len, first, repeated) =
                answer.map_err(|failure| ReadError { what: "the device inventory".into(), failure })?;
            let full = len >= PAGE_SIZE;
            if repeated {
                tracing::warn!(page, "the inventory repeats an earlier page (was $skip ignored?): stopping there");
                break;
            }
            first_ids.extend(first);
            self.sort_machines();
            tracing::debug!(page, kept = self.machines.len(), "inventory page read");
            // A list of ids is complete once every id has been seen; names may name more machines further on.
            let all_seen = !self.wanted.by_name && self.machines.len() >= self.wanted.len();
            if !full || all_seen {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The open offboard actions of the machines kept: one paged list per open status.
    async fn read_open_actions(&mut self, api: &Api) -> Result<(), ReadError> {
        for status in OPEN_STATUSES {
            let filter = format!("type eq 'Offboard' and status eq '{status}'");
            let actions: Vec<MachineAction> =
                self.pages(api, "/api/machineactions", &filter, "the open offboard actions", true).await?;
            for action in actions {
                self.keep_action(action);
            }
        }
        self.open.sort_by_key(|a| a.machine);
        self.open.dedup_by(|a, b| a.machine == b.machine);
        Ok(())
    }

    /// Every page of an action list, keeping only actions of machines kept (`only_kept`).
    async fn pages(
        &mut self,
        api: &Api,
        path: &str,
        filter: &str,
        what: &str,
        only_kept: bool,
    ) -> Result<Vec<MachineAction>, ReadError> {
        let mut kept = Vec::new();
        let mut first_ids: Vec<Option<String>> = Vec::new();
        for page in 0..MAX_PAGES {
            let (attempts, answer) = api
                .list_page(path, Some(filter), PAGE_SIZE, page * PAGE_SIZE, |body| {
                    serde_json::from_slice::<ListPage<MachineAction>>(body).map(|p| p.value).map_err(|e| e.to_string())
                })
                .await;
            self.reads.action_pages += 1;
            self.reads.http_calls += u64::from(attempts);
            let entries = answer.map_err(|failure| ReadError { what: what.into(), failure })?;
            let full = entries.len() >= PAGE_SIZE;
            if let Some(first) = entries.first() {
                if first_ids.contains(&first.id) {
                    tracing::warn!(page, "{what}: a page repeats an earlier one (was $skip ignored?): stopping there");
                    break;
                }
                first_ids.push(first.id.clone());
            }
            kept.extend(entries.into_iter().filter(|a| {
                !only_kept
                    || a.machine_id.as_deref().and_then(parse_id).is_some_and(|id| self.machine_index(&id).is_some())
            }));
            if !full {
                break;
            }
        }
        Ok(kept)
    }

    fn keep_action(&mut self, action: MachineAction) {
        let open = action.status.as_deref().is_some_and(|s| OPEN_STATUSES.iter().any(|o| o.eq_ignore_ascii_case(s)));
        let offboard = action.kind.as_deref().is_none_or(|k| k.eq_ignore_ascii_case("Offboard"));
        let Some(machine) = action.machine_id.as_deref().and_then(parse_id) else { return };
        if !open || !offboard || self.machine_index(&machine).is_none() {
            return;
        }
        self.open.push(OpenAction {
            machine,
            updated: action.updated_at().cloned(),
            id: action.id.unwrap_or_default(),
            status: action.status.unwrap_or_default(),
            created: action.creation_date_time_utc,
        });
    }

    /// Keeps the machine if the input asks about it (by id, or by its name or its name's first label).
    fn keep(&mut self, entry: &MachineEntry) {
        let Some(id) = parse_id(&entry.id) else { return };
        let wanted = if self.wanted.by_name {
            let name = entry.computer_dns_name.as_deref().and_then(normalise_name);
            name.is_some_and(|name| name_keys(&name).any(|key| self.wanted.name_slot(key).is_some()))
        } else {
            self.wanted.has_id(&id)
        };
        if !wanted {
            return;
        }
        let name = entry.computer_dns_name.as_deref().unwrap_or("");
        let seen = entry.last_seen.as_deref().unwrap_or("");
        let (name, seen) = (clip(name), clip(seen));
        let text = self.text.len() as u32;
        self.text.push_str(name);
        self.text.push_str(seen);
        let os = self.word(entry.os_platform.as_deref());
        let health = self.word(entry.health_status.as_deref());
        self.machines.push(Known { id, text, name_len: name.len() as u16, seen_len: seen.len() as u16, os, health });
    }

    /// Sorts by id and drops machines seen twice (a list that shifted between pages).
    fn sort_machines(&mut self) {
        self.machines.sort_by_key(|a| a.id);
        self.machines.dedup_by(|a, b| a.id == b.id);
    }

    fn word(&mut self, value: Option<&str>) -> u8 {
        let Some(value) = value.filter(|v| !v.is_empty()) else { return 0 };
        if let Some(i) = self.words.iter().position(|w| **w == *value) {
            return i as u8 + 1;
        }
        if self.words.len() >= u8::MAX as usize {
            return 0;
        }
        self.words.push(value.into());
        self.words.len() as u8
    }

    /// Input by name: which machines each wanted name may mean.
    fn index_names(&mut self) {
        if !self.wanted.by_name {
            return;
        }
        self.names = vec![Candidates::None; self.wanted.len()];
        for i in 0..self.machines.len() {
            let Some(name) = normalise_name(self.view(i).computer_dns_name) else { continue };
            for key in name_keys(&name) {
                if let Some(slot) = self.wanted.name_slot(key) {
                    self.names[slot].push(i as u32);
                }
            }
        }
    }

    fn machine_index(&self, id: &Id) -> Option<usize> {
        self.machines.binary_search_by(|m| m.id.cmp(id)).ok()
    }

    fn view(&self, i: usize) -> Machine<'_> {
        let k = &self.machines[i];
        let start = k.text as usize;
        let middle = start + k.name_len as usize;
        let end = middle + k.seen_len as usize;
        let word = |w: u8| (w > 0).then(|| &*self.words[w as usize - 1]);
        Machine {
            id: k.id,
            computer_dns_name: &self.text[start..middle],
            os_platform: word(k.os),
            health_status: word(k.health),
            last_seen: Some(&self.text[middle..end]).filter(|s| !s.is_empty()),
        }
    }

    /// The machine with this id, if the inventory has it.
    pub fn machine(&self, id: &Id) -> Option<Machine<'_>> {
        self.machine_index(id).map(|i| self.view(i))
    }

    /// The machine's open offboard action, if any.
    pub fn open_action(&self, id: &Id) -> Option<&OpenAction> {
        self.open.binary_search_by(|a| a.machine.cmp(id)).ok().map(|i| &self.open[i])
    }

    /// The machines a computer name (as [`normalise_name`] gives it) may mean: the same full name, or, for a
    /// name without a dot, the same first label. Several means ambiguous.
    pub fn by_name(&self, name: &str) -> Vec<(usize, Machine<'_>)> {
        let Some(slot) = self.wanted.name_slot(name) else { return Vec::new() };
        let Some(candidates) = self.names.get(slot) else { return Vec::new() };
        candidates
            .as_slice()
            .iter()
            .map(|&i| (i as usize, self.view(i as usize)))
            .filter(|(_, m)| normalise_name(m.computer_dns_name).is_some_and(|n| name_keys(&n).any(|k| k == name)))
            .collect()
    }

    /// Input by name (names were indexed).
    pub fn names_indexed(&self) -> bool {
        self.wanted.by_name
    }

    /// The id of the `i`th machine kept (as [`Inventory::by_name`] and [`Inventory::name_counts`] number them).
    pub fn id_at(&self, i: usize) -> Id {
        self.machines[i].id
    }

    /// Machines kept (found).
    pub fn len(&self) -> usize {
        self.machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Distinct ids or names the input asks about.
    pub fn wanted(&self) -> usize {
        self.wanted.len()
    }

    /// Open offboard actions found for the machines kept.
    pub fn open_actions(&self) -> usize {
        self.open.len()
    }

    /// Input by name: (names naming no machine, names naming several, distinct machines named alone).
    pub fn name_counts(&self) -> (usize, usize, Vec<usize>) {
        let (mut none, mut many, mut alone) = (0, 0, Vec::new());
        for candidates in &self.names {
            match candidates.as_slice() {
                [] => none += 1,
                [i] => alone.push(*i as usize),
                _ => many += 1,
            }
        }
        alone.sort_unstable();
        alone.dedup();
        (none, many, alone)
    }
}

/// At most `u16::MAX` bytes of `s`, cut at a character boundary (names and times are far shorter).
fn clip(s: &str) -> &str {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The keys a machine's normalised name is found under: the name, and its first label when it has a dot.
fn name_keys(name: &str) -> impl Iterator<Item = &str> {
    let first = name.split_once('.').map(|(label, _)| label).filter(|l| !l.is_empty());
    std::iter::once(name).chain(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

    fn entry(id: &str, name: &str) -> MachineEntry<'static> {
        MachineEntry {
            id: Cow::Owned(id.into()),
            computer_dns_name: Some(Cow::Owned(name.into())),
            os_platform: Some("Windows11".into()),
            health_status: Some("Active".into()),
            last_seen: Some("2026-01-01T00:00:00Z".into()),
        }
    }

    fn hex(n: u8) -> String {
        format!("{:040x}", u128::from(n) * 0x1234_5678_9abc)
    }

    #[test]
    fn ids_parse_in_any_case_and_print_lowercase() {
        let id = parse_id(&A.to_uppercase()).unwrap();
        assert_eq!(id_text(&id), A);
        assert!(parse_id(&A[1..]).is_none());
        assert!(parse_id(&format!("g{}", &A[1..])).is_none());
    }

    #[test]
    fn only_tiny_inputs_are_read_by_id() {
        assert!(by_id_is_cheaper(1));
        assert!(!by_id_is_cheaper(2));
        assert!(!by_id_is_cheaper(1000));
    }

    #[test]
    fn machines_asked_about_are_kept_once_and_compactly() {
        assert_eq!(std::mem::size_of::<Known>(), 32);
        let wanted = Wanted::of(false, [hex(1).as_str(), hex(3).to_uppercase().as_str()]);
        let mut inventory = Inventory::new(wanted);
        for n in 0..5 {
            inventory.keep(&entry(&hex(n), &format!("pc-{n}.contoso.local")));
        }
        // A shifted page shows machine 3 again.
        inventory.keep(&entry(&hex(3), "pc-3.contoso.local"));
        inventory.sort_machines();
        assert_eq!(inventory.len(), 2);
        let m = inventory.machine(&parse_id(&hex(3)).unwrap()).unwrap();
        assert_eq!(m.computer_dns_name, "pc-3.contoso.local");
        assert_eq!(
            (m.os_platform, m.health_status, m.last_seen),
            (Some("Windows11"), Some("Active"), Some("2026-01-01T00:00:00Z"))
        );
        assert!(inventory.machine(&parse_id(&hex(2)).unwrap()).is_none());
    }

    #[test]
    fn names_match_whole_or_by_first_label_and_several_are_ambiguous() {
        let wanted = Wanted::of(true, ["pc-1", "pc-2.contoso.local", "pc-2", "srv", "pc-3.other.local", "none"]);
        let mut inventory = Inventory::new(wanted);
        inventory.keep(&entry(&hex(1), "PC-1.contoso.local"));
        inventory.keep(&entry(&hex(2), "pc-2.contoso.local"));
        inventory.keep(&entry(&hex(3), "pc-2.contoso.local")); // reimaged: same name, new id
        inventory.keep(&entry(&hex(4), "srv.contoso.local"));
        inventory.keep(&entry(&hex(5), "srv.fabrikam.local"));
        inventory.keep(&entry(&hex(6), "pc-3.contoso.local"));
        inventory.keep(&entry(&hex(7), "unrelated.contoso.local"));
        inventory.keep(&entry(&hex(1), "PC-1.contoso.local"));
        inventory.sort_machines();
        inventory.index_names();
        assert_eq!(inventory.len(), 5, "machines no wanted name names are not kept; the repeated one once");
        let ids = |name: &str| -> Vec<String> { inventory.by_name(name).iter().map(|(_, m)| id_text(&m.id)).collect() };
        assert_eq!(ids("pc-1"), vec![hex(1)]);
        assert_eq!(ids("pc-2.contoso.local").len(), 2);
        assert_eq!(ids("pc-2").len(), 2);
        assert_eq!(ids("srv").len(), 2, "a short name shared by two domains is ambiguous");
        assert!(ids("pc-3.other.local").is_empty(), "a full name must match whole");
        assert!(ids("none").is_empty());
        assert!(ids("not-wanted").is_empty());
        let (none, many, alone) = inventory.name_counts();
        assert_eq!((none, many, alone.len()), (2, 3, 1));
    }

    #[test]
    fn open_actions_are_kept_for_kept_machines_only() {
        let wanted = Wanted::of(false, [hex(1).as_str()]);
        let mut inventory = Inventory::new(wanted);
        inventory.keep(&entry(&hex(1), "pc-1"));
        inventory.sort_machines();
        let action = |machine: &str, status: &str, kind: &str| MachineAction {
            id: Some(format!("{machine}-{status}")),
            kind: Some(kind.into()),
            status: Some(status.into()),
            machine_id: Some(machine.into()),
            creation_date_time_utc: Some("2026-01-01T00:00:00Z".into()),
            last_update_time_utc: Some("2026-01-01T00:01:00Z".into()),
            ..MachineAction::default()
        };
        inventory.keep_action(action(&hex(2), "Pending", "Offboard"));
        inventory.keep_action(action(&hex(1), "Succeeded", "Offboard"));
        inventory.keep_action(action(&hex(1), "Pending", "Isolate"));
        assert_eq!(inventory.open_actions(), 0);
        inventory.keep_action(action(&hex(1), "InProgress", "Offboard"));
        let open = inventory.open_action(&parse_id(&hex(1)).unwrap()).unwrap();
        assert_eq!((open.status.as_str(), open.updated.as_deref()), ("InProgress", Some("2026-01-01T00:01:00Z")));
    }
}
