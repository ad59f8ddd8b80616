//! The figures of BENCHMARKS.md, reproducible with one command each:
//!
//! ```sh
//! cargo bench --bench proof -- pacing     # wall time / earliest schedule, and 429s
//! cargo bench --bench proof -- speed      # machines per second and client CPU per machine, and as ratios to a bare client
//! cargo bench --bench proof -- instructions  # instructions a machine (valgrind's callgrind), the tool's and the bare client's
//! cargo bench --bench proof -- memory        # peak RSS for 10k, 100k and 1M rows (fleets as large)
//! cargo bench --bench proof -- memory-found  # peak RSS for 1M rows against an inventory of 30k
//! cargo bench --bench proof -- economy       # API calls per machine
//! cargo bench --bench proof -- select        # select's reads at 10k and 100k, memory of --duplicates at 1M
//! cargo bench --bench proof -- scopes        # 1,500 and 1,700 machines: per API, per app, a background client
//! cargo bench --bench proof -- tenants       # 100 tenants of 1,500 machines in one run, against one tenant
//! cargo bench --bench proof -- tenants-tracking  # 20 tenants, alone and beside one tracking a million rows
//! cargo bench --bench proof -- all           # everything (about 25 minutes on 2 cores)
//! ```
//!
//! `--runs N` sets how many runs each figure takes the median of (default 5; 3 for memory and pacing).
//!
//! The simulator runs in its own process (`mde-offboard simulate --listen 127.0.0.1:0`), so the client's
//! CPU time and peak RSS are the client's alone: each client run is a child process reaped with
//! `wait4`, whose rusage is exactly that process's. Both are the release build that `cargo bench` makes.
//!
//! The speed figure's baseline, a bare `reqwest` client making the same offboard calls (see [`baseline`]), is
//! this harness run as a child process with a hidden subcommand, so it is measured exactly like the tool.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mde_offboard::commands::tenants::{tenant_results, tenants_dir};
use mde_offboard::defender::limiter::earliest_schedule;
use mde_offboard::settings::Rate;
use mde_sim::{self as sim, Fleet, SimStats};

const BIN: &str = env!("CARGO_BIN_EXE_mde-offboard");
const FLEET_SEED: u64 = 7;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let [hidden, n, path] = &args[..]
        && hidden == IDS_COMMAND
    {
        write_ids(n.parse().expect("a count"), Path::new(path));
        return;
    }
    if let [hidden, rest @ ..] = &args[..]
        && hidden == TENANTS_COMMAND
    {
        // Figure 7's list of tenants FIRST.. (COUNT of them) of N machines, with a big tenant of MACHINES
        // listed ROWS times if given, written in a child process (see `harness_peak_rss_kib`) or for running
        // the client by hand: its path on stdout.
        let number = |s: &String| s.parse::<usize>().expect("a count");
        let (first, count, n, dir, big) = match rest {
            [first, count, n, dir] => (number(first), number(count), number(n), dir, None),
            [first, count, n, dir, machines, rows] => {
                (number(first), number(count), number(n), dir, Some((number(machines), number(rows))))
            }
            _ => panic!("usage: {TENANTS_COMMAND} FIRST COUNT N DIR [BIG_MACHINES BIG_ROWS]"),
        };
        println!("{}", tenants_file(Path::new(dir), first..first + count, n, big).display());
        return;
    }
    if let [hidden, url, input, concurrency] = &args[..]
        && hidden == BASELINE_COMMAND
    {
        std::process::exit(baseline(url, Path::new(input), concurrency.parse().expect("a concurrency")));
    }
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>().expect("--runs N takes a whole number"));
    let figure = args.iter().find(|a| !a.starts_with("--") && a.parse::<usize>().is_err()).map(String::as_str);
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!("# mde-offboard benchmarks ({})", machine());
    match figure.unwrap_or("all") {
        "pacing" => pacing(dir.path(), runs.unwrap_or(3)),
        "speed" => speed(dir.path(), runs.unwrap_or(5)),
        "instructions" => instructions(dir.path()),
        "memory" => memory(dir.path(), runs.unwrap_or(3)),
        "memory-found" => memory_found(dir.path(), runs.unwrap_or(3)),
        "memory-track" => memory_track(dir.path(), runs.unwrap_or(3)),
        "economy" => economy(dir.path()),
        "select" => select(dir.path(), runs.unwrap_or(3)),
        "scopes" => scopes(dir.path(), runs.unwrap_or(1)),
        "tenants" => tenants(dir.path(), runs.unwrap_or(1)),
        "tenants-tracking" => {
            let (config, ideal) = (tenants_config(dir.path(), TENANTS), tenant_schedule());
            tenants_tracking(dir.path(), runs.unwrap_or(1), &config, ideal)
        }
        "all" => {
            // Memory first: see `harness_peak_rss`.
            memory(dir.path(), runs.unwrap_or(3));
            memory_found(dir.path(), runs.unwrap_or(3));
            memory_track(dir.path(), runs.unwrap_or(3));
            speed(dir.path(), runs.unwrap_or(5));
            instructions(dir.path());
            pacing(dir.path(), runs.unwrap_or(3));
            economy(dir.path());
            select(dir.path(), runs.unwrap_or(3));
            scopes(dir.path(), runs.unwrap_or(1));
            tenants(dir.path(), runs.unwrap_or(1));
        }
        other => {
            eprintln!(
                "unknown figure `{other}`: pacing, speed, instructions, memory, memory-found, memory-track, economy, \
                 select, scopes, tenants, tenants-tracking or all"
            );
            std::process::exit(2);
        }
    }
}

