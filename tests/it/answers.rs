//! How answers are read: a row says `submitted` only when the answer shows the action; no redirect is
//! followed, from the API or the token endpoint; no answer is read past a size cap; and a token the API
//! keeps refusing stops the run instead of costing every machine two calls.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mde_offboard::defender::api::{Api, RetryPolicy};
use mde_offboard::defender::auth::TokenCache;
use mde_sim::{self as sim, Faults, Fleet, Misanswer, Misanswers, SimConfig, SimStats, Simulator};

use crate::common::{Output, Results, mde_in, write_file};

/// A simulator of `machines` machines, no quotas, no forbidden or unsupported ones, with `misanswers`.
async fn simulator(machines: usize, misanswers: Misanswers) -> (Simulator, Vec<String>) {
    let config = SimConfig {
        fleet: Fleet::generate(machines, 21),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        misanswers,
        ..SimConfig::default()
    };
    let ids = config.fleet.ids().map(str::to_owned).collect();
    (Simulator::start(config).await.unwrap(), ids)
}

/// `run` over `ids` in `dir`, with `extra` flags.
async fn run(sim: &Simulator, dir: &Path, ids: &[String], extra: &[&str]) -> Output {
    let input = write_file(dir, "m.csv", &format!("MachineId\n{}\n", ids.join("\n")));
    let mut args = vec!["run", input.to_str().unwrap(), "--yes", "--retry-delay", "10ms"];
    args.extend_from_slice(extra);
    mde_in(sim, dir, &args, "").await
}

fn offboard_calls(stats: &SimStats) -> u64 {
    stats.offboard_calls.values().map(|c| c.calls).sum()
}

#[tokio::test]
async fn an_answer_that_does_not_show_an_action_is_not_submitted() {
    let cases = [
        (Misanswer::ErrorWith200, 200),
        (Misanswer::Html(200), 200),
        (Misanswer::Html(201), 201),
        (Misanswer::NotJson, 200),
        (Misanswer::Empty201, 201),
    ];
    for (misanswer, status) in cases {
        let misanswers = Misanswers { offboard: Some(misanswer.clone()), ..Misanswers::default() };
        let (sim, ids) = simulator(3, misanswers).await;
        let dir = tempfile::tempdir().unwrap();
        let out = run(&sim, dir.path(), &ids, &["--no-preflight"]).await;
        let stats = sim.stats();
        sim.shutdown().await;
        assert_eq!(out.code, 3, "{misanswer:?}: every row failed\n{}", out.stderr);
        let results = Results::read(&dir.path().join("m.results.csv"));
        assert_eq!(results.rows.len(), 3, "{misanswer:?}");
        for row in &results.rows {
            assert_eq!(row["outcome"], "failed", "{misanswer:?}: {row:?}");
            assert_eq!(row["error_code"], "UnconfirmedAnswer", "{misanswer:?}: {row:?}");
            assert_eq!(row["http_status"], status.to_string(), "{misanswer:?}: {row:?}");
            let message = &row["error_message"];
            assert!(message.contains("did not prove") && message.contains("--resume"), "{misanswer:?}: {message}");
            assert!(row["action_id"].is_empty(), "{misanswer:?}: {row:?}");
        }
        // The call may have created the action: it is never sent again blindly.
        assert_eq!(offboard_calls(&stats), 3, "{misanswer:?}");
    }
}

