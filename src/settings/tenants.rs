//! Tenants that sign in with app registrations of their own (`run --tenants FILE.toml`), for a list of
//! several tenants whose tenants do not all consent to one multi-tenant app.
//!
//! ```toml
//! [[tenant]]
//! tenant = "contoso.onmicrosoft.com"    # as the list names it: a GUID or a domain
//! client_id = "6a1f0c2e-93b4-4d57-8e1a-2c3d4e5f6a70"
//! client_secret_file = "contoso.secret" # or: certificate = "contoso.pem" and private_key = "contoso.key"
//! ```
//!
//! A tenant the file does not name signs in as the usual settings say (one multi-tenant app). Relative
//! paths are read from the file's directory. Each entry becomes the sign-in flags of its tenant
//! ([`TenantsFile::args_for`]), resolved like any settings, so a secret file or a certificate is checked the
//! same way and no secret is ever held in the tenants file itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SettingsArgs;
use crate::error::{Error, Result};

/// The tenants file, by tenant (as [`normalise_tenant`] writes it).
#[derive(Debug, Default)]
pub struct TenantsFile {
    apps: BTreeMap<String, TenantApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    tenant: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    tenant: String,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
}

/// How one tenant's app signs in.
#[derive(Debug)]
struct TenantApp {
    client_id: String,
    client_secret_file: Option<PathBuf>,
    certificate: Option<(PathBuf, PathBuf)>,
}

/// A tenant as a list or a setting names it: a GUID (braces allowed) or a domain name, lowercase; `None` if
/// it is neither.
pub fn normalise_tenant(cell: &str) -> Option<String> {
    let cell = cell.trim().trim_start_matches('{').trim_end_matches('}').to_ascii_lowercase();
    let guid = cell.len() == 36
        && cell
            .char_indices()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let domain = cell.len() <= 253 && cell.contains('.') && cell.split('.').all(label);
    (guid || domain).then_some(cell)
}

impl TenantsFile {
    /// Reads and checks the file: every entry names a tenant once, a client id, and a secret file or a
    /// certificate and its key.
    pub fn load(path: &Path) -> Result<TenantsFile> {
        let bad = |message: String| Error::ConfigFile { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        // The message and the line only: the parser's own text quotes the line, which may hold a secret.
        let document: Document = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            bad(match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_string(),
            })
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut apps = BTreeMap::new();
        for (i, entry) in document.tenant.into_iter().enumerate() {
            let which = format!("[[tenant]] number {}", i + 1);
            let tenant = normalise_tenant(&entry.tenant).ok_or_else(|| {
                bad(format!(
                    "{which}: tenant `{}` is not a tenant id (a GUID) or a domain such as contoso.onmicrosoft.com",
                    entry.tenant.escape_debug()
                ))
            })?;
            if !super::is_guid(entry.client_id.trim()) {
                return Err(bad(format!(
                    "{which} ({tenant}): client_id `{}` is not an Application (client) ID, a GUID",
                    entry.client_id.escape_debug()
                )));
            }
            let certificate = match (entry.certificate, entry.private_key) {
                (Some(c), Some(k)) => Some((dir.join(c), dir.join(k))),
                (None, None) => None,
                _ => return Err(bad(format!("{which} ({tenant}): certificate and private_key go together"))),
            };
            let client_secret_file = entry.client_secret_file.map(|f| dir.join(f));
            if client_secret_file.is_some() == certificate.is_some() {
                return Err(bad(format!(
                    "{which} ({tenant}): give client_secret_file, or certificate and private_key (one of the two)"
                )));
            }
            let app = TenantApp { client_id: entry.client_id.trim().to_string(), client_secret_file, certificate };
            if apps.insert(tenant.clone(), app).is_some() {
                return Err(bad(format!("tenant {tenant} is named twice")));
            }
        }
        Ok(TenantsFile { apps })
    }

    /// The sign-in flags of `tenant`: `base` signed in to it, with its own app when the file names it.
    pub fn args_for(&self, tenant: &str, base: &SettingsArgs) -> SettingsArgs {
        let mut args = base.clone();
        args.api.tenant_id = Some(tenant.to_string());
        if let Some(app) = normalise_tenant(tenant).and_then(|t| self.apps.get(&t)) {
            args.api.client_id = Some(app.client_id.clone());
            args.api.client_secret_file = app.client_secret_file.clone();
            (args.api.certificate, args.api.private_key) = match &app.certificate {
                Some((c, k)) => (Some(c.clone()), Some(k.clone())),
                None => (None, None),
            };
        }
        args
    }

