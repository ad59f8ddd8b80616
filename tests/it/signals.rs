//! Signals and the text on stderr: a signal at the prompt or during the pre-flight ends the run at once
//! with nothing done; SIGHUP is SIGTERM; a second signal exits at once but still writes the summary JSON;
//! with `--log-format json` every line on stderr is JSON, and `-q` leaves only errors.
#![cfg(unix)]

use std::process::Child;
use std::time::Duration;

use mde_sim::Faults;

use crate::common::{command, fleet_with_quota, kill, mde, rows_in, summary_json as summary, wait, wait_until};

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";

/// A pseudo-terminal for the child's stdin and stderr (so the run asks), and its master side.
#[cfg(target_os = "linux")]
fn on_terminal(mut cmd: std::process::Command) -> (Child, std::fs::File) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    let opened =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(opened, 0, "openpty");
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(slave.try_clone().unwrap()).stderr(slave);
    (cmd.spawn().unwrap(), std::fs::File::from(master))
}

/// Reads the terminal until `text` shows; returns what was read.
#[cfg(target_os = "linux")]
async fn read_until(terminal: std::fs::File, text: &'static str) -> (String, std::fs::File) {
    use std::io::Read;
    let seen = tokio::task::spawn_blocking(move || {
        let mut terminal = terminal;
        let mut read = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&read).contains(text) {
            match terminal.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
        }
        (String::from_utf8_lossy(&read).into_owned(), terminal)
    });
    tokio::time::timeout(Duration::from_secs(60), seen).await.expect("the text shows").unwrap()
}

/// Before: Ctrl-C at the confirmation prompt was ignored until Enter (the answer was read with a blocking
/// call on the runtime).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_at_the_prompt_ends_the_run_at_once() {
    let (dir, sim, input, _) = fleet_with_quota(3, 12, "100/1s", Faults::default()).await;
    let cmd = command(&sim, dir.path(), &["run", input.to_str().unwrap(), "--summary-json", "s.json"], &[]);
    let (child, terminal) = on_terminal(cmd);
    let (text, _terminal) = read_until(terminal, "to offboard them").await;
    assert!(text.contains("Type 3 to offboard them"), "{text}");
    kill(&child, "-INT");
    let out = tokio::time::timeout(Duration::from_secs(30), wait(child)).await.expect("exits at once");
    assert_eq!(out.code, 130);
    assert_eq!(sim.stats().total(OFFBOARD), 0, "nothing was offboarded");
    assert_eq!(summary(dir.path())["exit_code"], 130);
}

/// Before: an interactive `--resume` subtracted the machines already finished from a count the pre-flight
/// had already cleared of them (their actions are open), so the plan showed too few machines, or none and
/// no question at all (1,000 machines interrupted after 697: the other 303 offboarded unasked).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_terminal_asks_for_exactly_the_machines_left() {
    use std::io::Write;
    let (dir, sim, input, _) = fleet_with_quota(30, 12, "5/1s", Faults::default()).await;
    let results = dir.path().join("m.results.csv");
    let args = ["run", input.to_str().unwrap(), "--yes", "--rate", "5/1s"];
    let first = command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    wait_until("rows", || rows_in(&results) >= 16).await;
    kill(&first, "-INT");
    let out = wait(first).await;
    assert_eq!(out.code, 130, "{}", out.stderr);
    // Rows of calls the interrupt cancelled before they were sent are `failed`: a resume calls them again.
    let done = crate::common::Results::read(&results).rows.iter().filter(|r| r["outcome"] != "failed").count();
    assert!(done < 30, "the interrupt came too late");
    let offboards = sim.stats().total(OFFBOARD);

    let cmd = command(&sim, dir.path(), &["run", input.to_str().unwrap(), "--resume", "--rate", "5/1s"], &[]);
    let (child, terminal) = on_terminal(cmd);
    let (text, mut terminal) = read_until(terminal, "to offboard them").await;
    assert!(text.contains(&format!("Type {} to offboard them", 30 - done)), "{done} rows done: {text}");
    terminal.write_all(b"0\n").unwrap();
    let out = wait(child).await;
    assert_eq!(out.code, 2, "not confirmed");
    assert_eq!(sim.stats().total(OFFBOARD), offboards, "nothing more was offboarded");
}

