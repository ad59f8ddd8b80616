//! A simulator of the Defender for Endpoint API and of the Entra ID token endpoint, served over real HTTP.
//!
//! It exists so that tests, the demo and the benchmarks can run the real client against something that
//! behaves like the documented service (Microsoft's pages and integrators' reports): client-credentials sign-in with
//! expiring tokens, the offboard, machine and machine-action routes with their error codes, sliding-window
//! quotas answered with 429 and `Retry-After`, actions that move from `Pending` to a final status over time,
//! and seeded faults (5xx, spurious 429, transient 404, dropped connections, latency). For tests of how the
//! client reads answers it can also answer what the service never should ([`Misanswers`]: error bodies with
//! 200, HTML, empty or endless bodies, redirects), refuse every token, or revoke the tokens issued so far.
//!
//! Time can run faster than real time (`time_scale`): every duration of the service (token lifetime, quota
//! periods, the action lifecycle) is divided by it, so an hour-long run can be tested in seconds.
//!
//! The simulator is deterministic where a test needs it to be: the fleet comes from a seed, action ids and
//! outcomes from the seed and the machine, faults from the seed and the count of calls to each path.

mod actions;
mod args;
pub(crate) mod clock;
mod config;
mod device_code;
mod error;
mod faults;
mod fleet;
mod misanswers;
mod query;
mod quota;
mod rate;
mod server;
mod stats;
mod token;

pub use args::{SimulateArgs, simulate};
pub use config::{
    DEFAULT_ROLES, DEFAULT_UNSUPPORTED_PLATFORMS, DeviceCode, DeviceCodeAnswer, Faults, Lifecycle, Misanswer,
    Misanswers, RetryAfterOverride, SimConfig, tenant_series, version_key,
};
pub use device_code::{DEVICE_CODE_PREFIX, REFRESH_TOKEN_PREFIX};
pub use error::Error;
pub use fleet::{Fleet, SimMachine};
pub use quota::QuotaScope;
pub use rate::{DEFAULT_RATES, Rate};
pub use server::Simulator;
pub use stats::{OffboardCount, SimStats, WindowStats};

/// The environment variable the app's client secret is read from (as the client reads it).
pub const SECRET_ENV: &str = "MDE_CLIENT_SECRET";

/// The demo tenant: the simulator's default, printed on start. Not a real tenant.
pub const DEMO_TENANT_ID: &str = "0d3e5c1a-7b2f-4e8d-9a61-5f4c3b2a1d00";
/// The demo app registration: the simulator's default. Not a real app.
pub const DEMO_CLIENT_ID: &str = "6a1f0c2e-93b4-4d57-8e1a-2c3d4e5f6a70";
/// The demo app's secret. Not a real secret: it only opens the simulator.
pub const DEMO_CLIENT_SECRET: &str = "sim~DemoSecret.NotReal_0123456789";
/// The demo person who signs in with the device code flow. Not a real account.
pub const DEMO_ACCOUNT: &str = "analyst@contoso.onmicrosoft.com";
