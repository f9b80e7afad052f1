//! `[[api_keys]]` and `[[oidc]]`: who may call the gateway. API keys are kept as their
//! SHA-256 only; each says what kind of principal it is. OIDC blocks are checked by
//! `querygate-identity` (`OidcSpec::check`), which also turns them into issuers.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use querygate_core::{Identity, IdentityKind};
use querygate_identity::IssuerConfig;
use serde::Deserialize;
use toml::Spanned;

use super::{Config, line_of, parse_time};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub identity: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub key_sha256: Spanned<String>,
    pub kind: Option<IdentityKind>,
    /// When the key stops working: an RFC 3339 time, e.g. "2027-01-31T00:00:00Z".
    pub expires: Option<Spanned<String>>,
}

impl Config {
    /// `[[api_keys]]` (hashes, not keys; one kind of principal each; expiry times) and
    /// `[[oidc]]` (each issuer once).
    pub(super) fn check_identities(&self, text: &str, path: &Path) -> Result<(), String> {
        let fail = |span: Range<usize>, msg: String| {
            Err(format!("{}{}: {msg}", path.display(), line_of(text, &span)))
        };
        let mut hashes = HashSet::new();
        for key in &self.api_keys {
            let h = key.key_sha256.get_ref();
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return fail(
                    key.key_sha256.span(),
                    format!(
                        "key_sha256 of {} must be the 64-hex-digit SHA-256 of the key \
                         (`querygate keys new` prints it); never put the key itself here",
                        key.identity
                    ),
                );
            }
            if !hashes.insert(h.to_ascii_lowercase()) {
                return fail(
                    key.key_sha256.span(),
                    "the same key_sha256 appears twice".into(),
                );
            }
            if key.identity.trim().is_empty() {
                return fail(key.key_sha256.span(), "identity must not be empty".into());
            }
            if key.kind.is_none() && Identity::kind_of_prefix(&key.identity).is_none() {
                return fail(
                    key.key_sha256.span(),
                    format!(
                        "say what kind of principal {} is: kind = \"human\", \"agent\" or \
                         \"service\" (or start the identity with a prefix that says it: \
                         human:/user:/person:, agent:/ai:/bot:, service:/svc:/ci:/workload:)",
                        key.identity
                    ),
                );
            }
            if let Some(e) = &key.expires
                && let Err(msg) = parse_time(e.get_ref())
            {
                return fail(
                    e.span(),
                    format!("api key of {}: expires: {msg}", key.identity),
                );
            }
        }
        let mut issuers = HashSet::new();
        for o in &self.oidc {
            if let Err(msg) = o.get_ref().check() {
                return fail(o.span(), msg.to_string());
            }
            if !issuers.insert(o.get_ref().issuer.as_str()) {
                return fail(
                    o.span(),
                    format!("two [[oidc]] blocks name issuer {:?}", o.get_ref().issuer),
                );
            }
        }
        // The MCP front takes tokens from these issuers only: each must be one querygate
        // verifies (an [[oidc]] block says how).
        for server in &self.mcp.authorization_servers {
            if !issuers.contains(server.as_str()) {
                return Err(format!(
                    "{}: [mcp] authorization_servers names {server:?}, which is not the issuer \
                     of any [[oidc]] block; add one for it (its tokens are verified as those are)",
                    path.display()
                ));
            }
        }
        if let Some(resource) = &self.mcp.resource
            && reqwest::Url::parse(resource)
                .map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            return Err(format!(
                "{}: [mcp] resource {resource:?} must be the MCP endpoint's absolute http(s) URL, \
                 e.g. \"https://querygate.example.com/mcp\"",
                path.display()
            ));
        }
        Ok(())
    }

    /// The checked `[[oidc]]` blocks (checked at load, so this cannot fail afterwards).
    pub fn issuers(&self) -> Result<Vec<IssuerConfig>, String> {
        self.oidc
            .iter()
            .map(|o| o.get_ref().check().map_err(|e| e.to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use querygate_core::{Identity, IdentityKind};

    use super::super::testing::{GOOD, error_of, parse};

    #[test]
    fn an_api_key_says_what_kind_of_principal_it_is() {
        // `person:` names a human; a prefix querygate does not know needs `kind`.
        let person = parse(&GOOD.replace("agent:claude-code", "person:olga")).expect("person");
        assert_eq!(
            Identity::kind_of_prefix(&person.api_keys[0].identity),
            Some(IdentityKind::Human)
        );
        let e = error_of(&GOOD.replace("agent:claude-code", "staff:olga"));
        assert!(
            e.contains("line 11") && e.contains("kind = \"human\"") && e.contains("staff:olga"),
            "{e}"
        );
        let stated = parse(&GOOD.replace(
            "identity = \"agent:claude-code\"",
            "identity = \"staff:olga\"\nkind = \"human\"",
        ))
        .expect("stated kind");
        assert_eq!(stated.api_keys[0].kind, Some(IdentityKind::Human));
    }

    #[test]
    fn oidc_blocks_are_checked_with_their_line() {
        let with = |block: &str| format!("{GOOD}\n[[oidc]]\n{block}\n");
        let ok = parse(&with(
            "issuer = \"https://idp.example.com\"\naudiences = [\"querygate\"]\nkind = \"human\"\ngroups_claim = \"groups\"",
        ))
        .expect("oidc");
        assert_eq!(
            ok.issuers().expect("issuers")[0].issuer,
            "https://idp.example.com"
        );
        let e = error_of(&with(
            "issuer = \"http://idp.example.com\"\naudiences = [\"q\"]\nkind = \"agent\"",
        ));
        assert!(e.contains("line 20") && e.contains("https"), "{e}");
        let e = error_of(&with(
            "issuer = \"https://idp.example.com\"\nkind = \"agent\"",
        ));
        assert!(e.contains("audiences"), "{e}");
        let e = error_of(&with(
            "issuer = \"https://idp.example.com\"\naudiences = [\"q\"]\nkind = \"robot\"",
        ));
        assert!(e.contains("line 23") && e.contains("robot"), "{e}");
        let e = error_of(&with(
            "issuer = \"https://idp.example.com\"\naudiences = [\"q\"]\nkind = \"agent\"\ngroup_claim = \"g\"",
        ));
        assert!(e.contains("group_claim"), "{e}");
    }
}
