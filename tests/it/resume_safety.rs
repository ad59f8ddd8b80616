//! Resuming without offboarding twice: a resume reuses the run's comment whatever the day, looks up every
//! machine whose earlier call may have gone through (and calls none whose lookup fails), remembers every
//! intent, cuts torn rows whole, and refuses a list that is not the one the run began with.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mde_sim::{Faults, Fleet, Lifecycle, SimConfig, Simulator};

use crate::common::{Results, closing_at_once, mde_env, post_as_demo_app, write_file};

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";
const ACTIONS: &str = "GET /api/machineactions";

fn config(seed: u64, lifecycle: Lifecycle) -> SimConfig {
    SimConfig { fleet: Fleet::generate(60, seed), quotas: Vec::new(), lifecycle, ..SimConfig::default() }
}

/// `n` machines the service offboards (supported platform, reachable group).
fn offboardable(cfg: &SimConfig, n: usize) -> Vec<String> {
    cfg.fleet
        .machines()
        .iter()
        .filter(|m| {
            !cfg.unsupported_platforms.contains(&m.os_platform) && !cfg.forbidden_groups.contains(&m.rbac_group_name)
        })
        .take(n)
        .map(|m| m.id.clone())
        .collect()
}

fn input(dir: &Path, ids: &[String]) -> PathBuf {
    write_file(dir, "m.csv", &format!("MachineId\n{}\n", ids.join("\n")))
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()
}

/// The journal's identity line, parsed, and its intent lines.
fn read_journal(path: &Path) -> (serde_json::Value, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = serde_json::from_str(lines.next().unwrap()).unwrap();
    (header, lines.map(str::to_owned).collect())
}

fn write_journal(path: &Path, header: &serde_json::Value, intents: &[String]) {
    let mut text = serde_json::to_string(header).unwrap() + "\n";
    for intent in intents {
        text += intent;
        text += "\n";
    }
    std::fs::write(path, text).unwrap();
}

/// What a session killed before writing any row leaves in `dir`: the journal's `header` and `intents`, and
/// a results file with its header only. The results file's path.
fn as_left_by_a_kill(dir: &Path, header: &serde_json::Value, intents: &[String]) -> PathBuf {
    write_journal(&dir.join("m.results.csv.journal"), header, intents);
    let results_path = dir.join("m.results.csv");
    let text = std::fs::read_to_string(&results_path).unwrap();
    std::fs::write(&results_path, text.lines().next().unwrap().to_string() + "\n").unwrap();
    results_path
}

fn accepted(sim: &Simulator, id: &str) -> u64 {
    sim.stats().offboard_calls.get(id).map_or(0, |c| c.accepted)
}

fn calls(sim: &Simulator, id: &str) -> u64 {
    sim.stats().offboard_calls.get(id).map_or(0, |c| c.calls)
}

/// Item 6: the earlier session ran yesterday, so `{date}` filled today differs; its actions have closed
/// since. The resume must look them up under the comment the run sent, not call again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_day_finds_the_actions_sent_under_the_runs_comment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(31, closing_at_once());
    let ids = offboardable(&cfg, 3);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = [
        "run",
        path.to_str().unwrap(),
        "--yes",
        "--resume",
        "--no-preflight",
        "--max-attempts",
        "1",
        "--comment",
        "retire {run_id} on {date}",
    ];
    // The first session: every call fails before the service does anything; the journal holds the run.
    sim.set_faults(Faults { error_503: 1.0, ..Faults::default() });
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    sim.set_faults(Faults::default());

    // What that session would have left had it run yesterday and its answers been lost: actions created
    // under yesterday's comment (closed by now), the journal's intents, and no rows for them.
    let journal = dir.path().join("m.results.csv.journal");
    let (mut header, _) = read_journal(&journal);
    let run_id = header["run_id"].as_str().unwrap().to_string();
    let yesterday = SystemTime::now() - Duration::from_secs(86_400);
    let stamp = humantime::format_rfc3339_seconds(yesterday).to_string();
    let comment = format!("retire {run_id} on {}", &stamp[..10]);
    if header.get("resolved_comment").is_some() {
        header["resolved_comment"] = comment.clone().into();
    }
    header["started_at"] = stamp.into();
    let mut intents = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (status, _) =
            post_as_demo_app(&sim, &format!("/api/machines/{id}/offboard"), serde_json::json!({ "Comment": comment }))
                .await;
        assert_eq!(status, 201);
        intents.push(format!("{},{id},{}", i + 2, now_ms() - 86_400_000));
    }
    let results_path = as_left_by_a_kill(dir.path(), &header, &intents);

    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&results_path);
    assert_eq!(results.rows.len(), 3);
    for row in &results.rows {
        assert_eq!(row["outcome"], "submitted", "{row:?}");
        assert!(row["error_message"].contains("not sent again"), "{row:?}");
    }
    for id in &ids {
        assert_eq!(accepted(&sim, id), 1, "machine {id} was offboarded again");
    }
    sim.shutdown().await;
}

