//! The fault matrix: the real binary against a simulator that fails in every way the service does, one
//! fault at a time and all at once. Whatever happens, every input row ends in exactly one results row, no
//! machine gets a second accepted offboard call, a row that says the offboard was accepted is one the
//! service accepted, and the exit code tells the truth (0 iff every row ended well, else 3).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mde_sim::{Faults, Fleet, SimConfig, SimStats, Simulator};

use crate::common::{Results, mde, write_file};

/// Machines per run: enough for a 2% fault to happen several times.
const MACHINES: usize = 300;
/// Rows repeating an earlier id (in upper case): `duplicate`, never sent.
const DUPLICATES: usize = 5;
/// Outcomes that leave the exit code at 0.
const OK: [&str; 3] = ["submitted", "already_pending", "duplicate"];

struct Case {
    faults: Faults,
    token_lifetime: Option<Duration>,
    /// Flags beyond the common ones.
    args: &'static [&'static str],
}

struct Ran {
    stats: SimStats,
    by_outcome: BTreeMap<String, usize>,
}

/// Runs the client over `MACHINES` machines (and `DUPLICATES` duplicate rows) with `case`'s faults, and
/// checks the invariants every case shares.
async fn run(case: Case) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SimConfig {
        fleet: Fleet::generate(MACHINES, 11),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        faults: case.faults,
        ..SimConfig::default()
    };
    if let Some(lifetime) = case.token_lifetime {
        config.token_lifetime = lifetime;
    }
    let ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    let sim = Simulator::start(config).await.unwrap();
    // Every machine once, then the first few again in upper case: the same machines.
    let mut text = String::from("MachineId\n");
    for id in &ids {
        text += &format!("{id}\n");
    }
    for id in ids.iter().take(DUPLICATES) {
        text += &format!("{}\n", id.to_uppercase());
    }
    let input = write_file(dir.path(), "m.csv", &text);
    let mut args = vec![
        "run",
        input.to_str().unwrap(),
        "--yes",
        "--rate",
        "100000/1s",
        "--retry-delay",
        "10ms",
        "--concurrency",
        "8",
    ];
    args.extend_from_slice(case.args);
    let out = mde(&sim, &args, "").await;
    let stats = sim.stats();
    sim.shutdown().await;

    let results = Results::read(&dir.path().join("m.results.csv"));
    // Exactly one row per input row: lines 2 ..= MACHINES + DUPLICATES + 1, each once.
    let mut lines: Vec<u64> = results.rows.iter().map(|r| r["line"].parse().unwrap()).collect();
    lines.sort_unstable();
    let expected: Vec<u64> = (2..(MACHINES + DUPLICATES + 2) as u64).collect();
    assert_eq!(lines, expected, "rows lost or repeated\n{}", out.stderr);
    let mut by_outcome = BTreeMap::new();
    for row in &results.rows {
        *by_outcome.entry(row["outcome"].clone()).or_insert(0) += 1;
    }
    assert_eq!(by_outcome.get("duplicate").copied(), Some(DUPLICATES), "{by_outcome:?}");
    // No machine offboarded twice; every row that says accepted was accepted, once.
    let accepted: HashMap<&str, u64> = stats.offboard_calls.iter().map(|(id, c)| (id.as_str(), c.accepted)).collect();
    for (id, calls) in &stats.offboard_calls {
        assert!(calls.accepted <= 1, "machine {id} got {} accepted offboard calls", calls.accepted);
    }
    for row in &results.rows {
        if row["outcome"] == "submitted" || row["outcome"] == "already_pending" {
            let id = row["machine_id"].as_str();
            assert_eq!(accepted.get(id).copied(), Some(1), "row {row:?} says accepted; the service says otherwise");
        }
    }
    assert!(stats.offboard_calls.len() <= MACHINES, "a duplicate was sent");
    // The exit code tells the truth.
    let all_ok = results.rows.iter().all(|r| OK.contains(&r["outcome"].as_str()));
    assert_eq!(out.code, if all_ok { 0 } else { 3 }, "{by_outcome:?}\n{}", out.stderr);
    Ran { stats, by_outcome }
}

