//! National and regional clouds: each name sets the API host, the sign-in authority and the scope together,
//! so they cannot disagree. Settings resolution uses the chosen cloud for whichever of the three is not set
//! explicitly (`--api-base`, `--authority`, `--scope` still win).
//!
//! Hosts from Microsoft's documentation (collected in mde-api.md, section 1). Our reading of the US Government
//! clouds: GCC calls `api-gcc.securitycenter.microsoft.us` and signs in at the commercial
//! `login.microsoftonline.com`; GCC High and DoD call `api-gov.securitycenter.microsoft.us` and sign in at
//! `login.microsoftonline.us`. In each the token's resource is the API host's own (`https://api-gcc...` or
//! `https://api-gov...`), so the scope is that host followed by `/.default`. The regional commercial hosts
//! (`us`, `eu`, ...) share the commercial resource and sign-in.

use std::fmt;
use std::str::FromStr;

/// One cloud's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cloud {
    /// The name users type (`--cloud`, `api.cloud`).
    pub name: &'static str,
    /// The Defender for Endpoint API host.
    pub api_base: &'static str,
    /// The Entra ID sign-in host.
    pub authority: &'static str,
    /// The OAuth v2 scope of the API.
    pub scope: &'static str,
}

const COMMERCIAL_LOGIN: &str = "https://login.microsoftonline.com";
const US_GOV_LOGIN: &str = "https://login.microsoftonline.us";
const COMMERCIAL_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

const fn commercial(name: &'static str, api_base: &'static str) -> Cloud {
    Cloud { name, api_base, authority: COMMERCIAL_LOGIN, scope: COMMERCIAL_SCOPE }
}

/// Every cloud, the default first.
pub const CLOUDS: [Cloud; 10] = [
    commercial("commercial", "https://api.security.microsoft.com"),
    commercial("us", "https://us.api.security.microsoft.com"),
    commercial("eu", "https://eu.api.security.microsoft.com"),
    commercial("uk", "https://uk.api.security.microsoft.com"),
    commercial("au", "https://au.api.security.microsoft.com"),
    commercial("swa", "https://swa.api.security.microsoft.com"),
    commercial("ina", "https://ina.api.security.microsoft.com"),
    Cloud {
        name: "gcc",
        api_base: "https://api-gcc.securitycenter.microsoft.us",
        authority: COMMERCIAL_LOGIN,
        scope: "https://api-gcc.securitycenter.microsoft.us/.default",
    },
    Cloud {
        name: "gcc-high",
        api_base: "https://api-gov.securitycenter.microsoft.us",
        authority: US_GOV_LOGIN,
        scope: "https://api-gov.securitycenter.microsoft.us/.default",
    },
    Cloud {
        name: "dod",
        api_base: "https://api-gov.securitycenter.microsoft.us",
        authority: US_GOV_LOGIN,
        scope: "https://api-gov.securitycenter.microsoft.us/.default",
    },
];

impl Default for Cloud {
    fn default() -> Self {
        CLOUDS[0]
    }
}

impl Cloud {
    /// The valid names, for messages.
    pub fn names() -> String {
        CLOUDS.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    }
}

impl FromStr for Cloud {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        let wanted = match wanted.as_str() {
            "public" | "global" => "commercial",
            "gcchigh" => "gcc-high",
            other => other,
        };
        CLOUDS.iter().find(|c| c.name == wanted).copied().ok_or_else(|| format!("one of {}", Cloud::names()))
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(name: &str) -> Cloud {
        name.parse().unwrap()
    }

    #[test]
    fn every_preset_has_its_hosts() {
        let expected = [
            ("commercial", "https://api.security.microsoft.com", COMMERCIAL_LOGIN, COMMERCIAL_SCOPE),
            ("us", "https://us.api.security.microsoft.com", COMMERCIAL_LOGIN, COMMERCIAL_SCOPE),
            ("eu", "https://eu.api.security.microsoft.com", COMMERCIAL_LOGIN, COMMERCIAL_SCOPE),
            ("uk", "https://uk.api.security.microsoft.com", COMMERCIAL_LOGIN, COMMERCIAL_SCOPE),
            ("au", "https://au.api.security.microsoft.com", COMMERCIAL_LOGIN, COMMERCIAL_SCOPE),
            ("swa", "https://swa.api.security.microsoft.com", COMMERCIAL_LOGIN, COMMERCIAL_SCOPE),
            ("ina", "https://ina.api.security.microsoft.com", COMMERCIAL_LOGIN, COMMERCIAL_SCOPE),
            (
                "gcc",
                "https://api-gcc.securitycenter.microsoft.us",
                "https://login.microsoftonline.com",
                "https://api-gcc.securitycenter.microsoft.us/.default",
            ),
            (
                "gcc-high",
                "https://api-gov.securitycenter.microsoft.us",
                "https://login.microsoftonline.us",
                "https://api-gov.securitycenter.microsoft.us/.default",
            ),
            (
                "dod",
                "https://api-gov.securitycenter.microsoft.us",
                "https://login.microsoftonline.us",
                "https://api-gov.securitycenter.microsoft.us/.default",
            ),
        ];
        assert_eq!(expected.len(), CLOUDS.len());
        for (name, api, login, scope) in expected {
            let c = cloud(name);
            assert_eq!((c.name, c.api_base, c.authority, c.scope), (name, api, login, scope));
        }
        assert_eq!(Cloud::default(), cloud("commercial"));
        assert_eq!(cloud(" GCC_High "), cloud("gcc-high"));
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let e = "moon".parse::<Cloud>().unwrap_err();
        assert!(e.contains("commercial") && e.contains("gcc-high") && e.contains("dod"), "{e}");
    }
}