/// Item 7: a resume whose lookup fails calls nothing (the rows stay `failed`, `InDoubt`); the 5xx rows of
/// the finished first session are looked up too; once lookups work, the machines are called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_calls_nothing_and_the_next_resume_looks_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(32, Lifecycle::default());
    let ids = offboardable(&cfg, 3);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--no-preflight", "--max-attempts", "1"];
    sim.set_faults(Faults { error_503: 1.0, ..Faults::default() });
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let before: Vec<u64> = ids.iter().map(|id| calls(&sim, id)).collect();

    // Still 503: the lookups fail, and nothing is sent.
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(ids.iter().map(|id| calls(&sim, id)).collect::<Vec<_>>(), before, "a machine in doubt was called");
    let results_path = dir.path().join("m.results.csv");
    let results = Results::read(&results_path);
    assert_eq!(results.rows.len(), 3);
    for row in &results.rows {
        assert_eq!((row["outcome"].as_str(), row["error_code"].as_str()), ("failed", "InDoubt"), "{row:?}");
        assert!(row["error_message"].contains("--resume"), "{row:?}");
    }

    sim.set_faults(Faults::default());
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&results_path);
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"), "{:?}", results.rows);
    for id in &ids {
        assert_eq!(accepted(&sim, id), 1);
    }
    sim.shutdown().await;
}

/// Item 7: answers lost on the way back (the service may have created the action) are looked up on
/// resume, even after the session that lost them finished normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_of_a_finished_run_are_looked_up_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(33, closing_at_once());
    let ids = offboardable(&cfg, 8);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--no-preflight", "--max-attempts", "1"];
    sim.set_faults(Faults { seed: 3, drop_connection: 1.0, ..Faults::default() });
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(ids.iter().any(|id| accepted(&sim, id) == 1), "no call went through before its answer was lost");

    sim.set_faults(Faults::default());
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in &ids {
        assert_eq!(accepted(&sim, id), 1, "machine {id}");
    }
    sim.shutdown().await;
}

/// Item 7: a resume with machines in doubt needs a read role, and says so before any API call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_machines_in_doubt_needs_the_read_role() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(34, Lifecycle::default());
    let ids = offboardable(&cfg, 3);
    let sim = Simulator::start(SimConfig { faults: Faults { error_503: 1.0, ..Faults::default() }, ..cfg.clone() })
        .await
        .unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--no-preflight", "--max-attempts", "1"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    sim.shutdown().await;

    // The same tenant and app, now without a read permission.
    let sim = Simulator::start(SimConfig { roles: vec!["Machine.Offboard".into()], ..cfg }).await.unwrap();
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("Machine.Read.All"), "{}", out.stderr);
    let stats = sim.stats();
    assert_eq!(stats.total(OFFBOARD) + stats.total(ACTIONS), 0, "{:?}", stats.calls);
    sim.shutdown().await;
}

