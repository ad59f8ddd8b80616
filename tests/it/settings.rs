//! Bad settings, through the real binary: each wrong config key, value, flag, environment variable and
//! secret source is refused with a message naming it (and its value, where it is not a secret), exit 1
//! (2 for a flag, whose bad value is a usage error), before any call to the service.

use std::path::Path;

use mde_sim::{SimConfig, Simulator};

use crate::common::{mde_env, write_file};

const ID: &str = "1111111111111111111111111111111111111111";

/// Runs `run m.csv --yes ARGS` with `env` changes and checks the refusal.
async fn refused(sim: &Simulator, dir: &Path, args: &[&str], env: &[(&str, &str)], code: i32, says: &[&str]) {
    let mut argv = vec!["run", "m.csv", "--yes"];
    argv.extend_from_slice(args);
    let out = mde_env(sim, dir, &argv, "", env).await;
    let case = format!("{args:?} {env:?}");
    assert_eq!(out.code, code, "{case}: exit {}\n{}", out.code, out.stderr);
    for fragment in says {
        assert!(out.stderr.contains(fragment), "{case}: the message does not say `{fragment}`\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("panicked"), "{case}\n{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_setting_is_named_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    write_file(d, "m.csv", &format!("MachineId\n{ID}\n"));
    let config = |name: &str, text: &str| write_file(d, name, text).to_str().unwrap().to_owned();

    // The config file: its name, the section or key, and what is allowed.
    let cases = [
        (
            config("section.toml", "[nope]\nx = 1\n"),
            vec!["section.toml", "unknown section `nope`", "[auth], [api], [run]"],
        ),
        (
            config("key.toml", "[run]\nconcurency = 3\n"),
            vec!["key.toml", "unknown key `run.concurency`", "concurrency"],
        ),
        (config("type.toml", "[run]\nconcurrency = [1]\n"), vec!["type.toml", "`run.concurrency`"]),
        (config("toml.toml", "[run\n"), vec!["toml.toml", "not valid TOML"]),
        (config("flat.toml", "comment = \"x\"\n"), vec!["flat.toml", "`comment`"]),
        (config("value.toml", "[run]\nconcurrency = 0\n"), vec!["`run.concurrency`", "`0`", "1 to 256"]),
        (config("rate.toml", "[run]\nrate = [\"100/1m\", \"fast\"]\n"), vec!["`run.rate`", "`fast`", "N/PERIOD"]),
        (config("timeout.toml", "[api]\ntimeout = \"soon\"\n"), vec!["`api.timeout`", "`soon`"]),
        (config("retry.toml", "[run]\nretry_delay = \"0s\"\n"), vec!["`run.retry_delay`", "`0s`"]),
        (config("attempts.toml", "[run]\nmax_attempts = 1000\n"), vec!["`run.max_attempts`", "`1000`", "1 to 100"]),
        (config("scope.toml", "[auth]\nscope = \"a b\"\n"), vec!["`auth.scope`", "`a b`"]),
        (config("secret.toml", "[auth]\nclient_secret = \"has space\"\n"), vec!["`auth.client_secret`", "spaces"]),
        (
            config("secretfile.toml", "[auth]\nclient_secret_file = \"/nonexistent/secret\"\n"),
            vec!["`auth.client_secret_file`", "/nonexistent/secret"],
        ),
    ];
    // The config file's secret is used only without MDE_CLIENT_SECRET.
    for (path, says) in &cases {
        refused(&sim, d, &["--config", path], &[("MDE_CLIENT_SECRET", "")], 1, says).await;
    }
    refused(&sim, d, &["--config", "missing.toml"], &[], 1, &["missing.toml", "cannot read"]).await;

    // Flags: a bad value is a usage error naming the flag (a file that cannot be read is not).
    let flags: [(&[&str], &[&str]); 8] = [
        (&["--concurrency", "0"], &["--concurrency", "`0`"]),
        (&["--concurrency", "many"], &["--concurrency", "`many`"]),
        (&["--rate", "5"], &["--rate", "`5`", "N/PERIOD"]),
        (&["--rate", "0/1m"], &["--rate", "`0/1m`"]),
        (&["--timeout", "soon"], &["--timeout", "`soon`"]),
        (&["--max-attempts", "0"], &["--max-attempts", "`0`"]),
        (&["--tenant-id", "not a tenant"], &["--tenant-id", "`not a tenant`"]),
        (&["--api-base", "http://example.com"], &["--api-base", "`http://example.com`", "https://"]),
    ];
    for (args, says) in flags {
        refused(&sim, d, args, &[], 2, says).await;
    }
    let secret_file = ["--client-secret-file", "/nonexistent/secret"];
    refused(&sim, d, &secret_file, &[], 1, &["`auth.client_secret_file`", "/nonexistent/secret"]).await;
    refused(&sim, d, &["--nonsense"], &[], 2, &["--nonsense"]).await;
    refused(&sim, d, &["--concurrency"], &[], 2, &["--concurrency"]).await;

    // Environment.
    type Env<'a> = &'a [(&'a str, &'a str)];
    let envs: [(Env, &[&str]); 7] = [
        (&[("MDE_TENANT_ID", "bad")], &["`auth.tenant_id`", "`bad`", "GUID"]),
        (&[("MDE_CLIENT_ID", "bad")], &["`auth.client_id`", "`bad`", "GUID"]),
        (&[("MDE_API_BASE", "ftp://x")], &["`api.base_url`", "`ftp://x`"]),
        (&[("MDE_AUTHORITY", "http://login.example.com")], &["`auth.authority`", "`http://login.example.com`"]),
        (&[("MDE_COMMENT", "   ")], &["`run.comment`"]),
        (&[("MDE_CONFIG", "/nonexistent/config.toml")], &["/nonexistent/config.toml", "cannot read"]),
        (&[("MDE_TENANT_ID", "")], &["`auth.tenant_id`", "is required"]),
    ];
    for (env, says) in envs {
        refused(&sim, d, &[], env, 1, says).await;
    }

    // Secret sources: named, never shown.
    refused(&sim, d, &[], &[("MDE_CLIENT_SECRET", "two words")], 1, &["`MDE_CLIENT_SECRET`", "spaces"]).await;
    refused(&sim, d, &[], &[("MDE_CLIENT_SECRET", "")], 1, &["`auth.client_secret`", "MDE_CLIENT_SECRET"]).await;
    let empty = write_file(d, "empty-secret.txt", "");
    refused(
        &sim,
        d,
        &["--client-secret-file", empty.to_str().unwrap()],
        &[],
        1,
        &["`auth.client_secret_file`", "empty"],
    )
    .await;
    let two_lines = write_file(d, "two-lines.txt", "first\nsecond\n");
    refused(&sim, d, &["--client-secret-file", two_lines.to_str().unwrap()], &[], 1, &["`auth.client_secret_file`"])
        .await;

    let stats = sim.stats();
    assert!(stats.calls.is_empty(), "the service was called: {:?}", stats.calls);
    sim.shutdown().await;
}