    /// The file again, its paths absolute as they were resolved (ids and paths only: it never holds a
    /// secret), to be read back by [`TenantsFile::load`] from anywhere.
    pub fn to_toml(&self) -> String {
        let quote = |text: &str| serde_json::to_string(text).expect("a string serialises");
        let path = |p: &Path| {
            let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            quote(&p.to_string_lossy())
        };
        let mut out = String::from("# The apps of a run's tenants file, as the run resolved them.\n");
        for (tenant, app) in &self.apps {
            out += &format!("\n[[tenant]]\ntenant = {}\nclient_id = {}\n", quote(tenant), quote(&app.client_id));
            if let Some(file) = &app.client_secret_file {
                out += &format!("client_secret_file = {}\n", path(file));
            }
            if let Some((certificate, key)) = &app.certificate {
                out += &format!("certificate = {}\nprivate_key = {}\n", path(certificate), path(key));
            }
        }
        out
    }

    /// Whether the file gives `tenant` an app of its own.
    pub fn names(&self, tenant: &str) -> bool {
        normalise_tenant(tenant).is_some_and(|t| self.apps.contains_key(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0d3e5c1a-7b2f-4e8d-9a61-5f4c3b2a1d00";
    const APP: &str = "6a1f0c2e-93b4-4d57-8e1a-2c3d4e5f6a70";

    #[test]
    fn tenants_are_guids_or_domains() {
        assert_eq!(normalise_tenant(" {0D3E5C1A-7B2F-4E8D-9A61-5F4C3B2A1D00} ").as_deref(), Some(A));
        assert_eq!(normalise_tenant("Contoso.onmicrosoft.com").as_deref(), Some("contoso.onmicrosoft.com"));
        for bad in ["contoso", "", "../etc", "a..b", "-a.b", "0d3e5c1a7b2f4e8d9a615f4c3b2a1d00", "a/b.c"] {
            assert_eq!(normalise_tenant(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_entry_becomes_its_tenants_sign_in_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let text = format!(
            "[[tenant]]\ntenant = \"Contoso.onmicrosoft.com\"\nclient_id = \"{APP}\"\nclient_secret_file = \"c.secret\"\n\n\
             [[tenant]]\ntenant = \"{A}\"\nclient_id = \"{APP}\"\ncertificate = \"a.pem\"\nprivate_key = \"a.key\"\n"
        );
        std::fs::write(&path, text).unwrap();
        let file = TenantsFile::load(&path).unwrap();
        let base = SettingsArgs::default();
        let contoso = file.args_for("contoso.onmicrosoft.com", &base);
        assert_eq!(contoso.api.tenant_id.as_deref(), Some("contoso.onmicrosoft.com"));
        assert_eq!(contoso.api.client_secret_file, Some(dir.path().join("c.secret")));
        let a = file.args_for(&A.to_uppercase(), &base);
        assert_eq!(
            (a.api.certificate, a.api.private_key),
            (Some(dir.path().join("a.pem")), Some(dir.path().join("a.key")))
        );
        let other = file.args_for("fabrikam.onmicrosoft.com", &base);
        assert_eq!((other.api.client_id, other.api.client_secret_file), (None, None), "the usual settings");
        assert!(file.names("CONTOSO.onmicrosoft.com") && !file.names("fabrikam.onmicrosoft.com"));
        // Kept with absolute paths, it reads back the same from anywhere.
        let kept = tempfile::tempdir().unwrap();
        std::fs::write(kept.path().join("apps.toml"), file.to_toml()).unwrap();
        let again = TenantsFile::load(&kept.path().join("apps.toml")).unwrap();
        assert_eq!(
            again.args_for("contoso.onmicrosoft.com", &base).api.client_secret_file,
            Some(dir.path().join("c.secret"))
        );
        assert_eq!(format!("{:?}", again.apps), format!("{:?}", file.apps));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            TenantsFile::load(&path).unwrap_err().to_string()
        };
        let e = load(&format!("[[tenant]]\ntenant = \"contoso\"\nclient_id = \"{APP}\"\nclient_secret_file = \"s\"\n"));
        assert!(e.contains("number 1: tenant `contoso` is not a tenant id"), "{e}");
        let e = load(&format!("[[tenant]]\ntenant = \"{A}\"\nclient_id = \"{APP}\"\n"));
        assert!(e.contains("give client_secret_file, or certificate and private_key"), "{e}");
        let e = load(&format!("[[tenant]]\ntenant = \"{A}\"\nclient_id = \"{APP}\"\nclient_secret = \"s3cr3t\"\n"));
        assert!(e.contains("unknown field `client_secret`") && !e.contains("s3cr3t"), "{e}");
        let entry = format!("[[tenant]]\ntenant = \"{A}\"\nclient_id = \"{APP}\"\nclient_secret_file = \"s\"\n");
        let e = load(&format!("{entry}{entry}"));
        assert!(e.contains("named twice"), "{e}");
    }
}
