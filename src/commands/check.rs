//! `mde-offboard check`: the first thing to run against a tenant. It validates the settings, signs in,
//! compares the token's roles (or, for a person, the account's scopes) with what each kind of run needs,
//! makes one cheap read call, and says in plain words what is wrong. It changes nothing in the tenant.
//!
//! Exit 0 when a default `run` (pre-flight on) would be allowed: signed in, `Machine.Offboard` and a read role
//! granted (the pre-flight reads the inventory and the open actions), the API host answers and accepts the
//! token; 1 otherwise. The roles are judged by the run's own check ([`preflight::check_permissions`]), so
//! `check` and `run` cannot disagree; the report also says what `--no-preflight` would change.

use std::time::Duration;

use tokio::time::Instant;

use crate::commands::run::Options;
use crate::commands::run::preflight::{self, OFFBOARD_ROLE, READ_ROLES};
use crate::commands::session::Session;
use crate::defender::api::{PROBE, RetryPolicy};
use crate::defender::auth::PermissionKind;
use crate::defender::limiter::Limiter;
use crate::error::{Error, exit_code};
use crate::settings::{self, ApiArgs};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub settings: ApiArgs,
}

/// The report, line by line, and whether a default run would be allowed.
struct Report {
    text: String,
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    fn line(&mut self, label: &str, text: impl AsRef<str>) {
        self.text += &format!("  {label:<18} {}\n", text.as_ref());
    }

    fn finish(mut self) -> u8 {
        for note in &self.notes {
            self.text += &format!("  note: {note}\n");
        }
        let code = if self.problems.is_empty() {
            self.text += "Result: OK, a default run would be allowed.\n";
            exit_code::OK
        } else {
            for problem in &self.problems {
                self.text += &format!("  problem: {problem}\n");
            }
            self.text += "Result: NOT READY, a default run would not be allowed (see the problems above).\n";
            exit_code::CANNOT_RUN
        };
        crate::ui::output::stdout(&self.text);
        code
    }
}