/// Item 8: the machine was called by an earlier session (its row lost) and a later session wrote another
/// intent for it 11 minutes later: the lookup goes back to the first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_starts_from_the_earliest_intent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(35, closing_at_once());
    let ids = offboardable(&cfg, 3);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--no-preflight", "--comment", "retire {run_id}"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let results_path = dir.path().join("m.results.csv");
    let text = std::fs::read_to_string(&results_path).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("4,")).collect();
    std::fs::write(&results_path, kept.join("\n") + "\n").unwrap();
    let journal = dir.path().join("m.results.csv.journal");
    let (header, mut intents) = read_journal(&journal);
    let now = now_ms();
    intents.push(format!("4,{},{now}", ids[2]));
    intents.push(format!("4,{},{}", ids[2], now + 11 * 60_000));
    write_journal(&journal, &header, &intents);

    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&results_path);
    assert!(results.line(4)["error_message"].contains("not sent again"), "{:?}", results.line(4));
    assert_eq!(accepted(&sim, &ids[2]), 1);
    sim.shutdown().await;
}

/// Item 9: a row torn after a line break inside its quoted error message is cut whole, and the resume
/// finishes (before: every resume failed at compaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_torn_inside_a_quoted_field_is_cut_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(36, Lifecycle::default());
    let ids = offboardable(&cfg, 3);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--no-preflight"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Line 4's row never made it whole: a kill in the middle of its HTML error message.
    let results_path = dir.path().join("m.results.csv");
    let text = std::fs::read_to_string(&results_path).unwrap();
    let mut kept: String = text.lines().filter(|l| !l.starts_with("4,")).map(|l| format!("{l}\n")).collect();
    kept += &format!("4,{},failed,,,502,1,HTTP502,\"<html>\n<body>Bad gateway", ids[2]);
    std::fs::write(&results_path, kept).unwrap();

    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&results_path);
    assert_eq!(results.rows.len(), 3, "{:?}", results.rows);
    assert_eq!(results.line(4)["outcome"], "already_pending", "{:?}", results.line(4));
    sim.shutdown().await;
}

/// Item 10: a new list of the same length under the same path is refused, with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_refuses_a_new_list_of_the_same_length() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(37, Lifecycle::default());
    let ids = offboardable(&cfg, 6);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids[..3]);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = sim.stats().total(OFFBOARD);

    input(dir.path(), &ids[3..]);
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("changed") && out.stderr.contains("--output") && out.stderr.contains("--overwrite"),
        "{}",
        out.stderr
    );
    assert_eq!(sim.stats().total(OFFBOARD), before);
    sim.shutdown().await;
}

/// Item 10: a journal from before the content hash cannot prove the list is the same; rows are then done
/// only where the machine id matches, so a new list of the same length is offboarded, not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_means_the_same_line_and_the_same_machine() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(38, Lifecycle::default());
    let ids = offboardable(&cfg, 6);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids[..3]);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let journal = dir.path().join("m.results.csv.journal");
    let (mut header, intents) = read_journal(&journal);
    if let Some(fields) = header.as_object_mut() {
        fields.remove("input_sha256");
    }
    write_journal(&journal, &header, &intents);

    input(dir.path(), &ids[3..]);
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert_eq!(results.rows.len(), 3);
    for (i, id) in ids[3..].iter().enumerate() {
        let row = results.line(i as u64 + 2);
        assert_eq!((row["machine_id"].as_str(), row["outcome"].as_str()), (id.as_str(), "submitted"));
        assert_eq!(accepted(&sim, id), 1);
    }
    sim.shutdown().await;
}

