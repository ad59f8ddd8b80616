//! Sign-in with Entra ID (client credentials: a secret or a certificate assertion; or a person, with the
//! device code flow, [`device_code`]) and the one token cache every worker shares.
//!
//! A person's sign-in asks for a code once per process (or not at all with a token cache,
//! [`token_file`]): every renewal after it redeems the refresh token, and a refresh token refused after
//! the first sign-in stops the command as a failed sign-in, never a new prompt mid-run. The device code
//! and the refresh token are as secret as the access token.
//!
//! The token is fetched once, renewed ahead of expiry and once after a 401, and only one renewal runs at a
//! time: workers that find it stale wait for the renewal in progress instead of starting their own. A ready
//! access token (MDE_ACCESS_TOKEN) is used as is: it cannot be renewed, so a 401 stops the run with a message
//! saying it expired. The token, the secret, the private key and the assertion never reach a log line, an
//! error or a results row.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::time::Instant;

pub use crate::error::AuthError;
use crate::settings::jwt::claim;
use crate::settings::{ACCESS_TOKEN_ENV, Credential, Credentials, DeviceCodeSignIn, Secret};

pub mod device_code;
pub mod token_file;

/// Whose permissions a token carries: an app's (`roles`) or a person's (`scp`, delegated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermissionKind {
    Application,
    Delegated,
}

/// What a token lets its bearer do, read from its claims (without checking the signature: only to explain
/// and to refuse early; the API decides).
#[derive(Clone, Debug)]
pub struct Permissions {
    pub kind: PermissionKind,
    /// The `roles` of an app token, or the `scp` of a delegated one.
    pub names: Vec<String>,
    /// The person a delegated token names (`upn`, else `preferred_username` or `unique_name`).
    pub account: Option<String>,
}

impl Permissions {
    /// An app's permissions (tests and ready tokens without claims).
    pub fn application(names: Vec<String>) -> Self {
        Permissions { kind: PermissionKind::Application, names, account: None }
    }

    /// From a JWT access token: `scp` makes it delegated.
    pub fn of(jwt: &str) -> Self {
        match claim(jwt, "scp") {
            Some(scp) => Permissions {
                kind: PermissionKind::Delegated,
                names: scp.split_whitespace().map(str::to_owned).collect(),
                account: ["upn", "preferred_username", "unique_name"].iter().find_map(|c| claim(jwt, c)),
            },
            None => Permissions::application(roles_of(jwt)),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.trim().eq_ignore_ascii_case(name))
    }

    /// The names, or `none`.
    pub fn granted(&self) -> String {
        if self.names.is_empty() { "none".into() } else { self.names.join(", ") }
    }

    /// `application` or `delegated`, as the app registration's pages say.
    pub fn kind_word(&self) -> &'static str {
        match self.kind {
            PermissionKind::Application => "application",
            PermissionKind::Delegated => "delegated",
        }
    }

    /// How to get a permission that is missing.
    pub fn how_to_grant(&self) -> &'static str {
        match self.kind {
            PermissionKind::Application => {
                "grant it to the app registration (API permissions > APIs my organization uses > WindowsDefenderATP > \
                 Application permissions) and give admin consent"
            }
            PermissionKind::Delegated => {
                "add it to the public client app registration (API permissions > APIs my organization uses > \
                 WindowsDefenderATP > Delegated permissions), consent to it, and sign in again (deleting the \
                 --token-cache file, if one is used)"
            }
        }
    }
}

/// How long before expiry a token is renewed, at most; short-lived tokens renew at a fifth of their life.
const RENEW_AHEAD: Duration = Duration::from_secs(300);
/// The longest token lifetime believed: Entra ID's are 60 to 90 minutes, and an `expires_in` past this (up to
/// the largest integer) is taken as this, so no deadline overflows.
pub const TOKEN_LIFETIME_MAX: Duration = Duration::from_secs(24 * 3600);
/// The shortest time a token is used before it is renewed unasked: an `expires_in` of 0 (or a few seconds)
/// would otherwise cost a token request per API call. A 401 still renews it at once.
pub const TOKEN_KEPT_MIN: Duration = Duration::from_secs(60);
/// Attempts at the token endpoint when it fails for a passing reason (5xx, a dropped connection).
const SIGN_IN_ATTEMPTS: u32 = 3;
/// Most bytes read of an answer that holds one object (a token, a MachineAction, an error): they are a few
/// KiB; anything this large is not what was asked for.
pub const ANSWER_MAX: usize = 1 << 20;

