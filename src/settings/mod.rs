//! Settings: command-line flags, environment and config file, resolved and validated once.
//!
//! Precedence is flag > environment variable > config file (`--config FILE`, TOML) > default. Everything a
//! later stage needs is checked here, so the rest of the program works with plain values: a wrong key or
//! value is reported with the key, the value and what is allowed, before any network call.

pub mod certificate;
pub mod cloud;
pub mod jwt;
pub mod tenants;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::settings::certificate::{AssertionAlg, ClientCertificate};
use crate::settings::cloud::Cloud;

/// Where Entra ID signs in commercial-cloud apps (Microsoft's documentation).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The v2 scope of the Defender for Endpoint API (Microsoft's documentation).
pub const DEFAULT_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";
/// The current Defender for Endpoint API host (Microsoft's documentation).
pub const DEFAULT_API_BASE: &str = "https://api.security.microsoft.com";
/// The quotas of the offboard and machine APIs: 100 calls a minute and 1,500 an hour (Microsoft's documentation).
pub const DEFAULT_RATES: [&str; 2] = ["100/1m", "1500/1h"];
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONCURRENCY: usize = 4;
/// A list of several tenants: tenants run at once (`run.tenant_concurrency`), each with its own quotas.
pub const DEFAULT_TENANT_CONCURRENCY: usize = 8;
/// A list of several tenants: calls at once across the tenants (`run.calls_at_once`). 64 calls at once keep up
/// with the quotas of some 190 tenants at 200 ms a call; unset, the bound starts there and doubles while calls
/// wait for it rather than their quotas ([`crate::defender::calls_at_once`]).
pub const DEFAULT_CALLS_AT_ONCE: usize = 64;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The tenant and client ids of config.example.toml, to be replaced.
const PLACEHOLDER_GUID: &str = "00000000-0000-0000-0000-000000000000";
/// How recently a machine may have reported and still be offboarded: two of the API's `lastSeen` reports,
/// which come about daily.
pub const DEFAULT_ACTIVE_WITHIN: Duration = Duration::from_secs(48 * 3600);
/// The environment variable that normally holds the client secret (never a flag: flags show in `ps`).
pub const SECRET_ENV: &str = "MDE_CLIENT_SECRET";
/// The environment variable that may hold a ready access token (used as is, never renewed).
pub const ACCESS_TOKEN_ENV: &str = "MDE_ACCESS_TOKEN";

/// The longest quota period taken: the API's quotas are per minute and per hour, and a call holds its slot
/// in the limiter for one period after its answer, so a longer period only stalls a run (and the rate
/// limiter cannot represent periods of centuries).
pub const RATE_PERIOD_MAX: Duration = Duration::from_secs(24 * 3600);