/// Intents go to the journal ahead of the calls (one write for the next `--concurrency` machines): a
/// `kill -9` leaves intents for machines never called, beyond those in flight. The resume looks each of
/// them up before calling (a lookup, never an offboard twice) and finishes every machine exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_written_ahead_of_a_kill_are_looked_up_and_no_machine_is_offboarded_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(36, closing_at_once());
    let ids = offboardable(&cfg, 30);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let results_path = dir.path().join("m.results.csv");
    // One offboard a second and 8 at a time: the first 8 wait in the limiter, and each one done starts
    // the next, whose write puts the intents of 7 more on record. Six done: the machines waiting for a
    // worker have run down to half and been topped up once.
    let args = ["run", path.to_str().unwrap(), "--yes", "--no-preflight", "--concurrency", "8", "--rate", "1/1s"];
    let mut child = crate::common::command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    crate::common::wait_until("six rows", || crate::common::rows_in(&results_path) >= 6).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (_, intents) = read_journal(&dir.path().join("m.results.csv.journal"));
    let recorded: std::collections::BTreeSet<String> =
        intents.iter().map(|i| i.split(',').nth(1).unwrap().to_string()).collect();
    let finished: std::collections::BTreeSet<String> =
        Results::read(&results_path).rows.iter().map(|r| r["machine_id"].clone()).collect();
    assert!(finished.len() < 8, "killed before the first 8 were done: {finished:?}");
    let in_doubt: Vec<&String> = recorded.difference(&finished).collect();
    assert!(
        in_doubt.len() > 8,
        "intents on record beyond the 8 machines a run of --concurrency 8 has in flight: {} ({intents:?})",
        in_doubt.len()
    );
    // And no more than a run has in hand: the 8 in flight, and at most 8 more on record ahead of them (those
    // waiting for a worker included), each a lookup for the resume.
    assert!(in_doubt.len() <= 16, "intents on record without a row: {} ({intents:?})", in_doubt.len());
    let never_called = in_doubt.iter().filter(|id| calls(&sim, id) == 0).count();
    assert!(never_called > 0, "some machines on record were never called");

    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--no-preflight", "--concurrency", "8"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&results_path);
    assert_eq!(results.rows.len(), 30, "one row per input row");
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"), "{:?}", results.rows);
    // Each machine on record without a row was looked up once, before any call; no other machine was.
    assert_eq!(sim.stats().total(ACTIONS), in_doubt.len() as u64, "{:?}", sim.stats().calls);
    for id in &ids {
        assert_eq!(accepted(&sim, id), 1, "machine {id} offboarded once");
    }
    sim.shutdown().await;
}

/// Seen as a user at real time: a session killed after its call went through but before its row was
/// written; the resume's pre-flight found the machine's action still open and wrote `already_pending`, "no
/// offboard call was made", for an action the run itself had created. A machine in doubt whose open action
/// the pre-flight finds is looked up: its own action makes it `submitted`, and it is not called again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_of_a_resume_takes_the_open_action_of_its_own_lost_call_for_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(37, Lifecycle::default());
    let ids = offboardable(&cfg, 4);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--max-attempts", "1", "--comment", "retire"];
    // The first session: every offboard fails before the service does anything; the journal holds the run.
    sim.set_faults(Faults { error_503: 1.0, actions_only: true, ..Faults::default() });
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    sim.set_faults(Faults::default());

    // What a session killed after its first two calls went through leaves: their actions (open, under the
    // run's comment), their intents, and no rows.
    let journal = dir.path().join("m.results.csv.journal");
    let (header, _) = read_journal(&journal);
    let comment = header["resolved_comment"].as_str().unwrap_or("retire").to_string();
    let mut intents = Vec::new();
    for (i, id) in ids.iter().enumerate().take(2) {
        intents.push(format!("{},{id},{}", i + 2, now_ms()));
        let (status, _) =
            post_as_demo_app(&sim, &format!("/api/machines/{id}/offboard"), serde_json::json!({ "Comment": comment }))
                .await;
        assert_eq!(status, 201);
    }
    // A third machine has an open action of someone else's: that one stays `already_pending`.
    let (status, _) = post_as_demo_app(
        &sim,
        &format!("/api/machines/{}/offboard", ids[2]),
        serde_json::json!({ "Comment": "other" }),
    )
    .await;
    assert_eq!(status, 201);
    intents.push(format!("4,{},{}", ids[2], now_ms()));
    let results_path = as_left_by_a_kill(dir.path(), &header, &intents);

    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&results_path);
    assert_eq!(results.rows.len(), 4);
    let row = |id: &str| results.rows.iter().find(|r| r["machine_id"] == id).unwrap().clone();
    for id in &ids[..2] {
        let row = row(id);
        assert_eq!(row["outcome"], "submitted", "{row:?}");
        assert!(row["error_message"].contains("not sent again"), "{row:?}");
        assert!(!row["action_id"].is_empty() && !row["computer_dns_name"].is_empty(), "{row:?}");
    }
    assert_eq!(row(&ids[2])["outcome"], "already_pending");
    assert_eq!(row(&ids[3])["outcome"], "submitted");
    for id in &ids {
        assert_eq!(accepted(&sim, id), 1, "machine {id}");
    }
    sim.shutdown().await;
}
