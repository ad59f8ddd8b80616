//! Signing in as a person with the device code flow, against the simulator's Entra ID: the code shown, the
//! person approving, declining or never answering, `slow_down` honoured, refresh tokens renewing a run of
//! hours and a refused one stopping it part way, a missing delegated scope refused before any API call, no
//! terminal refused (unless `--yes` and a token cache), and the token cache kept owner-only.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::Duration;

use mde_sim::{DEMO_ACCOUNT, DeviceCode, DeviceCodeAnswer, Fleet, SimConfig, SimStats, Simulator};

use crate::common::{Output, Results, command, rows_in, spawn_at_terminal, summary_json, wait, wait_until, write_file};

const DEVICE_CODE: &str = "POST /{tenant}/oauth2/v2.0/devicecode";
const OFFBOARD: &str = "POST /api/machines/{id}/offboard";
/// No secret: a person signs in.
const NO_SECRET: [(&str, &str); 1] = [("MDE_CLIENT_SECRET", "")];

/// A time-scaled simulator (the device code's 5 s interval lasts 50 ms) with `n` machines, every one
/// offboardable, and an input listing them.
async fn start(n: usize, person: DeviceCode, tune: impl FnOnce(&mut SimConfig)) -> (tempfile::TempDir, Simulator) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SimConfig {
        fleet: Fleet::generate(n, 17),
        time_scale: 100.0,
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        device_code: person,
        ..SimConfig::default()
    };
    tune(&mut config);
    let ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    write_file(dir.path(), "m.csv", &format!("MachineId\n{}\n", ids.join("\n")));
    (dir, Simulator::start(config).await.unwrap())
}

/// `mde-offboard ARGS --device-code` with a person at the terminal.
async fn as_person(sim: &Simulator, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = args.to_vec();
    all.push("--device-code");
    let env: Vec<(&str, &str)> = NO_SECRET.iter().chain(env).copied().collect();
    let (child, terminal) = spawn_at_terminal(command(sim, dir, &all, &env));
    let out = tokio::time::timeout(Duration::from_secs(120), wait(child)).await.expect("the command ends");
    drop(terminal);
    out
}

/// At 3,600 times real time a code would expire in a quarter of a second: these last a minute.
fn hour_long_codes() -> DeviceCode {
    DeviceCode { code_lifetime: Duration::from_secs(60 * 3600), ..DeviceCode::default() }
}

