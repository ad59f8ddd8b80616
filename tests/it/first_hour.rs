//! The first hour of a new user (issue 18): help that reads at any width and shows each command its own
//! flags, completions and a manual page, the lists people really have, and errors that say what to do next.

use std::process::{Command, Stdio};

use crate::common::Output;

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
    for args in [&[][..], &["run"], &["track"]] {
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