/// Figure 1: a paced run against the simulator enforcing the default quotas, time-scaled 100 times
/// (100/600ms and 1500/36s), with 5 ms of latency: wall time over the earliest schedule, and 429s.
///
/// Twice per size: `--no-preflight` (the offboard calls alone), and the default real run, whose pre-flight
/// reads go through the same limiter first; its earliest schedule is that of every API call the run made
/// (offboards + reads, counted by the simulator), as if the reads could overlap like the offboards (they
/// run one after the other: a few latencies, 15 ms here, that the ratio counts against the tool). Both
/// sides count every call against one budget (`--quota-scope app`), the strictest reading, so the reads
/// are in the offboards' windows; figure 6 ([`scopes`]) runs the default, a budget per API.
fn pacing(dir: &Path, runs: usize) {
    let rates: Vec<Rate> = ["100/600ms", "1500/36s"].iter().map(|r| r.parse().unwrap()).collect();
    let latency = Duration::from_millis(5);
    let concurrency = 4;
    println!("\n## Pacing: quotas 100/600ms + 1500/36s (the real ones, 100x faster), latency 5 ms, concurrency 4");
    println!(
        "| machines | mode | API calls | earliest schedule | wall (median of {runs}) | ratio (median) | ratios | 429s (total) | max offered per window |"
    );
    println!("|---:|---|---:|---:|---:|---:|---|---:|---|");
    for n in [250usize, 1500, 3000] {
        let input = id_file(dir, n);
        for (name, extra) in
            [("offboards only (--no-preflight)", &["--no-preflight"][..]), ("with pre-flight (default)", &[])]
        {
            let (mut walls, mut ideals, mut throttled, mut offered, mut calls) =
                (Vec::new(), Vec::new(), 0, Vec::new(), 0);
            for _ in 0..runs {
                // Tokens of 2 h service time (72 s here): a real token of about an hour outlives the client's
                // one-minute floor on renewals (`TOKEN_KEPT_MIN`); an hour at 100x (36 s) would not, and its
                // expiry would cost a 401 per worker, which no real run pays.
                let sim = SimProcess::start(
                    n,
                    &["--time-scale", "100", "--latency", "5ms", "--token-lifetime", "2h", "--quota-scope", "app"],
                );
                let mut args =
                    vec!["--rate", "100/600ms", "--rate", "1500/36s", "--concurrency", "4", "--quota-scope", "app"];
                args.extend(extra);
                let out = client(&sim, &input, dir, &args);
                out.check(n);
                let stats = sim.stats();
                throttled += stats.throttled;
                offered = stats.max_in_window.iter().map(|w| format!("{}/{}", w.max_offered, w.limit)).collect();
                // Answered calls: a 429 is not a call the schedule has to fit.
                calls = api_calls(&stats, "/api/") - stats.throttled;
                ideals.push(earliest_schedule(&rates, calls, concurrency, latency));
                walls.push(out.wall);
            }
            let ratios: Vec<f64> =
                walls.iter().zip(&ideals).map(|(w, ideal)| w.as_secs_f64() / ideal.as_secs_f64()).collect();
            println!(
                "| {n} | {name} | {calls} | {:.2} s | {:.2} s | **{:.3}** | {} | {throttled} | {} |",
                median_duration(&ideals).as_secs_f64(),
                median_duration(&walls).as_secs_f64(),
                median(&ratios),
                ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", "),
                offered.join(", ")
            );
        }
    }
}

/// Figure 6: how the quotas are counted, for 1,500 and 1,700 machines with the pre-flight on (the default),
/// the documented quotas 100 times faster as in figure 1, the client at its defaults (a budget per API).
///
/// - **per API**: the simulator counts per API too. The earliest schedule is the offboards' alone (the
///   reads spend other budgets); target: at most 1.03.
/// - **per app**: the simulator counts every call against one budget. The run meets a 429, switches to one
///   budget and keeps to it: the 429s are at most the calls in flight at the switch (4), none after. The
///   earliest schedule is that of every call under one budget (offboards + reads); what the run takes
///   beyond it is the switch's cost.
/// - **background 30%**: another client spends 450 of the hour's 1,500 calls (`--background-rate 450/1h`,
///   evenly spaced; 7.5 of the minute's 100) from the offboards' budget. The earliest schedule is the
///   offboards' under the quota left (92 a minute, 1,050 an hour); target: every machine done, the 429s
///   counted, at most 1.15.
fn scopes(dir: &Path, runs: usize) {
    let rates: Vec<Rate> = ["100/600ms", "1500/36s"].iter().map(|r| r.parse().unwrap()).collect();
    let left: Vec<Rate> = ["92/600ms", "1050/36s"].iter().map(|r| r.parse().unwrap()).collect();
    let latency = Duration::from_millis(5);
    let concurrency = 4;
    println!(
        "\n## Quota scopes: quotas 100/600ms + 1500/36s (100x faster), latency 5 ms, concurrency 4, pre-flight on"
    );
    println!(
        "| machines | simulator counts | API calls answered | 429s | run's quotas at the end | earliest schedule | wall (median of {runs}) | ratio (median) |"
    );
    println!("|---:|---|---:|---:|---|---:|---:|---:|");
    let cases: [(&str, &[&str]); 3] = [
        ("per API", &["--quota-scope", "api"]),
        ("per app", &["--quota-scope", "app"]),
        ("per API, background 30%", &["--quota-scope", "api", "--background-rate", "450/1h"]),
    ];
    for n in [1500usize, 1700] {
        let input = id_file(dir, n);
        for (name, sim_args) in cases {
            let (mut walls, mut ideals, mut throttled, mut calls, mut quotas) = (vec![], vec![], 0, 0, String::new());
            for _ in 0..runs {
                let mut args = vec!["--time-scale", "100", "--latency", "5ms", "--token-lifetime", "2h"];
                args.extend(sim_args);
                let sim = SimProcess::start(n, &args);
                let summary = dir.join("summary.json");
                let summary_arg = summary.to_str().expect("a UTF-8 path");
                let args =
                    ["--rate", "100/600ms", "--rate", "1500/36s", "--concurrency", "4", "--summary-json", summary_arg];
                let out = client(&sim, &input, dir, &args);
                out.check(n);
                let stats = sim.stats();
                throttled += stats.throttled;
                calls = api_calls(&stats, "/api/") - stats.throttled;
                let offboards = api_calls(&stats, "/offboard") - stats.count("POST /api/machines/{id}/offboard", "429");
                let json: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&summary).expect("the summary JSON")).expect("JSON");
                quotas = format!(
                    "{}{}, {}% kept",
                    json["quota_scope"].as_str().unwrap_or("?"),
                    if json["quota_scope_switched"].as_bool() == Some(true) { " (switched)" } else { "" },
                    json["quota_share_percent"]
                );
                let ideal = match name {
                    "per API" => earliest_schedule(&rates, offboards, concurrency, latency),
                    "per app" => earliest_schedule(&rates, calls, concurrency, latency),
                    _ => earliest_schedule(&left, offboards, concurrency, latency),
                };
                ideals.push(ideal);
                walls.push(out.wall);
            }
            let ratios: Vec<f64> =
                walls.iter().zip(&ideals).map(|(w, ideal)| w.as_secs_f64() / ideal.as_secs_f64()).collect();
            println!(
                "| {n} | {name} | {calls} | {throttled} | {quotas} | {:.2} s | {:.2} s | **{:.3}** |",
                median_duration(&ideals).as_secs_f64(),
                median_duration(&walls).as_secs_f64(),
                median(&ratios),
            );
        }
    }
    println!(
        "(targets: per API at most 1.03; per app, at most 4 429s (the calls in flight at the switch); background, at most 1.15)"
    );
}

