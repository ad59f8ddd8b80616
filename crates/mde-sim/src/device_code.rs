//! Sign-in as a person: the device authorization grant (RFC 8628, as Entra ID serves it on v2) and the
//! refresh tokens it issues.
//!
//! `POST /{tenant}/oauth2/v2.0/devicecode` hands out a device code and a user code; polling the token
//! endpoint with the device code answers `slow_down` for the first `DeviceCode::slow_down_polls` polls (and
//! for any poll sooner than the interval, counted in `SimStats::polls_too_fast`; each `slow_down` adds 5 s
//! of real time to it, as the protocol has the client do), then
//! `authorization_pending` for `pending_polls` polls, then what the person did: a delegated token
//! (approve), `authorization_declined`, or nothing until the code has expired (`expired_token`). A delegated
//! token carries `scp` (the requested permissions among those consented) and the account (`upn`), and with
//! `offline_access` comes a refresh token: it works until [`crate::Simulator::revoke_refresh_tokens`].
//! Device codes and refresh tokens start as Entra ID's do (`DAQABAAEAAA`, `0.A`), so a test can look for
//! them in logs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::clock::random_guid;
use super::config::DeviceCodeAnswer;
use super::server::Shared;
use super::token::{Grant, RESOURCES, Refusal, known_tenant, mint, refuse};

pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// How every device code and refresh token of the simulator starts (as Entra ID's do).
pub const DEVICE_CODE_PREFIX: &str = "DAQABAAEAAA";
pub const REFRESH_TOKEN_PREFIX: &str = "0.ASim";
/// Where the person goes to enter the code (Entra ID's page).
const VERIFICATION_URI: &str = "https://microsoft.com/devicelogin";
/// What `slow_down` adds to the interval (RFC 8628, section 3.5), real time.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// A device code handed out and not yet redeemed.
struct Pending {
    resource: String,
    scopes: Vec<String>,
    offline: bool,
    expires: Instant,
    polls: u32,
    last_poll: Option<Instant>,
    /// The interval now asked for, real time: the scaled interval, plus 5 s for each `slow_down` (the
    /// protocol's own step, which a client cannot scale).
    interval: Duration,
}

/// What a refresh token may be redeemed for.
#[derive(Clone)]
struct Refreshable {
    resource: String,
    scopes: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Flows {
    pending: Mutex<HashMap<String, Pending>>,
    refresh: Mutex<HashMap<String, Refreshable>>,
}

impl Flows {
    /// Forgets every refresh token: redeeming one answers `invalid_grant` (AADSTS50173).
    pub(crate) fn revoke_refresh_tokens(&self) {
        self.refresh.lock().expect("refresh lock").clear();
    }
}

/// Whether the token endpoint hands `grant_type` to this module.
pub(crate) fn handles(grant_type: &str) -> bool {
    grant_type == DEVICE_CODE_GRANT || grant_type == "refresh_token"
}

fn random_text(prefix: &str, bytes: usize) -> String {
    let random: Vec<u8> = (0..bytes).map(|_| fastrand::u8(..)).collect();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random))
}

fn bad(error: &'static str, code: u32, description: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, error, code, description)
}

