//! A session: the one set-up of every command that talks to the service. It holds who the command signs in
//! as (resolved [`Credentials`], checked once), the HTTP client and token cache they share, the [`Api`] with
//! its retry policy and the limiter that paces every call, and, once taken, the run lock.
//!
//! Opening one touches no network; [`Session::lock`] and [`Session::sign_in`] do, in the order the command
//! needs (a run locks, then reads its results file, then signs in). Whatever follows a command on the same
//! quota (`run --wait`'s tracking) is handed the same session: one sign-in, one limiter, one lock.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::defender::SharedClient;
use crate::defender::api::{Api, RetryPolicy};
use crate::defender::auth::{Permissions, Token, TokenCache, token_file};
use crate::defender::calls_at_once::CallsAtOnce;
use crate::defender::limiter::Limiter;
use crate::error::{Error, Result};
use crate::files::lock::RunLock;
use crate::files::spent;
use crate::settings::{Credential, Credentials, Settings};

pub struct Session {
    api: Arc<Api>,
    tokens: Arc<TokenCache>,
    /// A call's timeout (the settings').
    timeout: Duration,
    /// From [`Session::lock`]: what the calls spent of the quotas, kept beside the lock ([`spent`]). Before
    /// `lock`: dropped first, its last write made while the lock is still held.
    spent: Option<spent::Keeper>,
    /// Held from [`Session::lock`] until the session is dropped.
    lock: Option<RunLock>,
}

impl Session {
    /// The client, the token cache and the `Api` for `credentials`, paced by `limiter`, retrying as the
    /// settings say. No network.
    pub fn open(settings: &Settings, credentials: Credentials, limiter: Arc<Limiter>) -> Result<Session> {
        let policy = RetryPolicy { max_attempts: settings.max_attempts, retry_delay: settings.retry_delay };
        Ok(Session::assemble(crate::defender::http_client(settings)?, None, settings, credentials, limiter, policy))
    }

    /// As [`Session::open`], its calls made on `shared`, a client shared with other sessions, within its
    /// bound on calls in flight (the tenants of a run share their connections:
    /// [`crate::defender::SharedClients`]); the token, limiter and lock are still the session's own. No network.
    pub fn open_on(
        shared: SharedClient,
        settings: &Settings,
        credentials: Credentials,
        limiter: Arc<Limiter>,
    ) -> Session {
        let policy = RetryPolicy { max_attempts: settings.max_attempts, retry_delay: settings.retry_delay };
        Session::assemble(shared.http, Some(shared.in_flight), settings, credentials, limiter, policy)
    }

    /// As [`Session::open`], with its own retry policy (`check` makes one call, and retries little).
    pub fn with_policy(
        settings: &Settings,
        credentials: Credentials,
        limiter: Arc<Limiter>,
        policy: RetryPolicy,
    ) -> Result<Session> {
        Ok(Session::assemble(crate::defender::http_client(settings)?, None, settings, credentials, limiter, policy))
    }

    fn assemble(
        http: reqwest::Client,
        in_flight: Option<Arc<CallsAtOnce>>,
        settings: &Settings,
        credentials: Credentials,
        limiter: Arc<Limiter>,
        policy: RetryPolicy,
    ) -> Session {
        let mut credentials = credentials;
        if let Credential::DeviceCode(person) = &mut credentials.credential {
            // The code is shown on stderr; whoever typed the command is at stdin's terminal.
            person.person = std::io::stdin().is_terminal();
        }
        let tokens = Arc::new(TokenCache::new(http.clone(), credentials));
        let mut api = Api::new(http, &settings.api_base, tokens.clone(), limiter, policy, settings.timeout);
        if let Some(in_flight) = in_flight {
            api = api.sharing(in_flight);
        }
        let api = Arc::new(api);
        Session { api, tokens, timeout: settings.timeout, spent: None, lock: None }
    }

    /// Takes the run lock of the tenant (by its id: a tenant named by a domain signs in first to learn it)
    /// and app, in `dir`, naming `run_id` as its holder; held until the session is dropped. A session that
    /// holds it already keeps it.
    pub async fn lock(&mut self, dir: &Path, run_id: &str) -> Result<()> {
        if self.lock.is_none() {
            let tenant = self.tokens.tenant_id().await.map_err(Error::Auth)?;
            let lock = RunLock::acquire(dir, &tenant, &self.credentials().client_id, run_id)?;
            // The calls an earlier run of this tenant and app made lately, which the service still counts.
            let path = spent::path_for(lock.path());
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || spent::read(&path))
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            };
            match read {
                Ok(earlier) => {
                    let calls: usize = earlier.iter().map(|(_, at)| at.len()).sum();
                    if calls > 0 {
                        tracing::info!(
                            calls,
                            "counting the calls an earlier run of this tenant and app made lately, which the \
                             service still counts, in this run's quotas"
                        );
                        self.api.limiter().count_earlier(&earlier);
                    }
                }
                Err(e) => tracing::warn!(
                    "cannot read {} ({e}): the calls an earlier run made lately are not counted in this run's \
                     quotas (a 429 will say if the service still counts them)",
                    path.display()
                ),
            }
            self.spent = Some(spent::Keeper::start(path, self.api.limiter().clone(), self.timeout));
            self.lock = Some(lock);
        }
        Ok(())
    }

    /// Signs in (or takes the token already had) and refuses, with `needs`, a token whose permissions (an
    /// app's roles, a person's scopes) do not allow what the command will do: before any API call.
    pub async fn sign_in(&self, needs: impl FnOnce(&Permissions) -> Result<()>) -> Result<Token> {
        let token = self.tokens.get().await.map_err(Error::Auth)?;
        needs(token.permissions())?;
        Ok(token)
    }

    /// A person's sign-in (device code) needs the person, to enter a code: without a terminal it is
    /// refused, before any network, unless `unattended` (`--yes`, or a command that changes nothing) and
    /// a token cache holds a refresh token for this tenant and app. A scheduled job never waits for a code.
    pub fn require_person(&self, unattended: bool) -> Result<()> {
        let credentials = self.credentials();
        let Credential::DeviceCode(person) = &credentials.credential else { return Ok(()) };
        if person.person {
            return Ok(());
        }
        let cached = match &person.token_cache {
            Some(path) => token_file::load(path, credentials).map_err(Error::Auth)?.is_some(),
            None => false,
        };
        if unattended && cached {
            return Ok(());
        }
        let how = match (&person.token_cache, cached) {
            (Some(path), true) => format!("pass --yes to sign in with the refresh token kept in {}", path.display()),
            (Some(path), false) => format!(
                "{} holds no refresh token for this tenant and app yet: sign in once at a terminal with the same \
                 --token-cache, then run with --yes",
                path.display()
            ),
            (None, _) => {
                "sign in once at a terminal with --token-cache FILE, then run with --yes --token-cache FILE".into()
            }
        };
        Err(Error::Usage(format!(
            "signing in as a person (--device-code) needs someone to enter a code, and there is no terminal (stdin) \
             to ask on; {how}. A scheduled job is better served by an app registration with a secret or certificate"
        )))
    }

    /// Who the session signs in as.
    pub fn credentials(&self) -> &Credentials {
        self.tokens.credentials()
    }

    pub fn tokens(&self) -> &Arc<TokenCache> {
        &self.tokens
    }

    /// The API, shared by every task of the command.
    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }
}