#[tokio::test]
async fn redirects_from_the_api_are_never_followed() {
    for status in [302u16, 307] {
        let (elsewhere, _) = simulator(3, Misanswers::default()).await;
        let location = format!("{}/api/machines/x/offboard", elsewhere.base_url());
        let misanswers = Misanswers {
            offboard: Some(Misanswer::Redirect { status, location: location.clone() }),
            ..Misanswers::default()
        };
        let (sim, ids) = simulator(3, misanswers).await;
        let dir = tempfile::tempdir().unwrap();
        let out = run(&sim, dir.path(), &ids, &["--no-preflight"]).await;
        let stats = sim.stats();
        let there = elsewhere.stats();
        sim.shutdown().await;
        elsewhere.shutdown().await;
        assert_eq!(there.requests, 0, "{status}: the redirect's host received calls: {:?}", there.calls);
        assert_eq!(out.code, 3, "{status}\n{}", out.stderr);
        let results = Results::read(&dir.path().join("m.results.csv"));
        assert_eq!(results.rows.len(), 3);
        let host = elsewhere_host(&location);
        for row in &results.rows {
            assert_eq!(
                (row["outcome"].as_str(), row["error_code"].as_str(), row["http_status"].as_str()),
                ("failed", "Redirect", status.to_string().as_str()),
                "{row:?}"
            );
            assert!(row["error_message"].contains(&host), "{status}: {row:?}");
        }
        // Never retried.
        assert_eq!(offboard_calls(&stats), 3, "{status}");
    }
}

/// `127.0.0.1:PORT` of a URL.
fn elsewhere_host(url: &str) -> String {
    url.trim_start_matches("http://").split('/').next().unwrap().to_string()
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_is_a_sign_in_error() {
    let (elsewhere, _) = simulator(3, Misanswers::default()).await;
    let location = format!("{}/{}/oauth2/v2.0/token", elsewhere.base_url(), sim::DEMO_TENANT_ID);
    let misanswers = Misanswers {
        token: Some(Misanswer::Redirect { status: 307, location: location.clone() }),
        ..Misanswers::default()
    };
    let (sim, ids) = simulator(3, misanswers).await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(&sim, dir.path(), &ids, &["--no-preflight"]).await;
    let stats = sim.stats();
    let there = elsewhere.stats();
    sim.shutdown().await;
    elsewhere.shutdown().await;
    // Nothing, the client secret least of all, went to the host in `Location`.
    assert_eq!(there.requests, 0, "the redirect's host received calls: {:?}", there.calls);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("307") && out.stderr.contains(&elsewhere_host(&location)), "{}", out.stderr);
    assert!(!out.stderr.contains(sim::DEMO_CLIENT_SECRET));
    assert_eq!(offboard_calls(&stats), 0);
}

#[tokio::test]
async fn an_endless_action_answer_is_cut_and_fails_the_row() {
    let misanswers = Misanswers { offboard: Some(Misanswer::Endless), ..Misanswers::default() };
    let (sim, ids) = simulator(2, misanswers).await;
    let dir = tempfile::tempdir().unwrap();
    // A short timeout: before the cap, the answer was read until the timeout, growing all the while.
    let out = run(&sim, dir.path(), &ids, &["--no-preflight", "--timeout", "2s"]).await;
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert_eq!(results.rows.len(), 2);
    for row in &results.rows {
        assert_eq!((row["outcome"].as_str(), row["error_code"].as_str()), ("failed", "AnswerTooLarge"), "{row:?}");
        assert_eq!(row["http_status"], "200", "{row:?}");
    }
    assert_eq!(offboard_calls(&stats), 2, "not retried");
}

#[tokio::test]
async fn an_endless_list_page_stops_the_pre_flight() {
    let misanswers = Misanswers { lists: Some(Misanswer::Endless), ..Misanswers::default() };
    let (sim, ids) = simulator(2, misanswers).await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(&sim, dir.path(), &ids, &["--timeout", "60s"]).await;
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("AnswerTooLarge") || out.stderr.contains("larger than"), "{}", out.stderr);
    assert_eq!(offboard_calls(&stats), 0);
    // One read, not retried.
    assert_eq!(stats.total("GET /api/machines"), 1, "{:?}", stats.calls);
}

