//! What a run is given (a [`Job`], resolved from the command line, or built by the demo) and what it
//! reports (a [`Summary`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::commands::tag::TagSummary;
use crate::defender::limiter::LimiterStats;
use crate::domain::Outcome;
use crate::error::{Result, exit_code};
use crate::files::write_atomically;
use crate::input::Scan;
use crate::settings::Settings;

/// What a run reads before (or instead of) offboarding: the pre-flight and the dry run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Read only: write what a real run would do, never offboard.
    pub dry_run: bool,
    /// Real runs: skip machines the reads show unknown or already pending (on by default).
    pub preflight: bool,
    /// Tracking follows the run (`run --wait`): it reads the machine actions.
    pub wait: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { dry_run: false, preflight: true, wait: false }
    }
}

impl Options {
    /// Whether the run reads the inventory (a dry run, a pre-flight, or names to resolve).
    pub fn reads(&self, by_name: bool) -> bool {
        self.dry_run || self.preflight || by_name
    }
}

/// Everything a run needs, resolved.
pub struct Job {
    pub settings: Settings,
    /// The comment as given; `{run_id}` and `{date}` are filled in when the run starts.
    pub comment_template: String,
    pub scan: Scan,
    pub output: PathBuf,
    pub overwrite: bool,
    pub resume: bool,
    pub run_id: String,
    /// Where the run lock lives.
    pub lock_dir: PathBuf,
    /// Ask for confirmation before the first offboard call.
    pub confirm: bool,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
    /// Dry run and pre-flight.
    pub preflight: Options,
    /// What the pre-flight keeps from offboarding (`protected` rows).
    pub guard: super::guard::Guard,
    /// Where the summary JSON goes (`--summary-json`), so that a second signal, which exits at once, can
    /// still write what was done so far.
    pub summary_json: Option<PathBuf>,
    /// The tag added after the offboards (`--tag`, `run.tag`), as written: `{run_id}` and `{date}` unfilled.
    pub tag: Option<String>,
}

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    pub run_id: String,
    pub counts: BTreeMap<Outcome, u64>,
    /// Rows in the results file.
    pub rows: u64,
    pub started_at: SystemTime,
    pub duration: Duration,
    /// API calls this session made, and how many of them were answered 429.
    pub calls: u64,
    pub throttled: u64,
    pub results: PathBuf,
    pub interrupted: bool,
    pub resumed: bool,
    /// Why the run stopped part way, other than a signal (an output failure, sign-in refused for good, the
    /// token refused on every call, ...): the rows written are valid, and `--resume` continues.
    pub stopped: Option<String>,
    /// The person who signed in (device code sign-in); none when an app signed in.
    pub account: Option<String>,
    /// How the tags of `--tag` went, when the run tagged.
    pub tags: Option<TagSummary>,
    /// How the quotas were counted in the end: the scope, whether a 429 switched it, the share kept.
    pub quotas: LimiterStats,
    /// A list of several tenants: each tenant's share, in the order the list first names them (empty for
    /// one tenant).
    pub tenants: Vec<TenantSummary>,
    /// A run of several tenants with `--wait`: the most serious exit code of the tenants' tracking (each
    /// tenant tracked in its own session right after its run). `None` otherwise.
    pub tracking: Option<u8>,
    /// A run of several tenants whose bound on calls at once grew ([`crate::defender::calls_at_once`]): the
    /// bound it started at and the one it ended at. `None` otherwise.
    pub calls_at_once: Option<(usize, usize)>,
}

/// One tenant's share of a run of several tenants.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TenantSummary {
    /// As the list names it (a GUID or a domain), lowercase.
    pub tenant: String,
    pub rows: u64,
    #[serde(serialize_with = "outcome_counts")]
    pub counts: BTreeMap<Outcome, u64>,
    pub api_calls: u64,
    pub throttled_429: u64,
    /// Whether a 429 its per-API budgets could not explain switched the tenant's run to one budget, and the
    /// most of its quotas it found another client spending (percent).
    pub quota_scope_switched: bool,
    pub quota_taken_percent: u32,
    /// Why the tenant's rows were not worked on (sign-in refused, consent or a role missing, its lock
    /// held) or why it stopped part way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts by outcome, every outcome named (0 for none), as the summary JSON gives them.
fn outcome_counts<S: serde::Serializer>(counts: &BTreeMap<Outcome, u64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    let all: BTreeMap<&str, u64> =
        Outcome::ALL.iter().map(|o| (o.as_str(), counts.get(o).copied().unwrap_or(0))).collect();
    serde::Serialize::serialize(&all, s)
}

