//! The Entra ID token endpoint (client credentials, v1 and v2) and the tokens it issued.
//!
//! Only the configured tenant and app exist. A token is a JWT-shaped string whose payload carries the usual
//! claims; its signature is random, so the API accepts exactly the tokens in the issued map, until their
//! real (scaled) lifetime ends. Client assertions (certificate sign-in) are checked for shape, `iss`, `sub`,
//! `aud` and time range; when a certificate is registered (`SimConfig::certificate`), the header must name
//! it (`x5t#S256`, or `x5t` for the older form) and the signature (PS256 or RS256) must verify with its public
//! key, else AADSTS700027 as Entra ID answers. Without a registered certificate the signature is not checked.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::clock::{entra_timestamp, random_guid};
use super::query::decode_pairs;
use super::server::Shared;

/// Resources (v1) and scope prefixes (v2) of the Defender for Endpoint API (Microsoft's documentation;
/// `fc780465-…` is the WindowsDefenderATP app id).
pub(crate) const RESOURCES: [&str; 6] = [
    "https://api.securitycenter.microsoft.com",
    "https://api.security.microsoft.com",
    "https://securitycenter.onmicrosoft.com/windowsatpservice",
    "https://api-gov.securitycenter.microsoft.us",
    "https://api-gcc.securitycenter.microsoft.us",
    "fc780465-2017-40d4-a0c5-307022471b92",
];

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What a token lets its bearer do.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) can_offboard: bool,
    pub(crate) can_read: bool,
    /// `Machine.ReadWrite.All`: tags.
    pub(crate) can_write: bool,
    /// The person a delegated token names: the `requestor` of what it does (an app token's is the app).
    pub(crate) account: Option<std::sync::Arc<str>>,
    pub(crate) expires: Instant,
}

impl Grant {
    /// Who an action taken with this token is requested by: the person, or (an app token) the app.
    pub(crate) fn requestor<'a>(&'a self, app: &'a str) -> &'a str {
        self.account.as_deref().unwrap_or(app)
    }

    /// What a token with these permissions (`roles` or `scp`) may do, until `expires`.
    pub(crate) fn of(permissions: &[String], account: Option<&str>, expires: Instant) -> Grant {
        let has = |p: &str| permissions.iter().any(|r| r == p);
        Grant {
            can_offboard: has("Machine.Offboard"),
            can_read: has("Machine.Read.All") || has("Machine.ReadWrite.All"),
            can_write: has("Machine.ReadWrite.All"),
            account: account.map(Into::into),
            expires,
        }
    }
}

/// Tokens issued and not yet purged.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    issued: RwLock<HashMap<String, Grant>>,
}

impl Tokens {
    /// The grant of the request's bearer token, or why there is none.
    pub(crate) fn check(&self, headers: &HeaderMap, now: Instant) -> Result<Grant, &'static str> {
        let value = headers.get(header::AUTHORIZATION).ok_or("Authorization header is missing")?;
        let value = value.to_str().map_err(|_| "Authorization header is not valid")?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err("Authorization header must be 'Bearer <token>'"),
        };
        let grant = self.issued.read().expect("token map lock").get(token).cloned().ok_or("Invalid token")?;
        if now >= grant.expires {
            return Err("Token has expired");
        }
        Ok(grant)
    }

    /// Forgets every token issued so far: the API answers 401 to them from now on.
    pub(crate) fn revoke_all(&self) {
        self.issued.write().expect("token map lock").clear();
    }

    pub(crate) fn insert(&self, token: String, grant: Grant, now: Instant) {
        let mut issued = self.issued.write().expect("token map lock");
        if issued.len() >= 4096 {
            issued.retain(|_, g| g.expires > now);
        }
        issued.insert(token, grant);
    }
}

/// The tenant (`tid`) a bearer token names, read without checking it: only to find the tenant that then
/// checks it against the tokens it issued.
pub(crate) fn tenant_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (_, token) = value.split_once(' ')?;
    let payload = token.trim().split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("tid")?.as_str().map(str::to_string)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// An Entra ID error answer.