/// Figure 7: many tenants in one run. 100 tenants (and 20) of 1,500 machines each (a list of 150,000 rows with a
/// `TenantId` column), the simulator serving them behind one address (`simulate --tenants 100`), each with
/// the documented quotas 10 times faster, counted per API, 5 ms of latency; the client at its defaults
/// (pre-flight on, concurrency 4 per tenant) with `run.tenant_concurrency = 100`. Against one tenant's
/// 1,500 machines run alone on the same simulator: the wall over one tenant's earliest schedule for its
/// offboards (target: at most 1.05), the 429s of every tenant (target: none), the client's peak RSS (target:
/// flat) and CPU per machine (target: within 10% of one tenant's). Beside the wall, the pacing as the
/// service saw it: the slowest tenant's offboards, from its first action created to its last.
///
/// 10 times faster, not the 100 of figure 1: at 100 times, 100 tenants ask this 2-core machine, which runs
/// the simulator too, for 17,400 calls a second, and the figure measures the machine's throughput rather
/// than the pacing (BENCHMARKS.md gives both).
///
/// Then [`tenants_tracking`].
fn tenants(dir: &Path, runs: usize) {
    const N: usize = TENANT_MACHINES;
    let ideal = tenant_schedule();
    println!(
        "\n## Many tenants: {TENANTS} tenants of {N} machines, quotas {} per tenant and API (10x faster), latency 5 ms, concurrency 4 per tenant",
        TENANT_RATES.join(" + ")
    );
    println!(
        "| run | machines | 429s | one tenant's earliest schedule | wall (median of {runs}) | wall / earliest | slowest tenant's offboards, first to last | / earliest | client CPU per machine | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let config = tenants_config(dir, TENANTS);
    let inputs = [
        (id_file(dir, N), 1usize),
        (tenants_list(dir, 0, 20, N, None), 20),
        (tenants_list(dir, 0, TENANTS, N, None), TENANTS),
    ];
    let mut cpu_one = 0.0;
    for (input, tenants) in &inputs {
        let (input, tenants) = (input, *tenants);
        let name = if tenants == 1 { "one tenant".to_string() } else { format!("{tenants} tenants") };
        let (mut walls, mut spans, mut cpus, mut rss, mut throttled) = (vec![], vec![], vec![], vec![], 0);
        for _ in 0..runs {
            let sim = SimProcess::start(N, &tenant_sim_args(tenants, &[]));
            let out = client(&sim, input, dir, &tenant_run_args(&config, &[]));
            out.check(tenants * N);
            let stats: Vec<SimStats> = (0..tenants).map(|k| sim.tenant_stats(&tenant_name(k))).collect();
            throttled += stats.iter().map(|s| s.throttled).sum::<u64>();
            spans.push(slowest_offboards(&stats));
            walls.push(out.wall);
            cpus.push(out.cpu.as_secs_f64() / (tenants * N) as f64);
            rss.push(out.max_rss_kib as f64 / 1024.0);
        }
        let cpu = median(&cpus);
        if tenants == 1 {
            cpu_one = cpu;
        }
        let (wall, span) = (median_duration(&walls), median_duration(&spans));
        println!(
            "| {name} | {} | {throttled} | {:.2} s | {:.2} s | **{:.3}** | {:.2} s | **{:.3}** | {:.1} µs ({:.2}x one tenant's) | {:.1} MiB |",
            tenants * N,
            ideal.as_secs_f64(),
            wall.as_secs_f64(),
            wall.as_secs_f64() / ideal.as_secs_f64(),
            span.as_secs_f64(),
            span.as_secs_f64() / ideal.as_secs_f64(),
            cpu * 1e6,
            cpu / cpu_one,
            median(&rss)
        );
    }
    println!("(targets: ratio at most 1.05, zero 429s, memory flat, CPU per machine within 10% of one tenant's)");
    println!(
        "(floor of the RSS figures, the harness's own peak RSS: {:.1} MiB)",
        harness_peak_rss_kib() as f64 / 1024.0
    );
    tenants_tracking(dir, runs, &config, ideal);
}

/// Figure 7, tracking beside the others: does a tenant whose results file holds a million rows, tracked by
/// `run --wait`, slow the other tenants' pacing? 20 tenants of 1,500 machines each, run with `--wait`, alone
/// and then beside one more tenant listing 1,000,000 rows (100 machines, each listed 10,000 times: the
/// duplicates are rows too). That tenant's offboards are done in the first second; then it tracks its 100
/// actions while the others offboard, and each pass that sees a status change rewrites its million-row
/// results file, as its run began by scanning and sorting its million-row list. The actions change status
/// 10 s and 20 s after they are created and time out at 30 s (service time 100 s, 100 s, 300 s at 10x), and
/// the client passes at most once a second. Target: the others' pacing (the slowest tenant's first to last
/// offboard, as the simulator saw it) no slower beside the tracking tenant than alone, and zero 429s.
fn tenants_tracking(dir: &Path, runs: usize, config: &str, ideal: Duration) {
    const OTHERS: usize = 20;
    const N: usize = TENANT_MACHINES;
    const HEAVY_ROWS: usize = 1_000_000;
    const HEAVY_MACHINES: usize = 100;
    println!(
        "\n## Many tenants, one tracking a million rows: {OTHERS} tenants of {N} machines with `--wait`, alone and beside a tenant listing {HEAVY_ROWS} rows ({HEAVY_MACHINES} machines)"
    );
    println!(
        "| run | rows | 429s | wall (median of {runs}) | the {OTHERS} tenants' slowest offboards, first to last | / one tenant's earliest ({:.2} s) | the big tenant's action lists (pre-flight, then a page per tracking pass) | its results file | client peak RSS |",
        ideal.as_secs_f64()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let others = 1..=OTHERS;
    let lifecycle = ["--pending-for", "100s", "--in-progress-for", "100s", "--action-timeout", "300s"];
    let wait = ["--wait", "--poll-interval", "1s", "--wait-timeout", "10m"];
    let cases = [
        (format!("{OTHERS} tenants"), tenants_list(dir, 1, OTHERS, N, None), OTHERS * N),
        (
            format!("{OTHERS} tenants + one of {HEAVY_ROWS} rows"),
            tenants_list(dir, 1, OTHERS, N, Some((HEAVY_MACHINES, HEAVY_ROWS))),
            OTHERS * N + HEAVY_ROWS,
        ),
    ];
    for (name, input, rows) in &cases {
        let (mut walls, mut spans, mut passes, mut rss, mut throttled) = (vec![], vec![], vec![], vec![], 0);
        let mut heavy_file = 0;
        for _ in 0..runs {
            let sim = SimProcess::start(N, &tenant_sim_args(OTHERS + 1, &lifecycle));
            let out = client(&sim, input, dir, &tenant_run_args(config, &wait));
            // 3 for the actions the simulator fails (5%) or times out (3%), which tracking shows.
            assert!(matches!(out.code, 0 | 3), "the client exited {}", out.code);
            out.check_code(*rows, out.code);
            let stats: Vec<SimStats> = others.clone().map(|k| sim.tenant_stats(&tenant_name(k))).collect();
            let heavy = sim.tenant_stats(&tenant_name(0));
            throttled += stats.iter().chain([&heavy]).map(|s| s.throttled).sum::<u64>();
            spans.push(slowest_offboards(&stats));
            passes.push(heavy.total("GET /api/machineactions") as f64);
            walls.push(out.wall);
            rss.push(out.max_rss_kib as f64 / 1024.0);
            heavy_file =
                std::fs::metadata(tenant_results(&tenants_dir(&out.output), &tenant_name(0))).map_or(0, |m| m.len());
        }
        let span = median_duration(&spans);
        println!(
            "| {name} | {rows} | {throttled} | {:.2} s | {:.2} s | **{:.3}** | {} | {} | {:.1} MiB |",
            median_duration(&walls).as_secs_f64(),
            span.as_secs_f64(),
            span.as_secs_f64() / ideal.as_secs_f64(),
            if *rows > OTHERS * N { format!("{:.0} list calls", median(&passes)) } else { "-".into() },
            if *rows > OTHERS * N { format!("{:.1} MiB", heavy_file as f64 / (1 << 20) as f64) } else { "-".into() },
            median(&rss)
        );
    }
    println!("(target: the slowest tenant's offboards no slower beside the big tenant than alone, zero 429s)");
    println!(
        "(floor of the RSS figures, the harness's own peak RSS: {:.1} MiB)",
        harness_peak_rss_kib() as f64 / 1024.0
    );
}

/// Figure 7's tenants at most: all at once.
const TENANTS: usize = 100;

/// Figure 7's machines per tenant.
const TENANT_MACHINES: usize = 1500;

/// One tenant's earliest schedule for its offboards in figure 7.
fn tenant_schedule() -> Duration {
    earliest_schedule(&tenant_rates(), TENANT_MACHINES as u64, 4, Duration::from_millis(5))
}

/// The quotas of figure 7's tenants: the documented ones, 10 times faster.
const TENANT_RATES: [&str; 2] = ["100/6s", "1500/360s"];

fn tenant_rates() -> Vec<Rate> {
    TENANT_RATES.iter().map(|r| r.parse().unwrap()).collect()
}

/// A config file letting `tenants` tenants run at once.
fn tenants_config(dir: &Path, tenants: usize) -> String {
    let config = dir.join("tenants-config.toml");
    std::fs::write(&config, format!("[run]\ntenant_concurrency = {tenants}\n")).unwrap();
    config.to_str().expect("a UTF-8 path").to_string()
}

/// The simulator of figure 7: `tenants` tenants, 10 times faster, 5 ms of latency, plus `extra`.
fn tenant_sim_args(tenants: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--time-scale", "10", "--latency", "5ms", "--token-lifetime", "2h"].iter().map(|s| s.to_string()).collect();
    args.extend(["--tenants".to_string(), tenants.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The client of figure 7: told the tenants' quotas, concurrency 4, the config, plus `extra`.
fn tenant_run_args<'a>(config: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--rate", TENANT_RATES[0], "--rate", TENANT_RATES[1], "--concurrency", "4", "--config", config];
    args.extend(extra);
    args
}

/// The longest span from a tenant's first offboard action created to its last, of `stats`' tenants.
fn slowest_offboards(stats: &[SimStats]) -> Duration {
    let span = |s: &SimStats| match (s.first_action_ms, s.last_action_ms) {
        (Some(first), Some(last)) => Duration::from_millis(last - first),
        _ => panic!("a tenant created no action"),
    };
    stats.iter().map(span).max().unwrap_or_default()
}

/// How the list names tenant `k` (from 0): the first by the simulator's tenant id, the others by domain.
fn tenant_name(k: usize) -> String {
    if k == 0 { sim::DEMO_TENANT_ID.to_string() } else { format!("tenant{}.onmicrosoft.com", k + 1) }
}

/// [`tenants_file`] of the `count` tenants from `first`, written by a child process: generating the fleets
/// here would raise the harness's own peak RSS, the floor of every client's figure after it (see
/// [`harness_peak_rss_kib`]).
fn tenants_list(dir: &Path, first: usize, count: usize, n: usize, big: Option<(usize, usize)>) -> PathBuf {
    let exe = std::env::current_exe().expect("the harness's path");
    let mut command = Command::new(exe);
    command.args([TENANTS_COMMAND, &first.to_string(), &count.to_string(), &n.to_string()]).arg(dir);
    if let Some((machines, rows)) = big {
        command.args([machines.to_string(), rows.to_string()]);
    }
    let out = command.stderr(Stdio::inherit()).output().expect("the list's writer starts");
    assert!(out.status.success(), "writing the list of tenants {first}+{count}");
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
}

/// A list of the tenants `tenants` (by number, see [`tenant_name`]) with `n` machines each (the fleets
/// `simulate --tenants` generates), a `TenantId` column beside the ids, the tenants interleaved row by row as
/// an export of many tenants is. With `big` = (machines, rows), tenant 0 is listed too, with `rows` rows
/// naming the first `machines` machines of its fleet in turn, interleaved with the others' while they last.
fn tenants_file(
    dir: &Path,
    tenants: impl Iterator<Item = usize> + Clone,
    n: usize,
    big: Option<(usize, usize)>,
) -> PathBuf {
    let numbers: Vec<usize> = tenants.collect();
    let (first, count) = (numbers.first().copied().unwrap_or(0), numbers.len());
    let big_name = big.map(|(machines, rows)| format!("-big{machines}x{rows}")).unwrap_or_default();
    let path = dir.join(format!("tenants-{first}+{count}x{n}{big_name}.csv"));
    let fleet = |k: usize, n: usize| -> Vec<String> {
        Fleet::generate(n, FLEET_SEED + k as u64).ids().map(str::to_owned).collect()
    };
    let fleets: Vec<(usize, Vec<String>)> = numbers.iter().map(|&k| (k, fleet(k, n))).collect();
    let big_fleet = big.map(|(machines, _)| fleet(0, n).into_iter().take(machines).collect::<Vec<_>>());
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "MachineId,TenantId").unwrap();
    for i in 0..n.max(big.map_or(0, |(_, rows)| rows)) {
        if let (Some(machines), Some((_, rows))) = (&big_fleet, big)
            && i < rows
        {
            writeln!(out, "{},{}", machines[i % machines.len()], tenant_name(0)).unwrap();
        }
        if i < n {
            for (k, fleet) in &fleets {
                writeln!(out, "{},{}", fleet[i], tenant_name(*k)).unwrap();
            }
        }
    }
    out.flush().unwrap();
    path
}

/// Calls the simulator answered on routes containing `part`, whatever their status.
fn api_calls(stats: &SimStats, part: &str) -> u64 {
    stats.calls.iter().filter(|(route, _)| route.contains(part)).flat_map(|(_, m)| m.values()).sum()
}

/// Figure 2: 100,000 machines, simulator without quotas, `--concurrency 64`; with the pre-flight (the
/// default: 10 inventory pages of 10,000 and the open-action lists first) and without. Each run of the tool
/// is paired with a run of the baseline (a bare `reqwest` client making the same offboard calls at the same
/// concurrency, [`baseline`]) against a fresh simulator of its own, one right after the other, so both meet
/// the same load: the tool's figures are given as ratios to the baseline's as well, which carry from one
/// machine to another where absolute speeds do not.
fn speed(dir: &Path, runs: usize) {
    let n = 100_000;
    let concurrency = 64;
    println!("\n## Raw speed: {n} machines, simulator without quotas, --concurrency {concurrency}");
    println!(
        "| mode | run | wall | machines/s | client CPU (user+sys) | CPU per machine | peak RSS | baseline machines/s | baseline CPU per machine | machines/s ratio | CPU ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let input = id_file(dir, n);
    for (name, extra) in [("with pre-flight (default)", &[][..]), ("--no-preflight", &["--no-preflight"])] {
        let (mut rates, mut per_machine, mut rate_ratios, mut cpu_ratios) = (vec![], vec![], vec![], vec![]);
        let (mut base_rates, mut base_per_machine) = (vec![], vec![]);
        for run in 1..=runs {
            let sim = SimProcess::start(n, &["--no-quotas"]);
            let rate_arg = format!("--rate={UNREACHED_RATE}");
            let concurrency_arg = concurrency.to_string();
            let mut args = vec![rate_arg.as_str(), "--concurrency", &concurrency_arg];
            args.extend(extra);
            let out = client(&sim, &input, dir, &args);
            out.check(n);
            drop(sim);
            let sim = SimProcess::start(n, &["--no-quotas"]);
            let base = baseline_run(&sim, &input, concurrency, dir);
            let sim_calls = api_calls(&sim.stats(), "/offboard");
            assert_eq!(sim_calls, n as u64, "the baseline's offboard calls");

            let rate = n as f64 / out.wall.as_secs_f64();
            let us = out.cpu.as_secs_f64() * 1e6 / n as f64;
            let base_rate = n as f64 / base.wall.as_secs_f64();
            let base_us = base.cpu.as_secs_f64() * 1e6 / n as f64;
            println!(
                "| {name} | {run} | {:.2} s | {rate:.0} | {:.2} s | {us:.1} µs | {:.1} MiB | {base_rate:.0} | {base_us:.1} µs | {:.2}x | {:.2}x |",
                out.wall.as_secs_f64(),
                out.cpu.as_secs_f64(),
                out.max_rss_kib as f64 / 1024.0,
                rate / base_rate,
                us / base_us,
            );
            rates.push(rate);
            per_machine.push(us);
            base_rates.push(base_rate);
            base_per_machine.push(base_us);
            rate_ratios.push(rate / base_rate);
            cpu_ratios.push(us / base_us);
        }
        println!(
            "| {name} | **median** | | **{:.0}** | | **{:.1} µs** | | {:.0} | {:.1} µs | **{:.2}x** | **{:.2}x** |",
            median(&rates),
            median(&per_machine),
            median(&base_rates),
            median(&base_per_machine),
            median(&rate_ratios),
            median(&cpu_ratios)
        );
    }
    println!(
        "(targets: a machines/s ratio of at least 0.85x, a CPU ratio of at most 1.2x; ratios are per run, then the median)"
    );
}

/// Figure 2's steady measure: the instructions each client executes for the same offboard calls, counted by
/// valgrind's callgrind (20,000 machines, a fleet of as many, simulator without quotas, `--concurrency 64`).
/// Unlike CPU time, the count is the same whatever else the machine is doing, so the ratios hold from one
/// machine and moment to the next. Skipped, saying so, where valgrind is not installed.
fn instructions(dir: &Path) {
    let n = 20_000;
    let concurrency = 64;
    println!(
        "\n## Instructions a machine (callgrind): {n} machines, simulator without quotas, --concurrency {concurrency}"
    );
    if Command::new("valgrind").arg("--version").stdout(Stdio::null()).status().is_err() {
        println!("(valgrind is not installed: skipped)");
        return;
    }
    let input = id_file(dir, n);
    let callgrind = |name: &str, command: Command| -> f64 {
        let log = dir.join(format!("callgrind.{name}.log"));
        // The client's environment as `command` sets it (both clear theirs), and the PATH valgrind is found on.
        let mut under = Command::new("valgrind");
        under.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        under.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"]).arg(format!("--log-file={}", log.display()));
        under.arg(command.get_program()).args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => under.env(key, value),
                None => under.env_remove(key),
            };
        }
        under.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let status = under.status().expect("valgrind starts");
        assert!(status.success(), "{name} under callgrind exited {status}; its log: {}", log.display());
        let text = std::fs::read_to_string(&log).expect("callgrind's log");
        let collected = text
            .lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .unwrap_or_else(|| panic!("no count in {}", log.display()));
        collected.trim().replace(',', "").parse::<f64>().expect("a count") / n as f64
    };
    let concurrency_arg = concurrency.to_string();
    let rate_arg = format!("--rate={UNREACHED_RATE}");
    let bare = {
        let sim = SimProcess::start(n, &["--no-quotas"]);
        callgrind("bare", baseline_command(&sim, &input, concurrency))
    };
    println!("| client | instructions a machine | ratio to the bare client |");
    println!("|---|---:|---:|");
    println!("| bare client | {:.1} k | 1.00x |", bare / 1000.0);
    for (name, extra) in [("with pre-flight (default)", &[][..]), ("--no-preflight", &["--no-preflight"])] {
        let sim = SimProcess::start(n, &["--no-quotas"]);
        let mut args = vec![rate_arg.as_str(), "--concurrency", &concurrency_arg];
        args.extend(extra);
        let tool = callgrind(name, run_command(&sim, &input, dir, &args).0);
        println!("| {name} | {:.1} k | {:.2}x |", tool / 1000.0, tool / bare);
    }
    println!("(target: a CPU ratio of at most 1.2x, which the CPU time of `speed` measures with the machine's noise)");
}

/// The hidden subcommand that runs [`baseline`] in a child process.
const BASELINE_COMMAND: &str = "__baseline";

/// The speed figure's baseline: the same offboard calls the tool makes, made by a bare `reqwest` client and
/// nothing else, in a child process measured like the tool's (`wait4`).
fn baseline_run(sim: &SimProcess, input: &Path, concurrency: usize, dir: &Path) -> ClientRun {
    let mut command = baseline_command(sim, input, concurrency);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("baseline.stderr")).expect("a stderr file"));
    let run = measured(command, dir.join("baseline.stderr"));
    assert_eq!(run.code, 0, "the baseline exited {}; stderr in {}", run.code, dir.join("baseline.stderr").display());
    run
}

