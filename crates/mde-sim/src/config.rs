//! What a simulator run looks like: credentials, quotas, time scale, fleet, access rules, the action
//! lifecycle and faults. Every duration here is service time unless it says otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use super::fleet::Fleet;
use super::{DEMO_ACCOUNT, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT_ID};
use crate::error::Error;
use crate::quota::QuotaScope;
use crate::rate::Rate;

/// The roles (application permissions) the demo app is granted.
pub const DEFAULT_ROLES: [&str; 2] = ["Machine.Offboard", "Machine.Read.All"];
/// The device group the demo app has no access to.
pub const DEFAULT_FORBIDDEN_GROUPS: [&str; 1] = ["Tier0 Servers"];
/// Platforms the simulated service refuses to offboard (400 `OsPlatformNotSupported`): the ones Microsoft's
/// documentation leaves out of the supported list. The offboard page revised in 2026 lists Windows 10 1703+,
/// Windows 11, Windows Server 2012 R2 and later, macOS 14 and later and the supported Linux distributions:
/// `Linux`, `macOS` and `WindowsServer2012R2` are offboarded (older versions: [`DEFAULT_MINIMUM_VERSIONS`]).
pub const DEFAULT_UNSUPPORTED_PLATFORMS: [&str; 4] = ["Windows7", "Windows8", "Windows8Blue", "WindowsServer2008R2"];
/// The oldest version of a platform the service offboards (the same page): macOS 14, Windows 10 1703. A
/// machine of the platform whose `version` is older answers 400 `OsPlatformNotSupported`; one whose version
/// is not known is offboarded.
pub const DEFAULT_MINIMUM_VERSIONS: [(&str, &str); 2] = [("macOS", "14"), ("Windows10", "1703")];
/// Entra ID's usual token lifetime for client credentials, as `expires_in` shows it.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// Everything a simulator run is made of.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port (see [`super::Simulator::addr`]).
    pub listen: SocketAddr,
    /// The tenant (compared case-insensitively); [`super::Simulator::start_tenants`] serves several.
    pub tenant_id: String,
    /// Domain names of the tenant (`contoso.onmicrosoft.com`), accepted in place of its id at sign-in, as
    /// Entra ID does; tokens name the tenant by its id (`tid`) whatever it was called. None by default.
    pub tenant_domains: Vec<String>,
    /// The only app registration that exists.
    pub client_id: String,
    /// The app has been consented in the tenant (its service principal exists there). Without consent,
    /// sign-in answers AADSTS700016 as Entra ID does for an app the tenant does not know. True by default.
    pub consented: bool,
    pub client_secret: String,
    /// The `roles` claim of issued tokens.
    pub roles: Vec<String>,
    /// Token lifetime in service time; `expires_in` shows it divided by `time_scale`.
    pub token_lifetime: Duration,
    /// Sliding-window quotas, kept as `quota_scope` says.
    pub quotas: Vec<Rate>,
    /// Whether each API has its own budget of `quotas` (the documented reading, the default) or every call
    /// of the app registration counts against one.
    pub quota_scope: QuotaScope,
    /// Another client of the same app registration spending the quotas: this many calls per period (service
    /// time), evenly spaced, each served when its budget has room (the offboard API's, or the app's). None by
    /// default.
    pub background_rate: Option<Rate>,
    /// Send `Retry-After` as an HTTP-date instead of seconds.
    pub retry_after_http_date: bool,
    /// How much faster than real time the service runs: 1.0 is real time, 100.0 is 100 times faster.
    pub time_scale: f64,
    pub fleet: Fleet,
    /// Device groups the app has no access to: offboarding their machines answers 403.
    pub forbidden_groups: Vec<String>,
    /// Machines the app has no access to, whatever their group.
    pub forbidden_ids: Vec<String>,
    /// OS platforms whose offboard answers 400 `OsPlatformNotSupported`.
    pub unsupported_platforms: Vec<String>,
    /// (platform, oldest version): machines of the platform with an older `version` answer 400
    /// `OsPlatformNotSupported` too (see [`version_key`]).
    pub minimum_versions: Vec<(String, String)>,
    pub lifecycle: Lifecycle,
    pub faults: Faults,
    /// The app's secret has expired: sign-in answers AADSTS7000222.
    pub secret_expired: bool,
    /// The certificate registered on the app (PEM or DER). With one, client assertions must name it
    /// (`x5t#S256` or `x5t`) and be signed by its key; without one, assertions are checked for shape only.
    pub certificate: Option<Vec<u8>>,
    /// Answers the service should never give, put in place of real ones (none by default).
    pub misanswers: Misanswers,
    /// Tokens are issued, but the API answers 401 to every one of them (as to a token made for another
    /// resource or cloud).
    pub refuse_tokens: bool,
    /// Offboard actions have the legacy type of the 2019 documentation's example answer, `OffboardMachine`,
    /// in every answer and in `$filter` (`type eq 'Offboard'` then finds none of them).
    pub legacy_action_type: bool,
    /// The `expires_in` token answers show (a JSON value: `0`, the largest integer, a string), in place of
    /// the real lifetime; the token still lives `token_lifetime`.
    pub token_expires_in: Option<serde_json::Value>,
    /// What the `Retry-After` of every 429 says (quota, spurious or scripted), in place of the exact wait.
    pub retry_after_override: Option<RetryAfterOverride>,
    /// For this long after the simulator starts (real time), the quota is spent by another client of the
    /// same app: every API call is answered 429 (a quota rejection), `Retry-After` saying the time left.
    pub quota_spent_for: Duration,
    /// Sign-in as a person (the device code flow, delegated tokens, refresh tokens).
    pub device_code: DeviceCode,
}

