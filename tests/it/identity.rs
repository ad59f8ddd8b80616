//! Sign-in without a secret (certificate assertions, a ready access token), secrets kept out of every output,
//! and `mde-offboard check`, against the simulator.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mde_offboard::settings::DEFAULT_SCOPE;
use mde_sim::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT_ID, Fleet, SimConfig, Simulator};
use rustls_pki_types::pem::PemObject;

use crate::common::{Output, Results, mde_env, write_file};

const MACHINE: &str = "1111111111111111111111111111111111111111";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn data_arg(name: &str) -> String {
    data(name).to_str().unwrap().to_string()
}

fn config(dir: &Path) -> SimConfig {
    let fleet = write_file(
        dir,
        "fleet.csv",
        &format!(
            "id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName\n\
             {MACHINE},ok.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations\n"
        ),
    );
    SimConfig {
        fleet: Fleet::from_csv(&fleet).unwrap(),
        certificate: Some(std::fs::read(data("test-app.cert.pem")).unwrap()),
        ..SimConfig::default()
    }
}

/// Runs the binary without a client secret in the environment.
async fn without_secret(sim: &Simulator, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut env = env.to_vec();
    env.push(("MDE_CLIENT_SECRET", ""));
    mde_env(sim, dir, args, "", &env).await
}

/// A run of one machine with certificate sign-in; `extra` adds flags.
async fn certificate_run(sim: &Simulator, dir: &Path, cert: &str, key: &str, extra: &[&str]) -> Output {
    let input = write_file(dir, "machines.csv", &format!("{MACHINE}\n"));
    let (cert, key) = (data_arg(cert), data_arg(key));
    let mut args =
        vec!["run", input.to_str().unwrap(), "--yes", "--overwrite", "--certificate", &cert, "--private-key", &key];
    args.extend_from_slice(extra);
    without_secret(sim, dir, &args, &[]).await
}

/// A token from the simulator's token endpoint, got with the demo secret.
async fn token_from(sim: &Simulator) -> String {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", DEMO_CLIENT_ID),
        ("client_secret", DEMO_CLIENT_SECRET),
        ("scope", DEFAULT_SCOPE),
    ];
    let url = format!("{}/{DEMO_TENANT_ID}/oauth2/v2.0/token", sim.base_url());
    let answer: serde_json::Value =
        reqwest::Client::new().post(url).form(&form).send().await.unwrap().json().await.unwrap();
    answer["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_sign_in_end_to_end_ps256_and_rs256() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(dir.path())).await.unwrap();
    let out = certificate_run(&sim, dir.path(), "test-app.cert.pem", "test-app.key.pem", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&dir.path().join("machines.results.csv"));
    assert_eq!(results.rows[0]["outcome"], "submitted");
    assert_eq!(sim.stats().tokens_issued, 1);

    // The older form, with a PKCS#1 key file.
    let out =
        certificate_run(&sim, dir.path(), "test-app.cert.pem", "test-app.pkcs1.key.pem", &["--assertion", "rs256"])
            .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sim.stats().tokens_issued, 2);
    assert_eq!(sim.stats().count("POST /{tenant}/oauth2/v2.0/token", "200"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_registered_is_refused_with_aadsts700027_and_its_hint() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(dir.path())).await.unwrap();
    let out = certificate_run(&sim, dir.path(), "wrong.cert.pem", "wrong.key.pem", &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("AADSTS700027") && out.stderr.contains("not registered"), "{}", out.stderr);
    assert_eq!(sim.stats().tokens_issued, 0);
    assert_eq!(sim.stats().total("POST /api/machines/{id}/offboard"), 0);

    // A key that is not the certificate's is caught before any call.
    let before = sim.stats().total("POST /{tenant}/oauth2/v2.0/token");
    let out = certificate_run(&sim, dir.path(), "test-app.cert.pem", "wrong.key.pem", &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("does not belong to the certificate"), "{}", out.stderr);
    assert_eq!(sim.stats().total("POST /{tenant}/oauth2/v2.0/token"), before);
}

