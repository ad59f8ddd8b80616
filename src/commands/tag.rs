//! Tags on the machines a run offboarded: `run --tag VALUE` after the offboards, and
//! `mde-offboard tag RESULTS --value VALUE [--remove]` later (safe to repeat: adding a tag a machine has, or
//! removing one it lacks, changes nothing).
//!
//! The machines are those whose row ended with an offboard requested or already under way
//! ([`is_tagged_outcome`]), read from the results file as it streams, [`TAG_MACHINES_MAX`] at a time (the
//! documented limit of `AddOrRemoveTagForMultipleMachines`): memory holds one batch, whatever the file's
//! size. Every call goes through the command's one limiter. A failed call never changes a row: the summary
//! counts the machines tagged and not, with the service's reason, and the same command tries them again.
//! The permission, `Machine.ReadWrite.All`, is checked from the token before any call (for `run --tag`,
//! before the first offboard).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::commands::session::Session;
use crate::defender::api::{Api, TAG_MACHINES_MAX, TagChange};
use crate::defender::auth::Permissions;
use crate::defender::limiter::Limiter;
use crate::domain::{MachineId, Outcome};
use crate::error::{Error, Result, exit_code};
use crate::files::lock::{self, ResultsLock};
use crate::files::results::ResultsFile;
use crate::settings::{ApiArgs, RetryArgs, Settings, SettingsArgs};

/// The permission a tag call needs (Microsoft's documentation).
pub const WRITE_ROLE: &str = "Machine.ReadWrite.All";

/// `mde-offboard tag RESULTS.csv --value VALUE [--remove]`.
#[derive(clap::Args, Clone, Debug)]
pub struct TagArgs {
    /// Results CSV of a run: its machines whose row ended submitted, already_pending or already_offboarded are
    /// tagged.
    #[arg(value_name = "RESULTS.csv")]
    pub results: PathBuf,
    /// The tag; `{run_id}` and `{date}` are filled in (the run's id from its journal, today's date).
    #[arg(long, value_name = "VALUE")]
    pub value: String,
    /// Remove the tag instead of adding it.
    #[arg(long)]
    pub remove: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

impl TagArgs {
    /// The flags that feed the settings (tagging uses none of a run's own).
    pub fn settings(&self) -> SettingsArgs {
        SettingsArgs { api: self.api.clone(), retry: self.retry.clone(), ..Default::default() }
    }
}

/// Whether a row with this outcome names a machine to tag: its offboard was requested, was already under way,
/// or had already succeeded.
pub fn is_tagged_outcome(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Submitted | Outcome::AlreadyPending | Outcome::AlreadyOffboarded)
}

/// Refuses, before any call, a token without [`WRITE_ROLE`]; `why` says what needed it. (A person's sign-in
/// asks for it when the command tags: [`Credentials::tagging`](crate::settings::Credentials::tagging).)
pub fn check_permission(permissions: &Permissions, why: &str) -> Result<()> {
    if permissions.has(WRITE_ROLE) {
        return Ok(());
    }
    Err(Error::Permission(format!(
        "{why} needs the {} permission {WRITE_ROLE}, and the token carries {}; {}, or leave the tag out",
        permissions.kind_word(),
        permissions.granted(),
        permissions.how_to_grant()
    )))
}

/// A tag value is not empty and fits on one line.
pub fn check_value(value: &str) -> Result<()> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(Error::Usage(format!("the tag `{}` must be a non-empty text on one line", value.escape_debug())));
    }
    Ok(())
}

/// What tagging did.
#[derive(Clone, Debug, Default)]
pub struct TagSummary {
    pub value: String,
    pub remove: bool,
    /// Machines the calls named.
    pub machines: u64,
    pub tagged: u64,
    pub not_tagged: u64,
    pub calls: u64,
    /// Why machines were not tagged: the service's code (or the transport's), and how many.
    pub failures: BTreeMap<String, u64>,
    /// The first failure's message, as the service wrote it.
    pub first_message: Option<String>,
}

impl TagSummary {
    pub fn render(&self, results: &Path) -> String {
        let verb = if self.remove { "Removed the tag" } else { "Tagged" };
        let mut out = if self.remove {
            format!("{verb} `{}` from {} machine(s)", self.value, self.tagged)
        } else {
            format!("{verb} {} machine(s) with `{}`", self.tagged, self.value)
        };
        out += &format!(" in {} call(s)", self.calls);
        if self.not_tagged > 0 {
            let why: Vec<String> = self.failures.iter().map(|(code, n)| format!("{code} {n}")).collect();
            out += &format!(
                "; {} machine(s) not {}: {}{}. The rows are unchanged; `mde-offboard tag {} --value {}{}` tries again",
                self.not_tagged,
                if self.remove { "untagged" } else { "tagged" },
                why.join(", "),
                self.first_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default(),
                results.display(),
                self.value,
                if self.remove { " --remove" } else { "" }
            );
        }
        crate::ui::output::printable(&format!("{out}\n"))
    }

