//! The errors that stop a whole run, and the exit codes a scheduler sees.
//!
//! Per-machine failures are never an `Error`: they are results rows. An `Error` means the run itself could
//! not go on (settings, sign-in, input, output), and each variant carries what a user needs to fix it.

use std::path::PathBuf;

/// Exit codes, documented in README and `--help`.
pub mod exit_code {
    /// Every row ended `submitted`, `already_pending`, `already_offboarded` or `duplicate` (a dry run:
    /// `would_submit` too).
    pub const OK: u8 = 0;
    /// The run could not run: settings, sign-in, a missing permission, the pre-flight's reads, input or output.
    pub const CANNOT_RUN: u8 = 1;
    /// The command line was wrong, or a confirmation was needed and could not be asked.
    pub const USAGE: u8 = 2;
    /// The run finished, but some rows did not end well.
    pub const SOME_FAILED: u8 = 3;
    /// The run stopped part way for a reason other than a signal (an output failure, sign-in refused for
    /// good, the API refusing the token, a read it could not complete): the results so far are valid, and
    /// `--resume` continues.
    pub const STOPPED: u8 = 4;
    /// Interrupted by Ctrl-C or SIGTERM.
    pub const INTERRUPTED: u8 = 130;
}

/// Why a run could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {}: {message}", path.display())]
    ConfigFile { path: PathBuf, message: String },

    #[error("setting `{key}`: {message}")]
    Setting { key: &'static str, message: String },

    /// Several settings at once (all that is missing, so that one attempt shows everything to fix).
    #[error("{} settings need fixing: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Settings(Vec<Error>),

    #[error("input {}: {message}", path.display())]
    Input { path: PathBuf, message: String },

    #[error("output {}: {message}", path.display())]
    Output { path: PathBuf, message: String },

    /// A file the command writes could not be written; the system's (or the CSV writer's) error is kept.
    #[error("output {}: cannot {action}: {source}", path.display())]
    Write {
        path: PathBuf,
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("sign-in failed: {0}")]
    Auth(#[source] AuthError),

    /// The API refused every renewed token: signing in works, but its tokens are not ones the API takes.
    #[error(transparent)]
    TokenRefused(AuthError),

    /// The token lacks an application permission the run needs; found before any API call.
    #[error("missing permission: {0}")]
    Permission(String),

    /// The API refused a read the command needs (403, or 401 to a token just renewed): the app lacks the
    /// permission `needs` names.
    #[error("missing permission: the API refused to {what} ({status} {code}: {message}); {needs}")]
    ReadRefused { what: &'static str, status: u16, code: String, message: String, needs: &'static str },

    /// The pre-flight or dry run could not read the inventory or the open actions.
    #[error("pre-flight: {0}")]
    Preflight(String),

    #[error("{0}")]
    Usage(String),

    /// `select` could not read the inventory to its end (nothing was written).
    #[error("select: {0}")]
    Select(String),

    #[error("simulator: {0}")]
    Simulator(String),

    /// The simulator could not be set up or started (`simulate`, `demo`).
    #[error(transparent)]
    Sim(#[from] mde_sim::Error),

    #[error("{0}")]
    Busy(String),

    #[error("cannot resume {}: {message}", path.display())]
    Resume { path: PathBuf, message: String },

    #[error("interrupted")]
    Interrupted,

    /// The run had started calling the API (or writing rows) when this stopped it: what was written is
    /// valid, and `--resume` continues. Exits [`exit_code::STOPPED`].
    #[error("stopped part way: {0}; the results so far are valid, and --resume continues")]
    Stopped(Box<Error>),

    /// `run --wait`: the run's offboards are done and in the results file, then tracking them stopped
    /// (a read refused, sign-in failed for good). Exits [`exit_code::STOPPED`], never 1: exit 1 says
    /// nothing was offboarded.
    #[error(
        "the offboards are done and in {}, but tracking them stopped: {source}; `mde-offboard track {}` follows them again",
        results.display(),
        results.display()
    )]
    TrackingStopped { results: PathBuf, source: Box<Error> },
}

impl Error {
    /// [`Error::Write`]: `action` (a verb and what it acts on, "write a row") failed on `path`.
    pub fn write(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Write { path: path.into(), action: action.into(), source: source.into() }
    }
}

impl From<AuthError> for Error {
    /// A sign-in that failed, or tokens the API refuses.
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::ApiRefusesToken { .. } => Error::TokenRefused(e),
            e => Error::Auth(e),
        }
    }
}

