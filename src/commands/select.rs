//! `mde-offboard select`: choose the machines to offboard from the inventory, and write them as a CSV that
//! `run` reads as it is. It never offboards.
//!
//! Cost: the inventory is read in pages of `$top=10000` with the API's own `$filter` for what the API can
//! filter on (`lastSeen lt ...`, `healthStatus eq ...`, `osPlatform eq ...`, built by [`MachineQuery`]), so
//! 100,000 machines cost a handful of pages, fewer when the filter narrows them. Groups, tags, names and
//! excluded tags are judged here, on each page. `--duplicates` needs every record of a name, including the
//! one seen last, which may not match the other conditions: it reads the whole inventory and judges every
//! condition here.
//!
//! Paging as the pre-flight pages ([`crate::commands::run::inventory`]): `@odata.nextLink` is never followed,
//! a page that starts as an earlier one did (the service ignored `$skip`) or a list past the page cap stops
//! the command before anything is written; machines a shifted page shows twice are written once.
//!
//! Memory stays flat however large the tenant: what is chosen is kept on disk ([`Store`]) and sorted by id
//! ([`Sorter`]) to drop repeats; `--duplicates` sorts every record by name, the one seen last first
//! (a key of the name's SHA-256 and the time reversed), so that each name's records come together and the
//! record kept leads them: one pass, whatever the number of names or records. The output is written to a
//! temporary file beside it and renamed into place once complete.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::commands::run::inventory::{MAX_PAGES, PAGE_SIZE};
use crate::commands::run::preflight::READ_ROLES;
use crate::commands::session::Session;
use crate::defender::api::{ListPage, MachineQuery, Page};
use crate::defender::auth::Permissions;
use crate::defender::limiter::Limiter;
use crate::defender::timestamp;
use crate::domain::MachineId;
use crate::error::{Error, Result};
use crate::files::extsort::{Ref, Sorter, Store, record};
use crate::settings::{Settings, SettingsArgs};

/// The header of the output: `MachineId` first, which `run` finds as it is.
pub const COLUMNS: [&str; 8] = [
    "MachineId",
    "computerDnsName",
    "osPlatform",
    "healthStatus",
    "lastSeen",
    "rbacGroupName",
    "machineTags",
    "reason",
];

/// The health states of the Machine entity (Microsoft's documentation).
pub const HEALTH_STATUSES: [&str; 6] =
    ["Active", "Inactive", "ImpairedCommunication", "NoSensorData", "NoSensorDataImpairedCommunication", "Unknown"];

