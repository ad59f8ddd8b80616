//! `mde-offboard simulate`: the flags, and serving until shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use super::config::{
    DEFAULT_FORBIDDEN_GROUPS, DEFAULT_MINIMUM_VERSIONS, DEFAULT_ROLES, DEFAULT_UNSUPPORTED_PLATFORMS, DeviceCode,
    DeviceCodeAnswer, Faults, Lifecycle, Misanswers, RetryAfterOverride, SimConfig,
};
use super::fleet::Fleet;
use super::server::Simulator;
use super::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT_ID};
use crate::SECRET_ENV;
use crate::error::Error;
use crate::quota::QuotaScope;
use crate::rate::Rate;

/// The list defaults as they are written on the command line (`A,B`): clap shows several defaults spaced.
static PLATFORMS: LazyLock<String> = LazyLock::new(|| DEFAULT_UNSUPPORTED_PLATFORMS.join(","));
static ROLES: LazyLock<String> = LazyLock::new(|| DEFAULT_ROLES.join(","));

/// Run a local simulator of the Defender for Endpoint API and its Entra ID sign-in (for demos and tests).
///
/// The app's client secret is read from MDE_CLIENT_SECRET if set, otherwise the demo secret is used.
#[derive(clap::Args, Clone, Debug)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Number of machines in the generated fleet.
    #[arg(long, value_name = "N", default_value_t = 1000, conflicts_with = "fleet")]
    pub fleet_size: usize,
    /// Seed of the generated fleet.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "fleet")]
    pub fleet_seed: u64,
    /// Share (0 to 1) of the generated fleet's Active machines that are live, reported within the last day
    /// (by default none reported in the last two days, as on a decommissioning list).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, conflicts_with = "fleet")]
    pub live_share: f64,
    /// Fleet CSV file (header id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName) instead of a generated fleet.
    #[arg(long, value_name = "FILE.csv")]
    pub fleet: Option<PathBuf>,
    /// A quota N/PERIOD in service time; repeat for several. Replaces the defaults 100/1m and 1500/1h.
    #[arg(long = "quota", value_name = "N/PERIOD")]
    pub quotas: Vec<Rate>,
    /// Serve without quotas.
    #[arg(long, conflicts_with = "quotas")]
    pub no_quotas: bool,
    /// How the quotas are counted: api (each API has its own budget, as each API's page states its limits)
    /// or app (every call of the app registration counts against one budget).
    #[arg(long, value_name = "SCOPE", default_value = "api", value_parser = parse_scope)]
    pub quota_scope: QuotaScope,
    /// Another client of the same app spends the quotas: N calls per PERIOD (service time), evenly spaced,
    /// counted as offboard calls (per API) or the app's (per app), served while there is room.
    #[arg(long, value_name = "N/PERIOD", conflicts_with = "no_quotas")]
    pub background_rate: Option<Rate>,
    /// How much faster than real time the service runs (100 = a minute lasts 0.6 s).
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_scale)]
    pub time_scale: f64,
    /// Token lifetime in service time.
    #[arg(long, value_name = "DURATION", default_value = "3599s", value_parser = parse_positive_duration)]
    pub token_lifetime: Duration,
    /// Send Retry-After as an HTTP-date instead of seconds.
    #[arg(long)]
    pub retry_after_http_date: bool,
    /// A device group the app may not offboard (403); repeatable. Replaces the default "Tier0 Servers".
    #[arg(long = "forbid-group", value_name = "NAME")]
    pub forbid_groups: Vec<String>,
    /// Forbid no device group.
    #[arg(long, conflicts_with = "forbid_groups")]
    pub no_forbidden_groups: bool,
    /// A machine id the app may not offboard (403); repeatable.
    #[arg(long = "forbid-id", value_name = "ID")]
    pub forbid_ids: Vec<String>,
    /// OS platforms whose offboard answers 400 OsPlatformNotSupported.
    #[arg(long, value_name = "A,B", value_delimiter = ',', default_value = PLATFORMS.as_str())]
    pub unsupported_platforms: Vec<String>,
    /// The oldest version of a platform the service offboards, PLATFORM=VERSION (older: 400
    /// OsPlatformNotSupported); repeat for several. Replaces the defaults macOS=14 and Windows10=1703.
    #[arg(long = "minimum-version", value_name = "PLATFORM=VERSION")]
    pub minimum_versions: Vec<String>,
    /// Roles (application permissions) in issued tokens.
    #[arg(long, value_name = "A,B", value_delimiter = ',', default_value = ROLES.as_str())]
    pub roles: Vec<String>,
    /// Share of offboard actions that end Failed.
    #[arg(long, value_name = "SHARE", default_value_t = 0.05, value_parser = parse_share)]
    pub fail_share: f64,
    /// Share of offboard actions that end TimeOut (after --action-timeout).
    #[arg(long, value_name = "SHARE", default_value_t = 0.03, value_parser = parse_share)]
    pub timeout_share: f64,
    /// How long an action stays Pending (service time).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub pending_for: Duration,
    /// How long an action stays InProgress (service time).
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = humantime::parse_duration)]
    pub in_progress_for: Duration,
    /// When an action that never finishes ends TimeOut (service time).
    #[arg(long, value_name = "DURATION", default_value = "3days", value_parser = humantime::parse_duration)]
    pub action_timeout: Duration,
    /// Seed of the fault decisions and of action ids.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fault_seed: u64,
    /// Share of API calls answered 500.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub fault_500: f64,
    /// Share of API calls answered 503.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub fault_503: f64,
    /// Share of API calls whose connection is closed without an answer.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub fault_drop: f64,
    /// Share of API calls answered 429 although the quota is not spent.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub fault_429: f64,
    /// Retry-After of the spurious 429s (real time).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub fault_429_retry_after: Duration,
    /// Share of calls about an existing machine answered 404.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub fault_404: f64,
    /// Added to every API answer (real time).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Share of API answers delayed by --fault-slow-latency instead (the call is handled first).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub fault_slow: f64,
    /// Delay of the slow answers (real time); past the client's --timeout, they time out.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub fault_slow_latency: Duration,
    /// The --fault-* shares and slow answers touch the calls that act only (offboard, cancel, tags); reads
    /// are answered as usual.
    #[arg(long)]
    pub fault_actions_only: bool,
    /// List routes ignore $skip: every page is the first.
    #[arg(long)]
    pub fault_ignore_skip: bool,
    /// Routes the API does not have answer an HTML 404 page (as a wrong API base URL would).
    #[arg(long)]
    pub fault_html_404: bool,
    /// Answer sign-in with "secret expired" (AADSTS7000222).
    #[arg(long)]
    pub secret_expired: bool,
    /// Issue tokens, but answer every API call 401 (as to a token made for another resource or cloud).
    #[arg(long)]
    pub refuse_tokens: bool,
    /// Give offboard actions the legacy type `OffboardMachine` (the 2019 documentation's example) instead of
    /// `Offboard`, in answers and in $filter.
    #[arg(long)]
    pub legacy_action_type: bool,
    /// The tenant that exists.
    #[arg(long, value_name = "ID", default_value = DEMO_TENANT_ID)]
    pub tenant_id: String,
    /// A domain name of the tenant, accepted in place of its id at sign-in; repeat for several.
    #[arg(long = "tenant-domain", value_name = "DOMAIN")]
    pub tenant_domains: Vec<String>,
    /// Serve N tenants behind the one address: the first is --tenant-id's; tenant K (2..N) has the first's
    /// id with its last group counted up by K-1, the domain tenantK.onmicrosoft.com, and a fleet of its own
    /// (--fleet-seed plus K-1); the same app is consented in each, and each keeps its own quotas.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub tenants: u32,
    /// The app registration that exists.
    #[arg(long, value_name = "ID", default_value = DEMO_CLIENT_ID)]
    pub client_id: String,
    /// The certificate registered on the app (PEM or DER): certificate sign-in must be signed by its key.
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// Send this Retry-After on every 429 instead of the exact wait (`absent`: no header), e.g. 0 or soon.
    #[arg(long, value_name = "TEXT", conflicts_with = "retry_after_http_date")]
    pub retry_after: Option<String>,
    /// Device code sign-in: the account the person signs in with (tokens' upn, actions' requestor).
    #[arg(long, value_name = "UPN", default_value = crate::DEMO_ACCOUNT)]
    pub account: String,
    /// Device code sign-in: the delegated permissions consented (a token's scp holds those requested).
    #[arg(long, value_name = "A,B", value_delimiter = ',', default_values_t = DEFAULT_ROLES.map(String::from))]
    pub delegated_scopes: Vec<String>,
    /// Device code sign-in: what the person does with the code: approve, decline or ignore (it expires).
    #[arg(long, value_name = "ANSWER", default_value = "approve", value_parser = parse_answer)]
    pub device_code_answer: DeviceCodeAnswer,
    /// Device code sign-in: polls answered authorization_pending before the person's answer.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub device_code_pending_polls: u32,
}

