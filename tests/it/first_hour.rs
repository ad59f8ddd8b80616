//! The first hour of a new user (issue 18): help that reads at any width and shows each command its own
//! flags, completions and a manual page, the lists people really have, and errors that say what to do next.

use std::path::Path;
use std::process::{Command, Stdio};

use mde_sim::{Fleet, SimConfig, Simulator};

use crate::common::{Output, Results, mde_in, write_file};

/// `mde-offboard ARGS` with nothing from the caller's environment but `env`.
fn bare(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mde-offboard"));
    command.args(args).env_clear().stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The help of `args` (`--help` added) laid out for a terminal `columns` wide.
fn help(args: &[&str], columns: usize) -> String {
    let args: Vec<&str> = args.iter().copied().chain(["--help"]).collect();
    let out = bare(&args, &[("COLUMNS", &columns.to_string())]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

/// The lines of a help section, from its heading to the next blank line.
fn section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = help.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "no `{heading}` section in:\n{help}");
    lines.take_while(|l| !l.is_empty()).collect()
}

#[test]
fn the_exit_codes_block_survives_80_and_120_columns() {
    let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    for args in [&[][..], &["run"], &["track"], &["cancel"]] {
        for columns in [80, 120] {
            let help = help(args, columns);
            let block: Vec<&str> = help.lines().skip_while(|l| *l != "Exit codes:").collect();
            assert!(!block.is_empty(), "no exit codes in `{args:?} --help`:\n{help}");
            for line in &block[1..] {
                // A code and its text, or the text going on under the text: never a line broken elsewhere.
                let code_line = line.len() > 2 && line[2..].starts_with(|c: char| c.is_ascii_digit());
                let continued = line.starts_with("       ") && !line[7..].starts_with(' ');
                assert!(
                    line.starts_with("  ") && (code_line || continued) && line.len() <= columns,
                    "`{args:?} --help` at {columns} columns breaks a line of the exit codes: {line:?}\n{help}"
                );
            }
            assert_eq!(words(&block.join("\n")), words(mde_offboard::cli::EXIT_CODES));
        }
    }
}

#[test]
fn each_command_shows_only_the_flags_it_uses() {
    // Tracking retries its reads (--max-attempts, --retry-delay); `check` makes one call with its own policy.
    let retries = ["--max-attempts", "--retry-delay"];
    let cases = [
        ("run", &["--comment", "--concurrency", "--max-attempts", "--retry-delay"][..], &[][..]),
        ("track", &retries[..], &["--comment", "--concurrency"][..]),
        ("check", &[][..], &["--comment", "--concurrency", "--max-attempts", "--retry-delay"][..]),
        ("cancel", &["--comment", "--max-attempts"][..], &["--concurrency"][..]),
        ("tag", &["--max-attempts"][..], &["--comment", "--concurrency"][..]),
    ];
    for (command, shown, not_shown) in cases {
        let help = help(&[command], 120);
        for flag in shown.iter().chain(&["--tenant-id", "--certificate", "--api-base"]) {
            assert!(help.contains(&format!("{flag} ")), "`{command} --help` lacks {flag}:\n{help}");
        }
        for flag in not_shown {
            assert!(!help.contains(flag), "`{command} --help` shows {flag}, which it does not use:\n{help}");
        }
    }
}

#[test]
fn global_options_have_their_own_heading() {
    for args in [&[][..], &["run"], &["check"], &["simulate"]] {
        let help = help(args, 120);
        let global = section(&help, "Global options:").join("\n");
        for flag in ["--verbose", "--quiet", "--log-format"] {
            assert!(global.contains(flag), "`{args:?} --help` has {flag} outside its global options:\n{help}");
        }
        if help.lines().any(|l| l == "Options:") {
            let own = section(&help, "Options:").join("\n");
            assert!(!own.contains("--verbose") && !own.contains("--log-format"), "{help}");
        }
    }
}

#[test]
fn usage_in_errors_leaves_out_flags_taken_from_the_environment() {
    let env = [("MDE_COMMENT", "retired"), ("MDE_TENANT_ID", "contoso.onmicrosoft.com"), ("MDE_CLOUD", "us")];
    for args in [&["run"][..], &["run", "a.csv", "--bogus"]] {
        let out = bare(args, &env);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("Usage: mde-offboard run [OPTIONS] <INPUT>"), "{}", out.stderr);
        for flag in ["--comment", "--tenant-id", "--cloud"] {
            assert!(!out.stderr.contains(flag), "the usage lists {flag}, set in the environment:\n{}", out.stderr);
        }
    }
}