/// A list page keeps its own clock (its wait for one of the process's page slots is not the service's time)
/// and still times out at --timeout: every read answered after 3 s against --timeout 1s, the inventory page
/// is tried --max-attempts times, each a timeout, and nothing is offboarded.
#[tokio::test]
async fn a_list_page_slower_than_the_timeout_times_out() {
    let (sim, ids) = simulator(2, Misanswers::default()).await;
    sim.set_faults(Faults { latency: Duration::from_secs(3), ..Faults::default() });
    let dir = tempfile::tempdir().unwrap();
    let out = run(&sim, dir.path(), &ids, &["--timeout", "1s", "--max-attempts", "2"]).await;
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("timed out (no answer within 1s)"), "{}", out.stderr);
    assert_eq!(offboard_calls(&stats), 0);
    // The sign-in and two tries of the first read, none answered.
    assert_eq!(stats.requests, 3, "{:?}", stats.calls);
    assert_eq!(stats.total("GET /api/machines"), 0, "{:?}", stats.calls);
}

#[tokio::test]
async fn a_token_the_api_always_refuses_stops_the_run() {
    let config = SimConfig {
        fleet: Fleet::generate(10, 22),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        refuse_tokens: true,
        ..SimConfig::default()
    };
    let ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    let sim = Simulator::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run(&sim, dir.path(), &ids, &["--no-preflight", "--concurrency", "1"]).await;
    let stats = sim.stats();
    sim.shutdown().await;
    // The run stops (the run turns the Api's fatal state into its exit code: 4, stopped part way).
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("refuses the token"), "{}", out.stderr);
    assert!(out.stdout.contains("Stopped because: the API refuses the token"), "{}", out.stdout);
    assert!(out.stdout.contains("--resume"), "{}", out.stdout);
    // The first machine renews the token once; a renewed token refused on 3 machines in a row stops the run:
    // 2 + 1 + 1 calls, 2 tokens, not 2 calls and a token for every machine.
    assert_eq!(offboard_calls(&stats), 4, "{:?}", stats.offboard_calls);
    assert_eq!(stats.tokens_issued, 2);
}

/// An [`Api`] on `sim` as the demo app, with `policy`, no quota, and its token cache.
fn api_on(sim: &Simulator, policy: RetryPolicy) -> (Api, Arc<TokenCache>) {
    crate::common::demo_api(sim, policy)
}