fn api_calls(stats: &SimStats) -> u64 {
    stats.calls.iter().filter(|(route, _)| route.contains(" /api/")).map(|(_, by)| by.values().sum::<u64>()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_the_run_offboards_in_the_persons_name_and_says_who() {
    let (dir, sim) = start(5, DeviceCode::default(), |_| {}).await;
    let out = as_person(&sim, dir.path(), &["run", "m.csv", "--yes", "--summary-json", "s.json"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("open https://microsoft.com/devicelogin in a browser and enter the code "),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains(&format!("Signed in as: {DEMO_ACCOUNT}")), "{}", out.stdout);
    assert_eq!(summary_json(dir.path())["account"], DEMO_ACCOUNT);
    let stats = sim.stats();
    // Two `authorization_pending`, then the token; never sooner than the interval.
    assert_eq!((stats.total(DEVICE_CODE), stats.device_code_polls, stats.polls_too_fast), (1, 3, 0));
    assert_eq!(stats.count(OFFBOARD, "201"), 5);
    // The actions name the person as their requestor.
    let token = crate::common::demo_token(&sim).await;
    let url = format!("{}/api/machineactions", sim.base_url());
    let actions: serde_json::Value =
        reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    let requestors: Vec<&str> =
        actions["value"].as_array().unwrap().iter().filter_map(|a| a["requestor"].as_str()).collect();
    assert_eq!(requestors, vec![DEMO_ACCOUNT; 5]);

    // In JSON logs the code is an event of its own, shown even with -q.
    let out =
        as_person(&sim, dir.path(), &["run", "m.csv", "--yes", "--overwrite", "-q", "--log-format", "json"], &[]).await;
    let event = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["fields"]["kind"] == "device_code")
        .unwrap_or_else(|| panic!("no device_code event: {}", out.stderr));
    assert!(event["fields"]["message"].as_str().unwrap().contains("microsoft.com/devicelogin"), "{event}");
    sim.shutdown().await;
}

/// A person's run with `--tag` asks for the permission tags need, and tags (before: refused before the first
/// offboard, the person's sign-in never asking for Machine.ReadWrite.All).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_run_with_a_tag_asks_for_the_tag_permission_and_tags() {
    let scopes = ["Machine.Offboard", "Machine.Read.All", "Machine.ReadWrite.All"].map(String::from).to_vec();
    let (dir, sim) = start(3, DeviceCode { scopes, ..DeviceCode::default() }, |_| {}).await;
    let out =
        as_person(&sim, dir.path(), &["run", "m.csv", "--yes", "--tag", "retired", "--report", "r.md"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The report names the person, as the summary does.
    let report = std::fs::read_to_string(dir.path().join("r.md")).unwrap();
    assert!(report.contains("Signed in as") && report.contains(DEMO_ACCOUNT), "{report}");
    assert!(out.stdout.contains("Tagged 3 machine(s) with `retired`"), "{}", out.stdout);
    let out = as_person(&sim, dir.path(), &["tag", "m.results.csv", "--value", "retired", "--remove"], &[]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_never_entered_or_not_a_public_client_nothing_is_done_and_the_message_says_why() {
    let declined = DeviceCode { answer: DeviceCodeAnswer::Decline, ..DeviceCode::default() };
    let (dir, sim) = start(3, declined, |_| {}).await;
    let out = as_person(&sim, dir.path(), &["run", "m.csv", "--yes"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("the sign-in was declined") && out.stderr.contains("nothing was done"),
        "{}",
        out.stderr
    );
    assert_eq!(api_calls(&sim.stats()), 0);
    sim.shutdown().await;

    // Nobody enters the code: it expires (3 s here), the run ends.
    let ignored = DeviceCode {
        answer: DeviceCodeAnswer::Ignore,
        code_lifetime: Duration::from_secs(300),
        ..DeviceCode::default()
    };
    let (dir, sim) = start(3, ignored, |_| {}).await;
    let out = as_person(&sim, dir.path(), &["run", "m.csv", "--yes"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("was not entered within") && out.stderr.contains("expired"), "{}", out.stderr);
    assert!(sim.stats().device_code_polls > 3);
    assert_eq!((api_calls(&sim.stats()), sim.stats().polls_too_fast), (0, 0));
    sim.shutdown().await;

    // An app registration that does not allow public client flows: the hint says which switch.
    let (dir, sim) = start(3, DeviceCode { public_client: false, ..DeviceCode::default() }, |_| {}).await;
    let out = as_person(&sim, dir.path(), &["run", "m.csv", "--yes"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("AADSTS7000218") && out.stderr.contains("Allow public client flows"), "{}", out.stderr);
    sim.shutdown().await;
}

/// `slow_down` adds 5 s (real time, whatever the simulator's scale) to the interval: the poll after it is
/// not too soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_lengthens_the_interval() {
    let person = DeviceCode { slow_down_polls: 1, pending_polls: 0, ..hour_long_codes() };
    let (dir, sim) = start(2, person, |_| {}).await;
    let out = as_person(&sim, dir.path(), &["run", "m.csv", "--yes"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stats = sim.stats();
    assert_eq!((stats.device_code_polls, stats.polls_too_fast), (2, 0));
    sim.shutdown().await;
}

/// Each second is an hour of service time, and tokens live an hour: a run of several seconds renews its
/// token several times with the refresh token, and the person is asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_hours_renews_with_the_refresh_token_and_asks_once() {
    let (dir, sim) = start(40, hour_long_codes(), |c| c.time_scale = 3600.0).await;
    let out = as_person(&sim, dir.path(), &["run", "m.csv", "--yes", "--rate", "10/1s"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stats = sim.stats();
    assert_eq!(stats.total(DEVICE_CODE), 1);
    assert!(stats.refresh_grants >= 2, "renewed {} times", stats.refresh_grants);
    assert_eq!(stats.count(OFFBOARD, "201"), 40);
    sim.shutdown().await;
}

/// The refresh token revoked mid-run: the run stops as a failed sign-in (exit 4), never asks again, and
/// keeps the rows written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_refused_mid_run_stops_it_part_way_with_its_rows() {
    let (dir, sim) = start(60, hour_long_codes(), |c| c.time_scale = 3600.0).await;
    let args = ["run", "m.csv", "--yes", "--rate", "10/1s", "--summary-json", "s.json", "--device-code"];
    let (child, terminal) = spawn_at_terminal(command(&sim, dir.path(), &args, &NO_SECRET));
    let results = dir.path().join("m.results.csv");
    wait_until("rows", || rows_in(&results) >= 5).await;
    sim.revoke_refresh_tokens();
    let out = tokio::time::timeout(Duration::from_secs(120), wait(child)).await.expect("the run ends");
    drop(terminal);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stdout.contains("refused the refresh token"), "{}", out.stdout);
    assert!(out.stdout.contains("sign in again with --device-code"), "{}", out.stdout);
    let rows = Results::read(&results).rows;
    assert!(rows.len() >= 5 && rows.len() < 60, "{} rows", rows.len());
    assert_eq!(summary_json(dir.path())["exit_code"], 4);
    assert_eq!(sim.stats().total(DEVICE_CODE), 1, "the person is never asked again mid-run");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_delegated_scope_is_refused_before_any_api_call() {
    let person = DeviceCode { scopes: vec!["Machine.Offboard".into()], ..DeviceCode::default() };
    let (dir, sim) = start(3, person, |_| {}).await;
    let out = as_person(&sim, dir.path(), &["run", "m.csv", "--yes"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("needs the delegated permission Machine.Read.All"), "{}", out.stderr);
    assert!(out.stderr.contains("Delegated permissions"), "{}", out.stderr);
    assert_eq!(api_calls(&sim.stats()), 0);
    // `check` says the same, with the account and what the person also needs.
    let out = as_person(&sim, dir.path(), &["check"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    for says in [DEMO_ACCOUNT, "scopes (delegated)", "Machine.Offboard", "device group", "403"] {
        assert!(out.stdout.contains(says), "{says}: {}", out.stdout);
    }
    sim.shutdown().await;
}

/// A scheduled job never waits for a code: without a terminal the run is refused before any network,
/// unless `--yes` and a token cache with a refresh token; the cache is owner-only and refused otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_only_a_token_cache_and_yes_sign_in() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, sim) = start(3, DeviceCode::default(), |_| {}).await;
    async fn unattended_in(sim: &Simulator, dir: &Path, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.push("--device-code");
        crate::common::mde_env(sim, dir, &all, "", &NO_SECRET).await
    }
    let unattended = |args: &'static [&'static str]| unattended_in(&sim, dir.path(), args);
    let out = unattended(&["run", "m.csv", "--yes"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no terminal") && out.stderr.contains("--token-cache"), "{}", out.stderr);
    assert_eq!(sim.stats().requests, 0, "nothing was sent");

    // Signed in once at a terminal, with a token cache: written owner-only.
    let out =
        as_person(&sim, dir.path(), &["run", "m.csv", "--yes", "--dry-run", "--token-cache", "tc.json"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let cache = dir.path().join("tc.json");
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o600);
    // Then unattended: no new code.
    let out = unattended(&["run", "m.csv", "--yes", "--token-cache", "tc.json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sim.stats().total(DEVICE_CODE), 1);
    assert!(sim.stats().refresh_grants >= 1);
    // Without --yes it still asks for a confirmation nobody can give.
    let out = unattended(&["run", "m.csv", "--overwrite", "--token-cache", "tc.json"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);

    // Readable by others: refused, never used.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = unattended(&["run", "m.csv", "--yes", "--overwrite", "--token-cache", "tc.json"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("auth.token_cache") && out.stderr.contains("chmod 600"), "{}", out.stderr);

    // A revoked refresh token in the cache, no terminal: refused, nothing asked, the cache forgotten.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o600)).unwrap();
    sim.revoke_refresh_tokens();
    let out = unattended(&["run", "m.csv", "--yes", "--overwrite", "--token-cache", "tc.json"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("refused the refresh token"), "{}", out.stderr);
    assert!(!cache.exists());
    assert_eq!(sim.stats().total(DEVICE_CODE), 1);
    sim.shutdown().await;
}

/// Waiting for a code is not a hang: a signal ends it at once (exit 130), nothing done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_waiting_for_the_code_ends_the_command() {
    let person = DeviceCode { answer: DeviceCodeAnswer::Ignore, ..hour_long_codes() };
    let (dir, sim) = start(3, person, |_| {}).await;
    for args in [&["run", "m.csv", "--yes", "--device-code"][..], &["run", "m.csv", "--dry-run", "--device-code"]] {
        let polls = sim.stats().device_code_polls;
        let (child, terminal) = spawn_at_terminal(command(&sim, dir.path(), args, &NO_SECRET));
        wait_until("polls", || sim.stats().device_code_polls > polls).await;
        crate::common::kill(&child, "-INT");
        let out = tokio::time::timeout(Duration::from_secs(30), wait(child)).await.expect("ends at once");
        drop(terminal);
        assert_eq!(out.code, 130, "{args:?}: {}", out.stderr);
    }
    assert_eq!(api_calls(&sim.stats()), 0);
    sim.shutdown().await;
}

/// Renewal ahead of expiry: the client's clock (paused, then moved past the token's renewal time) asks for
/// a new token with the refresh token before the API ever refuses the old one, and the person is not asked.
#[tokio::test(flavor = "current_thread")]
async fn a_persons_token_is_renewed_with_the_refresh_token_before_it_expires() {
    use mde_offboard::defender::auth::TokenCache;
    use mde_offboard::settings::{Credential, Credentials, DEFAULT_SCOPE, DeviceCodeSignIn};
    // Tokens of an hour (real time): the simulator would take the first one throughout.
    let (_dir, sim) = start(1, DeviceCode::default(), |c| c.token_lifetime = Duration::from_secs(100 * 3600)).await;
    let credentials = Credentials {
        tenant_id: mde_sim::DEMO_TENANT_ID.into(),
        client_id: mde_sim::DEMO_CLIENT_ID.into(),
        credential: Credential::DeviceCode(DeviceCodeSignIn {
            resource: DEFAULT_SCOPE.trim_end_matches("/.default").into(),
            offboard: true,
            read: true,
            write: false,
            token_cache: None,
            person: true,
        }),
        authority: sim.base_url(),
        scope: DEFAULT_SCOPE.into(),
    };
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let tokens = TokenCache::new(http, credentials);
    let first = tokens.get().await.unwrap();
    assert_eq!(first.account(), Some(DEMO_ACCOUNT));
    assert_eq!(tokens.get().await.unwrap().bearer(), first.bearer(), "kept while valid");
    assert_eq!(sim.stats().refresh_grants, 0);

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3600 - 300 + 1)).await;
    let renewed = tokens.get().await.unwrap();
    assert_ne!(renewed.bearer(), first.bearer());
    let stats = sim.stats();
    assert_eq!((stats.refresh_grants, stats.total(DEVICE_CODE)), (1, 1));
    assert_eq!(renewed.permissions().names, vec!["Machine.Offboard", "Machine.Read.All"]);
}