pub(crate) struct Refusal {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

pub(crate) fn refuse(status: StatusCode, error: &'static str, code: u32, description: impl Into<String>) -> Refusal {
    Refusal { status, error, code, description: description.into() }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (trace, correlation) = (random_guid(), random_guid());
        let now = SystemTime::now();
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {}",
                self.code, self.description, entra_timestamp(now)
            ),
            "error_codes": [self.code],
            "timestamp": entra_timestamp(now),
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Answers a token request: 200 with a token, or an Entra ID error.
pub(crate) fn issue(sim: &Shared, version: Version, tenant: &str, body: &[u8]) -> Response {
    match try_issue(sim, version, tenant, body) {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// AADSTS90002 unless `tenant` names the tenant that exists (by its id or a domain).
pub(crate) fn known_tenant(sim: &Shared, tenant: &str) -> Result<(), Refusal> {
    let known = |name: &String| tenant.eq_ignore_ascii_case(name);
    if !known(&sim.config.tenant_id) && !sim.config.tenant_domains.iter().any(known) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    Ok(())
}

fn try_issue(sim: &Shared, version: Version, tenant: &str, body: &[u8]) -> Result<Value, Refusal> {
    let config = &sim.config;
    let bad_request = StatusCode::BAD_REQUEST;
    let unauthorized = StatusCode::UNAUTHORIZED;
    known_tenant(sim, tenant)?;
    let form: HashMap<String, String> = decode_pairs(&String::from_utf8_lossy(body)).into_iter().collect();
    let field = |name: &'static str| {
        form.get(name).map(String::as_str).filter(|v| !v.is_empty()).ok_or_else(|| {
            refuse(
                bad_request,
                "invalid_request",
                900144,
                format!("The request body must contain the following parameter: '{name}'."),
            )
        })
    };
    let grant_type = field("grant_type")?;
    if version == Version::V2 && super::device_code::handles(grant_type) {
        return super::device_code::grant(sim, grant_type, &form);
    }
    if grant_type != "client_credentials" {
        return Err(refuse(
            bad_request,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id")?;
    if !client_id.eq_ignore_ascii_case(&config.client_id) || !config.consented {
        return Err(refuse(
            bad_request,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        ));
    }
    let resource = match version {
        Version::V2 => {
            if form.contains_key("resource") {
                return Err(refuse(
                    bad_request,
                    "invalid_request",
                    901002,
                    "The 'resource' request parameter is not supported.",
                ));
            }
            let scope = field("scope")?;
            let Some(resource) = scope.strip_suffix("/.default") else {
                return Err(refuse(
                    bad_request,
                    "invalid_scope",
                    70011,
                    format!(
                        "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid. For client credentials the scope must end in /.default."
                    ),
                ));
            };
            resource
        }
        Version::V1 => field("resource")?,
    };
    let resource = resource.trim_end_matches('/');
    if !RESOURCES.iter().any(|r| r.eq_ignore_ascii_case(resource)) {
        return Err(refuse(
            bad_request,
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        ));
    }
    let via_certificate = match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), _) => {
            if *secret != config.client_secret {
                return Err(refuse(
                    unauthorized,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ));
            }
            if config.secret_expired {
                return Err(refuse(
                    unauthorized,
                    "invalid_client",
                    7000222,
                    format!(
                        "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app."
                    ),
                ));
            }
            false
        }
        (None, Some(assertion)) => {
            if form.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
                return Err(refuse(
                    bad_request,
                    "invalid_request",
                    700023,
                    format!("client_assertion_type must be '{ASSERTION_TYPE}'."),
                ));
            }
            check_assertion(assertion, client_id, tenant, config.certificate.as_deref())?;
            true
        }
        (None, None) => {
            return Err(refuse(
                unauthorized,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    };

    let mut claims = json!({
        "appid": config.client_id,
        "appidacr": if via_certificate { "2" } else { "1" },
        "oid": random_guid(),
        "roles": config.roles,
    });
    let grant = Grant::of(&config.roles, None, Instant::now());
    let (token, expires_in, unix) = mint(sim, resource, &mut claims, grant);
    let shown_expires_in = config.token_expires_in.clone().unwrap_or_else(|| match version {
        Version::V2 => json!(expires_in),
        Version::V1 => json!(expires_in.to_string()),
    });
    Ok(match version {
        Version::V2 => json!({
            "token_type": "Bearer",
            "expires_in": shown_expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        }),
        Version::V1 => json!({
            "token_type": "Bearer",
            "expires_in": shown_expires_in,
            "ext_expires_in": expires_in.to_string(),
            "expires_on": (unix + expires_in).to_string(),
            "not_before": unix.to_string(),
            "resource": resource,
            "access_token": token,
        }),
    })
}

/// A new access token for `resource` with the usual claims and `claims`, issued (the API takes it) with
/// `grant` until its scaled lifetime ends: the token, its `expires_in` (seconds, real time) and the time
/// of issue (Unix seconds).
pub(crate) fn mint(sim: &Shared, resource: &str, claims: &mut Value, mut grant: Grant) -> (String, u64, u64) {
    let config = &sim.config;
    let now = Instant::now();
    let real_lifetime = sim.clock.real(config.token_lifetime);
    let expires_in = (config.token_lifetime.as_secs_f64() / config.time_scale).floor().max(1.0) as u64;
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let usual = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", config.tenant_id),
        "iat": unix,
        "nbf": unix,
        "exp": unix + expires_in,
        "idp": format!("https://sts.windows.net/{}/", config.tenant_id),
        // The tenant's id, as Entra ID writes it (lowercase), however the request named the tenant.
        "tid": config.tenant_id.to_ascii_lowercase(),
        "uti": random_guid(),
        "ver": "1.0",
    });
    if let (Some(claims), Value::Object(usual)) = (claims.as_object_mut(), usual) {
        claims.extend(usual);
    }
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "simulator"});
    let signature: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    );
    grant.expires = now + real_lifetime;
    sim.tokens.insert(token.clone(), grant, now);
    sim.counters.lock().expect("counters lock").tokens_issued += 1;
    (token, expires_in, unix)
}