#[tokio::test]
async fn one_renewal_per_refused_token() {
    let (sim, ids) = simulator(8, Misanswers::default()).await;
    let policy = RetryPolicy { max_attempts: 3, retry_delay: Duration::from_millis(10) };
    let (api, tokens) = api_on(&sim, policy);
    let path = ids[0].clone();
    assert!(api.get_machine(&path).await.answer.is_ok());
    assert_eq!(sim.stats().tokens_issued, 1);

    // Eight calls refused with the same token: one renewal, and every call goes through with the new token.
    sim.revoke_tokens();
    let api = Arc::new(api);
    let calls: Vec<_> = ids
        .iter()
        .map(|id| {
            let (api, path) = (api.clone(), id.clone());
            tokio::spawn(async move { api.get_machine(&path).await })
        })
        .collect();
    for call in calls {
        let result = call.await.unwrap();
        assert!(result.answer.is_ok(), "{:?}", result.answer);
    }
    assert_eq!(sim.stats().tokens_issued, 2);

    // Refused again later: the renewed token was accepted since, so it is renewed too.
    sim.revoke_tokens();
    assert!(api.get_machine(&path).await.answer.is_ok());
    assert_eq!(sim.stats().tokens_issued, 3);
    assert!(api.fatal().is_none());
    drop(tokens);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_call_refused_again_later_with_a_fresh_token_renews_again() {
    // Every call that passes the token check is answered 503, so one call lives through several attempts.
    let config = SimConfig {
        fleet: Fleet::generate(2, 23),
        quotas: Vec::new(),
        faults: Faults { seed: 1, error_503: 1.0, ..Faults::default() },
        ..SimConfig::default()
    };
    let id = config.fleet.ids().next().unwrap().to_owned();
    let sim = Arc::new(Simulator::start(config).await.unwrap());
    let policy = RetryPolicy { max_attempts: 3, retry_delay: Duration::from_secs(2) };
    let (api, tokens) = api_on(&sim, policy);
    tokens.get().await.unwrap();
    sim.revoke_tokens();
    // The call: 401 (renewed), 503, then, while it backs off, its new token is revoked too: 401 again.
    let revoker = {
        let sim = sim.clone();
        tokio::spawn(async move {
            while sim.stats().count("GET /api/machines/{id}", "503") == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sim.revoke_tokens();
        })
    };
    let result = api.get_machine(&id).await;
    revoker.await.unwrap();
    let stats = sim.stats();
    // The second refusal renewed again (a token accepted since), and the call went on to its last 503.
    assert_eq!(result.answer.as_ref().map_err(|f| f.status).unwrap_err(), Some(503), "{:?}", stats.calls);
    assert_eq!(stats.tokens_issued, 3);
    assert_eq!(stats.count("GET /api/machines/{id}", "401"), 2);
}

/// A simulator of `machines` machines, no quotas, whose token answers show `expires_in` (the tokens live an hour).
async fn simulator_with_expires_in(machines: usize, expires_in: serde_json::Value) -> (Simulator, Vec<String>) {
    let config = SimConfig {
        fleet: Fleet::generate(machines, 24),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        token_expires_in: Some(expires_in),
        ..SimConfig::default()
    };
    let ids = config.fleet.ids().map(str::to_owned).collect();
    (Simulator::start(config).await.unwrap(), ids)
}

#[tokio::test]
async fn a_token_lifetime_near_the_largest_integer_is_clamped() {
    for expires_in in [serde_json::json!(u64::MAX), serde_json::json!(u64::MAX.to_string()), serde_json::json!(1e300)] {
        let (sim, ids) = simulator_with_expires_in(3, expires_in.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let out = run(&sim, dir.path(), &ids, &[]).await;
        let stats = sim.stats();
        sim.shutdown().await;
        assert!(!out.stderr.contains("panicked"), "{expires_in}: panic\n{}", out.stderr);
        assert_eq!(out.code, 0, "{expires_in}\n{}", out.stderr);
        assert_eq!(offboard_calls(&stats), 3, "{expires_in}");
        assert_eq!(stats.tokens_issued, 1, "{expires_in}");
    }
}

#[tokio::test]
async fn expires_in_zero_does_not_cost_a_token_request_per_call() {
    for expires_in in [serde_json::json!(0), serde_json::json!("0"), serde_json::json!(2)] {
        let (sim, ids) = simulator_with_expires_in(20, expires_in.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        // The pre-flight's reads and 20 offboards, well inside a minute.
        let out = run(&sim, dir.path(), &ids, &[]).await;
        let stats = sim.stats();
        sim.shutdown().await;
        assert_eq!(out.code, 0, "{expires_in}\n{}", out.stderr);
        assert_eq!(offboard_calls(&stats), 20, "{expires_in}");
        assert_eq!(stats.tokens_issued, 1, "{expires_in}: a token per call");
    }
}

#[tokio::test]
async fn a_sign_in_answer_without_a_token_says_what_was_wrong_with_it() {
    let cases = [
        (Misanswer::Html(200), "an HTML page"),
        (Misanswer::NotJson, "not JSON"),
        (Misanswer::ErrorWith200, "no `access_token` (its fields: error)"),
    ];
    for (misanswer, says) in cases {
        let misanswers = Misanswers { token: Some(misanswer.clone()), ..Misanswers::default() };
        let (sim, ids) = simulator(2, misanswers).await;
        let dir = tempfile::tempdir().unwrap();
        let out = run(&sim, dir.path(), &ids, &[]).await;
        let stats = sim.stats();
        sim.shutdown().await;
        assert_eq!(out.code, 1, "{misanswer:?}\n{}", out.stderr);
        assert!(out.stderr.contains("not a token") && out.stderr.contains(says), "{misanswer:?}\n{}", out.stderr);
        assert!(out.stderr.contains("HTTP 200"), "{misanswer:?}\n{}", out.stderr);
        assert!(!out.stderr.contains("cannot reach"), "{misanswer:?}\n{}", out.stderr);
        assert_eq!(offboard_calls(&stats), 0);
    }
}