/// `Authorization: Bearer <value>`, if `value` can be a header value.
fn authorization(value: &str) -> Option<reqwest::header::HeaderValue> {
    let mut header = reqwest::header::HeaderValue::from_str(&format!("Bearer {value}")).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// An access token. `Debug` hides the value.
#[derive(Clone)]
pub struct Token {
    value: Arc<str>,
    /// `Bearer <value>` as a header, made once for every call that sends the token (marked sensitive);
    /// `None` when the value cannot be a header (the call then fails as the client reads it).
    authorization: Option<reqwest::header::HeaderValue>,
    /// When to stop using it (a little before it really expires).
    renew_at: Instant,
    /// The permissions the token carries (`roles`, or a person's `scp`), and whose they are.
    permissions: Arc<Permissions>,
    /// Fetched to replace a token the API refused (401).
    replaced_a_refused_one: bool,
    /// The API answered a call made with it (anything but 401); shared by every copy.
    accepted: Arc<AtomicBool>,
}

impl Token {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.value)
    }

    /// [`Token::bearer`] as an `Authorization` header value, when it can be one.
    pub fn authorization(&self) -> Option<&reqwest::header::HeaderValue> {
        self.authorization.as_ref()
    }

    /// The API answered a call made with this token with something other than 401.
    pub fn mark_accepted(&self) {
        self.accepted.store(true, Ordering::Relaxed);
    }

    /// Fetched because the API refused the one before, and never accepted since: a 401 on it says that
    /// renewing does not help.
    pub fn renewal_unproven(&self) -> bool {
        self.replaced_a_refused_one && !self.accepted.load(Ordering::Relaxed)
    }

    /// What the token lets its bearer do.
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// The person who signed in (a delegated token), for the summary.
    pub fn account(&self) -> Option<&str> {
        self.permissions.account.as_deref()
    }

    /// The tenant id the token names (its `tid` claim): a tenant's GUID, however it was named at sign-in.
    pub fn tenant_id(&self) -> Option<String> {
        claim(&self.value, "tid")
    }

    fn same(&self, other: &Token) -> bool {
        Arc::ptr_eq(&self.value, &other.value)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("permissions", &self.permissions).finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
struct EntraError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// The shared token cache.
pub struct TokenCache {
    http: reqwest::Client,
    credentials: Credentials,
    current: Mutex<Option<Token>>,
    /// Held while a renewal runs, so only one runs at a time.
    renewal: tokio::sync::Mutex<()>,
    issued: std::sync::atomic::AtomicU64,
    /// A person's refresh token (device code sign-in), in memory; also in the token cache file when given.
    refresh: Mutex<Option<Secret>>,
}

impl TokenCache {
    /// Who it signs in as.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The HTTP client it signs in with, for the API calls made with its tokens.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    pub fn new(http: reqwest::Client, credentials: Credentials) -> Self {
        TokenCache {
            http,
            credentials,
            current: Mutex::new(None),
            renewal: tokio::sync::Mutex::new(()),
            issued: Default::default(),
            refresh: Mutex::new(None),
        }
    }

    /// The token endpoint (v2).
    pub fn token_url(&self) -> String {
        self.endpoint("token")
    }

    /// An endpoint of the tenant's v2 sign-in: `token`, `devicecode`.
    fn endpoint(&self, name: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{name}", self.credentials.authority, self.credentials.tenant_id)
    }

    /// How many tokens were fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cached(&self) -> Option<Token> {
        let now = Instant::now();
        self.current.lock().unwrap().as_ref().filter(|t| t.renew_at > now).cloned()
    }

    /// A valid token, from the cache or freshly fetched.
    pub async fn get(&self) -> Result<Token, AuthError> {
        if let Credential::AccessToken(token) = &self.credentials.credential {
            return self.given(token.expose());
        }
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let _one_at_a_time = self.renewal.lock().await;
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        // Boxed: a sign-in's future (an HTTP call) is large, and every API call's future keeps room for this
        // one (a future is as large as its largest wait), where few calls sign in.
        Box::pin(self.fetch(false)).await
    }

    /// The API refused `rejected` with 401: drop it (unless another worker already replaced it) and get another.
    pub async fn renew(&self, rejected: &Token) -> Result<Token, AuthError> {
        if let Credential::AccessToken(_) = &self.credentials.credential {
            return Err(AuthError::TokenExpired {
                env: ACCESS_TOKEN_ENV,
                why: "was refused by the API (401): it has expired or was revoked".into(),
            });
        }
        let _one_at_a_time = self.renewal.lock().await;
        {
            let current = self.current.lock().unwrap();
            if let Some(token) = current.as_ref()
                && !token.same(rejected)
                && token.renew_at > Instant::now()
            {
                return Ok(token.clone());
            }
        }
        Box::pin(self.fetch(true)).await
    }

    /// The ready access token, unless its `exp` claim says it has expired.
    fn given(&self, value: &str) -> Result<Token, AuthError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        if let Some(exp) = claim(value, "exp").and_then(|e| e.parse::<u64>().ok())
            && exp <= now
        {
            let ago = humantime::format_duration(Duration::from_secs(now - exp));
            return Err(AuthError::TokenExpired { env: ACCESS_TOKEN_ENV, why: format!("expired {ago} ago") });
        }
        Ok(Token {
            permissions: Permissions::of(value).into(),
            authorization: authorization(value),
            value: value.into(),
            // Never renewed: the API's 401 says when it is no longer good.
            renew_at: Instant::now() + Duration::from_secs(100 * 365 * 86_400),
            replaced_a_refused_one: false,
            accepted: Default::default(),
        })
    }

    /// The form of a token request; a certificate gets a fresh assertion each time.
    fn form(&self, url: &str) -> Result<Vec<(&'static str, String)>, AuthError> {
        let c = &self.credentials;
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", c.client_id.clone()),
            ("scope", c.scope.clone()),
        ];
        match &c.credential {
            Credential::Secret(secret) => form.push(("client_secret", secret.expose().to_string())),
            Credential::Certificate(certificate) => {
                form.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
                form.push((
                    "client_assertion",
                    certificate.assertion(&c.client_id, url).map_err(AuthError::Certificate)?,
                ));
            }
            Credential::AccessToken(_) | Credential::DeviceCode(_) => {
                unreachable!("a ready access token is never fetched, and a person's sign-in has its own forms")
            }
        }
        Ok(form)
    }

    /// A new token from the token endpoint; `after_refusal` when it replaces one the API refused.
    async fn fetch(&self, after_refusal: bool) -> Result<Token, AuthError> {
        let token = match &self.credentials.credential {
            Credential::DeviceCode(person) => self.fetch_for_person(person).await?,
            _ => {
                let url = self.token_url();
                match self.post(&url, &|| self.form(&url)).await? {
                    Posted::Token(token, _) => token,
                    Posted::Refused { status, body } => return Err(refusal(status, &body)),
                }
            }
        };
        Ok(self.keep(token, after_refusal))
    }

    /// Makes `token` the current one.
    fn keep(&self, mut token: Token, after_refusal: bool) -> Token {
        token.replaced_a_refused_one = after_refusal;
        self.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(permissions = ?token.permissions, "signed in");
        *self.current.lock().unwrap() = Some(token.clone());
        token
    }

    /// Posts a form to a sign-in endpoint (a fresh form each attempt: a certificate's assertion is new each
    /// time), retrying what passes (5xx, a dropped connection): a token, or the endpoint's refusal.
    async fn post(
        &self,
        url: &str,
        form: &(dyn Fn() -> Result<Vec<(&'static str, String)>, AuthError> + Sync),
    ) -> Result<Posted, AuthError> {
        let url = url.to_string();
        let mut last = String::new();
        for attempt in 1..=SIGN_IN_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            let form = form()?;
            let sent_at = Instant::now();
            let answer = match self.http.post(&url).form(&form).send().await {
                Ok(answer) => answer,
                Err(e) => {
                    last = describe_transport(&e);
                    tracing::warn!(attempt, "sign-in request failed: {last}");
                    continue;
                }
            };
            let status = answer.status();
            let content_type = answer
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(60).collect::<String>());
            if status.is_redirection() {
                let to = location_host(answer.headers(), &url);
                return Err(AuthError::Redirected { url, status: status.as_u16(), to });
            }
            let body = match read_capped(answer, ANSWER_MAX).await {
                Ok(body) => body,
                Err(BodyError::TooLarge { limit }) => {
                    let message = format!("HTTP {status} with a body larger than {}; stopped reading it", size(limit));
                    return Err(AuthError::BadAnswer { url, message });
                }
                Err(BodyError::Transport(e)) => {
                    last = describe_transport(&e);
                    tracing::warn!(attempt, "sign-in answer cut short: {last}");
                    continue;
                }
            };
            if status.is_success() {
                let token = parse_token(&body, sent_at).map_err(|why| AuthError::BadAnswer {
                    url: url.clone(),
                    message: format!(
                        "HTTP {status}{}, {why}",
                        content_type.map(|t| format!(" ({t})")).unwrap_or_default()
                    ),
                })?;
                return Ok(Posted::Token(token, refresh_token_of(&body)));
            }
            if status.is_server_error() {
                last = format!("HTTP {status}");
                tracing::warn!(attempt, "sign-in endpoint answered {status}");
                continue;
            }
            return Ok(Posted::Refused { status: status.as_u16(), body });
        }
        Err(AuthError::Unreachable { url, message: last })
    }

    /// A person's token: redeemed with the refresh token had (in memory, else from the token cache file),
    /// or, at the first sign-in of the process only, with a device code the person enters.
    async fn fetch_for_person(&self, person: &DeviceCodeSignIn) -> Result<Token, AuthError> {
        let first = self.tokens_fetched() == 0;
        let mut refresh = self.refresh.lock().unwrap().clone();
        if refresh.is_none()
            && first
            && let Some(path) = &person.token_cache
        {
            refresh = token_file::load(path, &self.credentials)?;
        }
        if let Some(refresh_token) = refresh {
            let url = self.token_url();
            let form = || {
                Ok(vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("client_id", self.credentials.client_id.clone()),
                    ("refresh_token", refresh_token.expose().to_string()),
                    ("scope", person.scope()),
                ])
            };
            match self.post(&url, &form).await? {
                Posted::Token(token, renewed) => {
                    self.hold_refresh_token(person, renewed.or(Some(refresh_token)), token.account());
                    return Ok(token);
                }
                Posted::Refused { status, body } => {
                    let refused = refusal(status, &body);
                    tracing::warn!("the refresh token was refused: {refused}");
                    *self.refresh.lock().unwrap() = None;
                    if let Some(path) = &person.token_cache {
                        token_file::forget(path);
                    }
                    if !(first && person.person) {
                        return Err(AuthError::RefreshRefused { why: Box::new(refused) });
                    }
                    crate::ui::output::notice(
                        "sign_in",
                        "The refresh token kept in the token cache was refused: sign in again with a new code.",
                    );
                }
            }
        } else if !first {
            return Err(AuthError::RefreshRefused {
                why: Box::new(AuthError::BadAnswer {
                    url: self.token_url(),
                    message: "the sign-in gave no refresh token (offline_access was not granted)".into(),
                }),
            });
        }
        if !person.person {
            return Err(AuthError::NeedsPerson);
        }
        let (token, refresh_token) = device_code::sign_in(self, person).await?;
        self.hold_refresh_token(person, refresh_token, token.account());
        Ok(token)
    }

    /// Keeps a person's (new) refresh token in memory, and in the token cache file when one is given.
    fn hold_refresh_token(&self, person: &DeviceCodeSignIn, refresh_token: Option<Secret>, account: Option<&str>) {
        if let (Some(path), Some(refresh_token)) = (&person.token_cache, &refresh_token)
            && let Err(e) = token_file::save(path, &self.credentials, account, refresh_token)
        {
            // The run goes on (its tokens are in memory); the next command asks for a code again.
            tracing::warn!("{e}");
        }
        *self.refresh.lock().unwrap() = refresh_token;
    }
}