/// The client must be the app, as a public client.
fn public_client(sim: &Shared, form: &HashMap<String, String>) -> Result<(), Refusal> {
    let client_id = form.get("client_id").map(String::as_str).unwrap_or("");
    if !client_id.eq_ignore_ascii_case(&sim.config.client_id) {
        return Err(bad(
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory."),
        ));
    }
    if !sim.config.device_code.public_client {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok(())
}

/// The resource and permissions a v2 scope list asks for, and whether it asks for `offline_access`.
fn requested(scope: &str) -> Result<(String, Vec<String>, bool), Refusal> {
    let (mut resource, mut permissions, mut offline) = (None::<String>, Vec::new(), false);
    for item in scope.split_whitespace() {
        match item {
            "offline_access" => offline = true,
            "openid" | "profile" | "email" => {}
            _ => {
                let Some((r, permission)) = item.rsplit_once('/') else {
                    return Err(bad("invalid_scope", 70011, format!("The scope '{item}' is not valid.")));
                };
                if !RESOURCES.iter().any(|known| known.eq_ignore_ascii_case(r)) {
                    return Err(bad(
                        "invalid_resource",
                        500011,
                        format!("The resource principal named {r} was not found in the tenant."),
                    ));
                }
                if resource.as_deref().is_some_and(|earlier| !earlier.eq_ignore_ascii_case(r)) {
                    return Err(bad("invalid_scope", 70011, "Scopes of several resources were requested."));
                }
                resource = Some(r.to_string());
                if permission != ".default" {
                    permissions.push(permission.to_string());
                }
            }
        }
    }
    let Some(resource) = resource else {
        return Err(bad("invalid_scope", 70011, format!("The scope '{scope}' names no resource.")));
    };
    Ok((resource, permissions, offline))
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: a device code and the user code that goes with it.
pub(crate) fn start(sim: &Shared, tenant: &str, form: &HashMap<String, String>) -> Result<Value, Refusal> {
    known_tenant(sim, tenant)?;
    public_client(sim, form)?;
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    let (resource, scopes, offline) = requested(scope)?;
    let config = &sim.config.device_code;
    let device_code = random_text(DEVICE_CODE_PREFIX, 96);
    let user_code: String = (0..9).map(|_| fastrand::alphanumeric().to_ascii_uppercase()).collect();
    let pending = Pending {
        resource,
        scopes,
        offline,
        expires: Instant::now() + sim.clock.real(config.code_lifetime),
        polls: 0,
        last_poll: None,
        interval: sim.clock.real(config.interval),
    };
    sim.device.pending.lock().expect("pending lock").insert(device_code.clone(), pending);
    let expires_in = (config.code_lifetime.as_secs_f64() / sim.config.time_scale).ceil().max(1.0) as u64;
    Ok(json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": VERIFICATION_URI,
        "expires_in": expires_in,
        "interval": seconds(sim.clock.real(config.interval)),
        "message": format!(
            "To sign in, use a web browser to open the page {VERIFICATION_URI} and enter the code {user_code} to authenticate."
        ),
    }))
}

/// Whole seconds when whole (as Entra ID sends them), else a fraction (a time-scaled simulator).
fn seconds(d: Duration) -> Value {
    if d.subsec_nanos() == 0 { json!(d.as_secs()) } else { json!(d.as_secs_f64()) }
}

/// The token endpoint's device code and refresh token grants.
pub(crate) fn grant(sim: &Shared, grant_type: &str, form: &HashMap<String, String>) -> Result<Value, Refusal> {
    public_client(sim, form)?;
    if grant_type == DEVICE_CODE_GRANT { poll(sim, form) } else { refresh(sim, form) }
}

fn poll(sim: &Shared, form: &HashMap<String, String>) -> Result<Value, Refusal> {
    let code = form.get("device_code").map(String::as_str).unwrap_or("");
    let config = &sim.config.device_code;
    let now = Instant::now();
    let mut all = sim.device.pending.lock().expect("pending lock");
    let Some(pending) = all.get_mut(code) else {
        return Err(bad("bad_verification_code", 70019, "The device code is not valid."));
    };
    pending.polls += 1;
    sim.counters.lock().expect("counters lock").device_code_polls += 1;
    let too_soon = pending.last_poll.is_some_and(|at| now - at < pending.interval.mul_f64(0.9));
    pending.last_poll = Some(now);
    if too_soon {
        sim.counters.lock().expect("counters lock").polls_too_fast += 1;
    }
    if too_soon || pending.polls <= config.slow_down_polls {
        pending.interval += SLOW_DOWN_STEP;
        return Err(bad("slow_down", 70016, "The client is polling too fast; slow down."));
    }
    if now >= pending.expires {
        all.remove(code);
        return Err(bad("expired_token", 70020, "The device code has expired; start again."));
    }
    if pending.polls <= config.slow_down_polls + config.pending_polls || config.answer == DeviceCodeAnswer::Ignore {
        return Err(bad("authorization_pending", 70016, "The user has not yet completed sign-in."));
    }
    let pending = all.remove(code).expect("found above");
    drop(all);
    if config.answer == DeviceCodeAnswer::Decline {
        return Err(bad("authorization_declined", 70000, "The user declined the sign-in request."));
    }
    Ok(delegated(sim, &pending.resource, &pending.scopes, pending.offline))
}

