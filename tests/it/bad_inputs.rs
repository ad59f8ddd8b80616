//! The bad-input corpus: files people really feed a tool like this (tests/data/bad-inputs/, and a few
//! generated here because they are huge or random). Each ends in a clear error (exit 1, the message names
//! the file and the problem) before any call to the service, sign-in included, or in exactly the right
//! rows. Never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mde_sim::{Fleet, SimConfig, SimStats, Simulator};

use crate::common::{Output, Results, mde, mde_env, write_file};

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

/// The simulated tenant: the ids the corpus uses.
const FLEET: &str = "\
id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName
1111111111111111111111111111111111111111,ws-0001.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations
2222222222222222222222222222222222222222,ws-0002.contoso.local,Windows10,Active,2026-11-20T10:00:00Z,Workstations
3333333333333333333333333333333333333333,ws-0003.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations
abcdef1111111111111111111111111111111111,ws-0004.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations
";

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-inputs").join(name)
}

/// Runs `mde-offboard run INPUT --yes` against a fresh simulator; returns what it said, the results (if
/// any were written) and what the simulator saw.
async fn run(input: &Path) -> (Output, Option<Results>, SimStats) {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::from_csv(&write_file(dir.path(), "fleet.csv", FLEET)).unwrap();
    let sim = Simulator::start(SimConfig { fleet, ..SimConfig::default() }).await.unwrap();
    let output = dir.path().join("results.csv");
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--yes", "--output", output.to_str().unwrap()], "").await;
    assert!(!out.stderr.contains("panicked"), "{}: panic\n{}", input.display(), out.stderr);
    let stats = sim.stats();
    sim.shutdown().await;
    let results = output.exists().then(|| Results::read(&output));
    (out, results, stats)
}

/// The input is refused: exit 1, a message naming the file and saying `what`, no call at all.
async fn refused(input: &Path, what: &[&str]) {
    let (out, results, stats) = run(input).await;
    let name = input.display().to_string();
    assert_eq!(out.code, 1, "{name}: exit {}\n{}", out.code, out.stderr);
    assert!(out.stderr.contains(&name), "{name}: the message does not name the file\n{}", out.stderr);
    for fragment in what {
        assert!(out.stderr.contains(fragment), "{name}: the message does not say `{fragment}`\n{}", out.stderr);
    }
    assert!(out.stderr.len() < 2000, "{name}: a {} byte message is not a clear one", out.stderr.len());
    assert!(stats.calls.is_empty(), "{name}: the service was called: {:?}", stats.calls);
    assert!(results.is_none(), "{name}: a results file was written");
}

