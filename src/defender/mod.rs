//! The Defender for Endpoint service as the tool meets it: signing in to Entra ID (a secret, a
//! certificate or a ready token), the one rate limiter every call passes, the API calls with their retry
//! policy, and the service's timestamps.

pub mod api;
pub mod auth;
pub mod calls_at_once;
pub mod limiter;
pub mod timestamp;

use std::sync::Arc;
use std::time::Duration;

use crate::defender::calls_at_once::CallsAtOnce;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// Builds the HTTP client every call shares: sign-in and API calls alike. It follows no redirect: a 3xx is
/// reported, and nothing (a token, a client secret, an offboard) is ever sent to the host it names.
pub fn http_client(settings: &Settings) -> Result<reqwest::Client> {
    build_client(&ClientSetting::of(settings), settings.concurrency.max(4))
}

/// What a client is built from, of the settings: the same for every tenant of a run given the same settings.
#[derive(Clone, Debug, PartialEq)]
struct ClientSetting {
    /// Plain http is only ever loopback (the simulator; settings refuse it elsewhere): no TLS, so the root
    /// certificates (the system's store is read from disk, tens of milliseconds) are not loaded.
    tls: bool,
    timeout: Duration,
}

impl ClientSetting {
    fn of(settings: &Settings) -> Self {
        let tls = !(settings.api_base.starts_with("http://") && settings.authority.starts_with("http://"));
        ClientSetting { tls, timeout: settings.timeout }
    }
}

/// A client of `setting` keeping at most `idle` idle connections to a host.
fn build_client(setting: &ClientSetting, idle: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_built_in_root_certs(setting.tls)
        .timeout(setting.timeout)
        .connect_timeout(setting.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(idle)
        .user_agent(concat!("mde-offboard/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        // Every call passes the limiter and is counted as an attempt: reqwest sends none again on its own (by
        // default it repeats a call an HTTP/2 peer refused, and copies each call's request to be able to).
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .build()
        .map_err(|e| Error::Setting { key: "api.base_url", message: format!("cannot build the HTTP client: {e}") })
}

/// The HTTP clients of a run of several tenants, one per distinct client setting (in practice one: a tenants
/// file gives a tenant its own app, not its own timeouts), shared by the tenants' sessions, and the bound on
/// the calls they make at once. Every tenant calls the same hosts, and a call carries its tenant's token in a
/// header of its own: a connection one tenant's call left idle serves the next call of any tenant, so the run
/// holds as many connections as calls in flight, not tenants x concurrency.
pub struct SharedClients {
    /// The most calls in flight at once it may come to, and the idle connections kept per host.
    calls: usize,
    in_flight: Arc<CallsAtOnce>,
    clients: std::sync::Mutex<Vec<(ClientSetting, reqwest::Client)>>,
}

/// A client shared by the sessions of a run, and the bound on their calls in flight.
#[derive(Clone)]
pub struct SharedClient {
    pub http: reqwest::Client,
    pub in_flight: Arc<CallsAtOnce>,
}

impl SharedClients {
    /// For a run whose tenants, running at once, could make `calls` calls at once (the sum of their
    /// concurrency), each at most `concurrency`: at most `bound` of them at once (`run.calls_at_once`), or
    /// `concurrency` if more. The tenants' quotas open together, and without a bound every running tenant's
    /// workers would call at once, each call on a connection of its own (some 30 KB of buffers each). A
    /// bound that `grows` (the default's) doubles, up to `calls`, while it, not the quotas, holds calls back
    /// ([`CallsAtOnce`]).
    pub fn new(calls: usize, concurrency: usize, bound: usize, grows: bool) -> Self {
        let start = calls.min(bound.max(concurrency)).max(1);
        let ceiling = if grows { calls.max(start) } else { start };
        SharedClients {
            calls: ceiling,
            in_flight: Arc::new(CallsAtOnce::new(start, ceiling)),
            clients: std::sync::Mutex::default(),
        }
    }

    /// The bound on the calls at once.
    pub fn calls_at_once(&self) -> &Arc<CallsAtOnce> {
        &self.in_flight
    }

    /// The client for `settings`: the one already built for the same setting, or a new one.
    pub fn client(&self, settings: &Settings) -> Result<SharedClient> {
        let setting = ClientSetting::of(settings);
        let mut clients = self.clients.lock().expect("never poisoned");
        let http = match clients.iter().find(|(s, _)| *s == setting) {
            Some((_, client)) => client.clone(),
            None => {
                let client = build_client(&setting, self.calls.max(4))?;
                clients.push((setting, client.clone()));
                client
            }
        };
        Ok(SharedClient { http, in_flight: self.in_flight.clone() })
    }
}
