//! `run --dry-run`: sign in, check the read permission, read the inventory and the open actions in
//! batches (the pre-flight's reads, [`super::preflight`]), and write what a real run would do, row by row.
//! Never offboards.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::job::{Job, Summary};
use super::preflight::{Screen, Screened, check_permissions, load};
use crate::commands::session::Session;
use crate::domain::{Outcome, message};
use crate::error::{Error, Result};
use crate::files::results::{ResultRow, ResultsWriter};
use crate::input::{InputRow, RowKind};

/// The default results path of a dry run: `<input stem>.dry-run.csv` beside the input, `dry-run.csv` for
/// stdin, so that the real run's default results file is still free.
pub fn default_output(input: Option<&Path>) -> PathBuf {
    match input {
        Some(path) => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "input".into());
            path.with_file_name(format!("{stem}.dry-run.csv"))
        }
        None => PathBuf::from("dry-run.csv"),
    }
}

/// `run --dry-run` in `session`: sign in, check the read permission, read in batches, write what a real run
/// would do. Never offboards.
pub async fn dry_run(job: Job, session: &Session, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    tokio::pin!(shutdown);
    let token = tokio::select! {
        biased;
        _ = &mut shutdown => return Err(Error::Interrupted),
        token = session.sign_in(|granted| check_permissions(granted, &job.preflight, job.scan.by_name)) => token?,
    };
    let round_trip = started.elapsed();
    let api = session.api();
    let screen = tokio::select! {
        biased;
        _ = &mut shutdown => return Err(Error::Interrupted),
        screen = load(&job, api) => screen?,
    };
    let screen = screen.expect("a dry run always reads");
    let describe = screen.describe();
    let protected = screen.protected_line();

    let writer = ResultsWriter::create(&job.output, job.overwrite)?;
    let rows = job.scan.rows()?;
    let output = job.output.clone();
    let (counts, written) = tokio::task::spawn_blocking(move || write_dry_run(rows, screen, writer))
        .await
        .map_err(|e| Error::write(&output, "write it (the writer stopped)", e))??;

    let would = counts.get(&Outcome::WouldSubmit).copied().unwrap_or(0);
    let skipped: Vec<String> = counts
        .iter()
        .filter(|(outcome, n)| **outcome != Outcome::WouldSubmit && **n > 0)
        .map(|(outcome, n)| format!("{n} {}", outcome.as_str()))
        .collect();
    let rates = job.settings.rates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    // A real run's pre-flight makes the reads this dry run made: under one budget for the app, they are in
    // the offboards' windows.
    let scope = api.limiter().stats().scope;
    let reads = api.counters.calls.load(Ordering::Relaxed);
    let took = crate::defender::limiter::estimate(
        &job.settings.rates,
        scope,
        reads,
        would,
        job.settings.concurrency,
        round_trip,
    );
    let rates = format!("{rates}, {}", crate::defender::limiter::describe_scope(scope));
    crate::ui::output::stdout(&format!(
        "Dry run: nothing was offboarded. A real run would submit {would} offboard call(s), which the quotas ({rates}) \
         make take about {} at best, and skip {} row(s){}.\n",
        humantime::format_duration(Duration::from_secs(took.as_secs())),
        written - would,
        if skipped.is_empty() { String::new() } else { format!(": {}", skipped.join(", ")) }
    ));
    crate::ui::output::stdout(&format!("Read {describe}.\n{protected}\n"));
    Ok(Summary {
        run_id: job.run_id,
        counts,
        rows: written,
        started_at,
        duration: started.elapsed(),
        calls: api.counters.calls.load(Ordering::Relaxed),
        throttled: api.counters.throttled.load(Ordering::Relaxed),
        results: job.output,
        interrupted: false,
        resumed: false,
        stopped: None,
        account: token.account().map(str::to_owned),
        tags: None,
        quotas: api.limiter().stats(),
        tenants: Vec::new(),
        tracking: None,
        calls_at_once: None,
    })
}

type Counts = std::collections::BTreeMap<Outcome, u64>;

fn write_dry_run(rows: crate::input::Rows, mut screen: Screen, mut writer: ResultsWriter) -> Result<(Counts, u64)> {
    let mut counts = Counts::new();
    let mut written = 0;
    for row in rows {
        let result = match super::preflight::screen(Some(&mut screen), row?)? {
            Screened::Row(result) => *result,
            Screened::Pass(row, _) => unscreened_row(row),
        };
        writer.write(&result)?;
        written += 1;
        *counts.entry(result.outcome).or_insert(0) += 1;
    }
    crate::files::sync::off_runtime(|| writer.finish())?;
    Ok((counts, written))
}

/// Invalid and duplicate rows, as a real run writes them.
fn unscreened_row(row: InputRow) -> ResultRow {
    match row.kind {
        RowKind::Duplicate => {
            let mut result = ResultRow::new(row.line, row.raw.trim().to_ascii_lowercase(), Outcome::Duplicate);
            result.error_message = Some(message::listed_earlier().into());
            result
        }
        _ => {
            let why = message::not_a_machine_id(&row.raw);
            let mut result = ResultRow::new(row.line, row.raw, Outcome::InvalidId);
            result.error_message = Some(why.into());
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_output_sits_beside_the_input() {
        assert_eq!(default_output(Some(Path::new("/x/fleet.csv"))), Path::new("/x/fleet.dry-run.csv"));
        assert_eq!(default_output(None), Path::new("dry-run.csv"));
    }
}