#[test]
fn simulate_help_shows_list_defaults_as_they_are_written() {
    let help = help(&["simulate"], 200);
    let platforms = mde_sim::DEFAULT_UNSUPPORTED_PLATFORMS.join(",");
    let roles = mde_sim::DEFAULT_ROLES.join(",");
    for default in [platforms, roles] {
        assert!(help.contains(&format!("[default: {default}]")), "no `[default: {default}]` in:\n{help}");
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    let marks = [
        ("bash", "complete -F _mde__offboard"),
        ("zsh", "#compdef mde-offboard"),
        ("fish", "complete -c mde-offboard"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[mde-offboard]"),
    ];
    for (shell, mark) in marks {
        let out = bare(&["completions", shell], &[]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains(mark), "{shell}: no `{mark}` in:\n{}", out.stdout);
        // The subcommands and their own flags are completed.
        assert!(out.stdout.contains("by-name") && out.stdout.contains("wait-timeout"), "{shell}:\n{}", out.stdout);
    }
    let out = bare(&["completions", "tcsh"], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn the_manual_page_is_generated() {
    let out = bare(&["manpage"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(".TH mde-offboard 1"), "{}", out.stdout);
    for text in ["run", "track", "check", "completions", "Exit codes"] {
        assert!(out.stdout.contains(text), "the page lacks {text}:\n{}", out.stdout);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = bare(&["manpage", "--dir", dir.path().to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for page in ["mde-offboard.1", "mde-offboard-run.1", "mde-offboard-track.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}:\n{text}");
    }
}

/// A fleet file of machines `(id, name, Entra device id)`, all offboardable (none reported recently), for
/// [`Fleet::from_csv`].
fn fleet_of(dir: &Path, machines: &[(&str, &str, &str)]) -> Fleet {
    let mut text = String::from("id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName,aadDeviceId\n");
    for (id, name, aad) in machines {
        text += &format!("{id},{name},Windows11,Active,2025-01-01T00:00:00Z,Workstations,{aad}\n");
    }
    Fleet::from_csv(&write_file(dir, "fleet.csv", &text)).unwrap()
}

const ID1: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
const ID2: &str = "2f6cd0e8f524eee8013d3043f529813c95e1dd18";
const ID3: &str = "3a7de1f9a635fff9124e4154a63a924da6f2ee29";
const AAD1: &str = "6b1f0c2e-93b4-4d57-8e1a-2c3d4e5f6a71";
const AAD_SHARED: &str = "7c2a1d3f-a4c5-4e68-9f2b-3d4e5f6a7b82";

/// Three machines: ws-1 with AAD1, ws-2 and ws-3 carrying the same Entra device id (a reimaged device).
async fn three_machines(dir: &Path) -> Simulator {
    let fleet = fleet_of(
        dir,
        &[(ID1, "ws-1.contoso.local", AAD1), (ID2, "ws-2.contoso.local", AAD_SHARED), (ID3, "ws-3", AAD_SHARED)],
    );
    Simulator::start(SimConfig { fleet, ..SimConfig::default() }).await.unwrap()
}

/// A dry run of `text` (written to `name`) with `args`: its exit, and its results when it wrote them.
async fn dry_run(sim: &Simulator, dir: &Path, name: &str, text: &str, args: &[&str]) -> (Output, Option<Results>) {
    let input = write_file(dir, name, text);
    let output = dir.join(format!("{name}.out.csv"));
    let mut all = vec!["run", input.to_str().unwrap(), "--dry-run", "--overwrite", "-o", output.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = mde_in(sim, dir, &all, "").await;
    let results = output.exists().then(|| Results::read(&output));
    (out, results)
}

fn outcomes(results: &Results) -> Vec<(String, String)> {
    results.rows.iter().map(|r| (r["outcome"].clone(), r["machine_id"].clone())).collect()
}

fn pair(outcome: &str, id: &str) -> (String, String) {
    (outcome.to_string(), id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_list_of_names_works_with_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let sim = three_machines(dir.path()).await;
    let (out, results) = dry_run(&sim, dir.path(), "names.txt", "ws-1\nWS-3\nnosuch\n", &["--by-name"]).await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let results = results.expect("results");
    assert_eq!(outcomes(&results), [pair("would_submit", ID1), pair("would_submit", ID3), pair("not_found", "")]);
    assert_eq!(results.line(1)["computer_dns_name"], "ws-1.contoso.local", "the first line is a name, not a header");
    // Without --by-name it says what to pass.
    let (out, _) = dry_run(&sim, dir.path(), "names.txt", "ws-1\nWS-3\n", &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("plain list of computer names") && out.stderr.contains("--by-name"), "{}", out.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usual_name_columns_of_exports_are_read_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let sim = three_machines(dir.path()).await;
    for header in ["ComputerName", "Computer Name", "Hostname", "DNS Name"] {
        let (out, results) = dry_run(&sim, dir.path(), "n.csv", &format!("Owner,{header}\nme,ws-1\n"), &[]).await;
        assert_eq!(out.code, 0, "{header}: {}\n{}", out.stdout, out.stderr);
        assert_eq!(outcomes(&results.unwrap()), [pair("would_submit", ID1)], "{header}");
    }
    // A column that only looks like names: the error says how to read it by name.
    let (out, _) = dry_run(&sim, dir.path(), "n.csv", "Owner,Asset Name\nme,ws-1\n", &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--by-name --id-column \"Asset Name\""), "{}", out.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_device_ids_are_resolved_through_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let sim = three_machines(dir.path()).await;
    let unknown = "8d3b2e4a-b5d6-4f79-a03c-4e5f6a7b8c93";
    let rows = format!("{}\n{AAD_SHARED}\n{unknown}\nnot-a-guid\n{{{}}}\n", AAD1.to_uppercase(), AAD1);
    let expected = [
        pair("would_submit", ID1),
        pair("ambiguous", ""),
        pair("not_found", ""),
        pair("invalid_id", "not-a-guid"),
        pair("duplicate", AAD1),
    ];
    for header in ["AzureADDeviceId", "aadDeviceId", "Entra Device ID", "Azure AD Device ID"] {
        let text = format!("Device name,{header}\n{}", rows.lines().map(|r| format!("x,{r}\n")).collect::<String>());
        let (out, results) = dry_run(&sim, dir.path(), "aad.csv", &text, &[]).await;
        assert_eq!(out.code, 3, "{header}: {}\n{}", out.stdout, out.stderr);
        let results = results.unwrap();
        let got = outcomes(&results);
        assert_eq!(got[..4], expected[..4], "{header}");
        assert_eq!(got[4].0, "duplicate", "{header}");
        let ambiguous = results.line(3);
        assert!(ambiguous["error_message"].contains(ID2) && ambiguous["error_message"].contains(ID3), "{ambiguous:?}");
        assert!(ambiguous["error_message"].contains("this Entra device id names 2 machines"), "{ambiguous:?}");
        assert!(results.line(4)["error_message"].contains("has this Entra device id"), "{:?}", results.line(4));
    }
    // A plain list with --by-aad-device-id.
    let (out, results) = dry_run(&sim, dir.path(), "aad.txt", &rows, &["--by-aad-device-id"]).await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(outcomes(&results.unwrap())[..4], expected[..4]);
    // A real run offboards the machine the id names, once, and guesses none of the others.
    let input = write_file(dir.path(), "real.txt", &format!("{AAD1}\n{AAD_SHARED}\n"));
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes", "--by-aad-device-id"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let calls = sim.stats().offboard_calls;
    assert_eq!(calls.keys().collect::<Vec<_>>(), [ID1], "{calls:?}");
    // Without the flag, a GUID where an id was expected says what to pass: as a plain list, and in an id column.
    let (out, _) = dry_run(&sim, dir.path(), "aad.txt", &rows, &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--by-aad-device-id"), "{}", out.stderr);
    let (out, results) = dry_run(&sim, dir.path(), "ids.csv", &format!("MachineId\n{AAD1}\n"), &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let row = results.unwrap().line(2).clone();
    assert_eq!(row["outcome"], "invalid_id");
    assert!(row["error_message"].contains("--by-aad-device-id"), "{row:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semicolon_and_tab_separated_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let sim = three_machines(dir.path()).await;
    for (text, args) in [
        (format!("Device Name;MachineId\n\"a;b\";{ID1}\n"), &[][..]),
        (format!("Device Name\tMachineId\nws-1\t{ID1}\n"), &[][..]),
        (format!("Owner|MachineId\nme|{ID1}\n"), &["--delimiter", "|"][..]),
        (format!("Owner;Device Name\tMachineId\nme;x\t{ID1}\n"), &["--delimiter", "tab"][..]),
    ] {
        let (out, results) = dry_run(&sim, dir.path(), "sep.csv", &text, args).await;
        assert_eq!(out.code, 0, "{text:?}: {}\n{}", out.stdout, out.stderr);
        assert_eq!(outcomes(&results.unwrap()), [pair("would_submit", ID1)], "{text:?}");
    }
    // A separator other than the one given is named, with the flag that reads it.
    let (out, _) =
        dry_run(&sim, dir.path(), "sep.csv", &format!("Owner;MachineId\nme;{ID1}\n"), &["--delimiter", ","]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("separated by `;`; pass --delimiter ';'"), "{}", out.stderr);
    let out = bare(&["run", "x.csv", "--delimiter", "ab"], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--delimiter"), "{}", out.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_without_rows_signs_in_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = three_machines(dir.path()).await;
    let input = write_file(dir.path(), "empty.csv", "MachineId\n\n");
    for args in [&["--yes"][..], &["--dry-run"]] {
        let mut all = vec!["run", input.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = mde_in(&sim, dir.path(), &all, "").await;
        assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("no machines in the input"), "{}", out.stderr);
    }
    assert_eq!(sim.stats().requests, 0, "nothing is signed in to or called");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_id_is_echoed_cut_and_a_huge_field_stops_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let sim = three_machines(dir.path()).await;
    let long = "x".repeat(5000);
    let (out, results) = dry_run(&sim, dir.path(), "long.csv", &format!("MachineId\n{long}\n{ID1}\n"), &[]).await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let row = results.unwrap().line(2).clone();
    assert_eq!(row["outcome"], "invalid_id");
    assert!(row["machine_id"].starts_with(&"x".repeat(100)), "{row:?}");
    assert!(row["machine_id"].len() < 160 && row["machine_id"].contains("cut: 5000 characters"), "{row:?}");

    let before = sim.stats().requests;
    let huge = "y".repeat(mde_offboard::input::FIELD_MAX + 1);
    let (out, results) = dry_run(&sim, dir.path(), "huge.csv", &format!("MachineId\n{ID1}\n{huge}\n"), &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("line 3") && out.stderr.contains("not a machine list"), "{}", out.stderr);
    assert!(out.stderr.len() < 1000, "the field is not echoed");
    assert!(results.is_none());
    assert_eq!(sim.stats().requests, before, "no call");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_used_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sim = three_machines(dir.path()).await;
    let input = write_file(dir.path(), "m.csv", &format!("MachineId\n{ID1}\n"));
    let run = |extra: &'static [&'static str]| {
        let mut args = vec!["run", input.to_str().unwrap(), "--yes"];
        args.extend_from_slice(extra);
        let (sim, dir) = (&sim, dir.path());
        async move { mde_in(sim, dir, &args, "").await }
    };
    let out = run(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The results of this list: --resume continues them.
    let out = run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("earlier run of this list: pass --resume"), "{}", out.stderr);
    // Another list's results: no --resume.
    let other = write_file(dir.path(), "other.csv", &format!("MachineId\n{ID2}\n"));
    let out = mde_in(&sim, dir.path(), &["run", other.to_str().unwrap(), "--yes", "-o", "m.results.csv"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("pass --overwrite") && !out.stderr.contains("--resume"), "{}", out.stderr);
    // A missing folder is named, not the probe's temporary file.
    let out = run(&["-o", "no/such/r.csv"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("the folder no/such does not exist") && !out.stderr.contains(".tmp"), "{}", out.stderr);
    // A directory is said at once, with or without --overwrite.
    std::fs::create_dir(dir.path().join("d")).unwrap();
    for extra in [&["-o", "d"][..], &["-o", "d", "--overwrite"]] {
        let out = run(extra).await;
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("is a directory"), "{}", out.stderr);
    }
    sim.shutdown().await;
}

/// Runs `run m.csv --yes ARGS` (m.csv: one id) with the environment of `env` only (no sign-in settings).
fn run_bare(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    write_file(dir, "m.csv", &format!("MachineId\n{ID1}\n"));
    let input = dir.join("m.csv");
    let mut all = vec!["run", input.to_str().unwrap(), "--yes"];
    all.extend_from_slice(args);
    let state = dir.to_str().unwrap();
    let env: Vec<(&str, &str)> = env.iter().copied().chain([("MDE_STATE_DIR", state)]).collect();
    bare(&all, &env)
}

#[test]
fn every_missing_setting_is_said_in_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bare(dir.path(), &[], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    for key in ["auth.tenant_id", "auth.client_id", "auth.client_secret", "run.comment"] {
        assert!(out.stderr.contains(key), "{key} is not said:\n{}", out.stderr);
    }
    assert_eq!(out.stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{}", out.stderr);
    let out = bare(&["check"], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    for key in ["auth.tenant_id", "auth.client_id", "auth.client_secret"] {
        assert!(out.stdout.contains(key), "{key} is not said:\n{}", out.stdout);
    }
}

#[test]
fn the_placeholder_ids_of_the_example_config_are_refused_before_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    // The sign-in host is a closed port: the refusal must come before any attempt to reach it.
    let env = [("MDE_CLIENT_SECRET", "s3cret"), ("MDE_AUTHORITY", "http://127.0.0.1:9")];
    let out = run_bare(dir.path(), &["--config", example.to_str().unwrap()], &env);
    assert_eq!(out.code, 1, "{}", out.stderr);
    for said in ["replace the placeholder tenant id", "replace the placeholder client id"] {
        assert!(out.stderr.contains(said), "{}", out.stderr);
    }
    assert!(!out.stderr.contains("sign-in"), "it tried to sign in:\n{}", out.stderr);
}

#[test]
fn a_bad_value_names_the_flag_or_the_config_key_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("MDE_TENANT_ID", "contoso.onmicrosoft.com"), ("MDE_CLIENT_ID", mde_sim::DEMO_CLIENT_ID)];
    let env: Vec<(&str, &str)> = env.into_iter().chain([("MDE_CLIENT_SECRET", "s"), ("MDE_COMMENT", "c")]).collect();
    for (flag, value, key) in [
        ("--concurrency", "0", "run.concurrency"),
        ("--timeout", "soon", "api.timeout"),
        ("--max-attempts", "0", "run.max_attempts"),
        ("--cloud", "mars", "api.cloud"),
    ] {
        let out = run_bare(dir.path(), &[flag, value], &env);
        assert_eq!(out.code, 2, "{flag}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("invalid value for {flag}: `{value}`")), "{}", out.stderr);
        let (section, name) = key.split_once('.').unwrap();
        let config = write_file(dir.path(), "c.toml", &format!("[{section}]\n{name} = \"{value}\"\n"));
        let out = run_bare(dir.path(), &["--config", config.to_str().unwrap()], &env);
        assert_eq!(out.code, 1, "{key}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("`{key}`")) && !out.stderr.contains(flag), "{}", out.stderr);
    }
}

#[test]
fn invalid_toml_says_the_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "c.toml", "[run]\nconcurrency = 4\ncomment = \"unclosed\n");
    let out = run_bare(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not valid TOML at line 3, column"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_says_it_uses_its_built_in_list() {
    let dir = tempfile::tempdir().unwrap();
    let out = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mde-offboard"));
        command.args(["demo", "--time-scale", "1000", "-o", "d.csv"]).current_dir(dir.path()).env_clear();
        tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("the demo's built-in sample list") && !stderr.contains("samples/machines.csv"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_says_it_is_stopping() {
    use std::io::BufRead;
    for signal in ["-INT", "-TERM"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mde-offboard"))
            .args(["simulate", "--listen", "127.0.0.1:0", "--fleet-size", "5"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "{line}");
        crate::common::kill(&child, signal);
        let out = crate::common::wait(child).await;
        assert_eq!(out.code, 0, "{signal}: {}", out.stderr);
        assert!(out.stderr.contains("stopping the simulator"), "{signal}: {}", out.stderr);
        assert!(!out.stderr.contains("calls in flight"), "{signal}: {}", out.stderr);
    }
}