#[derive(clap::Args, Debug)]
pub struct SelectArgs {
    /// Machines that have not reported for DURATION (the API's lastSeen before now minus DURATION), e.g. 30d.
    #[arg(long, value_name = "DURATION")]
    pub inactive_for: Option<String>,
    /// Machines in this health state: Active, Inactive, ImpairedCommunication, NoSensorData,
    /// NoSensorDataImpairedCommunication, Unknown.
    #[arg(long, value_name = "STATUS")]
    pub health: Option<String>,
    /// Machines on this OS platform (osPlatform, e.g. Windows10, WindowsServer2019, Linux, macOS); repeat for
    /// several.
    #[arg(long = "os", value_name = "PLATFORM")]
    pub os: Vec<String>,
    /// Machines in this device group (rbacGroupName, ignoring case); repeat for several.
    #[arg(long = "group", value_name = "NAME")]
    pub groups: Vec<String>,
    /// Machines carrying this tag (ignoring case); repeat: any of them.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Machines whose computer name matches GLOB (`*` any text, `?` one character, ignoring case), e.g.
    /// 'lab-*.contoso.local'.
    #[arg(long, value_name = "GLOB")]
    pub name_matches: Option<String>,
    /// Leave out machines carrying this tag (ignoring case); repeat for several.
    #[arg(long = "exclude-tag", value_name = "TAG")]
    pub exclude_tags: Vec<String>,
    /// Among records that share a computer name (a reimaged device leaves its old records), every one but the
    /// one seen last; the reason names the record kept.
    #[arg(long)]
    pub duplicates: bool,
    /// The CSV to write: the machines chosen, which `mde-offboard run` reads as it is.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// The conditions, checked and resolved: every one given must hold.
#[derive(Clone, Debug)]
pub struct Criteria {
    pub inactive_for: Option<Duration>,
    /// `now - inactive_for`.
    pub seen_before: Option<SystemTime>,
    pub health: Option<String>,
    pub os: Vec<String>,
    pub groups: Vec<String>,
    pub tags: Vec<String>,
    pub name_matches: Option<String>,
    pub exclude_tags: Vec<String>,
    pub duplicates: bool,
}

impl Criteria {
    /// Checks the conditions; `now` is when `--inactive-for` counts from.
    pub fn from_args(args: &SelectArgs, now: SystemTime) -> Result<Criteria> {
        let inactive_for = args
            .inactive_for
            .as_deref()
            .map(|text| match humantime::parse_duration(text.trim()) {
                Ok(d) if !d.is_zero() => Ok(d),
                _ => Err(Error::Usage(format!("--inactive-for `{text}` is not a duration such as 30d or 12h"))),
            })
            .transpose()?;
        let health = args
            .health
            .as_deref()
            .map(|h| {
                HEALTH_STATUSES.iter().find(|s| s.eq_ignore_ascii_case(h.trim())).map(|s| s.to_string()).ok_or_else(
                    || {
                        Error::Usage(format!(
                            "--health `{h}` is not a health state; use one of {}",
                            HEALTH_STATUSES.join(", ")
                        ))
                    },
                )
            })
            .transpose()?;
        for (flag, values) in [("--os", &args.os), ("--group", &args.groups), ("--tag", &args.tags)]
            .into_iter()
            .chain([("--exclude-tag", &args.exclude_tags)])
        {
            if let Some(v) = values.iter().find(|v| v.trim().is_empty() || v.contains(char::is_control)) {
                return Err(Error::Usage(format!(
                    "{flag} `{}` is empty or holds control characters",
                    v.escape_debug()
                )));
            }
        }
        if let Some(glob) = &args.name_matches
            && glob.trim().is_empty()
        {
            return Err(Error::Usage("--name-matches needs a pattern, such as 'lab-*'".into()));
        }
        let criteria = Criteria {
            inactive_for,
            seen_before: inactive_for.map(|d| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)),
            health,
            os: args.os.iter().map(|s| s.trim().to_string()).collect(),
            groups: args.groups.iter().map(|s| s.trim().to_string()).collect(),
            tags: args.tags.iter().map(|s| s.trim().to_string()).collect(),
            name_matches: args.name_matches.as_ref().map(|s| s.trim().to_string()),
            exclude_tags: args.exclude_tags.iter().map(|s| s.trim().to_string()).collect(),
            duplicates: args.duplicates,
        };
        if !criteria.any() {
            return Err(Error::Usage(
                "select needs at least one condition (--inactive-for, --health, --os, --group, --tag, --name-matches, \
                 --duplicates): it never lists the whole inventory by default"
                    .into(),
            ));
        }
        Ok(criteria)
    }

    fn any(&self) -> bool {
        self.inactive_for.is_some()
            || self.health.is_some()
            || !self.os.is_empty()
            || !self.groups.is_empty()
            || !self.tags.is_empty()
            || self.name_matches.is_some()
            || self.duplicates
    }

    /// The query of page `page`: what the API filters itself (nothing with `--duplicates`).
    pub fn query(&self, page: Page) -> MachineQuery {
        if self.duplicates {
            return MachineQuery::all(page);
        }
        MachineQuery { seen_before: self.seen_before, health: self.health.clone(), os: self.os.clone(), page }
    }

    /// Whether a machine meets every condition (those the API filtered too: a service that ignored part of
    /// `$filter` must not widen the choice).
    fn matches(&self, m: &Entry) -> bool {
        let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
        let has_tag = |wanted: &[String]| m.tags().any(|t| wanted.iter().any(|w| same(w, t)));
        if let Some(before) = self.seen_before {
            // A machine whose lastSeen cannot be read is not known to be inactive.
            match m.last_seen.as_deref().and_then(timestamp::parse) {
                Some(seen) if seen < before => {}
                _ => return false,
            }
        }
        if let Some(health) = &self.health
            && !same(health, m.health_status.as_deref().unwrap_or(""))
        {
            return false;
        }
        let os = m.os_platform.as_deref().unwrap_or("");
        if !self.os.is_empty() && !self.os.iter().any(|p| same(p, os)) {
            return false;
        }
        let group = m.rbac_group_name.as_deref().unwrap_or("");
        if !self.groups.is_empty() && !self.groups.iter().any(|g| same(g, group)) {
            return false;
        }
        if !self.tags.is_empty() && !has_tag(&self.tags) {
            return false;
        }
        if let Some(glob) = &self.name_matches
            && !glob_matches(glob, m.computer_dns_name.as_deref().unwrap_or(""))
        {
            return false;
        }
        !has_tag(&self.exclude_tags)
    }