/// What a sign-in endpoint answered.
enum Posted {
    /// A token, and the refresh token that came with it.
    Token(Token, Option<Secret>),
    /// A 4xx: the endpoint's error answer, still to be read.
    Refused { status: u16, body: bytes::Bytes },
}

/// The `refresh_token` of a token answer, if any.
fn refresh_token_of(body: &[u8]) -> Option<Secret> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    answer["refresh_token"].as_str().map(str::trim).filter(|t| !t.is_empty()).map(Secret::new)
}

/// A token from a 2xx answer of the token endpoint, or what is wrong with the answer, in a few words that
/// quote nothing from it but field names (it may hold a token under another name).
fn parse_token(body: &[u8], sent_at: Instant) -> Result<Token, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty".into());
    }
    let answer: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        let start = String::from_utf8_lossy(&body[..body.len().min(512)]).trim_start().to_ascii_lowercase();
        if start.starts_with("<!doctype html") || start.starts_with("<html") || start.contains("<body") {
            "an HTML page, not a token answer (a proxy's or a portal's page?): check --authority (or --cloud)"
                .to_string()
        } else {
            "the body is not JSON".to_string()
        }
    })?;
    let Some(fields) = answer.as_object() else {
        return Err("the JSON is not an object".into());
    };
    let value = match fields.get("access_token") {
        Some(serde_json::Value::String(value)) if !value.trim().is_empty() => value.trim(),
        Some(serde_json::Value::String(_)) => return Err("its `access_token` is empty".into()),
        Some(_) => return Err("its `access_token` is not a string".into()),
        None => {
            let mut names: Vec<String> = fields.keys().take(12).map(|k| k.chars().take(40).collect()).collect();
            if fields.len() > names.len() {
                names.push("...".into());
            }
            let names = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            return Err(format!("the JSON has no `access_token` (its fields: {names})"));
        }
    };
    // v2 sends a number, v1 a string: accept both. Past TOKEN_LIFETIME_MAX it is clamped.
    let lifetime = match fields.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .map_or(Duration::from_secs(3599), |secs| Duration::from_secs(secs).min(TOKEN_LIFETIME_MAX));
    let ahead = RENEW_AHEAD.min(lifetime / 5);
    Ok(Token {
        permissions: Permissions::of(value).into(),
        authorization: authorization(value),
        value: value.into(),
        // Counted from when the request was sent: the service's clock started no earlier. Kept at least
        // TOKEN_KEPT_MIN whatever `expires_in` says; a 401 renews it sooner.
        renew_at: sent_at + (lifetime - ahead).max(TOKEN_KEPT_MIN),
        replaced_a_refused_one: false,
        accepted: Default::default(),
    })
}