/// Why a token could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Entra ID answered with an error: wrong secret, unknown app, wrong tenant, ...
    #[error("Entra ID refused the sign-in ({code}{error}): {hint}{detail}")]
    Refused { code: String, error: String, hint: String, detail: String },
    /// The token endpoint could not be reached or kept failing.
    #[error("cannot reach the sign-in endpoint {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The ready access token (from the environment variable `env`) expired, or the API refused it: it
    /// cannot be renewed.
    #[error(
        "the access token from {env} {why}; get a new token and run again, or sign in with a secret or certificate instead (unset {env})"
    )]
    TokenExpired { env: &'static str, why: String },
    /// The client assertion could not be made.
    #[error("cannot sign in with the certificate: {0}")]
    Certificate(String),
    /// The token endpoint answered a redirect; it is never followed, so the form (and its secret or
    /// assertion) went nowhere else.
    #[error(
        "the sign-in endpoint {url} answered {status}, redirecting to {to}; redirects are not followed and nothing was sent there: check --authority (or --cloud)"
    )]
    Redirected { url: String, status: u16, to: String },
    /// The token endpoint answered something that is not a token answer.
    #[error("the sign-in endpoint {url} gave an answer that is not a token: {message}")]
    BadAnswer { url: String, message: String },
    /// The API answered 401 to renewed tokens on several calls in a row: the token is not one it takes
    /// (made for another resource or cloud, or the app's consent is missing), and renewing again would not help.
    #[error(
        "the API refuses the token: {refused} calls in a row were answered 401 (Unauthorized) with a token just renewed; \
         check that --scope, --authority and --api-base (or --cloud) belong to the same cloud, and that the app's \
         API permissions were granted admin consent in this tenant"
    )]
    ApiRefusesToken { refused: u32 },
    /// A person's sign-in could not be renewed: Entra ID refused the refresh token (revoked, expired, a
    /// password change). Never a new prompt mid-run: the command stops as a failed sign-in.
    #[error(
        "the sign-in could not be renewed, as Entra ID refused the refresh token ({why}); a person must sign in again with --device-code"
    )]
    RefreshRefused {
        #[source]
        why: Box<AuthError>,
    },
    /// The person declined the sign-in request at the device code page.
    #[error(
        "the sign-in was declined at {page}: nothing was done; run again and approve the request, or ask whoever manages the app registration why the account may not use it"
    )]
    DeviceCodeDeclined { page: String },
    /// Nobody entered the code in time.
    #[error(
        "the code was not entered within {within}, and it has expired: nothing was done; run again and enter the new code"
    )]
    DeviceCodeExpired { within: String },
    /// Entra ID did not know the device code it was polled with.
    #[error("Entra ID did not recognise the device code (bad_verification_code): nothing was done; run again")]
    DeviceCodeUnknown,
    /// A person's sign-in needs a code entered, and nobody is at a terminal to enter it.
    #[error(
        "signing in as a person needs a new code entered in a browser, and there is no terminal (stdin) to show it on; sign in once at a terminal with --token-cache FILE, then run with --yes --token-cache FILE"
    )]
    NeedsPerson,
    /// The token cache file could not be read, written, or is not safe to use.
    #[error("token cache {}: {message}", path.display())]
    TokenCache { path: PathBuf, message: String },
}

impl Error {
    /// The exit code this error ends the process with.
    /// The errors as one: none, the one, or [`Error::Settings`] holding them all.
    pub fn all(errors: impl IntoIterator<Item = Error>) -> Option<Error> {
        let mut errors: Vec<Error> = errors
            .into_iter()
            .flat_map(|e| match e {
                Error::Settings(several) => several,
                e => vec![e],
            })
            .collect();
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Error::Settings(errors)),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit_code::USAGE,
            Error::Interrupted => exit_code::INTERRUPTED,
            Error::Stopped(_) | Error::TrackingStopped { .. } => exit_code::STOPPED,
            _ => exit_code::CANNOT_RUN,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Exit 1 says nothing was offboarded: a `run --wait` whose tracking fails after the offboards must
    /// not say it (before, it exited 1).
    #[test]
    fn tracking_that_stops_after_the_offboards_exits_4() {
        let refused = Error::Permission("the API refused to list machine actions".into());
        assert_eq!(refused.exit_code(), exit_code::CANNOT_RUN);
        let after_run = Error::TrackingStopped { results: PathBuf::from("m.results.csv"), source: Box::new(refused) };
        assert_eq!(after_run.exit_code(), exit_code::STOPPED);
        let text = after_run.to_string();
        assert!(text.contains("offboards are done") && text.contains("mde-offboard track m.results.csv"), "{text}");
    }
}