/// Ctrl-C during the pre-flight's reads stops them at once, not after the slow answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_the_pre_flight_stops_it_at_once() {
    let faults = Faults { latency: Duration::from_secs(120), ..Faults::default() };
    let (dir, sim, input, _) = fleet_with_quota(3, 12, "100/1s", faults).await;
    let args = ["run", input.to_str().unwrap(), "--yes", "--timeout", "300s", "--summary-json", "s.json"];
    let child = command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    // The sign-in is not slowed down; the first read is: wait for it to be under way.
    wait_until("the sign-in", || sim.stats().tokens_issued >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(&child, "-INT");
    let out = tokio::time::timeout(Duration::from_secs(60), wait(child)).await.expect("stopped before the slow answer");
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert_eq!(sim.stats().total(OFFBOARD), 0);
}

/// Before: SIGHUP (a closed terminal) exited 129 with no drain, no message and no summary JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_treated_as_sigterm() {
    let (dir, sim, input, _) = fleet_with_quota(40, 12, "5/1s", Faults::default()).await;
    let results = dir.path().join("m.results.csv");
    let args = ["run", input.to_str().unwrap(), "--yes", "--rate", "5/1s", "--summary-json", "s.json"];
    let child = command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    wait_until("rows", || rows_in(&results) >= 3).await;
    kill(&child, "-HUP");
    let out = wait(child).await;
    assert_eq!(out.code, 130, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("--resume"), "{}", out.stdout);
    let summary = summary(dir.path());
    assert_eq!(summary["interrupted"], true);
    assert_eq!(summary["rows"].as_u64().unwrap() as usize, rows_in(&results));
}

/// Before: a second SIGTERM exited at once without the summary JSON that `--summary-json` promises "also
/// when interrupted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_still_writes_the_summary() {
    // Every answer takes 20 s, so the drain after the first signal would take that long.
    let faults = Faults { latency: Duration::from_secs(20), ..Faults::default() };
    let (dir, sim, input, _) = fleet_with_quota(10, 12, "100/1s", faults).await;
    let args =
        ["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--timeout", "60s", "--summary-json", "s.json"];
    let child = command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    wait_until("the first calls", || sim.stats().tokens_issued >= 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(&child, "-TERM");
    let out = tokio::time::timeout(Duration::from_secs(15), wait(child)).await.expect("exits at once");
    assert_eq!(out.code, 130, "{}", out.stderr);
    let summary = summary(dir.path());
    assert_eq!(summary["exit_code"], 130);
    assert_eq!(summary["interrupted"], true);
}

/// Before: with `--log-format json` the plan, the pre-flight line, the interrupt notice and the final
/// `error:` line were plain text among the JSON; `-q` still printed the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_on_every_line_and_quiet_is_quiet() {
    let (dir, sim, input, _) = fleet_with_quota(3, 12, "100/1s", Faults::default()).await;
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--yes", "-v", "--log-format", "json"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut kinds = Vec::new();
    for line in out.stderr.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", out.stderr));
        if let Some(kind) = event["fields"]["kind"].as_str() {
            kinds.push(kind.to_string());
        }
    }
    assert!(kinds.contains(&"plan".to_string()) && kinds.contains(&"preflight".to_string()), "{kinds:?}");
    // A fatal error is an event too.
    let missing = dir.path().join("missing.csv");
    let out = mde(&sim, &["run", missing.to_str().unwrap(), "--yes", "--log-format", "json"], "").await;
    assert_eq!(out.code, 1);
    let last: serde_json::Value = serde_json::from_str(out.stderr.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{}", out.stderr);
    // -q: only errors.
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--yes", "--overwrite", "-q"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "", "-q printed more than errors");
}