fn parse_scope(text: &str) -> Result<QuotaScope, String> {
    match text.trim() {
        "api" => Ok(QuotaScope::Api),
        "app" => Ok(QuotaScope::App),
        _ => Err("expected api (a budget per API) or app (one budget for every call)".into()),
    }
}

fn parse_answer(text: &str) -> Result<DeviceCodeAnswer, String> {
    match text {
        "approve" => Ok(DeviceCodeAnswer::Approve),
        "decline" => Ok(DeviceCodeAnswer::Decline),
        "ignore" => Ok(DeviceCodeAnswer::Ignore),
        _ => Err("expected approve, decline or ignore".into()),
    }
}

impl SimulateArgs {
    /// The simulator's configuration; `secret` is the app's secret if one was given (else the demo secret).
    pub fn config(&self, secret: Option<String>) -> Result<SimConfig, Error> {
        let fleet = match &self.fleet {
            Some(path) => Fleet::from_csv(path)?,
            None if !(0.0..=1.0).contains(&self.live_share) => {
                return Err(Error::Simulator(format!("live share {} must be between 0 and 1", self.live_share)));
            }
            None => Fleet::generate_live(self.fleet_size, self.fleet_seed, self.live_share),
        };
        let forbidden_groups = if self.no_forbidden_groups {
            Vec::new()
        } else if self.forbid_groups.is_empty() {
            DEFAULT_FORBIDDEN_GROUPS.map(String::from).to_vec()
        } else {
            self.forbid_groups.clone()
        };
        let quotas = if self.no_quotas {
            Vec::new()
        } else if self.quotas.is_empty() {
            SimConfig::default_quotas()
        } else {
            self.quotas.clone()
        };
        let certificate = match &self.certificate {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| Error::Simulator(format!("cannot read the certificate {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let minimum_versions = if self.minimum_versions.is_empty() {
            DEFAULT_MINIMUM_VERSIONS.iter().map(|(p, v)| (p.to_string(), v.to_string())).collect()
        } else {
            self.minimum_versions
                .iter()
                .map(|pair| match pair.split_once('=') {
                    Some((p, v)) if !p.trim().is_empty() && !crate::config::version_key(v).is_empty() => {
                        Ok((p.trim().to_string(), v.trim().to_string()))
                    }
                    _ => Err(Error::Simulator(format!(
                        "--minimum-version `{pair}` is not PLATFORM=VERSION, e.g. macOS=14"
                    ))),
                })
                .collect::<Result<Vec<_>, Error>>()?
        };
        let config = SimConfig {
            listen: self.listen,
            tenant_id: self.tenant_id.clone(),
            tenant_domains: self.tenant_domains.clone(),
            client_id: self.client_id.clone(),
            consented: true,
            client_secret: secret.unwrap_or_else(|| DEMO_CLIENT_SECRET.to_string()),
            roles: self.roles.iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect(),
            token_lifetime: self.token_lifetime,
            quotas,
            quota_scope: self.quota_scope,
            background_rate: self.background_rate,
            retry_after_http_date: self.retry_after_http_date,
            time_scale: self.time_scale,
            fleet,
            forbidden_groups,
            forbidden_ids: self.forbid_ids.clone(),
            unsupported_platforms: self.unsupported_platforms.clone(),
            minimum_versions,
            lifecycle: Lifecycle {
                pending_for: self.pending_for,
                in_progress_for: self.in_progress_for,
                failed_share: self.fail_share,
                timeout_share: self.timeout_share,
                action_timeout: self.action_timeout,
            },
            faults: Faults {
                seed: self.fault_seed,
                error_500: self.fault_500,
                error_503: self.fault_503,
                drop_connection: self.fault_drop,
                spurious_429: self.fault_429,
                spurious_429_retry_after: self.fault_429_retry_after,
                transient_404: self.fault_404,
                latency: self.latency.unwrap_or_default(),
                slow_share: self.fault_slow,
                slow_latency: self.fault_slow_latency,
                ignore_skip: self.fault_ignore_skip,
                actions_only: self.fault_actions_only,
                html_not_found: self.fault_html_404,
                script: Vec::new(),
            },
            secret_expired: self.secret_expired,
            certificate,
            misanswers: Misanswers::default(),
            refuse_tokens: self.refuse_tokens,
            legacy_action_type: self.legacy_action_type,
            token_expires_in: None,
            retry_after_override: self.retry_after.as_ref().map(|text| match text.as_str() {
                "absent" => RetryAfterOverride::Absent,
                text => RetryAfterOverride::Text(text.to_string()),
            }),
            quota_spent_for: Duration::ZERO,
            device_code: DeviceCode {
                account: self.account.clone(),
                scopes: self.delegated_scopes.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                answer: self.device_code_answer,
                pending_polls: self.device_code_pending_polls,
                ..DeviceCode::default()
            },
        };
        config.validate()?;
        Ok(config)
    }
}

impl SimulateArgs {
    /// The tenants `--tenants` asks for, the first being `first` (see [`crate::config::tenant_series`]).
    pub fn tenant_configs(&self, first: SimConfig) -> Result<Vec<SimConfig>, Error> {
        if self.tenants > 1 && self.fleet.is_some() {
            return Err(Error::Simulator(
                "--tenants gives each tenant a generated fleet: leave out --fleet, or serve one tenant".into(),
            ));
        }
        crate::config::tenant_series(first, self.tenants as usize, |k| {
            Fleet::generate_live(self.fleet_size, self.fleet_seed.wrapping_add(k as u64), self.live_share)
        })
    }
}

/// Starts the simulator from the flags, prints where it listens, and serves until `shutdown` resolves.
pub async fn simulate(args: SimulateArgs, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let secret = std::env::var(SECRET_ENV).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let config = args.config(secret)?;
    let demo_secret = config.client_secret == DEMO_CLIENT_SECRET;
    let (tenant, client) = (config.tenant_id.clone(), config.client_id.clone());
    let account = config.device_code.account.clone();
    let configs = args.tenant_configs(config)?;
    let count = configs.len();
    let sim = Simulator::start_tenants(configs).await?;
    let tenants = match count {
        1 => format!("tenant {tenant}"),
        n => format!("{n} tenants from {tenant}, domains tenant2.onmicrosoft.com to tenant{n}.onmicrosoft.com"),
    };
    let mut line = format!("simulator listening on {} ({tenants}, client {client}", sim.base_url());
    if demo_secret {
        line.push_str(&format!("; demo client secret {DEMO_CLIENT_SECRET}, not a real secret"));
    }
    line.push_str(&format!("; --device-code signs in as {account}"));
    line.push(')');
    // One line, flushed: scripts wait for it to learn the address.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::Simulator(format!("cannot write to stdout: {e}")))?;
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}

fn parse_share(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| format!("`{s}` is not a share from 0 to 1, such as 0.05"))
}

fn parse_scale(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("`{s}` is not a number above 0, such as 1 or 100"))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{s}` is not a duration above zero, such as 1h or 90s"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(argv: &[&str]) -> Result<SimulateArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("simulate").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_make_the_demo() {
        let config = parse(&[]).unwrap().config(None).unwrap();
        assert_eq!(config.listen.port(), 8787);
        assert_eq!(config.client_secret, DEMO_CLIENT_SECRET);
        assert_eq!(config.quotas.len(), 2);
        assert_eq!(config.forbidden_groups, vec!["Tier0 Servers".to_string()]);
        assert_eq!(config.roles, vec!["Machine.Offboard".to_string(), "Machine.Read.All".to_string()]);
        assert_eq!(config.fleet.len(), 1000);
        assert_eq!(config.lifecycle.action_timeout, Duration::from_secs(3 * 86_400));
        assert_eq!(config.faults.latency, Duration::ZERO);
        assert_eq!((config.quota_scope, config.background_rate), (QuotaScope::Api, None));
    }

    #[test]
    fn the_quota_scope_and_a_background_client() {
        let config = parse(&["--quota-scope", "app", "--background-rate", "450/1h"]).unwrap().config(None).unwrap();
        assert_eq!(config.quota_scope, QuotaScope::App);
        assert_eq!(config.background_rate, Some("450/1h".parse().unwrap()));
        assert!(parse(&["--quota-scope", "tenant"]).is_err());
        assert!(parse(&["--background-rate", "450/1h", "--no-quotas"]).is_err());
    }

    #[test]
    fn several_tenants_are_numbered_from_the_first() {
        let args =
            parse(&["--tenants", "3", "--fleet-size", "5", "--tenant-domain", "contoso.onmicrosoft.com"]).unwrap();
        let tenants = args.tenant_configs(args.config(None).unwrap()).unwrap();
        let ids: Vec<&str> = tenants.iter().map(|t| t.tenant_id.as_str()).collect();
        assert_eq!(
            ids,
            [DEMO_TENANT_ID, "0d3e5c1a-7b2f-4e8d-9a61-5f4c3b2a1d01", "0d3e5c1a-7b2f-4e8d-9a61-5f4c3b2a1d02"]
        );
        assert_eq!(tenants[0].tenant_domains, ["contoso.onmicrosoft.com"]);
        assert_eq!(tenants[2].tenant_domains, ["tenant3.onmicrosoft.com"]);
        assert!(tenants.iter().all(|t| t.fleet.len() == 5 && t.client_id == DEMO_CLIENT_ID));
        assert_ne!(tenants[0].fleet.machines()[0].id, tenants[1].fleet.machines()[0].id, "a fleet each");
        assert!(parse(&["--tenants", "0"]).is_err());
        let args = parse(&["--tenants", "2", "--tenant-id", "contoso"]).unwrap();
        assert!(args.tenant_configs(args.config(None).unwrap()).is_err(), "not a GUID to number from");
        let args = parse(&["--tenants", "2", "--fleet", "x.csv"]).unwrap();
        assert!(args.tenant_configs(SimConfig::default()).is_err(), "a fleet file serves one tenant");
    }

    #[test]
    fn flags_become_config() {
        let args = parse(&[
            "--quota",
            "5/1s",
            "--quota",
            "50/1m",
            "--time-scale",
            "100",
            "--roles",
            "Machine.Read.All",
            "--forbid-group",
            "Lab",
            "--fault-500",
            "0.1",
            "--fault-429-retry-after",
            "3s",
            "--latency",
            "5ms",
            "--fleet-size",
            "10",
            "--token-lifetime",
            "10m",
            "--secret-expired",
        ])
        .unwrap();
        let config = args.config(Some("s3cret".into())).unwrap();
        assert_eq!(config.quotas, vec!["5/1s".parse().unwrap(), "50/1m".parse().unwrap()]);
        assert_eq!(config.time_scale, 100.0);
        assert_eq!(config.roles, vec!["Machine.Read.All".to_string()]);
        assert_eq!(config.forbidden_groups, vec!["Lab".to_string()]);
        assert_eq!(config.faults.error_500, 0.1);
        assert_eq!(config.faults.latency, Duration::from_millis(5));
        assert_eq!(config.fleet.len(), 10);
        assert_eq!(config.client_secret, "s3cret");
        assert!(config.secret_expired);
        assert!(parse(&["--no-quotas"]).unwrap().config(None).unwrap().quotas.is_empty());
        assert!(parse(&["--no-forbidden-groups"]).unwrap().config(None).unwrap().forbidden_groups.is_empty());
    }

    #[test]
    fn bad_flags_are_refused() {
        for argv in [
            &["--quota", "0/1m"][..],
            &["--quota", "5/1m", "--no-quotas"],
            &["--fault-500", "1.5"],
            &["--time-scale", "0"],
            &["--token-lifetime", "0s"],
            &["--fleet", "x.csv", "--fleet-size", "3"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
        let args = parse(&["--fault-500", "0.6", "--fault-503", "0.6"]).unwrap();
        assert!(args.config(None).is_err());
    }
}