/// The outcomes counted, a line each, their numbers in one column (past the longest outcome's name).
fn outcome_lines(counts: &BTreeMap<Outcome, u64>) -> String {
    let width = Outcome::ALL.iter().map(|o| o.as_str().len()).max().unwrap_or(0);
    let mut out = String::new();
    for outcome in Outcome::ALL {
        let n = counts.get(&outcome).copied().unwrap_or(0);
        if n > 0 {
            out += &format!("  {:<width$} {n}\n", outcome.as_str());
        }
    }
    out
}

impl Summary {
    /// How the quotas were counted, on one line: the run's, or over the tenants of a run of several (each
    /// tenant counts its own).
    fn describe_quotas(&self) -> String {
        if self.tenants.is_empty() {
            return crate::defender::limiter::describe_quotas(&self.quotas);
        }
        let (n, scope) = (self.tenants.len(), crate::defender::limiter::describe_scope(self.quotas.scope));
        let mut line = format!("{scope}, in each tenant's own budgets");
        let switched = self.tenants.iter().filter(|t| t.quota_scope_switched).count();
        if switched > 0 {
            line += &format!(
                "; per app in {switched} of {n} tenant(s), after a 429 their per-API budgets could not explain"
            );
        }
        let lowered: Vec<u32> = self.tenants.iter().map(|t| t.quota_taken_percent).filter(|p| *p > 0).collect();
        if let Some(most) = lowered.iter().max() {
            line += &format!(
                "; another client spent up to {most}% of them in {} of {n} tenant(s), which lowered their rate",
                lowered.len()
            );
        }
        line
    }

    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            exit_code::INTERRUPTED
        } else if self.stopped.is_some() {
            exit_code::STOPPED
        } else if self.counts.iter().all(|(outcome, n)| outcome.is_ok() || *n == 0) {
            exit_code::OK
        } else {
            exit_code::SOME_FAILED
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {} rows in {} (run {})\n",
            if self.interrupted {
                "Interrupted with"
            } else if self.stopped.is_some() {
                "Stopped part way with"
            } else {
                "Finished:"
            },
            self.rows,
            humantime::format_duration(Duration::from_secs(self.duration.as_secs())),
            self.run_id
        );
        out += &outcome_lines(&self.counts);
        if let Some(account) = &self.account {
            let account: String = account.chars().filter(|c| !c.is_control()).collect();
            out += &format!("Signed in as: {account}\n");
        }
        for tenant in &self.tenants {
            let counts: Vec<String> = Outcome::ALL
                .iter()
                .filter_map(|o| tenant.counts.get(o).filter(|n| **n > 0).map(|n| format!("{} {n}", o.as_str())))
                .collect();
            out += &format!("  tenant {}: {} rows", tenant.tenant, tenant.rows);
            // (None to give for a tenant stopped before its first row: no colon left hanging.)
            if !counts.is_empty() {
                out += &format!(": {}", counts.join(", "));
            }
            if tenant.quota_scope_switched {
                out += "; its quotas counted per app after a 429";
            }
            if tenant.quota_taken_percent > 0 {
                out += &format!("; another client spent up to {}% of them", tenant.quota_taken_percent);
            }
            out += "\n";
            if let Some(error) = &tenant.error {
                let error: String = error.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
                out += &format!("    {error}\n");
            }
        }
        out += &format!("API calls: {} (429 throttled: {})\n", self.calls, self.throttled);
        out += &format!("Quotas: {}\n", self.describe_quotas());
        if let Some((from, to)) = self.calls_at_once {
            out += &format!(
                "Calls at once across the tenants: raised from {from} to {to}: the service answered slowly, and \
                 the bound, not the quotas, was holding calls back (run.calls_at_once)\n"
            );
        }
        if let Some(tags) = &self.tags {
            out += &tags.render(&self.results);
        }
        out += &format!("Results: {}\n", self.results.display());
        if let Some(why) = &self.stopped {
            out += &format!("Stopped because: {why}\n");
        }
        if self.interrupted || self.stopped.is_some() {
            out += "The rows written are valid, but not every row is done: run again with --resume to finish.\n";
        }
        out
    }

    /// Writes the summary as JSON to `path`, atomically (a temporary file, then a rename).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        #[derive(Serialize)]
        struct Json<'a> {
            run_id: &'a str,
            exit_code: u8,
            interrupted: bool,
            resumed: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            stopped: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            account: Option<&'a str>,
            started_at: String,
            duration_seconds: f64,
            rows: u64,
            counts: BTreeMap<&'static str, u64>,
            api_calls: u64,
            throttled_429: u64,
            /// How the quotas were counted at the end (`api` or `app`), and whether a 429 switched the run
            /// from `api` to `app`.
            quota_scope: &'static str,
            quota_scope_switched: bool,
            /// The most of the quotas the run found another client spending (percent), and the share of
            /// them it kept at the end.
            quota_taken_percent: u32,
            quota_share_percent: u32,
            results: String,
            /// `--tag`: machines tagged and not (absent when the run did not tag).
            #[serde(skip_serializing_if = "Option::is_none")]
            tagged: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            not_tagged: Option<u64>,
            /// A list of several tenants: each tenant's rows, counts and calls.
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            tenants: &'a [TenantSummary],
            /// A run of several tenants whose bound on calls at once grew: from what to what.
            #[serde(skip_serializing_if = "Option::is_none")]
            calls_at_once: Option<CallsAtOnceJson>,
        }
        #[derive(Serialize)]
        struct CallsAtOnceJson {
            from: usize,
            to: usize,
        }
        let json = Json {
            run_id: &self.run_id,
            exit_code: self.exit_code(),
            interrupted: self.interrupted,
            resumed: self.resumed,
            stopped: self.stopped.as_deref(),
            account: self.account.as_deref(),
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            duration_seconds: self.duration.as_secs_f64(),
            rows: self.rows,
            counts: Outcome::ALL.iter().map(|o| (o.as_str(), self.counts.get(o).copied().unwrap_or(0))).collect(),
            api_calls: self.calls,
            throttled_429: self.throttled,
            quota_scope: self.quotas.scope.as_str(),
            quota_scope_switched: self.quotas.switched,
            quota_taken_percent: 100 - self.quotas.lowest_share.min(100),
            quota_share_percent: self.quotas.share,
            results: self.results.display().to_string(),
            tagged: self.tags.as_ref().map(|t| t.tagged),
            not_tagged: self.tags.as_ref().map(|t| t.not_tagged),
            tenants: &self.tenants,
            calls_at_once: self.calls_at_once.map(|(from, to)| CallsAtOnceJson { from, to }),
        };
        write_atomically(path, &serde_json::to_vec_pretty(&json).expect("the summary serialises"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: the names were padded to 16 characters, and `already_offboarded` (18) pushed its number out
    /// of the column.
    #[test]
    fn the_counts_line_up_whatever_the_outcomes() {
        let counts = BTreeMap::from([
            (Outcome::Submitted, 33),
            (Outcome::AlreadyOffboarded, 1),
            (Outcome::AlreadyPending, 4),
            (Outcome::Failed, 120),
        ]);
        let text = outcome_lines(&counts);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let columns: Vec<usize> = lines.iter().map(|l| l.rfind(' ').unwrap() + 1).collect();
        assert!(columns.iter().all(|&c| c == columns[0]), "{text}");
        assert!(lines.iter().any(|l| l.trim_start().starts_with("already_offboarded ") && l.ends_with(" 1")), "{text}");
    }

    /// Before: a run of three tenants, one of which switched to one budget after a 429, said "counted per
    /// API (switched from per API ...)".
    #[test]
    fn the_quotas_of_a_run_of_several_tenants_say_which_tenants_switched() {
        let tenant = |name: &str, switched: bool, taken: u32| TenantSummary {
            tenant: name.into(),
            rows: 20,
            quota_scope_switched: switched,
            quota_taken_percent: taken,
            ..TenantSummary::default()
        };
        let mut summary = Summary {
            run_id: "r".into(),
            counts: BTreeMap::new(),
            rows: 60,
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            calls: 0,
            throttled: 1,
            results: PathBuf::from("res.csv"),
            interrupted: false,
            resumed: false,
            stopped: None,
            account: None,
            tags: None,
            quotas: LimiterStats { switched: true, share: 100, lowest_share: 100, ..LimiterStats::default() },
            tenants: vec![tenant("a", false, 0), tenant("b", true, 0), tenant("c", false, 0)],
            tracking: None,
            calls_at_once: None,
        };
        let text = summary.render();
        assert!(
            text.contains(
                "Quotas: counted per API, in each tenant's own budgets; per app in 1 of 3 tenant(s), after a 429"
            ),
            "{text}"
        );
        assert!(!text.contains("switched from per API"), "{text}");
        assert!(text.contains("tenant b: 20 rows; its quotas counted per app after a 429\n"), "{text}");
        summary.tenants[2].quota_taken_percent = 30;
        let text = summary.render();
        assert!(text.contains("another client spent up to 30% of them in 1 of 3 tenant(s)"), "{text}");
        assert!(text.contains("tenant c: 20 rows; another client spent up to 30% of them\n"), "{text}");
        // A tenant interrupted before its first row has no counts to give, and no colon before them.
        summary.tenants[0].rows = 0;
        summary.tenants[1].counts = BTreeMap::from([(Outcome::Submitted, 15), (Outcome::Failed, 5)]);
        let text = summary.render();
        assert!(text.contains("  tenant a: 0 rows\n"), "{text}");
        assert!(text.contains("tenant b: 20 rows: submitted 15, failed 5; its quotas"), "{text}");
    }
}
