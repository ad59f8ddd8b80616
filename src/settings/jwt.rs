//! The claims of an access token (a JWT), read without checking its signature: only to explain (who it
//! names, when it expires), never to trust. Settings read a ready token's tenant and app; sign-in reads
//! the tenant and expiry of the tokens it gets.

use base64::Engine;

/// A string or number claim of a JWT, as text (read without checking the signature: only used to explain).
pub fn claim(jwt: &str, name: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match &claims[name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
