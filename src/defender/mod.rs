//! The Defender for Endpoint service as the tool meets it: signing in to Entra ID (a secret, a
//! certificate or a ready token), the one rate limiter every call passes, the API calls with their retry
//! policy, and the service's timestamps.

pub mod api;
pub mod auth;
pub mod limiter;
pub mod timestamp;

use std::time::Duration;

use crate::error::{Error, Result};
use crate::settings::Settings;

/// Builds the HTTP client every call shares: sign-in and API calls alike. It follows no redirect: a 3xx is
/// reported, and nothing (a token, a client secret, an offboard) is ever sent to the host it names.
pub fn http_client(settings: &Settings) -> Result<reqwest::Client> {
    // Plain http is only ever loopback (the simulator; settings refuse it elsewhere): no TLS, so the root
    // certificates (the system's store is read from disk, tens of milliseconds) are not loaded.
    let tls = !(settings.api_base.starts_with("http://") && settings.authority.starts_with("http://"));
    reqwest::Client::builder()
        .tls_built_in_root_certs(tls)
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(settings.concurrency.max(4))
        .user_agent(concat!("mde-offboard/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Setting { key: "api.base_url", message: format!("cannot build the HTTP client: {e}") })
}