impl TokenCache {
    /// The tenant id that keys the run lock: a tenant given by its GUID is that GUID; one given by a domain
    /// name is the GUID its token names (`tid`), so this signs in first (sign-in spends none of the API's
    /// quota), before the first API call.
    pub async fn tenant_id(&self) -> Result<String, AuthError> {
        let given = &self.credentials().tenant_id;
        if is_guid(given) {
            return Ok(given.clone());
        }
        let token = self.get().await?;
        Ok(token.tenant_id().unwrap_or_else(|| given.clone()))
    }
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.trim().split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `roles` claim of a JWT access token (read without checking the signature: only used to explain).
pub fn roles_of(jwt: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Claims {
        #[serde(default)]
        roles: Vec<String>,
    }
    jwt.split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<Claims>(&bytes).ok())
        .map(|c| c.roles)
        .unwrap_or_default()
}

/// Turns an Entra error answer into a message with its AADSTS code and a plain hint.
fn refusal(status: u16, body: &[u8]) -> AuthError {
    let entra: EntraError = serde_json::from_slice(body).unwrap_or_default();
    let code = entra.error_codes.first().copied().or_else(|| aadsts_in(&entra.error_description));
    let hint = match code {
        Some(7000215) => {
            "the client secret is wrong; check that MDE_CLIENT_SECRET (or the secret file) holds the secret's Value, not its Secret ID"
        }
        Some(7000222) => {
            "the client secret has expired; create a new one under Certificates & secrets in the app registration"
        }
        Some(700016) => {
            "the app was not found in this tenant; check --tenant-id and --client-id, and that admin consent was granted in this tenant"
        }
        Some(90002) => {
            "the tenant was not found; check --tenant-id, or whether the tenant lives in another cloud (--authority)"
        }
        Some(90038) => "the tenant is in another national cloud; use that cloud's sign-in host (--authority)",
        Some(500011) => "Defender for Endpoint is not provisioned in this tenant or its permissions were not consented",
        Some(70011) => "the scope is not valid; check --scope (it must end in /.default)",
        Some(7000218) => {
            "the app registration is not a public client: turn on \"Allow public client flows\" (Authentication > Advanced settings) for device code sign-in, or sign in with a secret or certificate"
        }
        Some(65001) => {
            "the delegated permissions were not consented for this app: consent to them (API permissions > Grant admin consent), then sign in again"
        }
        Some(50173) | Some(70008) | Some(700082) => {
            "the sign-in has expired or was revoked (a password change, or an admin revoking sessions): sign in again with --device-code"
        }
        Some(901002) => "the v2 endpoint was sent a `resource`; use --scope instead",
        Some(700027) => {
            "the certificate assertion was rejected: the certificate is not registered on the app, or the private key is not the certificate's; upload this certificate (Certificates & secrets) or give the key and certificate that are registered"
        }
        Some(50012) => "the certificate assertion was rejected; check the certificate's validity and --assertion",
        Some(700024) => "the client assertion is outside its valid time; check this machine's clock",
        _ if status == 401 => "the credentials were rejected",
        _ => "see the description",
    };
    let first_line = entra.error_description.lines().next().unwrap_or("").trim();
    AuthError::Refused {
        code: code.map(|c| format!("AADSTS{c}")).unwrap_or_else(|| format!("HTTP {status}")),
        error: if entra.error.is_empty() { String::new() } else { format!(" {}", entra.error) },
        hint: hint.to_string(),
        detail: if first_line.is_empty() { String::new() } else { format!(" [{first_line}]") },
    }
}

