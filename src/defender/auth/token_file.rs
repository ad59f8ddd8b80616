//! `--token-cache FILE`: a person's refresh token kept between commands, so that `track` (or a later
//! run) signs in without a new code.
//!
//! Opt-in, and only the refresh token (access tokens stay in memory). The file names the sign-in host,
//! tenant and app it belongs to, and is used only for those. On Unix it is created owner-only (0600, by
//! a temporary file renamed into place, so it is never readable by others even for a moment), and one
//! that others can read is refused, never used. On Windows the file inherits the ACL of its directory
//! (a user's profile keeps it to that user): keep it there.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::settings::{Credentials, Secret, readable_by_others};

#[derive(Serialize, Deserialize)]
struct Stored {
    authority: String,
    tenant_id: String,
    client_id: String,
    #[serde(default)]
    account: Option<String>,
    refresh_token: String,
}

fn failed(path: &Path, message: impl Into<String>) -> AuthError {
    AuthError::TokenCache { path: path.to_owned(), message: message.into() }
}

/// The refresh token kept in `path` for this sign-in host, tenant and app; none if there is no file or it
/// is for another.
pub fn load(path: &Path, credentials: &Credentials) -> Result<Option<Secret>, AuthError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(path, format!("cannot read it: {e}"))),
    };
    if readable_by_others(path) {
        return Err(failed(
            path,
            format!("other users can read it, and it holds a refresh token: chmod 600 {}", path.display()),
        ));
    }
    let stored: Stored = serde_json::from_slice(&text).map_err(|_| {
        failed(path, "it is not a token cache written by mde-offboard: delete it (a new code is asked for)")
    })?;
    let same = |a: &str, b: &str| a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'));
    if !(same(&stored.authority, &credentials.authority)
        && same(&stored.tenant_id, &credentials.tenant_id)
        && same(&stored.client_id, &credentials.client_id))
    {
        tracing::warn!(
            "the token cache {} is for another tenant or app: not used (a new sign-in replaces it)",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(Secret::new(stored.refresh_token)))
}

/// Keeps `refresh_token` in `path`, owner-only, replacing what was there.
pub fn save(
    path: &Path,
    credentials: &Credentials,
    account: Option<&str>,
    refresh_token: &Secret,
) -> Result<(), AuthError> {
    let stored = Stored {
        authority: credentials.authority.clone(),
        tenant_id: credentials.tenant_id.clone(),
        client_id: credentials.client_id.clone(),
        account: account.map(str::to_owned),
        refresh_token: refresh_token.expose().to_owned(),
    };
    let bytes = serde_json::to_vec_pretty(&stored).expect("the token cache serialises");
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = owner_only(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        failed(path, format!("cannot write it: {e}"))
    })
}

/// Deletes the file (its refresh token was refused): the next command asks for a code.
pub fn forget(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot delete the token cache {}: {e}", path.display());
    }
}

/// A new file only its owner may read and write.
#[cfg(unix)]
fn owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// A new file, with its directory's ACL (see the module's comment).
#[cfg(not(unix))]
fn owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::settings::{Credential, Secret};

    fn credentials(tenant: &str) -> Credentials {
        Credentials {
            tenant_id: tenant.into(),
            client_id: "6a1f0c2e-93b4-4d57-8e1a-2c3d4e5f6a70".into(),
            credential: Credential::Secret(Secret::new("unused")),
            authority: "https://login.microsoftonline.com".into(),
            scope: "https://api.securitycenter.microsoft.com/.default".into(),
        }
    }

    #[test]
    fn written_owner_only_read_back_for_its_tenant_only_and_refused_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        let ours = credentials("contoso.onmicrosoft.com");
        assert!(load(&path, &ours).unwrap().is_none());
        save(&path, &ours, Some("a@contoso"), &Secret::new("0.Arefresh")).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&path, &ours).unwrap().unwrap().expose(), "0.Arefresh");
        assert!(load(&path, &credentials("fabrikam.onmicrosoft.com")).unwrap().is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&path, &ours).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("0.Arefresh"), "{e}");
        forget(&path);
        assert!(!path.exists());
    }
}