/// The simulator checks the signature itself: the registered certificate's thumbprint with another key's
/// signature is refused, the same assertion signed with the right key accepted.
#[tokio::test]
async fn the_simulator_verifies_the_assertion_signature() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(dir.path())).await.unwrap();
    let cert = rustls_pki_types::CertificateDer::from_pem_file(data("test-app.cert.pem")).unwrap();
    let x5t = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &cert));
    let url = format!("{}/{DEMO_TENANT_ID}/oauth2/v2.0/token", sim.base_url());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": x5t});
    let claims = serde_json::json!({"aud": url, "iss": DEMO_CLIENT_ID, "sub": DEMO_CLIENT_ID, "jti": "1", "nbf": now, "iat": now, "exp": now + 600});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signed_by = |key_file: &str| {
        let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(data(key_file)).unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()).unwrap();
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(&ring::signature::RSA_PSS_SHA256, &ring::rand::SystemRandom::new(), input.as_bytes(), &mut sig)
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    let send = |assertion: String| {
        let url = url.clone();
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", DEMO_CLIENT_ID),
                ("scope", DEFAULT_SCOPE),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &assertion),
            ];
            let answer = reqwest::Client::new().post(url).form(&form).send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = send(signed_by("wrong.key.pem")).await;
    assert_eq!((status, body["error_codes"][0].as_u64()), (401, Some(700027)), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("invalid signature"), "{body}");
    let (status, body) = send(signed_by("test-app.key.pem")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_access_token_is_used_and_its_expiry_stops_the_run_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(dir.path())).await.unwrap();
    let token = token_from(&sim).await;
    let input = write_file(dir.path(), "machines.csv", &format!("{MACHINE}\n"));
    let args = ["run", input.to_str().unwrap(), "--yes", "--overwrite"];
    let env = [("MDE_ACCESS_TOKEN", token.as_str()), ("MDE_TENANT_ID", ""), ("MDE_CLIENT_ID", "")];
    let out = without_secret(&sim, dir.path(), &args, &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sim.stats().tokens_issued, 1, "only the token we got ourselves");

    // A token this simulator never issued is what an expired one looks like to the API: 401.
    let other = Simulator::start(config(dir.path())).await.unwrap();
    let stale = token_from(&other).await;
    let env = [("MDE_ACCESS_TOKEN", stale.as_str())];
    let out = without_secret(&sim, dir.path(), &args, &env).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("MDE_ACCESS_TOKEN") && out.stderr.contains("expired"), "{}", out.stderr);
    assert!(!out.stderr.contains(&stale));
    assert_eq!(sim.stats().tokens_issued, 1, "a ready token is never renewed");

    // A token whose exp has passed is refused before any call.
    let mut parts: Vec<String> = stale.split('.').map(str::to_string).collect();
    let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["exp"] = serde_json::json!(1_000_000_000);
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let expired = parts.join(".");
    let before = sim.stats().total("POST /api/machines/{id}/offboard");
    let out = without_secret(&sim, dir.path(), &args, &[("MDE_ACCESS_TOKEN", expired.as_str())]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("expired") && out.stderr.contains("ago"), "{}", out.stderr);
    assert_eq!(sim.stats().total("POST /api/machines/{id}/offboard"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_results_or_summaries_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(dir.path())).await.unwrap();
    let key_text = std::fs::read_to_string(data("test-app.key.pem")).unwrap();
    // Lines of the key's base64 body.
    let key_lines: Vec<&str> = key_text.lines().filter(|l| !l.starts_with("-----")).collect();
    let results = dir.path().join("machines.results.csv");
    let check_clean = |out: &Output, what: &str, secrets: &[&str]| {
        let file = std::fs::read_to_string(&results).unwrap_or_default();
        for text in [&out.stdout, &out.stderr, &file] {
            for secret in secrets.iter().chain(&key_lines) {
                assert!(!text.contains(secret), "{what}: a secret leaked into\n{text}");
            }
            // Access tokens and client assertions are JWTs: none may show, whole or in part.
            assert!(!text.contains("eyJ"), "{what}: a JWT leaked into\n{text}");
        }
    };

    let out = certificate_run(&sim, dir.path(), "test-app.cert.pem", "test-app.key.pem", &["-vvv"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("TRACE") || out.stderr.contains("DEBUG"), "-vvv logs: {}", out.stderr);
    check_clean(&out, "certificate", &[]);

    let input = write_file(dir.path(), "machines.csv", &format!("{MACHINE}\n"));
    let args = [
        "run",
        input.to_str().unwrap(),
        "--yes",
        "--overwrite",
        "-vvv",
        "--wait",
        "--poll-interval",
        "50ms",
        "--wait-timeout",
        "200ms",
    ];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert!(out.code == 0 || out.code == 3, "{}", out.stderr);
    check_clean(&out, "secret", &[DEMO_CLIENT_SECRET]);

    let token = token_from(&sim).await;
    let out = without_secret(&sim, dir.path(), &args, &[("MDE_ACCESS_TOKEN", token.as_str())]).await;
    assert!(out.code == 0 || out.code == 3, "{}", out.stderr);
    check_clean(&out, "access token", &[&token]);

    let out = mde_env(&sim, dir.path(), &["check", "-vvv"], "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    check_clean(&out, "check", &[DEMO_CLIENT_SECRET]);
}

fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_ready_missing_roles_wrong_secret_and_unreachable_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(dir.path())).await.unwrap();
    let out = mde_env(&sim, dir.path(), &["check"], "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for expected in ["Machine.Offboard, Machine.Read.All", "answered 200", "Result: OK", &sim.base_url()] {
        assert!(out.stdout.contains(expected), "no `{expected}` in\n{}", out.stdout);
    }
    assert_eq!(sim.stats().total("GET /api/machines"), 1, "one cheap read");
    assert_eq!(sim.stats().total("POST /api/machines/{id}/offboard"), 0, "check changes nothing");

    // Certificate sign-in is checked the same way.
    let (cert, key) = (data_arg("test-app.cert.pem"), data_arg("test-app.key.pem"));
    let out = without_secret(&sim, dir.path(), &["check", "--certificate", &cert, "--private-key", &key], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("certificate (x5t#S256"), "{}", out.stdout);

    // Only a read role: tracking would work, a real run would not.
    let readers =
        Simulator::start(SimConfig { roles: vec!["Machine.Read.All".into()], ..config(dir.path()) }).await.unwrap();
    let out = mde_env(&readers, dir.path(), &["check"], "", &[]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("NOT allowed: needs Machine.Offboard") && out.stdout.contains("admin consent"),
        "{}",
        out.stdout
    );

    let out = mde_env(&sim, dir.path(), &["check"], "", &[("MDE_CLIENT_SECRET", "not~the~secret")]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("AADSTS7000215") && out.stdout.contains("secret is wrong"), "{}", out.stdout);
    assert!(!out.stdout.contains("not~the~secret"));

    let out = mde_env(&sim, dir.path(), &["check"], "", &[("MDE_API_BASE", &closed_port())]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("UNREACHABLE") && out.stdout.contains("cannot reach the API host"), "{}", out.stdout);

    let out = mde_env(&sim, dir.path(), &["check"], "", &[("MDE_AUTHORITY", &closed_port())]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("sign-in failed") && out.stdout.contains("cannot reach"), "{}", out.stdout);

    let out = mde_env(&sim, dir.path(), &["check", "--cloud", "mars"], "", &[]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("gcc-high"), "{}", out.stdout);
}