fn aadsts_in(text: &str) -> Option<u64> {
    let start = text.find("AADSTS")? + 6;
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Why an answer's body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// It is longer than `limit` bytes: reading stopped there.
    TooLarge { limit: usize },
    /// The connection failed or timed out while reading it.
    Transport(reqwest::Error),
}

/// Reads an answer's body, `limit` bytes at most: past it reading stops (and the connection is dropped),
/// so a body that never ends costs `limit` bytes, not the process.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<bytes::Bytes, BodyError> {
    let announced = response.content_length();
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    // An answer that comes in one chunk (the usual small one) is that chunk, not a copy of it.
    let mut first: Option<bytes::Bytes> = None;
    let mut body = bytes::BytesMut::new();
    let mut len = 0;
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        len += chunk.len();
        if len > limit {
            return Err(BodyError::TooLarge { limit });
        }
        match &first {
            None => first = Some(chunk),
            Some(first) => {
                if body.is_empty() {
                    body.reserve(announced.map_or(len, |n| n as usize).max(len));
                    body.extend_from_slice(first);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if body.is_empty() { first.unwrap_or_default() } else { body.freeze() })
}

/// A byte count for a message: `1 MiB`, `128 MiB`.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 { format!("{} MiB", bytes >> 20) } else { format!("{bytes} bytes") }
}

