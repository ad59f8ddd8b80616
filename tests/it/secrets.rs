//! Secrets stay secret: with every log switched on (`-vvv`, `RUST_LOG=trace`, text and JSON), through
//! sign-in, token renewals, retries and failures, neither the client secret nor any access token (a JWT:
//! its header always starts `eyJ`) appears on stderr, stdout, in the results file or in an error; nor, when
//! a person signs in, the device code or a refresh token (the simulator's start as Entra ID's do).

use std::time::Duration;

use mde_sim::{Faults, Fleet, SimConfig, Simulator};

use crate::common::{mde_env, write_file};

const SECRET: &str = "Leak~Canary.Secret_0123456789abcdefXYZ";
/// How every JWT starts: base64url of `{"`.
const JWT: &str = "eyJ";

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the client secret");
    assert!(!text.contains(mde_sim::DEVICE_CODE_PREFIX), "{what} shows the device code");
    assert!(!text.contains(mde_sim::REFRESH_TOKEN_PREFIX), "{what} shows a refresh token");
    if let Some(at) = text.find(JWT) {
        panic!("{what} shows an access token: ...{}...", &text[at.saturating_sub(80)..(at + 40).min(text.len())]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_secret_nor_a_token_reaches_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        fleet: Fleet::generate(60, 4),
        client_secret: SECRET.into(),
        quotas: Vec::new(),
        // Tokens expire mid-run (renewals, 401s), and calls fail in every way (retries, error rows).
        token_lifetime: Duration::from_millis(300),
        faults: Faults {
            seed: 2,
            error_503: 0.1,
            drop_connection: 0.05,
            transient_404: 0.05,
            latency: Duration::from_millis(10),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let mut ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    ids.push("ffffffffffffffffffffffffffffffffffffffff".into());
    ids.push("not-an-id".into());
    let sim = Simulator::start(config).await.unwrap();
    write_file(dir.path(), "m.csv", &format!("MachineId\n{}\n", ids.join("\n")));
    let env = [("MDE_CLIENT_SECRET", SECRET), ("RUST_LOG", "trace")];
    let common = ["run", "m.csv", "--yes", "--overwrite", "--retry-delay", "10ms", "--rate", "10000/1s"];

    for format in ["text", "json"] {
        let mut args = common.to_vec();
        args.extend(["-vvv", "--log-format", format]);
        let out = mde_env(&sim, dir.path(), &args, "", &env).await;
        assert_eq!(out.code, 3, "{}", out.stderr);
        assert!(out.stderr.len() > 10_000, "trace logging is not on: {} bytes", out.stderr.len());
        assert_clean(&format!("stderr ({format})"), &out.stderr);
        assert_clean("stdout", &out.stdout);
        assert_clean("the results", &std::fs::read_to_string(dir.path().join("m.results.csv")).unwrap());
    }
    assert!(sim.stats().tokens_issued >= 2);

    // A refused sign-in, and a secret with a typo: the error names the problem, not the secret.
    let wrong = format!("{SECRET}x");
    let out = mde_env(
        &sim,
        dir.path(),
        &["run", "m.csv", "--yes", "--overwrite", "-vvv"],
        "",
        &[("MDE_CLIENT_SECRET", &wrong), ("RUST_LOG", "trace")],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("AADSTS7000215"), "{}", out.stderr);
    assert!(!out.stderr.contains(&wrong));
    assert_clean("stderr (refused sign-in)", &out.stderr);
    sim.shutdown().await;
}

/// A person's sign-in at trace level: the device code, the refresh tokens of every renewal and the access
/// tokens stay out of every output, also when the refresh token is refused.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_device_code_nor_a_refresh_token_reaches_any_output() {
    use crate::common::{command, spawn_at_terminal, wait};
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        fleet: Fleet::generate(60, 5),
        quotas: Vec::new(),
        // Tokens expire mid-run: renewals with the refresh token, after 401s.
        token_lifetime: Duration::from_millis(100),
        faults: Faults { seed: 3, error_503: 0.1, latency: Duration::from_millis(20), ..Faults::default() },
        device_code: mde_sim::DeviceCode {
            interval: Duration::from_millis(50),
            pending_polls: 1,
            slow_down_polls: 0,
            ..mde_sim::DeviceCode::default()
        },
        ..SimConfig::default()
    };
    let ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    let sim = Simulator::start(config).await.unwrap();
    write_file(dir.path(), "m.csv", &format!("MachineId\n{}\n", ids.join("\n")));
    let env = [("MDE_CLIENT_SECRET", ""), ("RUST_LOG", "trace")];
    let common =
        ["run", "m.csv", "--yes", "--overwrite", "--retry-delay", "10ms", "--rate", "10000/1s", "--device-code"];
    let summary = dir.path().join("s.json");
    for format in ["text", "json"] {
        let mut args = common.to_vec();
        args.extend(["-vvv", "--log-format", format, "--token-cache", "tc.json", "--summary-json", "s.json"]);
        let (child, terminal) = spawn_at_terminal(command(&sim, dir.path(), &args, &env));
        let out = wait(child).await;
        drop(terminal);
        assert!(out.code == 0 || out.code == 3, "{}", out.stderr);
        assert!(out.stderr.len() > 10_000, "trace logging is not on: {} bytes", out.stderr.len());
        assert_clean(&format!("stderr ({format})"), &out.stderr);
        assert_clean("stdout", &out.stdout);
        assert_clean("the results", &std::fs::read_to_string(dir.path().join("m.results.csv")).unwrap());
        assert_clean("the summary", &std::fs::read_to_string(&summary).unwrap());
    }
    assert!(sim.stats().refresh_grants >= 2, "renewed {} times", sim.stats().refresh_grants);

    // The refresh token refused: the message says so, and shows no token.
    sim.revoke_refresh_tokens();
    let mut args = common.to_vec();
    args.extend(["-vvv", "--token-cache", "tc.json"]);
    let out = mde_env(&sim, dir.path(), &args, "", &env).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("refused the refresh token"), "{}", out.stderr);
    assert_clean("stderr (refresh token refused)", &out.stderr);
    sim.shutdown().await;
}