/// The input is read: these outcomes at these lines, and the exit code they call for.
async fn read_as(input: &Path, expected: &[(u64, &str)]) -> SimStats {
    let (out, results, stats) = run(input).await;
    let name = input.display().to_string();
    let results = results.unwrap_or_else(|| panic!("{name}: no results\n{}", out.stderr));
    let mut got: Vec<(u64, String)> =
        results.rows.iter().map(|r| (r["line"].parse().unwrap(), r["outcome"].clone())).collect();
    got.sort();
    let expected: Vec<(u64, String)> = expected.iter().map(|(l, o)| (*l, o.to_string())).collect();
    assert_eq!(got, expected, "{name}\n{}", out.stderr);
    let all_ok = expected.iter().all(|(_, o)| ["submitted", "already_pending", "duplicate"].contains(&o.as_str()));
    assert_eq!(out.code, if all_ok { 0 } else { 3 }, "{name}\n{}", out.stderr);
    // Invalid ids and duplicates are never sent; every valid id once.
    let sent = expected.iter().filter(|(_, o)| o != "invalid_id" && o != "duplicate").count();
    assert_eq!(stats.offboard_calls.len(), sent, "{name}: {:?}", stats.offboard_calls);
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_a_machine_list_are_refused_before_any_call() {
    let cases: &[(&str, &[&str])] = &[
        ("empty.csv", &["is empty"]),
        ("only-header.csv", &["no machines in the input"]),
        ("blank-lines.csv", &["is empty"]),
        ("bom-only.csv", &["is empty"]),
        ("no-id-column.csv", &["no machine id column", "`Computer`, `Owner`"]),
        ("wrong-column-name.csv", &["no machine id column", "`Device Guid`", "--id-column"]),
        ("utf16le-bom.csv", &["UTF-16"]),
        ("utf16be-bom.csv", &["UTF-16"]),
        ("utf16le-no-bom.csv", &["NUL", "not a CSV file"]),
        ("latin1.csv", &["line 2", "UTF-8"]),
        ("nul-byte.csv", &["line 3", "NUL"]),
        ("zip-magic.xlsx.csv", &["not a CSV file"]),
        ("html-page.csv", &["no machine id column"]),
        ("json-array.csv", &["no machine id column"]),
    ];
    for (file, what) in cases {
        refused(&corpus(file), what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_readable_files_give_exactly_the_right_rows() {
    // Separated as spreadsheets save CSV in many regions: the first line tells.
    read_as(&corpus("semicolons.csv"), &[(2, "submitted"), (3, "submitted")]).await;
    read_as(&corpus("tabs.tsv"), &[(2, "submitted")]).await;
    read_as(&corpus("bom-crlf.csv"), &[(2, "submitted"), (3, "submitted")]).await;
    read_as(&corpus("device-inventory-export.csv"), &[(2, "submitted"), (3, "submitted")]).await;
    // Two columns of the same name: the first one.
    read_as(&corpus("duplicate-header-columns.csv"), &[(2, "submitted")]).await;
    read_as(&corpus("guids-not-machine-ids.csv"), &[(2, "invalid_id"), (3, "invalid_id")]).await;
    read_as(
        &corpus("headerless-with-junk.csv"),
        &[(1, "submitted"), (2, "invalid_id"), (4, "submitted"), (5, "invalid_id")],
    )
    .await;
    read_as(&corpus("ids-with-spaces.csv"), &[(2, "submitted"), (3, "submitted"), (4, "invalid_id")]).await;
    read_as(&corpus("quoted-newlines.csv"), &[(2, "submitted"), (4, "submitted"), (5, "submitted")]).await;
    read_as(&corpus("ragged-columns.csv"), &[(2, "submitted"), (3, "invalid_id"), (4, "submitted")]).await;
    // A quote never closed runs to the end of the file: the id and the line break after it are one cell.
    read_as(&corpus("unterminated-quote.csv"), &[(2, "submitted"), (3, "submitted")]).await;
    // Upper case is the same machine: sent once, in lower case.
    let stats = read_as(&corpus("uppercase-ids.csv"), &[(2, "submitted"), (3, "submitted"), (4, "duplicate")]).await;
    assert!(stats.offboard_calls.contains_key("abcdef1111111111111111111111111111111111"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_directories_and_random_bytes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    refused(&dir.path().join("no-such-file.csv"), &["cannot open"]).await;
    refused(dir.path(), &["cannot read"]).await;
    // Random bytes, seeded: whatever they hold, a clear refusal.
    for seed in 0..3 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let garbage: Vec<u8> = (0..65_536).map(|_| rng.u8(..)).collect();
        let path = dir.path().join(format!("garbage-{seed}.csv"));
        std::fs::write(&path, garbage).unwrap();
        refused(&path, &["not"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_field_is_refused_with_a_short_message() {
    let dir = tempfile::tempdir().unwrap();
    let long = "f".repeat(10 << 20);
    // Inside a list (once one invalid row, echoed whole: a 10 MB results row): not a machine list.
    let path = write_file(dir.path(), "long-cell.csv", &format!("MachineId\n{A}\n{long}\n{B}\n"));
    refused(&path, &["line 3", "not a machine list"]).await;
    // As the header: refused, and the message does not quote it.
    let path = write_file(dir.path(), "long-header.csv", &format!("{long}\n{A}\n"));
    refused(&path, &["line 1", "not a machine list"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_duplicates_make_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::with_capacity(42 * 1_000_001);
    text.push_str("MachineId\n");
    for _ in 0..1_000_000 {
        text.push_str(A);
        text.push('\n');
    }
    let path = write_file(dir.path(), "million.csv", &text);
    drop(text);
    let (out, results, stats) = run(&path).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = results.unwrap();
    assert_eq!(results.rows.len(), 1_000_000);
    let counts = results.rows.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, r| {
        *m.entry(r["outcome"].as_str()).or_default() += 1;
        m
    });
    assert_eq!(counts, BTreeMap::from([("duplicate", 999_999), ("submitted", 1)]));
    assert_eq!(stats.offboard_calls.len(), 1);
    assert_eq!(stats.offboard_calls[A].calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_temporary_directory_is_named_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::from_csv(&write_file(dir.path(), "fleet.csv", FLEET)).unwrap();
    let sim = Simulator::start(SimConfig { fleet, ..SimConfig::default() }).await.unwrap();
    let input = write_file(dir.path(), "machines.csv", &format!("MachineId\n{A}\n{B}\n"));
    let missing = dir.path().join("no-such-dir");
    let missing = missing.to_str().unwrap();
    let output = dir.path().join("results.csv");
    let args = ["run", input.to_str().unwrap(), "--yes", "--output", output.to_str().unwrap()];
    let out = mde_env(&sim, dir.path(), &args, "", &[("TMPDIR", missing), ("TMP", missing), ("TEMP", missing)]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    for said in ["machines.csv", "temporary file", missing, "TMPDIR"] {
        assert!(out.stderr.contains(said), "the message does not say `{said}`:\n{}", out.stderr);
    }
    assert!(sim.stats().calls.is_empty(), "the service was called: {:?}", sim.stats().calls);
    assert!(!output.exists());
    sim.shutdown().await;
}

/// A results file whose `line` column holds a huge number (a damaged or hand-edited file) is refused by
/// `--resume`: exit 1, the file, the row and the number named, never a panic or an allocation the size of the
/// number. `track` does not go by line numbers: it tracks such a file, and keeps the row as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_with_a_huge_line_number_is_refused_by_resume_and_tracked_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::from_csv(&write_file(dir.path(), "fleet.csv", FLEET)).unwrap();
    let sim = Simulator::start(SimConfig { fleet, ..SimConfig::default() }).await.unwrap();
    let input = write_file(dir.path(), "machines.csv", &format!("MachineId\n{A}\n{B}\n"));
    let output = dir.path().join("results.csv");
    let run = ["run", input.to_str().unwrap(), "--yes", "--output", output.to_str().unwrap()];
    let out = mde_env(&sim, dir.path(), &run, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let written = std::fs::read_to_string(&output).unwrap();
    let resume = [&run[..], &["--resume"]].concat();
    for huge in ["18446744073709551615", "1000000000000", "4294967296", "0"] {
        // The row of line 3 now names line `huge`, and is failed: a resume would retry it.
        let damaged: String = written
            .lines()
            .map(|row| match row.strip_prefix("3,") {
                Some(rest) => format!("{huge},{}\n", rest.replacen(",submitted,", ",failed,", 1)),
                None => format!("{row}\n"),
            })
            .collect();
        assert_ne!(damaged, written);
        std::fs::write(&output, &damaged).unwrap();
        let out = mde_env(&sim, dir.path(), &resume, "", &[]).await;
        assert!(!out.stderr.contains("panicked") && !out.stderr.contains("memory allocation"), "{}", out.stderr);
        assert_eq!(out.code, 1, "line {huge}: {}", out.stderr);
        let row = if damaged.lines().nth(1).unwrap().starts_with(huge) { "row 2" } else { "row 3" };
        for said in ["results.csv", row, &format!("`{huge}`"), "not an input line number"] {
            assert!(out.stderr.contains(said), "line {huge}: the message does not say `{said}`:\n{}", out.stderr);
        }
        assert!(out.stderr.len() < 2000, "{}", out.stderr);
        assert_eq!(std::fs::read_to_string(&output).unwrap(), damaged, "the refused file is left as it was");

        let out = mde_env(&sim, dir.path(), &["track", output.to_str().unwrap(), "--once"], "", &[]).await;
        assert!(!out.stderr.contains("panicked") && !out.stderr.contains("memory allocation"), "{}", out.stderr);
        assert!([0, 3].contains(&out.code), "track, line {huge}: exit {}\n{}", out.code, out.stderr);
        let tracked = std::fs::read_to_string(&output).unwrap();
        assert!(tracked.lines().any(|row| row.starts_with(&format!("{huge},"))), "{tracked}");
    }
    assert!(sim.stats().offboard_calls.values().all(|c| c.calls == 1), "{:?}", sim.stats().offboard_calls);
    sim.shutdown().await;
}

/// Durations and periods too long to mean anything: a clear refusal before any call, never a panic (the rate
/// limiter refuses periods past 584 years; an instant plus 500 billion years overflows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_periods_and_durations_are_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::from_csv(&write_file(dir.path(), "fleet.csv", FLEET)).unwrap();
    let sim = Simulator::start(SimConfig { fleet, ..SimConfig::default() }).await.unwrap();
    let input = write_file(dir.path(), "machines.csv", &format!("MachineId\n{A}\n"));
    let results =
        write_file(dir.path(), "old.results.csv", &format!("{}\n", mde_offboard::files::results::COLUMNS.join(",")));
    let (input, results) = (input.to_str().unwrap(), results.to_str().unwrap());
    let output = dir.path().join("results.csv");
    let run = |extra: &'static [&'static str]| {
        let mut args = vec!["run", input, "--yes", "--output", output.to_str().unwrap()];
        args.extend_from_slice(extra);
        args
    };
    let cases: Vec<(Vec<&str>, i32, &[&str])> = vec![
        // A flag: a usage error naming it (from the config file: exit 1, naming the key).
        (run(&["--rate", "1/600y"]), 2, &["--rate", "1/600y", "longer than a day"]),
        (run(&["--rate", "100/1m", "--rate", "1500/500000000000y"]), 2, &["longer than a day"]),
        // A flag clap checks: exit 2.
        (run(&["--wait", "--wait-timeout", "500000000000y"]), 2, &["--wait-timeout", "30 days"]),
        (run(&["--wait", "--poll-interval", "600y"]), 2, &["--poll-interval", "30 days"]),
        (vec!["track", results, "--wait-timeout", "500000000000y"], 2, &["--wait-timeout", "30 days"]),
        (vec!["track", results, "--poll-interval", "31d"], 2, &["--poll-interval", "30 days"]),
    ];
    for (args, code, says) in cases {
        let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
        assert!(!out.stderr.contains("panicked"), "{args:?}: panic\n{}", out.stderr);
        assert_eq!(out.code, code, "{args:?}\n{}", out.stderr);
        for said in says {
            assert!(out.stderr.contains(said), "{args:?}: the message does not say `{said}`\n{}", out.stderr);
        }
        assert!(!output.exists(), "{args:?}: a results file was written");
    }
    assert!(sim.stats().calls.is_empty(), "the service was called: {:?}", sim.stats().calls);
    // The longest period allowed is taken, and so is the longest wait (no action to wait for here).
    let out = mde_env(&sim, dir.path(), &run(&["--rate", "100/1d"]), "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = mde_env(&sim, dir.path(), &["track", results, "--wait-timeout", "30d"], "", &[]).await;
    assert!(!out.stderr.contains("panicked") && out.code != 2, "{}", out.stderr);
    sim.shutdown().await;
}