/// The certificate registered on the app, with the thumbprints an assertion header may carry.
pub(crate) struct RegisteredCertificate {
    der: Vec<u8>,
    x5t_s256: String,
    x5t: String,
}

impl RegisteredCertificate {
    /// From PEM (the first CERTIFICATE block) or DER.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        let der = if bytes.first() == Some(&0x30) {
            bytes.to_vec()
        } else {
            rustls_pki_types::CertificateDer::from_pem_slice(bytes)
                .map_err(|e| format!("the registered certificate is not a PEM certificate ({e})"))?
                .to_vec()
        };
        let parsed = rustls_pki_types::CertificateDer::from(der.as_slice());
        webpki::EndEntityCert::try_from(&parsed)
            .map_err(|e| format!("the registered certificate cannot be read ({e:?})"))?;
        Ok(RegisteredCertificate {
            x5t_s256: URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der)),
            x5t: URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)),
            der,
        })
    }

    /// Whether the header names this certificate, and the signature verifies with its key.
    fn verify(&self, header: &Value, alg: &str, signing_input: &[u8], signature: &[u8]) -> Result<(), &'static str> {
        let named = header["x5t#S256"].as_str() == Some(self.x5t_s256.as_str())
            || header["x5t"].as_str() == Some(self.x5t.as_str());
        if !named {
            return Err(
                "The certificate with identifier used to sign the client assertion is not registered on application.",
            );
        }
        let der = rustls_pki_types::CertificateDer::from(self.der.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| "The registered certificate is not valid.")?;
        let algorithm = match alg {
            "PS256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            _ => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        };
        cert.verify_signature(algorithm, signing_input, signature)
            .map_err(|_| "Client assertion contains an invalid signature.")
    }
}

/// Checks a client assertion's shape and claims, and its signature when a certificate is registered.
fn check_assertion(assertion: &str, client_id: &str, tenant: &str, registered: Option<&[u8]>) -> Result<(), Refusal> {
    let malformed = || refuse(StatusCode::BAD_REQUEST, "invalid_request", 50027, "JWT token is invalid or malformed.");
    let part = |p: Option<&str>| -> Result<Value, Refusal> {
        let bytes = URL_SAFE_NO_PAD.decode(p.ok_or_else(malformed)?.trim_end_matches('=')).map_err(|_| malformed())?;
        serde_json::from_slice(&bytes).map_err(|_| malformed())
    };
    let mut parts = assertion.split('.');
    let (header, claims) = (part(parts.next())?, part(parts.next())?);
    if parts.next().is_none_or(str::is_empty) {
        return Err(malformed());
    }
    let invalid = |code: u32, why: &str| refuse(StatusCode::UNAUTHORIZED, "invalid_client", code, why.to_string());
    let alg = header["alg"].as_str().unwrap_or("");
    if !matches!(alg, "PS256" | "RS256") || (header["x5t#S256"].is_null() && header["x5t"].is_null()) {
        return Err(invalid(
            700027,
            "Client assertion failed signature validation: the header needs alg PS256 or RS256 and x5t#S256 or x5t.",
        ));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err(invalid(700021, "Client assertion application identifier doesn't match 'client_id' parameter."));
    }
    let aud = claims["aud"].as_str().unwrap_or("").to_ascii_lowercase();
    let tenant = tenant.to_ascii_lowercase();
    if !(aud.ends_with(&format!("/{tenant}/oauth2/v2.0/token")) || aud.ends_with(&format!("/{tenant}/oauth2/token"))) {
        return Err(invalid(700027, "Client assertion audience claim does not match the token endpoint."));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let nbf = claims["nbf"].as_i64().unwrap_or(now);
    if exp < now || nbf > now + 300 {
        return Err(invalid(700024, "Client assertion is not within its valid time range."));
    }
    if let Some(registered) = registered {
        let registered = RegisteredCertificate::parse(registered).map_err(|_| malformed())?;
        let (signing_input, signature) = assertion.rsplit_once('.').ok_or_else(malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature.trim_end_matches('=')).map_err(|_| malformed())?;
        registered.verify(&header, alg, signing_input.as_bytes(), &signature).map_err(|why| invalid(700027, why))?;
    }
    Ok(())
}