    /// The conditions in words: the reason of every row chosen (besides `duplicate`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.inactive_for {
            parts.push(format!("not seen for {}", crate::ui::output::short_duration(d)));
        }
        if let Some(h) = &self.health {
            parts.push(format!("health {h}"));
        }
        let list = |what: &str, values: &[String]| format!("{what} {}", values.join(" or "));
        if !self.os.is_empty() {
            parts.push(list("os", &self.os));
        }
        if !self.groups.is_empty() {
            parts.push(list("group", &self.groups));
        }
        if !self.tags.is_empty() {
            parts.push(list("tag", &self.tags));
        }
        if let Some(glob) = &self.name_matches {
            parts.push(format!("name matches {glob}"));
        }
        if !self.exclude_tags.is_empty() {
            parts.push(format!("without tag {}", self.exclude_tags.join(" or ")));
        }
        parts.join(", ")
    }
}

/// `*` any text, `?` one character, the rest itself ignoring ASCII case.
fn glob_matches(glob: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) =
        (glob.to_lowercase().chars().collect(), text.trim().to_lowercase().chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A machine as a list page shows it: the fields written out (unknown fields are ignored, any may be missing).
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(default)]
    id: String,
    #[serde(default)]
    computer_dns_name: Option<String>,
    #[serde(default)]
    os_platform: Option<String>,
    #[serde(default)]
    health_status: Option<String>,
    #[serde(default)]
    last_seen: Option<String>,
    #[serde(default)]
    rbac_group_name: Option<String>,
    #[serde(default)]
    machine_tags: Option<Vec<String>>,
}

impl Entry {
    fn tags(&self) -> impl Iterator<Item = &str> {
        self.machine_tags.iter().flatten().map(String::as_str)
    }

    /// The output row's fields but the reason.
    fn fields(&self, id: &MachineId) -> [String; 7] {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        [
            id.to_string(),
            text(&self.computer_dns_name),
            text(&self.os_platform),
            text(&self.health_status),
            text(&self.last_seen),
            text(&self.rbac_group_name),
            self.machine_tags.as_deref().unwrap_or_default().join(";"),
        ]
    }
}

record! {
    /// A machine chosen: its row's fields, and its reason (or [`Ref::NONE`]: the conditions). Sorted by id.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Chosen {
        id: MachineId,
        fields: Ref,
        reason: Ref,
    }
}

record! {
    /// Every record of the inventory, for `--duplicates`: by name (its SHA-256), the one seen last first.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Named {
        name: [u8; 20],
        /// `u64::MAX` less the milliseconds of `lastSeen` (an unreadable one: `u64::MAX`, last).
        unseen: u64,
        id: MachineId,
        fields: Ref,
        /// Whether the record meets the other conditions.
        matches: u8,
    }
}

/// What a `select` read and chose.
#[derive(Debug, Default)]
pub struct Selection {
    /// Rows written, by reason kind (`duplicate`, or the conditions).
    pub counts: BTreeMap<String, u64>,
    pub written: u64,
    /// Machines the pages showed.
    pub seen: u64,
    pub pages: u64,
    /// HTTP calls made, retries included.
    pub http_calls: u64,
    /// The `$filter` sent, if any.
    pub filter: Option<String>,
    pub output: PathBuf,
}

impl Selection {
    pub fn render(&self) -> String {
        let mut out = format!("Selected {} machine(s) into {}", self.written, self.output.display());
        out += if self.written > 0 { ":\n" } else { ".\n" };
        for (reason, n) in &self.counts {
            out += &format!("  {n:>8}  {reason}\n");
        }
        let filter = match &self.filter {
            Some(f) => format!(" with $filter {f}"),
            None => " (no $filter: the whole inventory)".into(),
        };
        out += &format!(
            "Read {} inventory page(s) ({} HTTP calls){filter}: {} machine(s) shown.\n",
            self.pages, self.http_calls, self.seen
        );
        out +=
            &format!("Nothing was offboarded. Check it with: mde-offboard run {} --dry-run\n", self.output.display());
        out
    }
}