/// The host (and port) a redirect points to, from its `Location` (relative to `request_url` when relative),
/// or what is wrong with it. Only the host: a `Location` can carry anything in its path and query.
pub fn location_host(headers: &reqwest::header::HeaderMap, request_url: &str) -> String {
    let Some(location) = headers.get(reqwest::header::LOCATION) else {
        return "no Location".into();
    };
    let Ok(location) = location.to_str() else {
        return "an unreadable Location".into();
    };
    let url = reqwest::Url::parse(request_url).and_then(|base| base.join(location));
    match url.as_ref().ok().and_then(|u| u.host_str().map(|h| (h, u.port()))) {
        Some((host, Some(port))) => format!("{host}:{port}"),
        Some((host, None)) => host.to_string(),
        None => "an unreadable Location".into(),
    }
}

/// What kind of transport failure `e` is: the code a results row shows, and the words a message uses.
pub fn transport_kind(e: &reqwest::Error) -> (&'static str, &'static str) {
    if e.is_connect() {
        (CONNECTION_FAILED, "connection failed")
    } else if e.is_timeout() {
        (TIMEOUT, "timed out")
    } else {
        (CONNECTION_CLOSED, "connection closed before an answer")
    }
}

/// [`transport_kind`]'s codes: no connection could be made (nothing was sent), ...
pub const CONNECTION_FAILED: &str = "ConnectionFailed";
/// ... the call was (or may have been) sent and no answer came in time, ...
pub const TIMEOUT: &str = "Timeout";
/// ... or the connection closed after it was sent, before an answer.
pub const CONNECTION_CLOSED: &str = "ConnectionClosed";