/// The device code flow of the app registration as a public client, and the person who signs in.
#[derive(Clone, Debug)]
pub struct DeviceCode {
    /// "Allow public client flows" is on: without it, the device code grant answers AADSTS7000218.
    pub public_client: bool,
    /// The account the person signs in with: the tokens' `upn`, and the `requestor` of their actions.
    pub account: String,
    /// The delegated permissions consented for the app: a token's `scp` holds those requested among them.
    pub scopes: Vec<String>,
    /// What the person does with the code.
    pub answer: DeviceCodeAnswer,
    /// Polls answered `authorization_pending` before the answer (after any `slow_down`s).
    pub pending_polls: u32,
    /// The first polls answered `slow_down` (each adds 5 s of service time to the interval).
    pub slow_down_polls: u32,
    /// The `interval` the code's answer asks for, service time (sent divided by `time_scale`, a fraction
    /// when that is below a second). A poll sooner than it is answered `slow_down` and counted.
    pub interval: Duration,
    /// How long a code can be approved, service time (Entra ID: 15 minutes).
    pub code_lifetime: Duration,
}

/// What the person does with a device code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceCodeAnswer {
    Approve,
    Decline,
    /// Nothing: the code expires.
    Ignore,
}

impl Default for DeviceCode {
    fn default() -> Self {
        DeviceCode {
            public_client: true,
            account: DEMO_ACCOUNT.into(),
            scopes: DEFAULT_ROLES.iter().map(|r| r.to_string()).collect(),
            answer: DeviceCodeAnswer::Approve,
            pending_polls: 2,
            slow_down_polls: 0,
            interval: Duration::from_secs(5),
            code_lifetime: Duration::from_secs(900),
        }
    }
}