fn refresh(sim: &Shared, form: &HashMap<String, String>) -> Result<Value, Refusal> {
    let presented = form.get("refresh_token").map(String::as_str).unwrap_or("");
    sim.counters.lock().expect("counters lock").refresh_grants += 1;
    let Some(earlier) = sim.device.refresh.lock().expect("refresh lock").get(presented).cloned() else {
        return Err(bad(
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
        ));
    };
    // As Entra ID does for a public client: any consented permission of the resource may be asked for
    // again, not only those the first sign-in asked for; by default, those.
    let scopes = match form.get("scope").map(|s| requested(s)).transpose()? {
        Some((_, asked, _)) if !asked.is_empty() => asked,
        _ => earlier.scopes.clone(),
    };
    Ok(delegated(sim, &earlier.resource, &scopes, true))
}

/// A token answer for the person: a delegated access token with the consented permissions among `asked`,
/// and with `offline` a (new) refresh token.
fn delegated(sim: &Shared, resource: &str, asked: &[String], offline: bool) -> Value {
    let config = &sim.config;
    let person = &config.device_code;
    let granted: Vec<String> =
        asked.iter().filter(|a| person.scopes.iter().any(|c| c.eq_ignore_ascii_case(a))).cloned().collect();
    let mut claims = json!({
        "appid": config.client_id,
        "appidacr": "0",
        "amr": ["pwd", "mfa"],
        "name": person.account.split('@').next().unwrap_or(""),
        "oid": random_guid(),
        "scp": granted.join(" "),
        "unique_name": person.account,
        "upn": person.account,
    });
    let grant = Grant::of(&granted, Some(&person.account), Instant::now());
    let (token, expires_in, _) = mint(sim, resource, &mut claims, grant);
    let scope: Vec<String> = granted.iter().map(|g| format!("{resource}/{g}")).collect();
    let mut answer = json!({
        "token_type": "Bearer",
        "scope": scope.join(" "),
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": token,
    });
    if offline {
        let refresh_token = random_text(REFRESH_TOKEN_PREFIX, 180);
        let keep = Refreshable { resource: resource.to_string(), scopes: granted };
        sim.device.refresh.lock().expect("refresh lock").insert(refresh_token.clone(), keep);
        answer["refresh_token"] = json!(refresh_token);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_one_resource_and_its_permissions() {
        let api = "https://api.securitycenter.microsoft.com";
        let Ok((resource, permissions, offline)) =
            requested(&format!("{api}/Machine.Offboard {api}/Machine.Read.All offline_access openid"))
        else {
            panic!("refused")
        };
        assert_eq!((resource.as_str(), offline), (api, true));
        assert_eq!(permissions, vec!["Machine.Offboard", "Machine.Read.All"]);
        assert!(
            requested(&format!("{api}/.default"))
                .is_ok_and(|(_, permissions, offline)| permissions.is_empty() && !offline)
        );
        for refused in ["offline_access", "Machine.Offboard", "https://graph.microsoft.com/User.Read"] {
            assert!(requested(refused).is_err(), "{refused}");
        }
        assert!(
            requested(&format!("{api}/Machine.Offboard https://api-gov.securitycenter.microsoft.us/Machine.Read.All"))
                .is_err()
        );
    }
}