/// `mde-offboard select`: check the conditions and the output, sign in, read, choose, write.
pub async fn select(args: SelectArgs, settings: Settings, shutdown: impl Future<Output = ()>) -> Result<Selection> {
    let criteria = Criteria::from_args(&args, SystemTime::now())?;
    check_output(&args.output, args.overwrite)?;
    let credentials = settings.credentials()?;
    let mut session = Session::open(&settings, credentials, Limiter::new(&settings.rates))?;
    let run_id = crate::files::journal::new_run_id(SystemTime::now());
    tokio::pin!(shutdown);
    let work = async {
        // Its reads spend the tenant's quota: one command at a time, as a run.
        session.lock(&crate::files::lock::state_dir(), &run_id).await?;
        session.sign_in(check_roles).await?;
        let mut chooser = Chooser::new(criteria)?;
        chooser.read(&session).await?;
        let output = args.output.clone();
        let overwrite = args.overwrite;
        match tokio::task::spawn_blocking(move || chooser.write(&output, overwrite)).await {
            Ok(selection) => selection,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    };
    tokio::select! {
        selection = work => selection,
        _ = &mut shutdown => Err(Error::Interrupted),
    }
}

/// Refuses, before any network, an output that exists (without `--overwrite`) or a directory that takes no
/// new file.
fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    let refuse = |message: String| Error::Output { path: path.to_owned(), message };
    if path.is_dir() {
        return Err(refuse("is a directory; name a file".into()));
    }
    if path.exists() && !overwrite {
        return Err(refuse("exists; pass --overwrite to replace it, or choose another file".into()));
    }
    tempfile::NamedTempFile::new_in(dir_of(path))
        .map(drop)
        .map_err(|e| refuse(format!("cannot write in {}: {e}", dir_of(path).display())))
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Reading the inventory needs `Machine.Read.All` or `Machine.ReadWrite.All` (application or delegated).
fn check_roles(permissions: &Permissions) -> Result<()> {
    if READ_ROLES.iter().any(|r| permissions.has(r)) {
        return Ok(());
    }
    Err(Error::Permission(format!(
        "select reads the device inventory, which needs the {kind} permission {} or {}, and the token carries \
         {}; {}",
        READ_ROLES[0],
        READ_ROLES[1],
        permissions.granted(),
        permissions.how_to_grant(),
        kind = permissions.kind_word(),
    )))
}

/// The reads under way and what they chose, on its way to disk.
struct Chooser {
    criteria: Criteria,
    store: Store,
    chosen: Sorter<Chosen>,
    named: Sorter<Named>,
    selection: Selection,
}

fn temp(e: std::io::Error) -> Error {
    Error::Select(crate::files::extsort::temp_message("use", &e))
}

impl Chooser {
    fn new(criteria: Criteria) -> Result<Chooser> {
        Ok(Chooser {
            criteria,
            store: Store::new().map_err(temp)?,
            chosen: Sorter::default(),
            named: Sorter::default(),
            selection: Selection::default(),
        })
    }

    /// Every page, each judged as it comes.
    async fn read(&mut self, session: &Session) -> Result<()> {
        let api = session.api();
        let mut first_ids: Vec<String> = Vec::new();
        self.selection.filter = self.criteria.query(Page::nth(0, PAGE_SIZE)).filter();
        for page in 0..MAX_PAGES {
            let query = self.criteria.query(Page::nth(page, PAGE_SIZE));
            let (attempts, answer) = api
                .list_machines(&query, |body| {
                    serde_json::from_slice::<ListPage<Entry>>(body).map(|p| p.value).map_err(|e| e.to_string())
                })
                .await;
            self.selection.pages += 1;
            self.selection.http_calls += u64::from(attempts);
            let entries = answer.map_err(|f| {
                let status = f.status.map(|s| format!("HTTP {s} ")).unwrap_or_default();
                let message = f.message.split_whitespace().collect::<Vec<_>>().join(" ");
                Error::Select(format!(
                    "cannot read the device inventory: {status}{}: {message}; nothing was written",
                    f.code
                ))
            })?;
            let len = entries.len();
            if let Some(first) = entries.first() {
                if first_ids.contains(&first.id) {
                    return Err(Error::Select(format!(
                        "cannot read the device inventory to its end: page {} repeats an earlier page (the service \
                         ignored $skip); nothing was written",
                        page + 1
                    )));
                }
                first_ids.push(first.id.clone());
            }
            self.selection.seen += len as u64;
            for entry in entries {
                self.keep(&entry).map_err(temp)?;
            }
            if len < PAGE_SIZE {
                return Ok(());
            }
        }
        Err(Error::Select(format!(
            "the device inventory did not end within {MAX_PAGES} pages of {PAGE_SIZE}; nothing was written"
        )))
    }

    fn keep(&mut self, entry: &Entry) -> std::io::Result<()> {
        let Some(id) = MachineId::parse(&entry.id) else { return Ok(()) };
        let matches = self.criteria.matches(entry);
        if self.criteria.duplicates {
            let Some(name) = entry.computer_dns_name.as_deref().map(str::trim).filter(|n| !n.is_empty()) else {
                return Ok(());
            };
            let digest = ring::digest::digest(&ring::digest::SHA256, name.to_lowercase().as_bytes());
            let mut key = [0u8; 20];
            key.copy_from_slice(&digest.as_ref()[..20]);
            let seen = entry.last_seen.as_deref().and_then(timestamp::parse).map(millis);
            let fields = self.store.put(&entry.fields(&id).each_ref().map(String::as_str))?;
            let unseen = seen.map_or(u64::MAX, |s| u64::MAX - s);
            self.named.push(Named { name: key, unseen, id, fields, matches: u8::from(matches) })
        } else if matches {
            let fields = self.store.put(&entry.fields(&id).each_ref().map(String::as_str))?;
            self.chosen.push(Chosen { id, fields, reason: Ref::NONE })
        } else {
            Ok(())
        }
    }

    /// Groups the records by name (`--duplicates`), then writes the chosen, once each, by id.
    fn write(mut self, output: &Path, overwrite: bool) -> Result<Selection> {
        if self.criteria.duplicates {
            self.duplicates().map_err(temp)?;
        }
        let store = self.store.freeze().map_err(temp)?;
        let fail = |e: &dyn std::fmt::Display| Error::Output { path: output.to_owned(), message: e.to_string() };
        let file = tempfile::NamedTempFile::new_in(dir_of(output)).map_err(|e| fail(&e))?;
        let mut csv = csv::Writer::from_writer(std::io::BufWriter::new(file));
        csv.write_record(COLUMNS).map_err(|e| fail(&e))?;
        let conditions = self.criteria.describe();
        let mut last: Option<MachineId> = None;
        for chosen in self.chosen.finish().map_err(temp)? {
            let chosen = chosen.map_err(temp)?;
            if last == Some(chosen.id) {
                continue;
            }
            last = Some(chosen.id);
            let mut fields = store.get(chosen.fields).map_err(temp)?;
            fields.resize(7, String::new());
            let (kind, reason) = if chosen.reason.is_none() {
                (conditions.clone(), conditions.clone())
            } else {
                let reason = store.get(chosen.reason).map_err(temp)?.into_iter().next().unwrap_or_default();
                ("duplicate".to_string(), reason)
            };
            fields.push(reason);
            csv.write_record(&fields).map_err(|e| fail(&e))?;
            *self.selection.counts.entry(kind).or_insert(0) += 1;
            self.selection.written += 1;
        }
        let file = csv.into_inner().map_err(|e| fail(&e))?.into_inner().map_err(|e| fail(&e))?;
        file.as_file().sync_all().map_err(|e| fail(&e))?;
        let placed = if overwrite { file.persist(output).map(drop) } else { file.persist_noclobber(output).map(drop) };
        placed.map_err(|e| fail(&format!("cannot put the output in place: {}", e.error)))?;
        self.selection.output = output.to_owned();
        Ok(self.selection)
    }

    /// Each name's records, the one seen last first: every other record of the name that meets the other
    /// conditions is chosen, its reason naming the one kept.
    fn duplicates(&mut self) -> std::io::Result<()> {
        let named = std::mem::take(&mut self.named).finish()?;
        let mut kept: Option<Named> = None;
        let mut last: Option<MachineId> = None;
        for record in named {
            let record = record?;
            let same_name = kept.is_some_and(|k| k.name == record.name);
            if !same_name {
                kept = Some(record);
                last = Some(record.id);
                continue;
            }
            // A shifted page shows a record twice: the copies are next to each other.
            if last == Some(record.id) || kept.is_some_and(|k| k.id == record.id) {
                continue;
            }
            last = Some(record.id);
            if record.matches == 0 {
                continue;
            }
            let keeper = kept.expect("a name's first record is kept");
            let seen = if keeper.unseen == u64::MAX {
                "unknown".to_string()
            } else {
                timestamp::format(std::time::UNIX_EPOCH + Duration::from_millis(u64::MAX - keeper.unseen))
            };
            let reason = format!("duplicate: {} (seen last {seen}) is kept", keeper.id);
            let reason = self.store.put(&[&reason])?;
            self.chosen.push(Chosen { id: record.id, fields: record.fields, reason })?;
        }
        Ok(())
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names_ignoring_case() {
        assert!(glob_matches("lab-*", "LAB-0001.contoso.local"));
        assert!(glob_matches("*.contoso.local", "ws-1.contoso.local"));
        assert!(glob_matches("ws-?.contoso.local", "ws-1.contoso.local"));
        assert!(!glob_matches("ws-?.contoso.local", "ws-12.contoso.local"));
        assert!(!glob_matches("lab-*", "xlab-1"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }

    fn args() -> SelectArgs {
        SelectArgs {
            inactive_for: None,
            health: None,
            os: Vec::new(),
            groups: Vec::new(),
            tags: Vec::new(),
            name_matches: None,
            exclude_tags: Vec::new(),
            duplicates: false,
            output: PathBuf::from("x.csv"),
            overwrite: false,
            settings: SettingsArgs::default(),
        }
    }

    #[test]
    fn conditions_are_checked_and_filter_where_the_api_can() {
        let now = timestamp::parse("2026-11-30T12:00:00Z").unwrap();
        assert!(Criteria::from_args(&args(), now).unwrap_err().to_string().contains("at least one condition"));
        let bad = SelectArgs { health: Some("Sleeping".into()), ..args() };
        assert!(Criteria::from_args(&bad, now).unwrap_err().to_string().contains("Inactive"));
        let bad = SelectArgs { inactive_for: Some("a while".into()), ..args() };
        assert!(Criteria::from_args(&bad, now).is_err());

        let a = SelectArgs {
            inactive_for: Some("30d".into()),
            health: Some("inactive".into()),
            os: vec!["Windows10".into()],
            tags: vec!["Retire".into()],
            exclude_tags: vec!["VIP".into()],
            ..args()
        };
        let c = Criteria::from_args(&a, now).unwrap();
        assert_eq!(
            c.query(Page::nth(0, 10)).filter().as_deref(),
            Some(
                "lastSeen lt 2026-10-31T12:00:00.0000000Z and healthStatus eq 'Inactive' and osPlatform eq 'Windows10'"
            )
        );
        let entry = |seen: &str, tags: &[&str]| Entry {
            id: "x".into(),
            last_seen: Some(seen.into()),
            health_status: Some("Inactive".into()),
            os_platform: Some("Windows10".into()),
            machine_tags: Some(tags.iter().map(|t| t.to_string()).collect()),
            ..Entry::default()
        };
        assert!(c.matches(&entry("2026-10-01T00:00:00Z", &["retire"])));
        assert!(!c.matches(&entry("2026-11-01T00:00:00Z", &["retire"])), "seen within 30 days");
        assert!(!c.matches(&entry("2026-10-01T00:00:00Z", &["Retire", "vip"])), "excluded");
        assert!(!c.matches(&entry("2026-10-01T00:00:00Z", &[])), "no wanted tag");
        assert!(!c.matches(&entry("soon", &["retire"])), "an unreadable lastSeen is not inactive");

        let d = Criteria::from_args(&SelectArgs { duplicates: true, ..a }, now).unwrap();
        assert_eq!(d.query(Page::nth(0, 10)).filter(), None, "--duplicates reads every record");
    }
}