/// A `Retry-After` the client cannot take at its word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfterOverride {
    /// No `Retry-After` header.
    Absent,
    /// This text (`0`, `soon`, ...).
    Text(String),
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenant_id: DEMO_TENANT_ID.into(),
            tenant_domains: Vec::new(),
            client_id: DEMO_CLIENT_ID.into(),
            consented: true,
            client_secret: DEMO_CLIENT_SECRET.into(),
            roles: DEFAULT_ROLES.iter().map(|r| r.to_string()).collect(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            quotas: SimConfig::default_quotas(),
            quota_scope: QuotaScope::default(),
            background_rate: None,
            retry_after_http_date: false,
            time_scale: 1.0,
            fleet: Fleet::generate(1000, 1),
            forbidden_groups: DEFAULT_FORBIDDEN_GROUPS.iter().map(|g| g.to_string()).collect(),
            forbidden_ids: Vec::new(),
            unsupported_platforms: DEFAULT_UNSUPPORTED_PLATFORMS.iter().map(|p| p.to_string()).collect(),
            minimum_versions: DEFAULT_MINIMUM_VERSIONS.iter().map(|(p, v)| (p.to_string(), v.to_string())).collect(),
            lifecycle: Lifecycle::default(),
            faults: Faults::default(),
            secret_expired: false,
            certificate: None,
            misanswers: Misanswers::default(),
            refuse_tokens: false,
            legacy_action_type: false,
            token_expires_in: None,
            retry_after_override: None,
            quota_spent_for: Duration::ZERO,
            device_code: DeviceCode::default(),
        }
    }
}

/// `n` tenants like `first`: tenant K (counting from 0) has `first`'s id with its last group (12 hex
/// digits) counted up by K, the domain `tenant{K+1}.onmicrosoft.com` and the fleet `fleet(K)`; the first is
/// `first` itself. Everything else (app, roles, quotas, faults) is `first`'s.
pub fn tenant_series(first: SimConfig, n: usize, fleet: impl Fn(usize) -> Fleet) -> Result<Vec<SimConfig>, Error> {
    if n <= 1 {
        return Ok(vec![first]);
    }
    let numbered = match first.tenant_id.rsplit_once('-') {
        Some((head, last)) if last.len() == 12 => u64::from_str_radix(last, 16).ok().map(|n| (head.to_string(), n)),
        _ => None,
    };
    let Some((head, base)) = numbered else {
        return Err(Error::Simulator(format!(
            "tenant id `{}` is not a GUID: several tenants are numbered from it",
            first.tenant_id
        )));
    };
    let mut configs = Vec::with_capacity(n);
    for k in 1..n {
        configs.push(SimConfig {
            tenant_id: format!("{head}-{:012x}", (base + k as u64) & 0xffff_ffff_ffff),
            tenant_domains: vec![format!("tenant{}.onmicrosoft.com", k + 1)],
            fleet: fleet(k),
            ..first.clone()
        });
    }
    configs.insert(0, first);
    Ok(configs)
}

/// A version as a sortable key: dotted numbers (`14.7.1`, `1703`) part by part; Windows 10's half-year
/// names (`21H2`) as the month they came (`2109`), after the numbered `1703`...`2004`.
pub fn version_key(version: &str) -> Vec<u64> {
    let version = version.trim();
    if let Some((year, half)) = version.to_ascii_uppercase().split_once('H')
        && let (Ok(year), Ok(half)) = (year.parse::<u64>(), half.parse::<u64>())
    {
        return vec![year * 100 + half * 6 - 3];
    }
    version.split('.').map_while(|part| part.trim().parse::<u64>().ok()).collect()
}

impl SimConfig {
    /// Whether the service refuses to offboard a machine of `platform` at `version` (400
    /// `OsPlatformNotSupported`).
    pub fn refuses_platform(&self, platform: &str, version: Option<&str>) -> bool {
        if self.unsupported_platforms.iter().any(|p| p.eq_ignore_ascii_case(platform)) {
            return true;
        }
        let Some(version) = version.map(version_key).filter(|v| !v.is_empty()) else { return false };
        self.minimum_versions
            .iter()
            .any(|(p, oldest)| p.eq_ignore_ascii_case(platform) && version < version_key(oldest))
    }

    /// The documented quotas: 100 calls a minute and 1,500 an hour.
    pub fn default_quotas() -> Vec<Rate> {
        crate::rate::DEFAULT_RATES.iter().map(|r| r.parse().expect("default rates parse")).collect()
    }