/// `check` exits 0 only when a default `run` (pre-flight on) would be allowed, and says what --no-preflight
/// changes; the run agrees with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_when_a_default_run_would_be_refused_and_says_what_no_preflight_changes() {
    let dir = tempfile::tempdir().unwrap();
    let offboarders =
        Simulator::start(SimConfig { roles: vec!["Machine.Offboard".into()], ..config(dir.path()) }).await.unwrap();
    let out = mde_env(&offboarders, dir.path(), &["check"], "", &[]).await;
    assert_eq!(out.code, 1, "only Machine.Offboard: a default run is refused\n{}", out.stdout);
    assert!(out.stdout.contains("NOT READY") && !out.stdout.contains("Result: OK"), "{}", out.stdout);
    assert!(out.stdout.contains("answered 403"), "{}", out.stdout);
    let no_preflight = out.stdout.lines().find(|l| l.trim_start().starts_with("--no-preflight")).unwrap_or_else(|| {
        panic!("no --no-preflight line in\n{}", out.stdout);
    });
    assert!(no_preflight.contains("allowed") && no_preflight.contains("offboard call each"), "{no_preflight}");
    assert!(out.stdout.contains("--wait") && out.stdout.contains("Machine.Read.All"), "{}", out.stdout);

    // The run agrees: refused by default (exit 1, nothing offboarded), allowed with --no-preflight.
    let input = write_file(dir.path(), "one.csv", &format!("MachineId\n{MACHINE}\n"));
    let out = mde_env(&offboarders, dir.path(), &["run", input.to_str().unwrap(), "--yes"], "", &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(offboarders.stats().total("POST /api/machines/{id}/offboard"), 0);
    let args = ["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--overwrite"];
    let out = mde_env(&offboarders, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Both roles: ready, and the --no-preflight line says what it would skip.
    let sim = Simulator::start(config(dir.path())).await.unwrap();
    let out = mde_env(&sim, dir.path(), &["check"], "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("Result: OK, a default run would be allowed"), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l.trim_start().starts_with("--no-preflight")), "{}", out.stdout);
}
