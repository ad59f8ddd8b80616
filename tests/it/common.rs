//! Helpers shared by the integration tests: run the real binary against a simulator, read results.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mde_sim::{self as sim, Simulator};

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `mde-offboard ARGS` pointed at `sim` with the demo credentials and a comment, in a temp dir.
pub async fn mde(sim: &Simulator, args: &[&str], stdin: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    mde_env(sim, dir.path(), args, stdin, &[]).await
}

/// As [`mde`], in `cwd`.
pub async fn mde_in(sim: &Simulator, cwd: &Path, args: &[&str], stdin: &str) -> Output {
    mde_env(sim, cwd, args, stdin, &[]).await
}

/// As [`mde`], with extra environment variables (an empty value removes the variable).
pub async fn mde_env(sim: &Simulator, cwd: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut command = command(sim, cwd, args, env);
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        command.stdin(Stdio::piped());
        let mut child = command.spawn().expect("the binary starts");
        let mut pipe = child.stdin.take().unwrap();
        // A closed pipe is fine: the binary may refuse before reading.
        let _ = pipe.write_all(stdin.as_bytes());
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// The command `mde-offboard ARGS` pointed at `sim`, in `cwd`, not started; stdin is null.
pub fn command(sim: &Simulator, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mde-offboard"));
    command
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MDE_TENANT_ID", sim::DEMO_TENANT_ID)
        .env("MDE_CLIENT_ID", sim::DEMO_CLIENT_ID)
        .env("MDE_CLIENT_SECRET", sim::DEMO_CLIENT_SECRET)
        .env("MDE_AUTHORITY", sim.base_url())
        .env("MDE_API_BASE", sim.base_url())
        .env("MDE_COMMENT", "integration test")
        // Run locks of one test stay in its own directory: tests run in parallel.
        .env("MDE_STATE_DIR", cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        if value.is_empty() {
            command.env_remove(key);
        } else {
            command.env(key, value);
        }
    }
    command
}

/// A results CSV, read back.
pub struct Results {
    pub rows: Vec<HashMap<String, String>>,
}

impl Results {
    pub fn read(path: &Path) -> Results {
        let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let headers = reader.headers().unwrap().clone();
        assert_eq!(headers.iter().collect::<Vec<_>>(), mde_offboard::files::results::COLUMNS);
        let rows = reader
            .records()
            .map(|r| headers.iter().map(str::to_owned).zip(r.unwrap().iter().map(str::to_owned)).collect())
            .collect();
        Results { rows }
    }

    /// The row for input line `line`.
    pub fn line(&self, line: u64) -> &HashMap<String, String> {
        let wanted = line.to_string();
        self.rows.iter().find(|r| r["line"] == wanted).unwrap_or_else(|| panic!("no row for line {line}"))
    }
}

/// `POST {path}` on `sim` as the demo app (signed in for the call), with a JSON body: the status and body.
pub async fn post_as_demo_app(sim: &Simulator, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let token = demo_token(sim).await;
    let response = http.post(format!("{}{path}", sim.base_url())).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// A simulator at real time with one quota (`rate`, e.g. `10/8s`), every machine offboardable, and an input
/// `m.csv` listing all `n` machines of a fleet generated from `seed`: the temp dir, the simulator, the input
/// and the ids.
pub async fn fleet_with_quota(
    n: usize,
    seed: u64,
    rate: &str,
    faults: mde_sim::Faults,
) -> (tempfile::TempDir, Simulator, PathBuf, Vec<String>) {
    fleet_counting(n, seed, rate, |config| config.faults = faults).await
}

/// As [`fleet_with_quota`], the simulator's config then changed by `edit` (its quota scope, say).
pub async fn fleet_counting(
    n: usize,
    seed: u64,
    rate: &str,
    edit: impl FnOnce(&mut mde_sim::SimConfig),
) -> (tempfile::TempDir, Simulator, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = mde_sim::SimConfig {
        fleet: mde_sim::Fleet::generate(n, seed),
        quotas: vec![rate.parse().unwrap()],
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        ..mde_sim::SimConfig::default()
    };
    edit(&mut config);
    let ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    let sim = Simulator::start(config).await.unwrap();
    let mut text = String::from("MachineId\n");
    for id in &ids {
        text += &format!("{id}\n");
    }
    let input = write_file(dir.path(), "m.csv", &text);
    (dir, sim, input, ids)
}

/// Data rows in a results file written so far (0 when there is none yet).
pub fn rows_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count().saturating_sub(1)).unwrap_or(0)
}