    /// In a few words, for a report.
    pub fn brief(&self) -> String {
        format!(
            "`{}` {}: {} machine(s), {} not",
            self.value,
            if self.remove { "removed" } else { "added" },
            self.tagged,
            self.not_tagged
        )
    }

    pub fn exit_code(&self) -> u8 {
        if self.not_tagged > 0 { exit_code::SOME_FAILED } else { exit_code::OK }
    }
}

/// Adds `value` to (or removes it from) the machines of `results` ([`is_tagged_outcome`]), a batch of at most
/// [`TAG_MACHINES_MAX`] a call, through `api`.
pub async fn tag_results(api: &Api, results: &Path, value: &str, change: TagChange) -> Result<TagSummary> {
    let file = ResultsFile::open(results)?;
    let (machine_col, outcome_col) = (file.column("machine_id")?, file.column("outcome")?);
    let mut summary =
        TagSummary { value: value.to_string(), remove: change == TagChange::Remove, ..TagSummary::default() };
    // The file is read off the runtime, a batch at a time: one batch waits while another is sent.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<String>>>(1);
    let reader = tokio::task::spawn_blocking(move || {
        let records = match file.records() {
            Ok(records) => records,
            Err(e) => return drop(tx.blocking_send(Err(e))),
        };
        let mut batch: Vec<String> = Vec::with_capacity(TAG_MACHINES_MAX);
        let mut in_batch: HashSet<MachineId> = HashSet::with_capacity(TAG_MACHINES_MAX);
        for record in records {
            let cells = match record {
                Ok(record) => record.cells,
                Err(e) => return drop(tx.blocking_send(Err(e))),
            };
            let wanted = cells.get(outcome_col).and_then(Outcome::parse).is_some_and(is_tagged_outcome);
            let Some(machine) = cells.get(machine_col).and_then(MachineId::parse).filter(|_| wanted) else {
                continue;
            };
            if in_batch.insert(machine) {
                batch.push(machine.to_string());
            }
            if batch.len() == TAG_MACHINES_MAX {
                in_batch.clear();
                if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
    });
    while let Some(batch) = rx.recv().await {
        send(api, &batch?, value, change, &mut summary).await;
    }
    let _ = reader.await;
    Ok(summary)
}

/// One call for `batch`, its result counted in `summary`.
async fn send(api: &Api, batch: &[String], value: &str, change: TagChange, summary: &mut TagSummary) {
    let n = batch.len() as u64;
    summary.machines += n;
    for result in api.tag_machines(batch, value, change).await {
        summary.calls += u64::from(result.attempts);
        match result.answer {
            Ok(_) => summary.tagged += n,
            Err(failure) => {
                tracing::warn!(code = %failure.code, status = ?failure.status, "a tag call failed: {}", failure.message);
                summary.not_tagged += n;
                let code = match failure.status {
                    Some(status) => format!("HTTP {status} {}", failure.code),
                    None => failure.code.clone(),
                };
                *summary.failures.entry(code).or_insert(0) += n;
                summary.first_message.get_or_insert(failure.message);
            }
        }
    }
}

/// `mde-offboard tag`: locks, signs in (refusing a token without [`WRITE_ROLE`]), tags, prints the summary.
pub async fn command(args: TagArgs, settings: Settings, shutdown: impl Future<Output = ()>) -> Result<u8> {
    check_value(&args.value)?;
    let file = ResultsFile::open(&args.results)?;
    file.column("machine_id")?;
    file.column("outcome")?;
    let run_id = crate::files::journal::read(&crate::files::journal::path_for(&args.results), |_, _| false)
        .map(|earlier| earlier.identity.run_id)
        .unwrap_or_else(|_| crate::files::journal::new_run_id(std::time::SystemTime::now()));
    let value = crate::files::journal::expand_comment(&args.value, &run_id, std::time::SystemTime::now());
    let change = if args.remove { TagChange::Remove } else { TagChange::Add };
    let credentials = settings.credentials()?.needing(false, false).tagging();
    let mut session = Session::open(&settings, credentials, Limiter::new(&settings.rates, settings.quota_scope))?;
    // Tagging is safe to repeat: a token cache's refresh token is enough without a terminal.
    session.require_person(true)?;
    session.lock(&lock::state_dir(), &crate::files::journal::new_run_id(std::time::SystemTime::now())).await?;
    let _results_lock = ResultsLock::acquire(&args.results)?;
    session.sign_in(|granted| check_permission(granted, "tagging machines")).await?;
    let api = session.api();
    let calls_before = api.counters.calls.load(Ordering::Relaxed);
    let summary = tokio::select! {
        summary = tag_results(api, &args.results, &value, change) => summary?,
        () = shutdown => return Err(Error::Interrupted),
    };
    tracing::debug!(calls = api.counters.calls.load(Ordering::Relaxed) - calls_before, "tagging done");
    crate::ui::output::stdout(&summary.render(&args.results));
    Ok(summary.exit_code())
}
