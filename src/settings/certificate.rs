//! Certificate sign-in: the app's certificate and private key (PEM files), and the client assertion Entra ID
//! takes instead of a client secret.
//!
//! The assertion is a JWT signed with the private key, made fresh for every token request: header `alg`
//! PS256 with `x5t#S256` (base64url SHA-256 of the certificate's DER), or the older RS256 with `x5t` (the
//! SHA-1 thumbprint); claims `aud` = the token URL, `iss` = `sub` = the client id, a fresh GUID as `jti`,
//! `nbf` = `iat` = now, `exp` = now + 10 minutes (Microsoft's documentation, mde-api.md section 5).
//!
//! Files are read and checked when settings are resolved, before any network call: the key must be RSA,
//! unencrypted, and belong to the certificate. The key never leaves this module: `Debug` shows only the
//! certificate's thumbprint, and the assertion (a short-lived secret) is only ever put in the form sent.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long an assertion is valid: Entra ID takes 5 to 10 minutes.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// The form of the client assertion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AssertionAlg {
    /// RSASSA-PSS with SHA-256 and an `x5t#S256` header: Microsoft's current guidance.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an `x5t` (SHA-1) header: the older form some tenants still use.
    Rs256,
}

impl AssertionAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAlg::Ps256 => "ps256",
            AssertionAlg::Rs256 => "rs256",
        }
    }
}

impl FromStr for AssertionAlg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ps256" => Ok(AssertionAlg::Ps256),
            "rs256" => Ok(AssertionAlg::Rs256),
            _ => Err("ps256 (the default) or rs256 (the older form with a SHA-1 x5t)".into()),
        }
    }
}

/// The app's certificate and its private key, loaded and checked.
#[derive(Clone)]
pub struct ClientCertificate {
    key: Arc<RsaKeyPair>,
    /// base64url SHA-256 of the certificate's DER.
    x5t_s256: String,
    /// base64url SHA-1 of the certificate's DER (the legacy thumbprint).
    x5t: String,
    alg: AssertionAlg,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate").field("x5t#S256", &self.x5t_s256).field("alg", &self.alg).finish()
    }
}

/// Why a certificate or key could not be used; says which file and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct CertificateError {
    pub file: String,
    pub message: String,
}

impl ClientCertificate {
    /// Reads the certificate (PEM or DER) and the private key (PEM: PKCS#8 or PKCS#1) and checks they match.
    pub fn load(certificate: &Path, private_key: &Path, alg: AssertionAlg) -> Result<Self, CertificateError> {
        let fail = |path: &Path, message: String| CertificateError { file: path.display().to_string(), message };
        let cert_bytes = std::fs::read(certificate).map_err(|e| fail(certificate, format!("cannot read it: {e}")))?;
        let key_bytes = std::fs::read(private_key).map_err(|e| fail(private_key, format!("cannot read it: {e}")))?;
        let cert = certificate_der(&cert_bytes).map_err(|m| fail(certificate, m))?;
        let key = key_pair(&key_bytes).map_err(|m| fail(private_key, m))?;
        Self::from_parts(&cert, key, alg).map_err(|m| fail(private_key, m))
    }

    fn from_parts(cert: &[u8], key: RsaKeyPair, alg: AssertionAlg) -> Result<Self, String> {
        let der = CertificateDer::from(cert);
        let parsed = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| format!("the certificate cannot be read ({e:?}); give the app's certificate in PEM"))?;
        // The SPKI's bit string ends with the RSAPublicKey that ring derives from the private key.
        if !parsed.subject_public_key_info().as_ref().ends_with(key.public().as_ref()) {
            return Err(
                "this private key does not belong to the certificate; give the key the certificate was made with"
                    .into(),
            );
        }
        let sha256 = ring::digest::digest(&ring::digest::SHA256, cert);
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert);
        Ok(ClientCertificate {
            key: Arc::new(key),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            alg,
        })
    }

    /// The certificate's SHA-256 thumbprint, base64url (as `x5t#S256` carries it): safe to show.
    pub fn thumbprint(&self) -> &str {
        &self.x5t_s256
    }

    pub fn alg(&self) -> AssertionAlg {
        self.alg
    }

    /// A fresh signed client assertion for `client_id` at the token endpoint `token_url`.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<String, String> {
        let rng = SystemRandom::new();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let header = match self.alg {
            AssertionAlg::Ps256 => serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.x5t_s256}),
            AssertionAlg::Rs256 => serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t}),
        };
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": random_guid(&rng)?,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let padding: &'static dyn signature::RsaEncoding = match self.alg {
            AssertionAlg::Ps256 => &signature::RSA_PSS_SHA256,
            AssertionAlg::Rs256 => &signature::RSA_PKCS1_SHA256,
        };
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(padding, &rng, signing_input.as_bytes(), &mut sig)
            .map_err(|_| "the client assertion could not be signed".to_string())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The certificate's DER from a PEM file (the first CERTIFICATE block; text around it, as `openssl pkcs12`