/// Waits (a minute at most) until `done` says so.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits for a started binary to end, off the runtime.
pub async fn wait(child: std::process::Child) -> Output {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends `signal` (`-INT`, `-TERM`, ...) to a started binary.
pub fn kill(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// The summary JSON a run wrote to `s.json` in `dir`.
pub fn summary_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("s.json")).expect("the summary JSON is written")).unwrap()
}

/// A token of the demo app from `sim`'s sign-in, fetched by hand (for calls the client itself does not make).
pub async fn demo_token(sim: &Simulator) -> String {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", sim::DEMO_CLIENT_ID),
        ("client_secret", sim::DEMO_CLIENT_SECRET),
        ("scope", mde_offboard::settings::DEFAULT_SCOPE),
    ];
    let token_url = format!("{}/{}/oauth2/v2.0/token", sim.base_url(), sim::DEMO_TENANT_ID);
    let answer = reqwest::Client::new().post(token_url).form(&form).send().await.unwrap();
    let token: serde_json::Value = answer.json().await.unwrap();
    token["access_token"].as_str().expect("a token").to_string()
}

/// The client's own [`Api`] on `sim`, as the demo app, with `policy` and no quota; and its token cache.
pub fn demo_api(
    sim: &Simulator,
    policy: mde_offboard::defender::api::RetryPolicy,
) -> (mde_offboard::defender::api::Api, std::sync::Arc<mde_offboard::defender::auth::TokenCache>) {
    use mde_offboard::settings::{Credential, Credentials, Secret};
    let credentials = Credentials {
        tenant_id: sim::DEMO_TENANT_ID.into(),
        client_id: sim::DEMO_CLIENT_ID.into(),
        credential: Credential::Secret(Secret::new(sim::DEMO_CLIENT_SECRET)),
        authority: sim.base_url(),
        scope: mde_offboard::settings::DEFAULT_SCOPE.into(),
    };
    let timeout = std::time::Duration::from_secs(30);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(timeout).build().unwrap();
    let tokens = std::sync::Arc::new(mde_offboard::defender::auth::TokenCache::new(http.clone(), credentials));
    let limiter = mde_offboard::defender::limiter::Limiter::new(&[], mde_offboard::settings::QuotaScope::App);
    (mde_offboard::defender::api::Api::new(http, &sim.base_url(), tokens.clone(), limiter, policy, timeout), tokens)
}

/// Starts `cmd` with a pseudo-terminal as its stdin (a person is at the keyboard), stdout and stderr still
/// piped; the terminal's master side must outlive the child (closing it hangs the child up).
#[cfg(target_os = "linux")]
pub fn spawn_at_terminal(mut cmd: Command) -> (std::process::Child, std::fs::File) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    let opened =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(opened, 0, "openpty");
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(slave);
    (cmd.spawn().expect("the binary starts"), std::fs::File::from(master))
}

/// An input of `ids` under a `MachineId` header, one a line.
pub fn id_list<S: AsRef<str>>(ids: &[S]) -> String {
    let mut text = String::from("MachineId\n");
    for id in ids {
        text += id.as_ref();
        text += "\n";
    }
    text
}

/// Actions that end at once: a second offboard of the same machine is then accepted by the service, so
/// only the client can prevent it.
pub fn closing_at_once() -> mde_sim::Lifecycle {
    mde_sim::Lifecycle {
        pending_for: std::time::Duration::ZERO,
        in_progress_for: std::time::Duration::ZERO,
        failed_share: 0.0,
        timeout_share: 0.0,
        action_timeout: std::time::Duration::ZERO,
    }
}