/// A quota: at most `limit` calls in any window of `period` (above zero, at most [`RATE_PERIOD_MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected N/PERIOD, for example 100/1m, 1500/1h or 100/600ms";
        let (n, period_text) = s.trim().split_once('/').ok_or_else(|| expected.to_string())?;
        let limit: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{n}` is not a whole number above 0; {expected}"))?;
        let period = humantime::parse_duration(period_text.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("`{period_text}` is not a period above zero; {expected}"))?;
        if period > RATE_PERIOD_MAX {
            return Err(format!(
                "the period `{}` is longer than a day; the API's quotas are per minute and per hour ({expected})",
                period_text.trim()
            ));
        }
        Ok(Rate { limit, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, humantime::format_duration(self.period))
    }
}

/// How the service counts the quotas, as the limiter assumes it (`run.quota_scope`, `--quota-scope`).
///
/// Each API's page states its own limits, which reads as one budget per API (`Api`, the default); `App`
/// counts every call of the app registration against one budget (today's safe reading). A run under `Api`
/// switches to `App` on a 429 its per-API budget cannot explain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuotaScope {
    #[default]
    Api,
    App,
}

impl QuotaScope {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaScope::Api => "api",
            QuotaScope::App => "app",
        }
    }
}

impl FromStr for QuotaScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "api" => Ok(QuotaScope::Api),
            "app" => Ok(QuotaScope::App),
            _ => Err("api (one budget per API, as documented) or app (one budget for every call)".into()),
        }
    }
}

/// A secret value: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The flags of sign-in and the API: flattened into every subcommand that talks to the service.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Sign-in and API")]
pub struct ApiArgs {
    /// TOML config file (see config.example.toml). [env: MDE_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Entra ID tenant (directory) id. [config: auth.tenant_id] [env: MDE_TENANT_ID]
    #[arg(long, value_name = "ID")]
    pub tenant_id: Option<String>,
    /// Application (client) id of the app registration. [config: auth.client_id] [env: MDE_CLIENT_ID]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// File holding the client secret; otherwise it is read from MDE_CLIENT_SECRET. [config: auth.client_secret_file]
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// PEM file with the app's certificate: sign in with it instead of a secret. [config: auth.certificate] [env: MDE_CERTIFICATE]
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// PEM file with the certificate's private key (unencrypted; keep it chmod 600). [config: auth.private_key] [env: MDE_PRIVATE_KEY]
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Sign in as a person (delegated permission) with the device code flow: no secret or certificate; the
    /// app registration must allow public client flows. [config: auth.flow = "device_code"]
    #[arg(long)]
    pub device_code: bool,
    /// With --device-code: keep the refresh token in FILE (created owner-only; refused if others can read
    /// it), so later commands sign in without a new code. [config: auth.token_cache] [env: MDE_TOKEN_CACHE]
    #[arg(long, value_name = "FILE")]
    pub token_cache: Option<PathBuf>,
    /// Client assertion form for certificate sign-in: ps256, or the older rs256. [config: auth.assertion] [default: ps256]
    #[arg(long, value_name = "ALG")]
    pub assertion: Option<String>,
    /// Cloud: commercial, us, eu, uk, au, swa, ina, gcc, gcc-high, dod; sets API host, sign-in host and scope. [config: api.cloud] [env: MDE_CLOUD] [default: commercial]
    #[arg(long, value_name = "NAME")]
    pub cloud: Option<String>,
    /// Entra ID sign-in host. [config: auth.authority] [env: MDE_AUTHORITY] [default: the cloud's, https://login.microsoftonline.com]
    #[arg(long, value_name = "URL")]
    pub authority: Option<String>,
    /// OAuth scope of the API. [config: auth.scope] [env: MDE_SCOPE] [default: the cloud's, https://api.securitycenter.microsoft.com/.default]
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Defender for Endpoint API host. [config: api.base_url] [env: MDE_API_BASE] [default: the cloud's, https://api.security.microsoft.com]
    #[arg(long = "api-base", value_name = "URL")]
    pub api_base: Option<String>,
    /// Time limit for one API call, e.g. 30s. [config: api.timeout] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// A quota N/PERIOD; repeat for several. Replaces the configured list. [config: run.rate] [default: 100/1m, 1500/1h]
    #[arg(long = "rate", value_name = "N/PERIOD")]
    pub rates: Vec<String>,
    /// How the service counts the quotas: api (one budget per API, as documented; a 429 that budget cannot
    /// explain switches the run to app) or app (one budget for every call). [config: run.quota_scope] [default: api]
    #[arg(long, value_name = "SCOPE")]
    pub quota_scope: Option<String>,
}

/// The flags only an offboarding run uses (`run`'s own; `track` and `check` do not show them).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RunSettingsArgs {
    /// Comment recorded with each offboard action (required by the API). [config: run.comment] [env: MDE_COMMENT]
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Machines worked on at once. [config: run.concurrency] [default: 4]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<String>,
}

/// The flags of retrying a call: for the commands that make many (`run`, `track`).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Sign-in and API")]
pub struct RetryArgs {
    /// Attempts at most of one call (a run then counts the machine as failed). [config: run.max_attempts] [default: 6]
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<String>,
    /// First wait before retrying a 5xx or a dropped connection; doubles each time, with jitter. [config: run.retry_delay] [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub retry_delay: Option<String>,
}

/// Every flag that feeds [`Settings`]: what `run` flattens. A command that does not offboard flattens
/// [`ApiArgs`] (and [`RetryArgs`] if it makes many calls) and resolves with the rest left to the config file
/// or the defaults.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SettingsArgs {
    #[command(flatten)]
    pub run: RunSettingsArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

impl From<ApiArgs> for SettingsArgs {
    fn from(api: ApiArgs) -> Self {
        SettingsArgs { api, ..Default::default() }
    }
}

/// Everything resolved and validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// Where the secret came from, for messages (never the secret itself).
    pub secret_source: Option<String>,
    /// The app's certificate and key, for certificate sign-in (preferred over a secret).
    pub certificate: Option<ClientCertificate>,
    /// A ready access token from MDE_ACCESS_TOKEN (preferred over both).
    pub access_token: Option<Secret>,
    /// Sign in as a person with the device code flow (`--device-code`): preferred over everything above.
    pub device_code: bool,
    /// Where the refresh token of a device code sign-in is kept between commands (`--token-cache`).
    pub token_cache: Option<PathBuf>,
    pub cloud: Cloud,
    pub authority: String,
    pub scope: String,
    pub api_base: String,
    pub timeout: Duration,
    pub comment: Option<String>,
    pub concurrency: usize,
    pub rates: Vec<Rate>,
    /// How the service counts `rates` (`run.quota_scope`).
    pub quota_scope: QuotaScope,
    /// A list of several tenants: how many tenants run at once (`run.tenant_concurrency`).
    pub tenant_concurrency: usize,
    /// A list of several tenants: calls at once across the tenants, at most (`run.calls_at_once`).
    pub calls_at_once: usize,
    /// Whether that bound is the default's, which grows while it rather than the quotas holds calls back
    /// (see [`crate::defender::calls_at_once`]); one set in the config file is kept to.
    pub calls_at_once_grows: bool,
    pub max_attempts: u32,
    pub retry_delay: Duration,
    /// The guard of live machines (`run`): machines seen within this long are `protected`.
    pub active_within: Duration,
    /// Machines with one of these tags, or in one of these device groups, are `protected`.
    pub protect_tags: Vec<String>,
    pub protect_groups: Vec<String>,
    /// The tag `run` adds to the machines it offboarded (`run.tag`; `run --tag` overrides it).
    pub tag: Option<String>,
    /// Things a user should hear about but that do not stop the run.
    pub warnings: Vec<String>,
}

/// What signing in needs, all present.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub tenant_id: String,
    pub client_id: String,
    pub credential: Credential,
    pub authority: String,
    pub scope: String,
}

/// How the app proves who it is.
#[derive(Clone, Debug)]
pub enum Credential {
    Secret(Secret),
    Certificate(ClientCertificate),
    /// A token obtained elsewhere: used until the API refuses it, never renewed.
    AccessToken(Secret),
    /// A person signs in (delegated permission) with the device code flow; no secret exists.
    DeviceCode(DeviceCodeSignIn),
}

/// A delegated permission of the Defender for Endpoint API (Microsoft's documentation): what the person's
/// token is asked for.
pub const DELEGATED_OFFBOARD: &str = "Machine.Offboard";
pub const DELEGATED_READ: &str = "Machine.Read.All";
/// Tags need it, as the application permission of the same name.
pub const DELEGATED_WRITE: &str = "Machine.ReadWrite.All";

/// Sign-in as a person with the device code flow: what to ask for, and where the refresh token is kept.
#[derive(Clone, Debug)]
pub struct DeviceCodeSignIn {
    /// The API's resource (the scope without `/.default`): the prefix of each delegated scope.
    pub resource: String,
    /// Ask for `Machine.Offboard` (commands that only read do not).
    pub offboard: bool,
    /// Ask for `Machine.Read.All` (the pre-flight, a dry run, tracking).
    pub read: bool,
    /// Ask for `Machine.ReadWrite.All` (tags: `run --tag`, `tag`).
    pub write: bool,
    /// `--token-cache FILE`.
    pub token_cache: Option<PathBuf>,
    /// A person is at a terminal to enter the code; set by the command (never by settings).
    pub person: bool,
}

impl DeviceCodeSignIn {
    /// The scopes asked for: the delegated permissions the command needs, and `offline_access` (a refresh
    /// token, so a run of hours never asks the person again).
    pub fn scope(&self) -> String {
        let mut scopes = Vec::new();
        if self.offboard {
            scopes.push(format!("{}/{DELEGATED_OFFBOARD}", self.resource));
        }
        if self.read || !(self.offboard || self.write) {
            scopes.push(format!("{}/{DELEGATED_READ}", self.resource));
        }
        if self.write {
            scopes.push(format!("{}/{DELEGATED_WRITE}", self.resource));
        }
        scopes.push("offline_access".into());
        scopes.join(" ")
    }
}

impl Credential {
    /// What kind of credential, in a few words, for messages.
    pub fn describe(&self) -> String {
        match self {
            Credential::Secret(_) => "client secret".into(),
            Credential::Certificate(c) => {
                format!("certificate (x5t#S256 {}, {} assertion)", c.thumbprint(), c.alg().as_str().to_uppercase())
            }
            Credential::AccessToken(_) => format!("access token from {ACCESS_TOKEN_ENV}"),
            Credential::DeviceCode(d) => match &d.token_cache {
                Some(path) => format!("a person, device code sign-in (refresh token kept in {})", path.display()),
                None => "a person, device code sign-in (tokens kept in memory only)".into(),
            },
        }
    }
}

impl Credentials {
    /// Narrows what a person's sign-in asks for to what the command needs; nothing for an app's sign-in.
    pub fn needing(mut self, offboard: bool, read: bool) -> Self {
        if let Credential::DeviceCode(d) = &mut self.credential {
            (d.offboard, d.read) = (offboard, read);
        }
        self
    }

    /// A person's sign-in also asks for the permission tags need (`run --tag`, `tag`); nothing for an app's.
    pub fn tagging(mut self) -> Self {
        if let Credential::DeviceCode(d) = &mut self.credential {
            d.write = true;
        }
        self
    }
}

/// The keys a config file may hold, by section.
const CONFIG_KEYS: &[(&str, &[&str])] = &[
    (
        "auth",
        &[
            "tenant_id",
            "client_id",
            "client_secret_file",
            "client_secret",
            "certificate",
            "private_key",
            "assertion",
            "authority",
            "scope",
            "flow",
            "token_cache",
        ],
    ),
    ("api", &["cloud", "base_url", "timeout"]),
    (
        "run",
        &[
            "comment",
            "concurrency",
            "rate",
            "quota_scope",
            "tenant_concurrency",
            "calls_at_once",
            "max_attempts",
            "retry_delay",
            "tag",
            "active_within",
            "protect_tags",
            "protect_groups",
        ],
    ),
];

/// Values read from a config file, still unvalidated strings keyed by `section.key`.
#[derive(Default)]
struct FileValues {
    path: Option<PathBuf>,
    values: Vec<(String, toml::Value)>,
}

impl FileValues {
    fn load(path: &Path) -> Result<Self> {
        let fail = |message: String| Error::ConfigFile { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e.span().map(|span| {
                let before = text.get(..span.start).unwrap_or(&text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            });
            fail(format!("not valid TOML{}: {}", at.unwrap_or_default(), e.message()))
        })?;
        let mut values = Vec::new();
        for (section, body) in table {
            let Some((_, keys)) = CONFIG_KEYS.iter().find(|(name, _)| *name == section) else {
                let known: Vec<_> = CONFIG_KEYS.iter().map(|(s, _)| format!("[{s}]")).collect();
                return Err(fail(format!("unknown section `{section}`; known sections are {}", known.join(", "))));
            };
            let toml::Value::Table(body) = body else {
                return Err(fail(format!("`{section}` must be a section ([{section}]), not a value")));
            };
            for (key, value) in body {
                if !keys.contains(&key.as_str()) {
                    return Err(fail(format!(
                        "unknown key `{section}.{key}`; keys in [{section}] are {}",
                        keys.join(", ")
                    )));
                }
                values.push((format!("{section}.{key}"), value));
            }
        }
        Ok(FileValues { path: Some(path.to_owned()), values })
    }

    fn get(&self, key: &str) -> Option<&toml::Value> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn wrong_type(&self, key: &str, wanted: &str) -> Error {
        Error::ConfigFile { path: self.path.clone().unwrap_or_default(), message: format!("`{key}` must be {wanted}") }
    }

    /// A string value; numbers are accepted where the key takes a number written either way.
    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| self.wrong_type(key, "a list of strings")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.wrong_type(key, "a list of strings")),
        }
    }
}

/// The environment variables that stand in for a flag not given. Read here, not by clap, so that what came
/// from a flag can be told from what came from the environment (clap's usage line in an error, and a bad
/// value's exit code, depend on it).
fn with_env(args: &SettingsArgs, env: &dyn Fn(&str) -> Option<String>) -> SettingsArgs {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut filled = args.clone();
    let (api, run) = (&mut filled.api, &mut filled.run);
    let fill = |slot: &mut Option<String>, name: &str| {
        if slot.is_none() {
            *slot = var(name);
        }
    };
    fill(&mut api.tenant_id, "MDE_TENANT_ID");
    fill(&mut api.client_id, "MDE_CLIENT_ID");
    fill(&mut api.cloud, "MDE_CLOUD");
    fill(&mut api.authority, "MDE_AUTHORITY");
    fill(&mut api.scope, "MDE_SCOPE");
    fill(&mut api.api_base, "MDE_API_BASE");
    fill(&mut run.comment, "MDE_COMMENT");
    for (slot, name) in [
        (&mut api.config, "MDE_CONFIG"),
        (&mut api.certificate, "MDE_CERTIFICATE"),
        (&mut api.private_key, "MDE_PRIVATE_KEY"),
        (&mut api.token_cache, "MDE_TOKEN_CACHE"),
    ] {
        if slot.is_none() {
            *slot = var(name).map(PathBuf::from);
        }
    }
    filled
}

/// A bad value given as a flag is a usage error naming the flag (exit 2); from the environment or the
/// config file it stays an error of the setting, named by its key. Files named by a flag that cannot be read
/// are not usage errors: the value is fine, the file is not.
fn as_flag_error(e: Error, flags: &SettingsArgs) -> Error {
    let Error::Setting { key, message } = e else { return e };
    let (api, run, retry) = (&flags.api, &flags.run, &flags.retry);
    let given = match key {
        "auth.tenant_id" => api.tenant_id.is_some().then_some("--tenant-id"),
        "auth.client_id" => api.client_id.is_some().then_some("--client-id"),
        "auth.assertion" => api.assertion.is_some().then_some("--assertion"),
        "api.cloud" => api.cloud.is_some().then_some("--cloud"),
        "auth.authority" => api.authority.is_some().then_some("--authority"),
        "auth.scope" => api.scope.is_some().then_some("--scope"),
        "api.base_url" => api.api_base.is_some().then_some("--api-base"),
        "api.timeout" => api.timeout.is_some().then_some("--timeout"),
        "run.rate" => (!api.rates.is_empty()).then_some("--rate"),
        "run.quota_scope" => api.quota_scope.is_some().then_some("--quota-scope"),
        "run.comment" => run.comment.is_some().then_some("--comment"),
        "run.concurrency" => run.concurrency.is_some().then_some("--concurrency"),
        "run.max_attempts" => retry.max_attempts.is_some().then_some("--max-attempts"),
        "run.retry_delay" => retry.retry_delay.is_some().then_some("--retry-delay"),
        _ => None,
    };
    match given {
        Some(flag) => Error::Usage(format!("invalid value for {flag}: {message}")),
        None => Error::Setting { key, message },
    }
}

/// Resolves `args` (the flags), the environment (through `env`) and the config file into [`Settings`].
pub fn resolve(args: &SettingsArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
    resolve_filled(&with_env(args, env), env).map_err(|e| as_flag_error(e, args))
}

fn resolve_filled(args: &SettingsArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
    let SettingsArgs { api: args, run, retry } = args;
    let file = match &args.config {
        Some(path) => FileValues::load(path)?,
        None => FileValues::default(),
    };
    let mut warnings = Vec::new();

    let pick = |flag: &Option<String>, key: &str| -> Result<Option<String>> {
        match flag {
            Some(v) => Ok(Some(v.clone())),
            None => file.string(key),
        }
    };

    let tenant_id = pick(&args.tenant_id, "auth.tenant_id")?.map(|v| check_tenant(&v)).transpose()?;
    let client_id = pick(&args.client_id, "auth.client_id")?.map(|v| check_client_id(&v)).transpose()?;

    let (client_secret, secret_source) = resolve_secret(args, &file, env, &mut warnings)?;
    let (certificate, access_token) =
        resolve_identity(args, &file, env, client_secret.as_ref().and(secret_source.as_deref()), &mut warnings)?;
    let cloud = match pick(&args.cloud, "api.cloud")? {
        Some(name) => name.parse::<Cloud>().map_err(|allowed| bad("api.cloud", &name, &allowed))?,
        None => Cloud::default(),
    };

    let authority =
        check_url("auth.authority", &pick(&args.authority, "auth.authority")?.unwrap_or(cloud.authority.into()))?;
    let scope = pick(&args.scope, "auth.scope")?.unwrap_or(cloud.scope.into());
    if scope.trim().is_empty() || scope.contains(char::is_whitespace) {
        return Err(bad("auth.scope", &scope, "a scope URL such as https://api.securitycenter.microsoft.com/.default"));
    }
    let device_code = match (args.device_code, file.string("auth.flow")?) {
        (true, _) => true,
        (false, None) => false,
        (false, Some(flow)) => match flow.trim() {
            "device_code" => true,
            "client_credentials" => false,
            _ => return Err(bad("auth.flow", &flow, "client_credentials (an app signs in) or device_code (a person)")),
        },
    };
    let token_cache = args.token_cache.clone().or(file.string("auth.token_cache")?.map(PathBuf::from));
    if let Some(path) = &token_cache {
        check_token_cache(path, device_code)?;
    }
    if device_code {
        if !scope.ends_with("/.default") {
            return Err(bad(
                "auth.scope",
                &scope,
                "with device code sign-in, the API's .default scope (the delegated scopes are made from it)",
            ));
        }
        for (unused, given) in [
            ("the client secret", client_secret.is_some()),
            ("the certificate", certificate.is_some()),
            (ACCESS_TOKEN_ENV, access_token.is_some()),
        ] {
            if given {
                warnings.push(format!("signing in as a person (--device-code): {unused} is not used"));
            }
        }
    }
    let api_base = check_url("api.base_url", &pick(&args.api_base, "api.base_url")?.unwrap_or(cloud.api_base.into()))?;
    let timeout = match pick(&args.timeout, "api.timeout")? {
        Some(v) => parse_duration("api.timeout", &v)?,
        None => DEFAULT_TIMEOUT,
    };
    let comment = pick(&run.comment, "run.comment")?;
    if let Some(c) = &comment
        && c.trim().is_empty()
    {
        return Err(bad("run.comment", c, "a non-empty text (the API requires a comment)"));
    }
    let concurrency = match pick(&run.concurrency, "run.concurrency")? {
        Some(v) => parse_number("run.concurrency", &v, 1, 256)? as usize,
        None => DEFAULT_CONCURRENCY,
    };
    let rate_texts = if !args.rates.is_empty() {
        args.rates.clone()
    } else {
        file.strings("run.rate")?.unwrap_or_else(|| DEFAULT_RATES.iter().map(|s| s.to_string()).collect())
    };
    let rates = rate_texts
        .iter()
        .map(|r| r.parse::<Rate>().map_err(|why| bad("run.rate", r, &why)))
        .collect::<Result<Vec<_>>>()?;
    let quota_scope = match pick(&args.quota_scope, "run.quota_scope")? {
        Some(v) => v.parse::<QuotaScope>().map_err(|allowed| bad("run.quota_scope", &v, &allowed))?,
        None => QuotaScope::default(),
    };
    let tenant_concurrency = match file.string("run.tenant_concurrency")? {
        Some(v) => parse_number("run.tenant_concurrency", &v, 1, 1024)? as usize,
        None => DEFAULT_TENANT_CONCURRENCY,
    };
    let (calls_at_once, calls_at_once_grows) = match file.string("run.calls_at_once")? {
        Some(v) => (parse_number("run.calls_at_once", &v, 1, 4096)? as usize, false),
        None => (DEFAULT_CALLS_AT_ONCE, true),
    };
    let max_attempts = match pick(&retry.max_attempts, "run.max_attempts")? {
        Some(v) => parse_number("run.max_attempts", &v, 1, 100)? as u32,
        None => DEFAULT_MAX_ATTEMPTS,
    };
    let retry_delay = match pick(&retry.retry_delay, "run.retry_delay")? {
        Some(v) => parse_duration("run.retry_delay", &v)?,
        None => DEFAULT_RETRY_DELAY,
    };

    let active_within = match file.string("run.active_within")? {
        Some(v) => parse_active_within(&v).map_err(|allowed| bad("run.active_within", &v, &allowed))?,
        None => DEFAULT_ACTIVE_WITHIN,
    };
    let names = |key: &'static str| -> Result<Vec<String>> {
        let list = file.strings(key)?.unwrap_or_default();
        match list.iter().find(|v| v.trim().is_empty() || v.contains(char::is_control)) {
            Some(v) => {
                Err(bad(key, &v.escape_debug().to_string(), "a list of non-empty names without control characters"))
            }
            None => Ok(list),
        }
    };
    let (protect_tags, protect_groups) = (names("run.protect_tags")?, names("run.protect_groups")?);

    Ok(Settings {
        tenant_id,
        client_id,
        client_secret,
        secret_source,
        certificate,
        access_token,
        device_code,
        token_cache,
        cloud,
        authority,
        scope,
        api_base,
        timeout,
        comment,
        concurrency,
        rates,
        quota_scope,
        tenant_concurrency,
        calls_at_once,
        calls_at_once_grows,
        max_attempts,
        retry_delay,
        active_within,
        protect_tags,
        protect_groups,
        tag: file.string("run.tag")?,
        warnings,
    })
}

impl Settings {
    /// What signing in needs, or an error naming everything missing (and any all-zero placeholder id of
    /// config.example.toml: signing in with it could only fail).
    pub fn credentials(&self) -> Result<Credentials> {
        let placeholder = |key: &'static str, value: &Option<String>, what: &str| {
            (value.as_deref() == Some(PLACEHOLDER_GUID)).then(|| Error::Setting {
                key,
                message: format!(
                    "is the all-zero placeholder of config.example.toml; replace the placeholder {what} with your own"
                ),
            })
        };
        let placeholders = [
            placeholder("auth.tenant_id", &self.tenant_id, "tenant id (Entra ID > Overview > Tenant ID)"),
            placeholder("auth.client_id", &self.client_id, "client id (the app registration's Application ID)"),
        ];
        let missing = |key: &'static str, how: &str| Error::Setting { key, message: format!("is required; {how}") };
        if self.device_code {
            let public =
                "the Application (client) ID of a public client app registration (README: Sign in as a person)";
            return Ok(Credentials {
                tenant_id: self.tenant_id.clone().ok_or_else(|| {
                    missing("auth.tenant_id", "set --tenant-id, MDE_TENANT_ID or auth.tenant_id in the config file")
                })?,
                client_id: self.client_id.clone().ok_or_else(|| {
                    missing("auth.client_id", &format!("set --client-id, MDE_CLIENT_ID or auth.client_id to {public}"))
                })?,
                credential: Credential::DeviceCode(DeviceCodeSignIn {
                    resource: self.scope.trim_end_matches("/.default").to_string(),
                    offboard: true,
                    read: true,
                    write: false,
                    token_cache: self.token_cache.clone(),
                    person: false,
                }),
                authority: self.authority.clone(),
                scope: self.scope.clone(),
            });
        }
        if let Some(token) = &self.access_token {
            // The token names its tenant and app; settings, when given, say the same for messages and the lock.
            let claim = |name: &str| jwt::claim(token.expose(), name);
            return Ok(Credentials {
                tenant_id: self.tenant_id.clone().or_else(|| claim("tid")).unwrap_or_else(|| "unknown-tenant".into()),
                client_id: self
                    .client_id
                    .clone()
                    .or_else(|| claim("appid").or_else(|| claim("azp")))
                    .unwrap_or_else(|| "unknown-app".into()),
                credential: Credential::AccessToken(token.clone()),
                authority: self.authority.clone(),
                scope: self.scope.clone(),
            });
        }
        let credential = match (&self.certificate, &self.client_secret) {
            (Some(certificate), _) => Ok(Credential::Certificate(certificate.clone())),
            (None, Some(secret)) => Ok(Credential::Secret(secret.clone())),
            (None, None) => Err(missing(
                "auth.client_secret",
                "put the client secret in the MDE_CLIENT_SECRET environment variable or a file named by \
                 --client-secret-file, or sign in with a certificate (--certificate and --private-key)",
            )),
        };
        let tenant_id = self.tenant_id.clone().ok_or_else(|| {
            missing("auth.tenant_id", "set --tenant-id, MDE_TENANT_ID or auth.tenant_id in the config file")
        });
        let client_id = self.client_id.clone().ok_or_else(|| {
            missing("auth.client_id", "set --client-id, MDE_CLIENT_ID or auth.client_id in the config file")
        });
        match (tenant_id, client_id, credential) {
            (Ok(tenant_id), Ok(client_id), Ok(credential)) if placeholders.iter().all(Option::is_none) => {
                Ok(Credentials {
                    tenant_id,
                    client_id,
                    credential,
                    authority: self.authority.clone(),
                    scope: self.scope.clone(),
                })
            }
            (tenant_id, client_id, credential) => {
                let missing = [tenant_id.err(), client_id.err(), credential.err()];
                let errors = placeholders.into_iter().chain(missing).flatten();
                Err(Error::all(errors).expect("one of them failed"))
            }
        }
    }

    /// The comment an offboard needs, or an error saying how to give one.
    pub fn require_comment(&self) -> Result<String> {
        self.comment.clone().ok_or_else(|| Error::Setting {
            key: "run.comment",
            message: "is required for offboarding (the API records it with each action); set --comment, MDE_COMMENT or run.comment".into(),
        })
    }
}

fn resolve_secret(
    args: &ApiArgs,
    file: &FileValues,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(Option<Secret>, Option<String>)> {
    if let Some(path) = &args.client_secret_file {
        return read_secret_file(path, warnings).map(|s| (Some(s), Some(format!("secret file {}", path.display()))));
    }
    if let Some(value) = env(SECRET_ENV) {
        return check_secret(&value, SECRET_ENV).map(|s| (Some(s), Some(SECRET_ENV.to_string())));
    }
    if let Some(path) = file.string("auth.client_secret_file")? {
        let path = PathBuf::from(path);
        return read_secret_file(&path, warnings).map(|s| (Some(s), Some(format!("secret file {}", path.display()))));
    }
    if let Some(value) = file.string("auth.client_secret")? {
        let config = file.path.clone().unwrap_or_default();
        if readable_by_others(&config) {
            warnings.push(format!(
                "config file {} holds a client secret and is readable by other users; restrict it (chmod 600) or move the secret to MDE_CLIENT_SECRET",
                config.display()
            ));
        }
        return check_secret(&value, "auth.client_secret")
            .map(|s| (Some(s), Some(format!("config file {}", config.display()))));
    }
    Ok((None, None))
}

/// The certificate (with its key) and the ready access token, if given. Precedence when several credentials
/// are given: an access token, then a certificate, then a secret; the ones not used get a warning.
fn resolve_identity(
    args: &ApiArgs,
    file: &FileValues,
    env: &dyn Fn(&str) -> Option<String>,
    secret_source: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<(Option<ClientCertificate>, Option<Secret>)> {
    let path = |flag: &Option<PathBuf>, key: &str| -> Result<Option<PathBuf>> {
        Ok(match flag {
            Some(p) => Some(p.clone()),
            None => file.string(key)?.map(PathBuf::from),
        })
    };
    let alg = match args.assertion.clone().map(Some).unwrap_or(file.string("auth.assertion")?) {
        Some(v) => v.parse::<AssertionAlg>().map_err(|allowed| bad("auth.assertion", &v, &allowed))?,
        None => AssertionAlg::default(),
    };
    let certificate = match (path(&args.certificate, "auth.certificate")?, path(&args.private_key, "auth.private_key")?)
    {
        (Some(cert), Some(key)) => {
            if readable_by_others(&key) {
                warnings.push(format!(
                    "private key file {} is readable by other users; restrict it (chmod 600)",
                    key.display()
                ));
            }
            Some(
                ClientCertificate::load(&cert, &key, alg)
                    .map_err(|e| Error::Setting { key: "auth.certificate", message: e.to_string() })?,
            )
        }
        (Some(_), None) => {
            return Err(Error::Setting {
                key: "auth.private_key",
                message: "is required with a certificate; set --private-key, MDE_PRIVATE_KEY or auth.private_key"
                    .into(),
            });
        }
        (None, Some(_)) => {
            return Err(Error::Setting {
                key: "auth.certificate",
                message: "is required with a private key; set --certificate, MDE_CERTIFICATE or auth.certificate"
                    .into(),
            });
        }
        (None, None) => None,
    };
    let access_token = match env(ACCESS_TOKEN_ENV).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        Some(token) => {
            let token = token.strip_prefix("Bearer ").map(str::trim).unwrap_or(&token).to_string();
            if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(Error::Setting {
                    key: ACCESS_TOKEN_ENV,
                    message: "the access token contains spaces, line breaks or control characters".into(),
                });
            }
            Some(Secret::new(token))
        }
        None => None,
    };
    let secret_from = secret_source;
    if access_token.is_some() {
        if certificate.is_some() {
            warnings.push(format!("{ACCESS_TOKEN_ENV} is set: the certificate is not used"));
        }
        if let Some(from) = &secret_from {
            warnings.push(format!("{ACCESS_TOKEN_ENV} is set: the client secret from {from} is not used"));
        }
    } else if let (Some(_), Some(from)) = (&certificate, &secret_from) {
        warnings.push(format!("signing in with the certificate: the client secret from {from} is not used"));
    }
    Ok((certificate, access_token))
}

fn read_secret_file(path: &Path, warnings: &mut Vec<String>) -> Result<Secret> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Setting {
        key: "auth.client_secret_file",
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    if readable_by_others(path) {
        warnings.push(format!("secret file {} is readable by other users; restrict it (chmod 600)", path.display()));
    }
    check_secret(text.trim_end_matches(['\r', '\n']), "auth.client_secret_file")
}

/// A secret must be one line of printable characters: anything else is a copy-and-paste accident.
fn check_secret(value: &str, source: &'static str) -> Result<Secret> {
    let value = value.trim();
    let message = if value.is_empty() {
        "the client secret is empty"
    } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "the client secret contains spaces, line breaks or control characters; copy the secret's Value (not its ID) again"
    } else {
        return Ok(Secret::new(value));
    };
    Err(Error::Setting { key: source, message: message.into() })
}

/// A token cache is for a person's sign-in, and holds a refresh token: one that others can read is refused
/// (before any network), never used.
fn check_token_cache(path: &Path, device_code: bool) -> Result<()> {
    if !device_code {
        return Err(Error::Setting {
            key: "auth.token_cache",
            message: format!(
                "{} is given, but a token cache is only for signing in as a person: add --device-code (auth.flow = \"device_code\") or drop it",
                path.display()
            ),
        });
    }
    if path.exists() && readable_by_others(path) {
        return Err(Error::Setting {
            key: "auth.token_cache",
            message: format!(
                "{} can be read by other users, and it holds a refresh token: restrict it (chmod 600 {}) or delete it and sign in again",
                path.display(),
                path.display()
            ),
        });
    }
    Ok(())
}

/// Whether users other than the owner may read `path` (its group or others have read permission).
#[cfg(unix)]
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o044 != 0).unwrap_or(false)
}

#[cfg(not(unix))]
pub fn readable_by_others(_path: &Path) -> bool {
    // Windows ACLs are not mode bits; the file's owner is expected to restrict it.
    false
}

fn bad(key: &'static str, value: &str, allowed: &str) -> Error {
    Error::Setting { key, message: format!("`{value}` is not allowed: {allowed}") }
}

/// How recently a machine may have reported and still be offboarded (`run.active_within`,
/// `--active-within`): a duration above zero, at most a year; what is allowed when it is not.
pub fn parse_active_within(value: &str) -> std::result::Result<Duration, String> {
    const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);
    match humantime::parse_duration(value.trim()) {
        Ok(d) if !d.is_zero() && d <= YEAR => Ok(d),
        _ => Err("a duration above zero and at most a year, such as 48h, 3d or 30m".into()),
    }
}

/// The longest call timeout or retry delay taken: longer ones mean nothing for an API call, and
/// instants that far ahead overflow.
const DURATION_MAX: Duration = Duration::from_secs(3600);

fn parse_duration(key: &'static str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value.trim())
        .ok()
        .filter(|d| !d.is_zero() && *d <= DURATION_MAX)
        .ok_or_else(|| bad(key, value, "a duration above zero and at most 1h, such as 30s, 2m or 500ms"))
}

fn parse_number(key: &'static str, value: &str, min: u64, max: u64) -> Result<u64> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| bad(key, value, &format!("a whole number from {min} to {max}")))
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<_> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check_tenant(value: &str) -> Result<String> {
    let v = value.trim();
    let domain_like = v.contains('.') && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if is_guid(v) || domain_like {
        Ok(v.to_string())
    } else {
        Err(bad(
            "auth.tenant_id",
            value,
            "the tenant's GUID (Directory ID) or its domain, such as contoso.onmicrosoft.com",
        ))
    }
}

fn check_client_id(value: &str) -> Result<String> {
    let v = value.trim();
    if is_guid(v) {
        Ok(v.to_string())
    } else {
        Err(bad("auth.client_id", value, "the app registration's Application (client) ID, a GUID"))
    }
}

/// A base URL: https, or plain http to a loopback host only (the simulator), without a trailing slash.
///
/// Decided on the URL as a real parser reads it, as the HTTP client will: `http://127.0.0.1@example.com`
/// names the host `example.com` (with a user name), and `http://127.evil.example` is a domain, not a
/// loopback address. A user name or password is refused whatever the scheme: it would be sent to the host.
fn check_url(key: &'static str, value: &str) -> Result<String> {
    let v = value.trim().trim_end_matches('/');
    let allowed = "an https:// URL without a user name, password, query or fragment \
                   (http:// only for 127.0.0.1, localhost or [::1])";
    let Ok(url) = reqwest::Url::parse(v) else { return Err(bad(key, value, allowed)) };
    // The parser has already turned an IP address into its canonical form (`[::1]`, `127.0.0.1`).
    let host = url.host_str().unwrap_or("");
    let loopback = match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    let scheme_ok = match url.scheme() {
        "https" => !host.is_empty(),
        "http" => loopback,
        _ => false,
    };
    let userinfo = !url.username().is_empty() || url.password().is_some();
    if !scheme_ok || userinfo || url.query().is_some() || url.fragment().is_some() || v.contains(char::is_whitespace) {
        return Err(bad(key, value, allowed));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn rates_parse_and_reject() {
        assert_eq!("100/1m".parse::<Rate>().unwrap(), Rate { limit: 100, period: Duration::from_secs(60) });
        assert_eq!("100/600ms".parse::<Rate>().unwrap().period, Duration::from_millis(600));
        assert!("0/1m".parse::<Rate>().is_err());
        assert!("100".parse::<Rate>().is_err());
        assert!("100/0s".parse::<Rate>().is_err());
        assert!("x/1m".parse::<Rate>().is_err());
        // Periods past a day are refused with a message, never handed to the limiter (whose GCRA panics past
        // 584 years).
        assert_eq!("10000/1d".parse::<Rate>().unwrap().period, RATE_PERIOD_MAX);
        for absurd in ["1/600y", "1/25h", "100/500000000000y"] {
            let e = absurd.parse::<Rate>().unwrap_err();
            assert!(e.contains("longer than a day"), "{absurd}: {e}");
        }
    }

    #[test]
    fn defaults_apply_without_anything() {
        let s = resolve(&SettingsArgs::default(), &no_env).unwrap();
        assert_eq!(s.authority, DEFAULT_AUTHORITY);
        assert_eq!(s.rates.len(), 2);
        assert_eq!(s.rates[1], Rate { limit: 1500, period: Duration::from_secs(3600) });
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.quota_scope, QuotaScope::Api);
        assert!(s.credentials().is_err());
    }

    #[test]
    fn the_quota_scope_is_api_or_app_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[run]\nquota_scope = \"app\"\n").unwrap();
        let api = |config: Option<PathBuf>, quota_scope: Option<&str>| {
            SettingsArgs::from(ApiArgs { config, quota_scope: quota_scope.map(String::from), ..Default::default() })
        };
        assert_eq!(resolve(&api(Some(path.clone()), None), &no_env).unwrap().quota_scope, QuotaScope::App);
        assert_eq!(resolve(&api(Some(path.clone()), Some("API")), &no_env).unwrap().quota_scope, QuotaScope::Api);
        let e = resolve(&api(None, Some("tenant")), &no_env).unwrap_err().to_string();
        assert!(e.contains("--quota-scope") && e.contains("tenant") && e.contains("api"), "{e}");
        std::fs::write(&path, "[run]\nquota_scope = \"tenant\"\n").unwrap();
        let e = resolve(&api(Some(path), None), &no_env).unwrap_err().to_string();
        assert!(e.contains("run.quota_scope") && e.contains("tenant"), "{e}");
    }

    #[test]
    fn flag_beats_file_and_rate_flags_replace_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[run]\nconcurrency = 9\nrate = [\"5/1s\", \"50/1m\"]\ncomment = \"from file\"\n")
            .unwrap();
        let args = SettingsArgs {
            api: ApiArgs { config: Some(path), rates: vec!["7/1s".into()], ..Default::default() },
            run: RunSettingsArgs { comment: Some("from flag".into()), ..Default::default() },
            ..Default::default()
        };
        let s = resolve(&args, &no_env).unwrap();
        assert_eq!(s.concurrency, 9);
        assert_eq!(s.comment.as_deref(), Some("from flag"));
        assert_eq!(s.rates, vec![Rate { limit: 7, period: Duration::from_secs(1) }]);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[run]\nconcurency = 9\n").unwrap();
        let args = ApiArgs { config: Some(path.clone()), ..Default::default() };
        let msg = resolve(&args.clone().into(), &no_env).unwrap_err().to_string();
        assert!(msg.contains("run.concurency") && msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn wrong_value_names_key_value_and_allowed() {
        let args = SettingsArgs {
            run: RunSettingsArgs { concurrency: Some("0".into()), ..Default::default() },
            ..Default::default()
        };
        let msg = resolve(&args, &no_env).unwrap_err().to_string();
        assert!(msg.contains("--concurrency") && msg.contains("`0`") && msg.contains("1 to 256"), "{msg}");
        let args = ApiArgs { api_base: Some("http://api.example.com".into()), ..Default::default() };
        assert!(resolve(&args.into(), &no_env).unwrap_err().to_string().contains("--api-base"));
    }

    /// Before: `--retry-delay 500000000000y` was taken, and a run hung on its first retry.
    #[test]
    fn durations_are_bounded() {
        for (timeout, retry_delay) in [(Some("500000000000y"), None), (None, Some("500000000000y")), (None, Some("2h"))]
        {
            let args = SettingsArgs {
                api: ApiArgs { timeout: timeout.map(Into::into), ..Default::default() },
                retry: RetryArgs { retry_delay: retry_delay.map(Into::into), ..Default::default() },
                ..Default::default()
            };
            let msg = resolve(&args, &no_env).unwrap_err().to_string();
            assert!(msg.contains("at most 1h"), "{msg}");
        }
        let args = SettingsArgs {
            api: ApiArgs { timeout: Some("1h".into()), ..Default::default() },
            retry: RetryArgs { retry_delay: Some("30s".into()), ..Default::default() },
            ..Default::default()
        };
        assert!(resolve(&args, &no_env).is_ok());
    }

    /// Before: the host was the text before the first `/` or `:`, so each of these sent the token request,
    /// client secret included, over plain http to a host that is not loopback.
    #[test]
    fn plain_http_is_decided_on_the_parsed_host() {
        for refused in [
            "http://127.0.0.1@example.invalid",
            "http://localhost:80@example.invalid",
            "http://127.evil.example",
            "http://localhost.example.invalid",
            "http://[::1]@example.invalid",
            "https://user:pass@login.microsoftonline.com",
            "https://user@login.microsoftonline.com",
            "https://login.microsoftonline.com?x=1",
            "ftp://127.0.0.1",
            "http://",
        ] {
            let args = ApiArgs { authority: Some(refused.into()), ..Default::default() };
            let msg = resolve(&args.clone().into(), &no_env)
                .err()
                .unwrap_or_else(|| panic!("{refused} was accepted"))
                .to_string();
            assert!(msg.contains("--authority"), "{refused}: {msg}");
        }
        for accepted in [
            "http://127.0.0.1:9",
            "http://127.1.2.3",
            "http://LOCALHOST:8",
            "http://[::1]:7",
            "https://login.microsoftonline.us/",
        ] {
            let args = ApiArgs { authority: Some(accepted.into()), ..Default::default() };
            assert!(resolve(&args.clone().into(), &no_env).is_ok(), "{accepted} was refused");
        }
    }

    #[test]
    fn secret_from_env_is_checked_and_never_printed() {
        let env = |k: &str| (k == SECRET_ENV).then(|| "s3cr3t~value".to_string());
        let s = resolve(&SettingsArgs::default(), &env).unwrap();
        assert_eq!(s.client_secret.as_ref().unwrap().expose(), "s3cr3t~value");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let env = |k: &str| (k == SECRET_ENV).then(|| "two words".to_string());
        let msg = resolve(&SettingsArgs::default(), &env).unwrap_err().to_string();
        assert!(msg.contains("spaces") && !msg.contains("two words"), "{msg}");
    }

    #[test]
    fn cloud_sets_hosts_and_explicit_settings_win() {
        let args = ApiArgs { cloud: Some("gcc-high".into()), ..Default::default() };
        let s = resolve(&args.clone().into(), &no_env).unwrap();
        assert_eq!(s.api_base, "https://api-gov.securitycenter.microsoft.us");
        assert_eq!(s.authority, "https://login.microsoftonline.us");
        assert_eq!(s.scope, "https://api-gov.securitycenter.microsoft.us/.default");
        let args = ApiArgs {
            cloud: Some("eu".into()),
            api_base: Some("http://127.0.0.1:9".into()),
            authority: Some("http://127.0.0.1:8".into()),
            ..Default::default()
        };
        let s = resolve(&args.clone().into(), &no_env).unwrap();
        assert_eq!((s.api_base.as_str(), s.authority.as_str()), ("http://127.0.0.1:9", "http://127.0.0.1:8"));
        assert_eq!(s.scope, DEFAULT_SCOPE);
        let msg = resolve(&ApiArgs { cloud: Some("mars".into()), ..Default::default() }.into(), &no_env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--cloud") && msg.contains("gcc-high") && msg.contains("`mars`"), "{msg}");
    }

    #[test]
    fn certificate_wins_over_a_secret_and_needs_its_key() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let env = |k: &str| (k == SECRET_ENV).then(|| "s3cr3t".to_string());
        let args = ApiArgs {
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: Some("6a1f0c2e-93b4-4d57-8e1a-2c3d4e5f6a70".into()),
            certificate: Some(data.join("test-app.cert.pem")),
            private_key: Some(data.join("test-app.key.pem")),
            assertion: Some("rs256".into()),
            ..Default::default()
        };
        let s = resolve(&args.clone().into(), &env).unwrap();
        let c = s.credentials().unwrap();
        assert!(matches!(&c.credential, Credential::Certificate(cert) if cert.alg() == AssertionAlg::Rs256));
        assert!(s.warnings.iter().any(|w| w.contains("certificate") && w.contains(SECRET_ENV)), "{:?}", s.warnings);
        let no_key = ApiArgs { private_key: None, ..args.clone() };
        assert!(resolve(&no_key.clone().into(), &env).unwrap_err().to_string().contains("auth.private_key"));
        let wrong_key = ApiArgs { private_key: Some(data.join("wrong.key.pem")), ..args.clone() };
        let msg = resolve(&wrong_key.clone().into(), &env).unwrap_err().to_string();
        assert!(msg.contains("does not belong") && !msg.contains("PRIVATE KEY"), "{msg}");
        let bad_alg = ApiArgs { assertion: Some("hs256".into()), ..args };
        assert!(resolve(&bad_alg.clone().into(), &env).unwrap_err().to_string().contains("--assertion"));
    }

    #[test]
    fn access_token_names_tenant_and_app_from_its_claims() {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"tid":"0d3e5c1a-7b2f-4e8d-9a61-5f4c3b2a1d00","appid":"app-guid","exp":4102444800}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        let env = |k: &str| (k == ACCESS_TOKEN_ENV).then(|| format!("Bearer {token}"));
        let s = resolve(&SettingsArgs::default(), &env).unwrap();
        let c = s.credentials().unwrap();
        assert_eq!((c.tenant_id.as_str(), c.client_id.as_str()), ("0d3e5c1a-7b2f-4e8d-9a61-5f4c3b2a1d00", "app-guid"));
        assert!(matches!(&c.credential, Credential::AccessToken(t) if t.expose() == token));
        assert!(!format!("{s:?}{c:?}").contains(&payload));
    }

    #[test]
    fn device_code_needs_no_secret_and_asks_for_what_the_command_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let ids = "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"6a1f0c2e-93b4-4d57-8e1a-2c3d4e5f6a70\"\n";
        std::fs::write(&path, format!("[auth]\n{ids}flow = \"device_code\"\n")).unwrap();
        let args: SettingsArgs = ApiArgs { config: Some(path.clone()), ..Default::default() }.into();
        let c = resolve(&args, &no_env).unwrap().credentials().unwrap();
        let Credential::DeviceCode(person) = &c.credential else { panic!("{:?}", c.credential) };
        let api = "https://api.securitycenter.microsoft.com";
        assert_eq!(person.scope(), format!("{api}/Machine.Offboard {api}/Machine.Read.All offline_access"));
        let Credential::DeviceCode(reader) = c.clone().needing(false, true).credential else { unreachable!() };
        assert_eq!(reader.scope(), format!("{api}/Machine.Read.All offline_access"));
        let Credential::DeviceCode(bare) = c.needing(true, false).credential else { unreachable!() };
        assert_eq!(bare.scope(), format!("{api}/Machine.Offboard offline_access"));

        std::fs::write(&path, format!("[auth]\n{ids}flow = \"password\"\n")).unwrap();
        let msg = resolve(&args, &no_env).unwrap_err().to_string();
        assert!(msg.contains("auth.flow") && msg.contains("device_code"), "{msg}");
        // A token cache is only for a person's sign-in.
        let cache: SettingsArgs = ApiArgs { token_cache: Some(dir.path().join("t.json")), ..Default::default() }.into();
        assert!(resolve(&cache, &no_env).unwrap_err().to_string().contains("--device-code"));
    }

    #[cfg(unix)]
    #[test]
    fn secret_in_world_readable_config_warns() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[auth]\nclient_secret = \"abc\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let args = ApiArgs { config: Some(path.clone()), ..Default::default() };
        let s = resolve(&args.clone().into(), &no_env).unwrap();
        assert_eq!(s.warnings.len(), 1);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(resolve(&args.clone().into(), &no_env).unwrap().warnings.is_empty());
    }
}

#[cfg(test)]
mod example_config {
    use super::*;

    /// config.example.toml must load, and must document every key the file may hold.
    #[test]
    fn example_config_loads_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let args = ApiArgs { config: Some(path.clone()), ..Default::default() };
        let s = resolve(&args.clone().into(), &|_| None).unwrap();
        assert_eq!(s.rates.len(), 2);
        let text = std::fs::read_to_string(path).unwrap();
        for (section, keys) in CONFIG_KEYS {
            assert!(text.contains(&format!("[{section}]")), "[{section}] is not documented");
            for key in *keys {
                assert!(text.contains(&format!("{key} =")), "{section}.{key} is not documented");
            }
        }
    }
}