/// A transport failure in a few words, without URLs' query strings or anything secret.
pub fn describe_transport(e: &reqwest::Error) -> String {
    let (_, kind) = transport_kind(e);
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() { kind.to_string() } else { format!("{kind} ({cause})") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved whole from the lock's tests with `is_guid`: which tenant names key the lock as they are.
    #[test]
    fn a_tenant_guid_is_told_from_a_domain_name() {
        let tenant = "0D3E5C1A-7B2F-4E8D-9A61-5F4C3B2A1D00";
        assert!(is_guid(tenant) && !is_guid("contoso.onmicrosoft.com") && !is_guid("0d3e5c1a-7b2f-4e8d-9a61"));
    }

    #[test]
    fn roles_come_from_the_jwt_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"roles":["Machine.Offboard","Machine.Read.All"]}"#);
        assert_eq!(roles_of(&format!("h.{payload}.s")), vec!["Machine.Offboard", "Machine.Read.All"]);
        assert!(roles_of("not a jwt").is_empty());
    }

    #[test]
    fn entra_errors_get_their_code_and_a_hint() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#;
        let msg = refusal(401, body).to_string();
        assert!(msg.contains("AADSTS7000215") && msg.contains("secret is wrong") && !msg.contains("Trace"), "{msg}");
        let msg =
            refusal(400, br#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#)
                .to_string();
        assert!(msg.contains("AADSTS90002") && msg.contains("tenant was not found"), "{msg}");
        assert!(refusal(400, b"<html>").to_string().contains("HTTP 400"));
    }

    #[test]
    fn a_redirect_is_named_by_its_host_only() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(location_host(&headers, "https://login.example/t/token"), "no Location");
        headers.insert(reqwest::header::LOCATION, "https://evil.example:8443/x?secret=1".parse().unwrap());
        assert_eq!(location_host(&headers, "https://login.example/t/token"), "evil.example:8443");
        headers.insert(reqwest::header::LOCATION, "/elsewhere".parse().unwrap());
        assert_eq!(location_host(&headers, "https://login.example/t/token"), "login.example");
    }

    #[tokio::test]
    async fn expires_in_as_string_or_number() {
        let now = Instant::now();
        let t = parse_token(br#"{"access_token":"a.b.c","expires_in":"3599"}"#, now).unwrap();
        assert_eq!(t.renew_at, now + Duration::from_secs(3599 - 300));
        let t = parse_token(br#"{"access_token":"a.b.c","expires_in":500}"#, now).unwrap();
        assert_eq!(t.renew_at, now + Duration::from_secs(400));
        assert!(!format!("{t:?}").contains("a.b.c"));
    }

    #[tokio::test]
    async fn lifetimes_are_clamped_between_a_minute_and_a_day() {
        let now = Instant::now();
        let renew_in = |expires_in: &str| {
            let body = format!(r#"{{"access_token":"a.b.c","expires_in":{expires_in}}}"#);
            parse_token(body.as_bytes(), now).unwrap().renew_at - now
        };
        // Near the largest integer: a day, and no overflow.
        let day = TOKEN_LIFETIME_MAX - RENEW_AHEAD;
        for huge in ["18446744073709551615", "18446744073709551000", "\"18446744073709551615\"", "1e300"] {
            assert_eq!(renew_in(huge), day, "{huge}");
        }
        // Zero or a few seconds: kept a minute, not renewed before every call.
        for short in ["0", "\"0\"", "5", "-1"] {
            let kept = renew_in(short);
            assert!(kept == TOKEN_KEPT_MIN || (short == "-1" && kept == Duration::from_secs(3599 - 300)), "{short}");
        }
    }

    #[test]
    fn an_answer_without_a_token_says_what_is_wrong_and_quotes_no_value() {
        let now = Instant::now();
        for (body, says) in [
            (
                &br#"{"token_type":"Bearer","token":"secret-looking"}"#[..],
                "no `access_token` (its fields: token, token_type)",
            ),
            (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
            (b"  ", "empty"),
            (b"not json", "not JSON"),
            (br#"{"access_token":""}"#, "`access_token` is empty"),
            (br#"{"access_token":42}"#, "not a string"),
            (br#"["access_token"]"#, "not an object"),
        ] {
            let e = parse_token(body, now).unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("secret-looking"), "{e}");
        }
    }
}