/// The command of the bare client ([`baseline`]): this harness, in a clean environment.
fn baseline_command(sim: &SimProcess, input: &Path, concurrency: usize) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the harness's path"));
    command.args([BASELINE_COMMAND, &sim.url]).arg(input).arg(concurrency.to_string()).env_clear();
    command
}

/// A bare client: reads the ids of `input` (one column under a header), signs in once (client credentials),
/// and posts `POST /api/machines/{id}/offboard` with the same comment for each id, `concurrency` calls at a
/// time, on the same multi-threaded tokio runtime and the same `reqwest` client settings the tool uses on
/// loopback (no TLS roots loaded, a pool as large as the concurrency). Each answer's body is read whole; no
/// limiter, no retries, no results file, no journal, no parsing of the answer. Exit 0 when every call was
/// answered 201.
fn baseline(url: &str, input: &Path, concurrency: usize) -> i32 {
    let ids: Vec<String> = std::fs::read_to_string(input)
        .expect("the input")
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .pool_max_idle_per_host(concurrency)
            .build()
            .expect("a client");
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", sim::DEMO_CLIENT_ID),
            ("client_secret", sim::DEMO_CLIENT_SECRET),
            ("scope", "https://api.securitycenter.microsoft.com/.default"),
        ];
        let token_url = format!("{url}/{}/oauth2/v2.0/token", sim::DEMO_TENANT_ID);
        let answer = http.post(&token_url).form(&form).send().await.expect("sign-in");
        let answer: serde_json::Value = answer.json().await.expect("a token");
        let token = answer["access_token"].as_str().expect("an access token").to_string();

        let ids = std::sync::Arc::new(ids);
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, ids, next, token) = (http.clone(), ids.clone(), next.clone(), token.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    let mut failed = 0u64;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(id) = ids.get(i) else { break failed };
                        let answer = http
                            .post(format!("{url}/api/machines/{id}/offboard"))
                            .bearer_auth(&token)
                            .json(&serde_json::json!({ "Comment": "benchmark" }))
                            .send()
                            .await;
                        match answer {
                            Ok(answer) if answer.status().as_u16() == 201 => {
                                if answer.bytes().await.is_err() {
                                    failed += 1;
                                }
                            }
                            _ => failed += 1,
                        }
                    }
                })
            })
            .collect();
        let mut failed = 0;
        for worker in workers {
            failed += worker.await.expect("a worker");
        }
        if failed > 0 {
            eprintln!("{failed} offboard call(s) were not answered 201");
            1
        } else {
            0
        }
    })
}