fn faults(f: impl FnOnce(&mut Faults)) -> Faults {
    let mut faults = Faults { seed: 5, ..Faults::default() };
    f(&mut faults);
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_503s() {
    let ran = run(Case { faults: faults(|f| f.error_503 = 0.05), token_lifetime: None, args: &[] }).await;
    assert!(ran.stats.faults.error_503 > 0);
    assert_eq!(ran.by_outcome.get("submitted").copied(), Some(MACHINES), "{:?}", ran.by_outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_percent_dropped_connections() {
    let ran = run(Case { faults: faults(|f| f.drop_connection = 0.02), token_lifetime: None, args: &[] }).await;
    assert!(ran.stats.faults.dropped > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_percent_spurious_429s() {
    let ran = run(Case { faults: faults(|f| f.spurious_429 = 0.02), token_lifetime: None, args: &[] }).await;
    assert!(ran.stats.faults.spurious_429 > 0);
    assert_eq!(ran.by_outcome.get("submitted").copied(), Some(MACHINES), "{:?}", ran.by_outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expiring_twice_a_second() {
    // Tokens last half a second (the simulator says `expires_in: 1`, its least, so the client also meets
    // 401s), and each call takes 40 ms: the run of about 1.5 s outlives several tokens.
    let case = Case {
        faults: faults(|f| f.latency = Duration::from_millis(40)),
        token_lifetime: Some(Duration::from_millis(500)),
        args: &[],
    };
    let ran = run(case).await;
    assert!(ran.stats.tokens_issued >= 3, "tokens issued: {}", ran.stats.tokens_issued);
    assert_eq!(ran.by_outcome.get("submitted").copied(), Some(MACHINES), "{:?}", ran.by_outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_past_the_timeout() {
    let case = Case {
        faults: faults(|f| {
            f.slow_share = 0.03;
            f.slow_latency = Duration::from_millis(1500);
        }),
        token_lifetime: None,
        args: &["--timeout", "300ms"],
    };
    let ran = run(case).await;
    assert!(ran.stats.faults.slow > 0);
    // A timed-out offboard had gone through: the lookup before any second call finds its action, so the row
    // says `submitted` (before: the retry found the action open, and the row said `already_pending`, as if
    // someone else had offboarded the machine).
    assert_eq!(ran.by_outcome.get("submitted").copied(), Some(MACHINES), "{:?}", ran.by_outcome);
    assert!(ran.stats.count("GET /api/machineactions", "200") > 0, "no lookup: {:?}", ran.stats.calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_once() {
    let case = Case {
        faults: faults(|f| {
            f.error_503 = 0.05;
            f.drop_connection = 0.02;
            f.spurious_429 = 0.02;
            f.slow_share = 0.02;
            f.slow_latency = Duration::from_millis(1500);
            f.latency = Duration::from_millis(2);
        }),
        token_lifetime: Some(Duration::from_secs(1)),
        args: &["--timeout", "300ms"],
    };
    let ran = run(case).await;
    let f = ran.stats.faults;
    assert!(f.error_503 > 0 && f.dropped > 0 && f.spurious_429 > 0 && f.slow > 0, "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_once_with_two_attempts_some_machines_fail_and_the_exit_code_says_so() {
    let case = Case {
        faults: faults(|f| {
            f.seed = 9;
            f.error_503 = 0.2;
            f.drop_connection = 0.05;
            f.spurious_429 = 0.01;
            f.slow_share = 0.05;
            f.slow_latency = Duration::from_millis(1500);
        }),
        token_lifetime: Some(Duration::from_secs(1)),
        args: &["--timeout", "300ms", "--max-attempts", "2"],
    };
    let ran = run(case).await;
    assert!(ran.by_outcome.get("failed").copied().unwrap_or(0) > 0, "{:?}", ran.by_outcome);
}