    /// Rejects values the simulator cannot run with, naming the field.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let fail = |m: String| Err(Error::Simulator(m));
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return fail(format!("time scale {} must be a number above 0", self.time_scale));
        }
        if self.device_code.code_lifetime.is_zero() {
            return fail("device code lifetime must be above zero".into());
        }
        if self.token_lifetime.is_zero() {
            return fail("token lifetime must be above zero".into());
        }
        let l = &self.lifecycle;
        for (name, share) in [("failed share", l.failed_share), ("timeout share", l.timeout_share)] {
            if !(0.0..=1.0).contains(&share) {
                return fail(format!("{name} {share} must be between 0 and 1"));
            }
        }
        if l.failed_share + l.timeout_share > 1.0 {
            return fail("failed share and timeout share together must not exceed 1".into());
        }
        if let Some(cert) = &self.certificate {
            super::token::RegisteredCertificate::parse(cert).map_err(Error::Simulator)?;
        }
        self.misanswers.validate()?;
        self.faults.validate()
    }
}

/// How offboard actions move on, in service time.
///
/// An action is `Pending` for `pending_for`, `InProgress` for `in_progress_for`, then final. Which final status
/// is decided by the action's id: `failed_share` end `Failed`, `timeout_share` stay `InProgress` until
/// `action_timeout` and end `TimeOut`, the rest end `Succeeded`. An action on a machine whose health is
/// `Inactive` never starts: it stays `Pending` until `action_timeout`, then ends `TimeOut`.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    pub pending_for: Duration,
    pub in_progress_for: Duration,
    pub failed_share: f64,
    pub timeout_share: f64,
    pub action_timeout: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            pending_for: Duration::from_secs(120),
            in_progress_for: Duration::from_secs(180),
            failed_share: 0.05,
            timeout_share: 0.03,
            action_timeout: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// Faults injected into API answers (never into sign-in or `/sim/stats`), as shares of calls.
///
/// Which call gets which fault depends only on `seed`, the method and request target, and how many times that
/// method and target were called before, so the same calls get the same faults whatever their interleaving.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub seed: u64,
    /// Share answered 500 `InternalServerError`.
    pub error_500: f64,
    /// Share answered 503 `ServiceUnavailable`.
    pub error_503: f64,
    /// Share whose TCP connection is closed without an answer; an offboard is applied first in about half.
    pub drop_connection: f64,
    /// Share answered 429 although the quota is not spent.
    pub spurious_429: f64,
    /// `Retry-After` of the spurious 429s, real time (at least one second is sent).
    pub spurious_429_retry_after: Duration,
    /// Share of calls about an existing machine answered 404 `ResourceNotFound`.
    pub transient_404: f64,
    /// Added to every API answer, real time (not scaled).
    pub latency: Duration,
    /// Share of API answers delayed by `slow_latency` instead of `latency` (drawn apart from the shares
    /// above: a slow answer can also be a fault). The call is handled first, so a client that gives up
    /// waiting may have had its offboard applied.
    pub slow_share: f64,
    /// The delay of a slow answer, real time: set it past the client's timeout to test timeouts.
    pub slow_latency: Duration,
    /// The shares and slow answers above touch the calls that act only (the API's POSTs: offboard, cancel,
    /// tags); every read is answered as usual (what a client does once an action's answer is lost, while its
    /// reads work).
    pub actions_only: bool,
    /// List routes ignore `$skip`: every page is the list's first (services have been seen doing so).
    pub ignore_skip: bool,
    /// Routes the API does not have answer 404 with an HTML page, as a web server that is not the API does
    /// (an API base URL with a wrong path), instead of the API's JSON error.
    pub html_not_found: bool,
    /// The first calls of each method and request target are answered with these statuses in order (429 with
    /// `spurious_429_retry_after`, any other status with the API's error body; 0 handles that call as
    /// usual), before the shares above are drawn. Counted as that target's calls are.
    pub script: Vec<u16>,
}