/// Figure 3: peak RSS of a real run (with its pre-flight, the default, and without) and of a dry run, for
/// 10k, 100k and 1M rows, each against a fleet of as many machines (so the reads keep every row's machine).
fn memory(dir: &Path, runs: usize) {
    println!("\n## Memory: peak RSS (median of {runs}), simulator without quotas, --concurrency 64");
    memory_rows(dir, runs, &[(10_000, 10_000), (100_000, 100_000), (1_000_000, 1_000_000)]);
}

/// Figure 3b: a million rows of which the inventory has 30,000 (the fleet of 30,000 is the first 30,000 of
/// the fleet of a million), the rest `not_found` (exit 3): what the pre-flight keeps grows with the machines
/// found, not with the rows. Without the pre-flight each of those rows would be an offboard call answered
/// 404, twice: not measured.
fn memory_found(dir: &Path, runs: usize) {
    println!("\n## Memory: peak RSS (median of {runs}), a million rows, an inventory of 30,000");
    memory_rows(dir, runs, &[(1_000_000, 30_000)]);
}

/// One table row per (input rows, fleet size), one column per mode.
fn memory_rows(dir: &Path, runs: usize, sizes: &[(usize, usize)]) {
    let mut modes = modes();
    modes.insert(1, ("real run --no-preflight", vec!["--no-preflight"]));
    println!("| rows | {} |", modes.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(" | "));
    println!("|---:|{}", "---:|".repeat(modes.len()));
    for &(n, fleet) in sizes {
        let input = id_file(dir, n);
        let mut cells = Vec::new();
        for (_, extra) in &modes {
            if fleet < n && extra.contains(&"--no-preflight") {
                cells.push("".into());
                continue;
            }
            let mut rss = Vec::new();
            for _ in 0..runs {
                let sim = SimProcess::start(fleet, &["--no-quotas"]);
                let mut args = vec![format!("--rate={UNREACHED_RATE}"), "--concurrency".into(), "64".into()];
                args.extend(extra.iter().map(|s| s.to_string()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = client(&sim, &input, dir, &args);
                out.check_code(n, if fleet < n { 3 } else { 0 });
                rss.push(out.max_rss_kib as f64 / 1024.0);
            }
            cells.push(format!("{:.1} MiB", median(&rss)));
        }
        let rows = if fleet < n { format!("{n} (inventory of {fleet})") } else { n.to_string() };
        println!("| {rows} | {} |", cells.join(" | "));
    }
    println!("(floor of these figures, the harness's own peak RSS: {:.1} MiB)", harness_peak_rss_kib() as f64 / 1024.0);
}

/// The harness's own peak RSS since it started (`VmHWM`).
///
/// A child's `ru_maxrss` starts at its parent's RSS when it was spawned: `posix_spawn` runs the child on the
/// parent's memory until `exec`, and the kernel keeps that memory's high-water mark as the child's. (For the
/// same reason the harness's own `getrusage` says cargo's size.) So the harness keeps its own memory
/// small, writing the input files from a child process and streaming the results, and prints this floor.
fn harness_peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Figure 4: API calls per machine (sign-in not counted; it is shown apart) at 1,000 and 25,000 machines: the
/// dry run, the real run with and without its pre-flight, `run --wait`, and `track --once` after a run.
///
/// For tracking, the simulator's actions are `Pending` when submitted and final 2 ms later (`--pending-for 1ms
/// --in-progress-for 1ms`, none failing; the actions of inactive machines, which the service leaves pending,
/// end `TimeOut` after `--action-timeout 2ms`, so those runs exit 3): one status pass finds every action
/// final, the least tracking can cost. (With lifecycles of 0 s the offboard's own answer is final, and
/// tracking makes no call at all.)
fn economy(dir: &Path) {
    let mut modes = modes();
    modes.insert(1, ("real run --no-preflight", vec!["--no-preflight"]));
    modes.push(("run --wait", vec!["--wait", "--poll-interval", "100ms"]));
    let lifecycle = ["--no-quotas", "--pending-for", "1ms", "--in-progress-for", "1ms", "--action-timeout", "2ms"];
    let lifecycle = [&lifecycle[..], &["--fail-share", "0", "--timeout-share", "0"]].concat();
    println!("\n## API economy: calls per machine, no faults, simulator without quotas");
    println!("| machines | mode | offboard calls | read calls | API calls | calls per machine | sign-ins |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for n in [1_000usize, 25_000] {
        let input = id_file(dir, n);
        let row = |name: &str, stats: &SimStats| {
            let (api, offboards) = (api_calls(stats, "/api/"), api_calls(stats, "/offboard"));
            println!(
                "| {n} | {name} | {offboards} | {} | {api} | {:.3} | {} |",
                api - offboards,
                api as f64 / n as f64,
                api_calls(stats, "oauth2")
            );
        };
        for (name, extra) in &modes {
            let sim = SimProcess::start(n, &lifecycle);
            let mut args = vec![format!("--rate={UNREACHED_RATE}"), "--concurrency".into(), "16".into()];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = client(&sim, &input, dir, &args);
            out.check_code(n, if extra.contains(&"--wait") { 3 } else { 0 });
            row(name, &sim.stats());
        }
        // `track --once` on the results of a real run: the simulator's counts after the run are subtracted.
        let sim = SimProcess::start(n, &lifecycle);
        let out = client(&sim, &input, dir, &[&format!("--rate={UNREACHED_RATE}"), "--concurrency", "16"]);
        out.check(n);
        let before = sim.stats();
        let code = track_once(&sim, &out.output, dir);
        assert_eq!(code, 3, "track --once exited {code}; stderr in {}", dir.join("client.stderr").display());
        let mut after = sim.stats();
        for (route, by_status) in after.calls.iter_mut() {
            for (status, count) in by_status.iter_mut() {
                *count -= before.calls.get(route).and_then(|m| m.get(status)).copied().unwrap_or(0);
            }
        }
        row("track --once (after a run)", &after);
    }
}

/// A client rate limit no run reaches: the limiter stays in the path (its cost is measured) without pacing.
const UNREACHED_RATE: &str = "1000000/1ms";

/// The run modes measured: a real run (with its pre-flight: the default), and the dry run when this build
/// has it.
fn modes() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut modes = vec![("real run", vec![])];
    let help = Command::new(BIN).args(["run", "--help"]).output().expect("the binary runs");
    if String::from_utf8_lossy(&help.stdout).contains("--dry-run") {
        modes.push(("dry run", vec!["--dry-run"]));
    }
    modes
}

/// A simulator in its own process, killed when dropped.
struct SimProcess {
    child: Child,
    url: String,
    /// Which simulator of the harness's this is (the clients' state directory: see [`client_command`]).
    serial: usize,
}

impl SimProcess {
    /// `mde-offboard simulate` with a generated fleet of `fleet` machines in which every machine can be
    /// offboarded (no forbidden group, no unsupported platform), plus `extra` flags.
    fn start<S: AsRef<std::ffi::OsStr>>(fleet: usize, extra: &[S]) -> SimProcess {
        let mut child = Command::new(BIN)
            .args(["simulate", "--listen", "127.0.0.1:0", "--no-forbidden-groups", "--unsupported-platforms", "none"])
            .args(["--fleet-size", &fleet.to_string(), "--fleet-seed", &FLEET_SEED.to_string()])
            .args(extra)
            .env_remove(mde_offboard::settings::SECRET_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the simulator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("the simulator says where");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        SimProcess { child, url, serial: STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) }
    }

    /// `GET /sim/stats`, over a bare socket, without the calls per machine: kept by the harness, a fleet's
    /// worth of them would raise its RSS, which every client it spawns after inherits (see
    /// [`harness_peak_rss_kib`]).
    fn stats(&self) -> SimStats {
        self.stats_at("/sim/stats?per_machine=no")
    }

    /// `GET /sim/stats?tenant=TENANT`: one tenant's, as [`SimProcess::stats`].
    fn tenant_stats(&self, tenant: &str) -> SimStats {
        self.stats_at(&format!("/sim/stats?tenant={tenant}&per_machine=no"))
    }

    fn stats_at(&self, path: &str) -> SimStats {
        let host = self.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host).expect("the simulator answers");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let body = answer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &answer[i + 4..]).expect("a body");
        serde_json::from_slice(body).expect("stats JSON")
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client run cost.
struct ClientRun {
    wall: Duration,
    /// User plus system CPU time of the client process alone.
    cpu: Duration,
    max_rss_kib: u64,
    code: i32,
    output: PathBuf,
}

impl ClientRun {
    /// Exit 0 and one results row per machine.
    fn check(&self, n: usize) {
        self.check_code(n, 0);
    }

    /// Exit `code` and one results row per machine.
    fn check_code(&self, n: usize, code: i32) {
        if self.code != code {
            let stderr = self.output.with_file_name("client.stderr");
            let stderr = std::fs::read_to_string(stderr).unwrap_or_default();
            panic!("the client exited {}; results in {}\n{stderr}", self.code, self.output.display());
        }
        // Streamed, not read whole: the harness's own memory must stay small (see `harness_peak_rss_kib`).
        let file = std::fs::File::open(&self.output).expect("results");
        let rows = BufReader::new(file).split(b'\n').count() - 1;
        assert_eq!(rows, n, "rows in {}", self.output.display());
    }
}

/// `mde-offboard track RESULTS --once -q` against `sim`: its exit code.
/// Figure 3, tracking: peak RSS of `track --once` on the results of a real run of `n` machines, in a
/// simulator whose actions are final 2 ms after they are created (but for those of inactive machines, which
/// never start), so that the pass updates nearly every row and rewrites the whole file.
fn memory_track(dir: &Path, runs: usize) {
    println!(
        "\n## Memory: peak RSS of `track --once` (median of {runs}), every action final, simulator without quotas"
    );
    println!("| rows | track --once |");
    println!("|---:|---:|");
    let lifecycle = ["--no-quotas", "--pending-for", "1ms", "--in-progress-for", "1ms", "--action-timeout", "1h"];
    let lifecycle = [&lifecycle[..], &["--fail-share", "0", "--timeout-share", "0"]].concat();
    for n in [10_000usize, 100_000, 1_000_000] {
        let input = id_file(dir, n);
        let mut rss = Vec::new();
        for _ in 0..runs {
            let sim = SimProcess::start(n, &lifecycle);
            let args =
                [format!("--rate={UNREACHED_RATE}"), "--concurrency".into(), "64".into(), "--no-preflight".into()];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = client(&sim, &input, dir, &args);
            out.check_code(n, 0);
            let mut command = client_command(&sim, dir);
            command.arg("track").arg(&out.output).args(["--once", "-q", &format!("--rate={UNREACHED_RATE}")]);
            let ClientRun { code, max_rss_kib, .. } = measured(command, out.output.clone());
            // 3: the fleet's inactive machines never start their action.
            assert!(
                matches!(code, 0 | 3),
                "track --once exited {code}; stderr in {}",
                dir.join("client.stderr").display()
            );
            rss.push(max_rss_kib as f64 / 1024.0);
        }
        println!("| {n} | {:.1} MiB |", median(&rss));
    }
}

/// Figure 5: what `mde-offboard select` costs. Reads: a tenant of 10,000 and of 100,000 machines (80% of
/// the Active ones live, as a tenant looks: `simulate --live-share 0.8`), `select --inactive-for 30d` (the
/// API's `$filter` narrows the pages) and `select --duplicates` (the whole inventory); the inventory list
/// calls the simulator counted, and the machines chosen. Memory: peak RSS of `select --duplicates` over a
/// tenant of 1,000,000 machines (median of `runs`), simulator without quotas.
fn select(dir: &Path, runs: usize) {
    println!(
        "
## Select: inventory reads, and the memory of --duplicates"
    );
    println!("| tenant | condition | inventory list calls | machines chosen |");
    println!("|---:|---|---:|---:|");
    for n in [10_000usize, 100_000] {
        for condition in [&["--inactive-for", "30d"][..], &["--duplicates"]] {
            let sim = SimProcess::start(n, &["--no-quotas", "--live-share", "0.8"]);
            let out = select_run(&sim, dir, condition);
            assert_eq!(out.code, 0, "select exited {}; stderr in {}", out.code, dir.join("client.stderr").display());
            let calls = sim.stats().total("GET /api/machines");
            let chosen = std::fs::read_to_string(&out.output).expect("the output").lines().count() - 1;
            println!("| {n} | `{}` | {calls} | {chosen} |", condition.join(" "));
        }
    }
    let n = 1_000_000;
    let mut rss = Vec::new();
    for _ in 0..runs {
        let sim = SimProcess::start(n, &["--no-quotas", "--live-share", "0.8"]);
        let out = select_run(&sim, dir, &["--duplicates"]);
        assert_eq!(out.code, 0, "select exited {}; stderr in {}", out.code, dir.join("client.stderr").display());
        rss.push(out.max_rss_kib as f64 / 1024.0);
    }
    println!(
        "
| tenant | `select --duplicates`, peak RSS (median of {runs}) |"
    );
    println!("|---:|---:|");
    println!("| {n} | {:.1} MiB |", median(&rss));
    println!("(floor of these figures, the harness's own peak RSS: {:.1} MiB)", harness_peak_rss_kib() as f64 / 1024.0);
}

/// Runs `mde-offboard select CONDITION --output FILE -q` against `sim` and measures it with wait4.
fn select_run(sim: &SimProcess, dir: &Path, condition: &[&str]) -> ClientRun {
    let output = dir.join("selected.csv");
    let mut command = client_command(sim, dir);
    command.arg("select").args(condition).args(["--overwrite", "-q", "--output"]).arg(&output);
    measured(command, output)
}

fn track_once(sim: &SimProcess, results: &Path, dir: &Path) -> i32 {
    let mut command = client_command(sim, dir);
    command.arg("track").arg(results).args(["--once", "-q"]);
    command.status().expect("the client starts").code().unwrap_or(-1)
}

/// Runs `mde-offboard run INPUT --yes -q` against `sim` and measures it with wait4.
fn client(sim: &SimProcess, input: &Path, dir: &Path, extra: &[&str]) -> ClientRun {
    let (command, output) = run_command(sim, input, dir, extra);
    measured(command, output)
}

/// `mde-offboard run INPUT --yes -q` against `sim` with `extra`, and the results file it writes.
fn run_command(sim: &SimProcess, input: &Path, dir: &Path, extra: &[&str]) -> (Command, PathBuf) {
    let output = dir.join("results.csv");
    let mut command = client_command(sim, dir);
    command.arg("run").arg(input).args(["--yes", "--overwrite", "-q", "--output"]).arg(&output).args(extra);
    (command, output)
}

/// Starts `command` and reaps it with `wait4`: its wall time, and its own CPU time and peak RSS; `output` is
/// what it writes.
fn measured(mut command: Command, output: PathBuf) -> ClientRun {
    let started = Instant::now();
    // Reaped by `wait4`, which std's `Child` does not know of.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().expect("the client starts");
    let (code, usage) = wait4(&child);
    let wall = started.elapsed();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    ClientRun { wall, cpu: tv(usage.ru_utime) + tv(usage.ru_stime), max_rss_kib: usage.ru_maxrss as u64, code, output }
}

/// The client's command, before its subcommand: the simulator's settings in a clean environment.
fn client_command(sim: &SimProcess, dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("MDE_TENANT_ID", sim::DEMO_TENANT_ID)
        .env("MDE_CLIENT_ID", sim::DEMO_CLIENT_ID)
        .env("MDE_CLIENT_SECRET", sim::DEMO_CLIENT_SECRET)
        .env("MDE_AUTHORITY", &sim.url)
        .env("MDE_API_BASE", &sim.url)
        .env("MDE_COMMENT", "benchmark")
        // Locks of its own: without HOME they would go to the shared temp directory, where two harnesses
        // running at once would refuse each other's runs. One state directory per simulator: a fresh
        // simulator is a fresh service, which counts none of the calls an earlier run's `.calls` file keeps.
        .env("MDE_STATE_DIR", dir.join("state").join(sim.serial.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("client.stderr")).expect("a stderr file"));
    command
}

/// Reaps `child` and returns its exit code and its own resource usage.
fn wait4(child: &Child) -> (i32, libc::rusage) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, and wait4 only writes to the two pointers it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (code, usage)
}

/// The hidden subcommand that writes an input file in a child process (see `harness_peak_rss_kib`).
const IDS_COMMAND: &str = "__write-ids";

/// The hidden subcommand that writes figure 7's list of several tenants (`__write-tenants FIRST COUNT N DIR
/// [BIG_MACHINES BIG_ROWS]`).
const TENANTS_COMMAND: &str = "__write-tenants";

/// A one-column input with the `n` machines of the simulator's fleet of `n`.
fn id_file(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("machines-{n}.csv"));
    if !path.exists() {
        let exe = std::env::current_exe().expect("the harness's path");
        let status = Command::new(exe).args([IDS_COMMAND, &n.to_string()]).arg(&path).status().unwrap();
        assert!(status.success(), "writing {}", path.display());
    }
    path
}

fn write_ids(n: usize, path: &Path) {
    let fleet = Fleet::generate(n, FLEET_SEED);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "MachineId").unwrap();
    for id in fleet.ids() {
        writeln!(out, "{id}").unwrap();
    }
    out.flush().unwrap();
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

fn median_duration(values: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(&values.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()))
}

/// The machine, for the record: CPU model, cores, load.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cpu}, {cores} cores, load average {}", load.join(" "))
}