/// writes, is ignored) or a DER file.
fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    match CertificateDer::pem_slice_iter(bytes).next() {
        Some(Ok(cert)) => Ok(cert.to_vec()),
        Some(Err(e)) => Err(format!("not a readable PEM certificate ({e})")),
        None if looks_like_key(bytes) => {
            Err("holds a private key, not a certificate; give the certificate (-----BEGIN CERTIFICATE-----)".into())
        }
        None => Err("no certificate found (expected -----BEGIN CERTIFICATE-----)".into()),
    }
}

fn looks_like_key(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes).contains("PRIVATE KEY-----")
}

/// The RSA key pair from a PEM private key. Error messages never quote the file's content.
fn key_pair(bytes: &[u8]) -> Result<RsaKeyPair, String> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("the private key is encrypted; export it without a passphrase (openssl ... -nodes, or \
                    openssl pkey -in KEY -out key.pem) and keep the file readable only by the job's user"
            .into());
    }
    let key = match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => key,
        Err(_) if text.contains("-----BEGIN CERTIFICATE-----") => {
            return Err("holds a certificate, not a private key (-----BEGIN PRIVATE KEY-----)".into());
        }
        Err(_) => return Err("no PEM private key found (expected -----BEGIN PRIVATE KEY-----)".into()),
    };
    let rejected = |e: ring::error::KeyRejected| {
        format!("not a usable RSA private key ({e}); Entra ID certificates use RSA 2048 to 4096 bits")
    };
    match &key {
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(rejected),
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()).map_err(rejected),
        _ => Err("is not an RSA key (Entra ID app certificates are RSA)".into()),
    }
}

/// A random version-4 GUID.
fn random_guid(rng: &SystemRandom) -> Result<String, String> {
    let mut b = [0u8; 16];
    rng.fill(&mut b).map_err(|_| "no randomness available for the assertion's jti".to_string())?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// Decodes a JWT's header and claims without checking anything: for tests and the simulator.
pub fn decode_jwt(jwt: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    let mut parts = jwt.split('.');
    let mut part = || -> Option<serde_json::Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next()?.trim_end_matches('=')).ok()?).ok()
    };
    Some((part()?, part()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
    }

    fn verify(cert_file: &str, jwt: &str, alg: &'static dyn rustls_pki_types::SignatureVerificationAlgorithm) -> bool {
        let der = certificate_der(&std::fs::read(data(cert_file)).unwrap()).unwrap();
        let der = CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        cert.verify_signature(alg, input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap()).is_ok()
    }

    #[test]
    fn ps256_assertion_has_the_documented_header_and_claims_and_verifies() {
        let c = ClientCertificate::load(&data("test-app.cert.pem"), &data("test-app.key.pem"), AssertionAlg::Ps256)
            .unwrap();
        let url = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let jwt = c.assertion("client", url).unwrap();
        let (header, claims) = decode_jwt(&jwt).unwrap();
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"].as_str().unwrap(), c.thumbprint());
        assert!(header.get("x5t").is_none());
        assert_eq!(
            (claims["aud"].as_str(), claims["iss"].as_str(), claims["sub"].as_str()),
            (Some(url), Some("client"), Some("client"))
        );
        let (nbf, iat, exp) =
            (claims["nbf"].as_u64().unwrap(), claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
        assert!(nbf == iat && (300..=600).contains(&(exp - nbf)));
        let second = decode_jwt(&c.assertion("client", url).unwrap()).unwrap().1;
        assert_ne!(claims["jti"], second["jti"], "a fresh jti every time");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        assert!(verify("test-app.cert.pem", &jwt, webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY));
        assert!(!verify("wrong.cert.pem", &jwt, webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY));
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }

    #[test]
    fn rs256_assertion_uses_the_sha1_thumbprint_and_pkcs1_keys_load() {
        let c =
            ClientCertificate::load(&data("test-app.cert.pem"), &data("test-app.pkcs1.key.pem"), AssertionAlg::Rs256)
                .unwrap();
        let jwt = c.assertion("client", "https://x/t/oauth2/v2.0/token").unwrap();
        let (header, _) = decode_jwt(&jwt).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(URL_SAFE_NO_PAD.decode(header["x5t"].as_str().unwrap()).unwrap().len(), 20);
        assert!(verify("test-app.cert.pem", &jwt, webpki::ring::RSA_PKCS1_2048_8192_SHA256));
    }

    #[test]
    fn mismatched_or_wrong_files_are_refused_with_the_file_named() {
        let e = ClientCertificate::load(&data("test-app.cert.pem"), &data("wrong.key.pem"), AssertionAlg::Ps256)
            .unwrap_err();
        assert!(e.file.ends_with("wrong.key.pem") && e.message.contains("does not belong"), "{e}");
        let e = ClientCertificate::load(&data("test-app.key.pem"), &data("test-app.key.pem"), AssertionAlg::Ps256)
            .unwrap_err();
        assert!(e.message.contains("not a certificate"), "{e}");
        let e = ClientCertificate::load(&data("test-app.cert.pem"), &data("test-app.cert.pem"), AssertionAlg::Ps256)
            .unwrap_err();
        assert!(e.message.contains("not a private key"), "{e}");
        assert!("RS256".parse::<AssertionAlg>().is_ok() && "hs256".parse::<AssertionAlg>().is_err());
    }
}
