//! The OAuth 2.0 device authorization grant (RFC 8628) as Entra ID serves it: ask for a code, show the
//! person the page and the user code, then poll the token endpoint no faster than the interval asked
//! for, until the person approves, declines, or the code expires.
//!
//! Only the user code and the page are shown (they are meant for the person, and useless without the
//! device code); the device code is sent to the token endpoint and nowhere else. Text from the service is
//! shown without control characters. There is no password flow: a person signs in only in a browser.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::{AuthError, Posted, Token, TokenCache, read_capped, refusal};
use crate::settings::{DeviceCodeSignIn, Secret};

/// The grant type of a device code poll (RFC 8628).
const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The interval when the answer gives none (RFC 8628, section 3.2), and what `slow_down` adds (3.5).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The shortest wait between polls whatever the answer says (a fraction of a second comes only from a
/// time-scaled simulator), and the longest a code is waited for (Entra ID's last 15 minutes).
const INTERVAL_MIN: Duration = Duration::from_millis(20);
const CODE_LIFETIME_MAX: Duration = Duration::from_secs(3600);

/// The answer of the device code endpoint.
#[derive(Deserialize)]
struct Started {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    interval: Option<serde_json::Value>,
}

/// Seconds as a number or a string (v1 sends strings), fractions allowed.
fn seconds(value: Option<&serde_json::Value>) -> Option<Duration> {
    let secs = match value? {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(CODE_LIFETIME_MAX.as_secs_f64())))
}

/// Text from the service, as it may be shown: no control characters, a sane length.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Signs the person in: a token and the refresh token that came with it.
pub(super) async fn sign_in(
    cache: &TokenCache,
    person: &DeviceCodeSignIn,
) -> Result<(Token, Option<Secret>), AuthError> {
    let url = cache.endpoint("devicecode");
    let form = [("client_id", cache.credentials.client_id.clone()), ("scope", person.scope())];
    let answer = cache
        .http
        .post(&url)
        .form(&form)
        .send()
        .await
        .map_err(|e| AuthError::Unreachable { url: url.clone(), message: super::describe_transport(&e) })?;
    let status = answer.status();
    if status.is_redirection() {
        let to = super::location_host(answer.headers(), &url);
        return Err(AuthError::Redirected { url, status: status.as_u16(), to });
    }
    let body = read_capped(answer, super::ANSWER_MAX)
        .await
        .map_err(|_| AuthError::BadAnswer { url: url.clone(), message: "the answer could not be read".into() })?;
    if !status.is_success() {
        return Err(refusal(status.as_u16(), &body));
    }
    let started: Started = serde_json::from_slice(&body).map_err(|_| AuthError::BadAnswer {
        url: url.clone(),
        message: format!("HTTP {status}, not a device code answer (device_code, user_code, verification_uri)"),
    })?;
    let lifetime = seconds(started.expires_in.as_ref()).unwrap_or(Duration::from_secs(900));
    let mut interval = seconds(started.interval.as_ref()).unwrap_or(DEFAULT_INTERVAL).max(INTERVAL_MIN);
    let deadline = Instant::now() + lifetime;
    let (page, code) = (printable(&started.verification_uri), printable(&started.user_code));
    let within = humantime::format_duration(Duration::from_secs(lifetime.as_secs())).to_string();
    crate::ui::output::for_person(
        "device_code",
        &format!(
            "To sign in, open {page} in a browser and enter the code {code} (within {within}), as the account that \
             offboards. Waiting for the sign-in..."
        ),
    );

    let token_url = cache.token_url();
    let device_code = Secret::new(started.device_code);
    let poll = || {
        Ok(vec![
            ("grant_type", GRANT.to_string()),
            ("client_id", cache.credentials.client_id.clone()),
            ("device_code", device_code.expose().to_string()),
        ])
    };
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(AuthError::DeviceCodeExpired { within: within.clone() });
        }
        let (status, body) = match cache.post(&token_url, &poll).await? {
            Posted::Token(token, refresh) => {
                let who = token.account().map(printable).unwrap_or_else(|| "a person".into());
                crate::ui::output::notice("signed_in", &format!("Signed in as {who}."));
                return Ok((token, refresh));
            }
            Posted::Refused { status, body } => (status, body),
        };
        #[derive(Deserialize, Default)]
        struct Waiting {
            #[serde(default)]
            error: String,
        }
        let waiting: Waiting = serde_json::from_slice(&body).unwrap_or_default();
        match waiting.error.as_str() {
            "authorization_pending" => tracing::debug!("device code: waiting for the person"),
            "slow_down" => {
                interval += SLOW_DOWN_STEP;
                tracing::debug!(interval_ms = interval.as_millis() as u64, "device code: asked to slow down");
            }
            "authorization_declined" | "access_denied" => return Err(AuthError::DeviceCodeDeclined { page }),
            "expired_token" | "code_expired" => return Err(AuthError::DeviceCodeExpired { within: within.clone() }),
            "bad_verification_code" => return Err(AuthError::DeviceCodeUnknown),
            _ => return Err(refusal(status, &body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_lifetimes_read_numbers_strings_and_fractions() {
        assert_eq!(seconds(Some(&serde_json::json!(5))), Some(Duration::from_secs(5)));
        assert_eq!(seconds(Some(&serde_json::json!("900"))), Some(Duration::from_secs(900)));
        assert_eq!(seconds(Some(&serde_json::json!(0.05))), Some(Duration::from_millis(50)));
        assert_eq!(seconds(Some(&serde_json::json!(1e300))), Some(CODE_LIFETIME_MAX));
        assert_eq!(seconds(Some(&serde_json::json!(-1))), None);
        assert_eq!(seconds(None), None);
    }

    #[test]
    fn text_from_the_service_loses_control_characters() {
        assert_eq!(printable("AB\u{1b}[2JCD\r\n"), "AB[2JCD");
    }
}