impl Faults {
    /// The shares in the order they are drawn.
    pub(crate) fn shares(&self) -> [f64; 5] {
        [self.error_500, self.error_503, self.drop_connection, self.spurious_429, self.transient_404]
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(status) = self.script.iter().find(|s| **s != 0 && !(400..600).contains(*s)) {
            return Err(Error::Simulator(format!("scripted status {status} must be 0 or between 400 and 599")));
        }
        let shares = self.shares();
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || shares.iter().sum::<f64>() > 1.0 + 1e-9 {
            return Err(Error::Simulator(format!(
                "fault shares must each be between 0 and 1 and together at most 1 (got {shares:?})"
            )));
        }
        if !(0.0..=1.0).contains(&self.slow_share) {
            return Err(Error::Simulator(format!("slow share {} must be between 0 and 1", self.slow_share)));
        }
        Ok(())
    }
}

/// An answer the service should never give, to test how the client reads answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Misanswer {
    /// 200 carrying the API's error body `{"error": {...}}`.
    ErrorWith200,
    /// An HTML page with this status (a proxy's or a sign-in page).
    Html(u16),
    /// 200 with a body that is not JSON.
    NotJson,
    /// 201 with an empty body.
    Empty201,
    /// This status (a 3xx) with `Location: location` and no body.
    Redirect { status: u16, location: String },
    /// 200 with a body streamed without end, until the client hangs up.
    Endless,
}

impl Misanswer {
    /// Comes in place of handling the call (a redirect, an endless body), rather than in place of the
    /// answer of a call that was handled.
    pub(crate) fn replaces_the_call(&self) -> bool {
        matches!(self, Misanswer::Redirect { .. } | Misanswer::Endless)
    }
}

/// Where misanswers replace real answers: every call of the route gets one.
///
/// On the offboard route a redirect or an endless body comes instead of handling the call (no action is
/// created); the other misanswers replace the 2xx of a call that created its action, so the action exists
/// although the answer does not show it.
#[derive(Clone, Debug, Default)]
pub struct Misanswers {
    /// `POST /api/machines/{id}/offboard`.
    pub offboard: Option<Misanswer>,
    /// `GET /api/machines` and `GET /api/machineactions`, instead of handling the call.
    pub lists: Option<Misanswer>,
    /// The token endpoints (v1 and v2), instead of handling the sign-in.
    pub token: Option<Misanswer>,
}

impl Misanswers {
    fn validate(&self) -> Result<(), Error> {
        for answer in [&self.offboard, &self.lists, &self.token].into_iter().flatten() {
            let ok = match answer {
                Misanswer::Redirect { status, .. } => (300..400).contains(status),
                Misanswer::Html(status) => (100..600).contains(status),
                _ => true,
            };
            if !ok {
                return Err(Error::Simulator(format!("misanswer {answer:?} has a status out of its range")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_follow_the_revised_documentation() {
        assert!(version_key("13.6") < version_key("14"));
        assert!(version_key("14.0.1") >= version_key("14"));
        assert!(version_key("1607") < version_key("1703"));
        assert!(version_key("20H2") > version_key("2004") && version_key("22H2") > version_key("21H2"));
        let sim = SimConfig::default();
        for (platform, version) in [
            ("macOS", Some("14.7")),
            ("macOS", Some("26.1")),
            ("macOS", None),
            ("Linux", None),
            ("Windows10", Some("1703")),
            ("Windows10", Some("22H2")),
            ("Windows11", Some("23H2")),
            ("WindowsServer2012R2", None),
            ("WindowsServer2016", Some("1607")),
        ] {
            assert!(!sim.refuses_platform(platform, version), "{platform} {version:?} is offboarded");
        }
        for (platform, version) in
            [("macOS", Some("13.6")), ("macos", Some("12")), ("Windows10", Some("1607")), ("Windows7", None)]
        {
            assert!(sim.refuses_platform(platform, version), "{platform} {version:?} is refused");
        }
    }
}
