//! Who is asking: the authenticated identity of a request.

use serde::{Deserialize, Serialize};

/// What kind of principal an identity is, so an auditor can tell AI traffic from people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    Human,
    #[default]
    Agent,
    Service,
}

/// An authenticated principal. Produced only by the pipeline's `authenticate` stage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Identity {
    /// Stable name recorded in the audit log, e.g. `agent:claude-code`.
    pub subject: String,
    pub groups: Vec<String>,
    pub kind: IdentityKind,
    /// The person (or service) this identity acts for, when it is an agent acting on
    /// someone's behalf: from a token's `act` claim (RFC 8693) or a delegation token.
    /// Never nested: the principal acted for has no `acting_for` of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_for: Option<Box<Identity>>,
    /// How the identity was established: `api_key`, or `oidc:<issuer>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

impl Identity {
    /// The name jobs and their results are owned under: the subject, or `SUBJECT for
    /// PERSON` while acting for someone, so that what an agent ran for one person is not
    /// readable when it acts for another (or for nobody).
    pub fn owner(&self) -> String {
        match &self.acting_for {
            Some(p) => format!("{} for {}", self.subject, p.subject),
            None => self.subject.clone(),
        }
    }

    /// The kind a subject's prefix names, if it names one: `human:`, `user:`, `person:` →
    /// human; `agent:`, `ai:`, `bot:` → agent; `service:`, `svc:`, `ci:`, `workload:` →
    /// service (compared case-insensitively). Anything else says nothing: a key for it
    /// must state its `kind`.
    pub fn kind_of_prefix(subject: &str) -> Option<IdentityKind> {
        let (prefix, _) = subject.split_once(':')?;
        match prefix.to_ascii_lowercase().as_str() {
            "human" | "user" | "person" => Some(IdentityKind::Human),
            "agent" | "ai" | "bot" => Some(IdentityKind::Agent),
            "service" | "svc" | "ci" | "workload" => Some(IdentityKind::Service),
            _ => None,
        }
    }

    /// The kind implied by a subject's prefix ([`Identity::kind_of_prefix`]), else agent:
    /// the kind with the least standing (an agent never approves).
    pub fn kind_from_subject(subject: &str) -> IdentityKind {
        Identity::kind_of_prefix(subject).unwrap_or(IdentityKind::Agent)
    }
}

/// Whom the bearer tokens a front accepts must have been issued for, when not the
/// gateway's own `[[oidc]]` audiences: the MCP front, an OAuth resource server, accepts
/// only tokens issued for its own resource (RFC 8707) by its authorization servers, so a
/// token meant for another service, or for the REST front, is refused there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// The `aud` value a token must carry (`[mcp] resource`).
    pub resource: String,
    /// The issuers whose tokens are accepted (`[mcp] authorization_servers`).
    pub issuers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_name_kinds_and_unknown_ones_name_none() {
        assert_eq!(
            Identity::kind_of_prefix("person:olga"),
            Some(IdentityKind::Human)
        );
        assert_eq!(
            Identity::kind_of_prefix("Human:olga"),
            Some(IdentityKind::Human)
        );
        assert_eq!(
            Identity::kind_of_prefix("ci:deploy"),
            Some(IdentityKind::Service)
        );
        assert_eq!(
            Identity::kind_of_prefix("agent:claude"),
            Some(IdentityKind::Agent)
        );
        assert_eq!(Identity::kind_of_prefix("olga"), None);
        assert_eq!(Identity::kind_of_prefix("staff:olga"), None);
        assert_eq!(
            Identity::kind_from_subject("staff:olga"),
            IdentityKind::Agent
        );
    }
}
