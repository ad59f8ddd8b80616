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
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", sim::DEMO_CLIENT_ID),
        ("client_secret", sim::DEMO_CLIENT_SECRET),
        ("scope", mde_offboard::settings::DEFAULT_SCOPE),
    ];
    let token_url = format!("{}/{}/oauth2/v2.0/token", sim.base_url(), sim::DEMO_TENANT_ID);
    let token: serde_json::Value = http.post(token_url).form(&form).send().await.unwrap().json().await.unwrap();
    let token = token["access_token"].as_str().expect("a token").to_string();
    let response = http.post(format!("{}{path}", sim.base_url())).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}