/// Runs the check and prints the report; the exit code says whether a default run would be allowed.
pub async fn check(args: &CheckArgs, env: &(dyn Fn(&str) -> Option<String> + Sync)) -> Result<u8, Error> {
    let mut r = Report { text: "mde-offboard check\n".into(), problems: Vec::new(), notes: Vec::new() };
    let settings = match settings::resolve(&args.settings.clone().into(), env) {
        Ok(settings) => settings,
        Err(e) => {
            r.line("settings", "NOT VALID");
            r.problems.push(e.to_string());
            return Ok(r.finish());
        }
    };
    for warning in &settings.warnings {
        r.notes.push(warning.clone());
    }
    r.line("cloud", settings.cloud.name);
    r.line("API host", &settings.api_base);
    r.line("sign-in host", &settings.authority);
    r.line("scope", &settings.scope);
    let credentials = match settings.credentials() {
        Ok(credentials) => credentials,
        Err(e) => {
            r.line("credentials", "MISSING");
            r.problems.push(e.to_string());
            return Ok(r.finish());
        }
    };
    r.line("tenant", &credentials.tenant_id);
    r.line("app (client id)", &credentials.client_id);
    r.line("credential", credentials.credential.describe());

    // One cheap read through the usual path; few retries: this is a check, not a run. No run lock: it
    // makes one call.
    let policy = RetryPolicy { max_attempts: 2, retry_delay: Duration::from_millis(200) };
    let session =
        Session::with_policy(&settings, credentials, Limiter::new(&settings.rates, settings.quota_scope), policy)?;
    // A person's sign-in without a terminal would wait for a code nobody enters: reported, never waited for.
    if let Err(e) = session.require_person(true) {
        r.line("sign-in", "NOT POSSIBLE here");
        r.problems.push(e.to_string());
        return Ok(r.finish());
    }
    let started = Instant::now();
    // The roles are reported, not enforced: the report says what each kind of run would be allowed.
    let token = match session.sign_in(|_| Ok(())).await {
        Ok(token) => token,
        Err(e) => {
            r.line("sign-in", "FAILED");
            r.problems.push(e.to_string());
            return Ok(r.finish());
        }
    };
    let sign_in = started.elapsed();
    let bearer = token.bearer();
    let expiry = crate::settings::jwt::claim(bearer.trim_start_matches("Bearer "), "exp")
        .and_then(|e| e.parse::<u64>().ok())
        .map(|exp| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            format!(
                "; the token is valid for {}",
                humantime::format_duration(Duration::from_secs(exp.saturating_sub(now)))
            )
        })
        .unwrap_or_default();
    r.line("sign-in", format!("ok in {} ms{expiry}", sign_in.as_millis()));

    let granted = token.permissions().clone();
    let delegated = granted.kind == PermissionKind::Delegated;
    let has = |name: &str| granted.has(name);
    let read_role = READ_ROLES.iter().find(|r| has(r));
    let kind = granted.kind_word();
    if delegated {
        let account = token.account().unwrap_or("(the token names no account)");
        r.line("account", account.chars().filter(|c| !c.is_control()).collect::<String>());
    }
    let label = if delegated { "scopes (delegated)" } else { "roles" };
    if granted.names.is_empty() {
        r.line(label, "none found in the token");
    } else {
        r.line(label, granted.names.join(", "));
    }
    // Judged as `run` judges them: a default run, and one with --no-preflight.
    let default_run = preflight::check_permissions(&granted, &Options::default(), false);
    let bare_run = preflight::check_permissions(&granted, &Options { preflight: false, ..Options::default() }, false);
    let cost = "unknown machines and open actions then cost an offboard call each";
    r.line(
        "real run",
        match (&default_run, read_role) {
            (Ok(()), Some(read)) => format!("allowed ({OFFBOARD_ROLE}; {read} for the pre-flight and tracking)"),
            (Ok(()), None) => "allowed".to_string(),
            (Err(_), _) if bare_run.is_ok() => format!(
                "NOT allowed by default: the pre-flight (on by default) needs {} or {}",
                READ_ROLES[0], READ_ROLES[1]
            ),
            (Err(_), _) => format!("NOT allowed: needs {OFFBOARD_ROLE}"),
        },
    );
    r.line(
        "--no-preflight",
        match (&bare_run, &default_run) {
            (Ok(()), Ok(())) => format!("also allowed: skips the pre-flight's reads ({cost})"),
            (Ok(()), Err(_)) => format!("allowed: offboards without the pre-flight's reads ({cost}), without --wait"),
            (Err(_), _) => format!("NOT allowed: needs {OFFBOARD_ROLE}"),
        },
    );
    r.line(
        "dry run, tracking",
        match read_role {
            Some(read) => format!("allowed ({read})"),
            None => format!("NOT allowed: needs {} or {}", READ_ROLES[0], READ_ROLES[1]),
        },
    );
    let grant = format!("{}; then sign in again", granted.how_to_grant());
    if !has(OFFBOARD_ROLE) {
        r.problems.push(format!("the token does not hold the {kind} permission {OFFBOARD_ROLE}: {grant}"));
    } else if default_run.is_err() {
        r.problems.push(format!(
            "a default run reads the inventory and the open actions first (the pre-flight), which needs {} or {}, and \
             the token holds neither: {grant}. Until then `run --no-preflight` is allowed ({cost}), but not \
             --wait, `track` or --dry-run",
            READ_ROLES[0], READ_ROLES[1]
        ));
    }
    if delegated {
        r.notes.push(
            "signed in as a person: besides these scopes the account needs a Defender for Endpoint role that may \
             offboard (the \"Active remediation actions\" permission, e.g. Security Administrator or a custom role \
             with it) and access to the machines' device groups. The scopes allow the calls; the role and the \
             device groups decide each machine: a 403 on a machine means its device group is outside the \
             account's reach"
                .into(),
        );
    }
    let started = Instant::now();
    let answer = session.api().probe().await.answer;
    let took = started.elapsed().as_millis();
    match answer {
        Ok(reply) => r.line("API", format!("GET {PROBE} answered {} in {took} ms", reply.status)),
        Err(f) => match f.status {
            Some(403) => {
                r.line("API", format!("GET {PROBE} answered 403 {} in {took} ms: reachable, token accepted", f.code));
                if read_role.is_some() {
                    r.notes.push(format!("the API refused a read although the token holds a read role: {}", f.message));
                }
            }
            Some(401) => {
                r.line("API", format!("GET {PROBE} answered 401 in {took} ms: the token was refused"));
                r.problems.push(format!(
                    "the API host refused the token ({}); check that --cloud, --scope and --api-base belong to the same cloud",
                    f.message
                ));
            }
            Some(status) => {
                r.line("API", format!("GET {PROBE} answered {status} {} in {took} ms", f.code));
                r.problems.push(format!("the API answered {status} {}: {}", f.code, f.message));
            }
            None => {
                r.line("API", format!("UNREACHABLE after {took} ms"));
                r.problems.push(format!(
                    "cannot reach the API host {} ({}: {}); check --api-base or --cloud, and the network or proxy",
                    settings.api_base, f.code, f.message
                ));
            }
        },
    }
    Ok(r.finish())
}
