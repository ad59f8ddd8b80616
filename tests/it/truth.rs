//! The exit code and the summary tell the truth about the results file: a file changed under a running
//! run, an output that fails late, and a closed or full stdout or stderr.

use std::path::Path;
use std::process::Stdio;

use mde_sim::Faults;

use crate::common::{command, fleet_with_quota, rows_in, summary_json as summary, wait, wait_until};

/// Waits until the results file holds `n` rows.
async fn wait_for_rows(path: &Path, n: usize) {
    wait_until("rows", || rows_in(path) >= n).await;
}

/// Before: a results file truncated (`: > file`) or deleted under a running run still got "Finished" and
/// exit 0 with rows nobody could read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_changed_under_the_run_is_not_claimed() {
    for change in ["truncate", "delete"] {
        let (dir, sim, input, _) = fleet_with_quota(12, 8, "4/1s", Faults::default()).await;
        let results = dir.path().join("m.results.csv");
        let args = ["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--rate", "4/1s"];
        let child =
            command(&sim, dir.path(), &[&args[..], &["--summary-json", "s.json"]].concat(), &[]).spawn().unwrap();
        wait_for_rows(&results, 2).await;
        match change {
            "truncate" => std::fs::File::options().write(true).open(&results).unwrap().set_len(0).unwrap(),
            _ => std::fs::remove_file(&results).unwrap(),
        }
        let out = wait(child).await;
        assert_eq!(out.code, 4, "{change}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("Stopped part way") && out.stdout.contains("--resume"), "{}", out.stdout);
        assert!(out.stdout.contains("something changed the file"), "{change}: {}", out.stdout);
        let summary = summary(dir.path());
        assert_eq!(summary["exit_code"], 4);
        assert_eq!(summary["rows"], 12, "the counts of what was written are kept");
        // The journal still names every call, for --resume to check.
        let journal = std::fs::read_to_string(dir.path().join("m.results.csv.journal")).unwrap();
        assert_eq!(journal.lines().count(), 13, "{journal}");
        sim.shutdown().await;
    }
}

/// Another command that would write the same results file while a run writes it is refused, whatever
/// its state directory (so whatever run lock it sees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_command_on_the_same_results_file_is_refused() {
    let (dir, sim, input, _) = fleet_with_quota(16, 8, "4/1s", Faults::default()).await;
    let results = dir.path().join("m.results.csv");
    let child =
        command(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes", "--rate", "4/1s"], &[]).spawn().unwrap();
    wait_for_rows(&results, 1).await;
    let other_state = tempfile::tempdir().unwrap();
    let state = other_state.path().to_str().unwrap();
    let resume = command(
        &sim,
        dir.path(),
        &["run", input.to_str().unwrap(), "--yes", "--resume", "--rate", "4/1s"],
        &[("MDE_STATE_DIR", state)],
    )
    .spawn()
    .unwrap();
    let resume = wait(resume).await;
    let track = command(&sim, dir.path(), &["track", results.to_str().unwrap(), "--once"], &[("MDE_STATE_DIR", state)])
        .spawn()
        .unwrap();
    let track = wait(track).await;
    let first = wait(child).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    for (name, out) in [("resume", resume), ("track", track)] {
        assert_eq!(out.code, 1, "{name}: {}", out.stderr);
        assert!(out.stderr.contains("is writing"), "{name}: {}", out.stderr);
    }
    assert_eq!(rows_in(&results), 16);
}

/// Before: a failure after every row was written (here the journal cannot be closed) ended with exit 1,
/// "could not run", and a summary JSON without counts, though every machine had been offboarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_output_failure_exits_4_with_the_counts() {
    let (dir, sim, input, _) = fleet_with_quota(6, 8, "100/1s", Faults::default()).await;
    // Closing the journal writes `<journal>.tmp`: a directory in its way makes that fail, even for root.
    std::fs::create_dir(dir.path().join("m.results.csv.journal.tmp")).unwrap();
    let args = ["run", input.to_str().unwrap(), "--yes", "--summary-json", "s.json"];
    let out = wait(command(&sim, dir.path(), &args, &[]).spawn().unwrap()).await;
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    let summary = summary(dir.path());
    assert_eq!(summary["exit_code"], 4);
    assert_eq!(summary["counts"]["submitted"], 6, "{summary}");
    assert!(summary["stopped"].as_str().unwrap().contains("journal"), "{summary}");
    assert_eq!(rows_in(&dir.path().join("m.results.csv")), 6);
}

/// Before: `run ... | head -0`, `> /dev/full` and `2> /dev/full` panicked (exit 101) and lost the summary.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_or_full_stdout_or_stderr_changes_nothing() {
    let full = || Stdio::from(std::fs::File::options().write(true).open("/dev/full").unwrap());
    for case in ["closed stdout", "full stdout", "full stderr"] {
        let (dir, sim, input, _) = fleet_with_quota(5, 8, "100/1s", Faults::default()).await;
        let args = ["run", input.to_str().unwrap(), "--yes", "-v", "--summary-json", "s.json"];
        let mut cmd = command(&sim, dir.path(), &args, &[]);
        match case {
            "closed stdout" => {}
            "full stdout" => {
                cmd.stdout(full());
            }
            _ => {
                cmd.stderr(full());
            }
        }
        let mut child = cmd.spawn().unwrap();
        if case == "closed stdout" {
            drop(child.stdout.take());
        }
        let out = wait(child).await;
        assert_eq!(out.code, 0, "{case}: {}", out.stderr);
        assert_eq!(summary(dir.path())["counts"]["submitted"], 5, "{case}");
        assert_eq!(rows_in(&dir.path().join("m.results.csv")), 5, "{case}");
        sim.shutdown().await;
    }
}
