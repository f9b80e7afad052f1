//! The MCP front's listener glue: MCP Streamable HTTP at `/mcp` (rmcp's server, the
//! current protocol and the earlier session-based one clients in use today open with),
//! behind a guard that makes `/mcp` an OAuth 2.1 resource server: a request without a
//! bearer credential, or with one the gateway refuses (a token not issued for `[mcp]
//! resource` by its authorization servers, expired, unknown), gets 401 and
//! `WWW-Authenticate` naming the protected-resource metadata (RFC 9728), served at
//! `/.well-known/oauth-protected-resource` (and its `/mcp` suffixed form); a refused
//! credential is audited. Bodies over `max_body_bytes` get 413.
//!
//! Each tool call: the bearer credential and client facts from the HTTP request, decode,
//! the source's call for the neutral action, `Pipeline::handle`, render. The credential is
//! the pipeline's to check (API keys and OIDC tokens as everywhere, tokens for this
//! resource only); it never goes upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Request as HttpRequest, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use querygate_core::{Audience, ClientInfo, Identity, Request, RequestId, Secret};
use querygate_pipeline::{Explanation, Pipeline, Source, Sources};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::json;

use crate::{decode, render, tools};

/// Everything the MCP front needs.
#[derive(Debug)]
pub struct McpFront<S> {
    pub pipeline: Arc<Pipeline>,
    pub sources: Arc<Sources<S>>,
    /// Rows a tool returns per call (pages beyond).
    pub max_rows: u64,
    /// The canonical URI tokens must be issued for (`[mcp] resource`, or the listener's
    /// own `/mcp` URL).
    pub resource: String,
    /// The issuers that mint tokens for it.
    pub authorization_servers: Vec<String>,
    /// Hosts the server answers for (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// The largest request body read.
    pub max_body_bytes: usize,
}

impl<S> McpFront<S> {
    /// Whom tokens must be issued for here: the resource, by its authorization servers.
    fn audience(&self) -> Option<Arc<Audience>> {
        Some(Arc::new(Audience {
            resource: self.resource.clone(),
            issuers: self.authorization_servers.clone(),
        }))
    }
}

/// The MCP front's router: `/mcp` and the protected-resource metadata.
pub fn router<S: Source + 'static>(front: Arc<McpFront<S>>) -> Router {
    let handler = Tools {
        front: Arc::clone(&front),
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(front.allowed_hosts.clone());
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let metadata = get(metadata::<S>);
    Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(front.clone(), guard::<S>))
        .route("/.well-known/oauth-protected-resource", metadata.clone())
        .route("/.well-known/oauth-protected-resource/mcp", metadata)
        .with_state(front)
}

/// RFC 9728 protected-resource metadata.
async fn metadata<S: Source + 'static>(State(front): State<Arc<McpFront<S>>>) -> Response {
    axum::Json(json!({
        "resource": front.resource,
        "authorization_servers": front.authorization_servers,
        "bearer_methods_supported": ["header"],
    }))
    .into_response()
}

/// `http://host` of the request, for the metadata URL when no resource is configured.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// The resource server's guard: a credential the gateway accepts (checked as the data
/// path checks it, for this resource), and a body of bounded size.
async fn guard<S: Source + 'static>(
    State(front): State<Arc<McpFront<S>>>,
    request: HttpRequest<Body>,
    next: Next,
) -> Response {
    let Some(credential) = bearer(request.headers()) else {
        return unauthorized(
            request.headers(),
            None,
            "querygate needs a bearer credential: an API key or a token issued for this server",
        );
    };
    let audience = front.audience();
    let identity = match front
        .pipeline
        .authenticate(Some(&credential), audience.as_deref())
        .await
    {
        Ok(identity) => identity,
        Err(denial) => {
            // Audited like any refused request (the pipeline checks the credential again and
            // records the refusal); the client learns what was wrong.
            let client = client_info(request.headers(), request.extensions());
            let headers = request.headers().clone();
            drop(request);
            let action = querygate_core::Action::Other {
                what: "an MCP request".into(),
            };
            audit_refused(&front, client, credential, action).await;
            return unauthorized(&headers, Some("invalid_token"), &denial.message);
        }
    };
    let (mut parts, body) = request.into_parts();
    // For choosing the source of a call that names no project; the pipeline still checks
    // the credential of every call itself.
    parts.extensions.insert(identity);
    match Limited::new(body, front.max_body_bytes).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            // A POST carries JSON-RPC: anything else is a parse error in JSON-RPC's own
            // form (rmcp would answer 415 in plain text, which no client can act on).
            if parts.method == axum::http::Method::POST
                && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
            {
                let client = client_info(&parts.headers, &parts.extensions);
                drop(parts);
                let action = querygate_core::Action::Malformed {
                    problem: querygate_core::Malformed::Invalid,
                    message: NOT_JSON.into(),
                };
                audit_refused(&front, client, credential, action).await;
                return rpc_error(StatusCode::BAD_REQUEST, -32700, NOT_JSON);
            }
            next.run(HttpRequest::from_parts(parts, Body::from(body)))
                .await
        }
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            -32600,
            &format!(
                "the request is larger than querygate accepts ({} bytes)",
                front.max_body_bytes
            ),
        ),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Records a request refused before any tool call (a credential the gateway refuses, a
/// body that is not JSON-RPC): the pipeline checks the credential itself and records the
/// refusal under the method `mcp`.
async fn audit_refused<S: Source + 'static>(
    front: &McpFront<S>,
    client: ClientInfo,
    credential: Secret,
    action: querygate_core::Action,
) {
    let refused = Request {
        id: RequestId(format!("qg-{}", uuid::Uuid::new_v4().simple())),
        credential: Some(credential),
        delegation: None,
        audience: front.audience(),
        client,
        target: String::new(),
        method: "mcp".into(),
        action,
        job_id: None,
        reason: None,
        wait: None,
        session: None,
        codes: &crate::CODES,
    };
    let _ = front.pipeline.handle_unrouted::<S>(refused).await;
}

const NOT_JSON: &str = "the request body is not JSON: send one JSON-RPC message or a batch";

/// A JSON-RPC error that belongs to no request (`id: null`), with its HTTP status.
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({ "jsonrpc": "2.0", "id": null, "error": { "code": code, "message": message } }),
        ),
    )
        .into_response()
}

/// 401 with where to find out how to get a token (and, for a refused one, why).
fn unauthorized(headers: &HeaderMap, error: Option<&str>, description: &str) -> Response {
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        origin(headers)
    );
    // Header values are quoted strings: keep the description to printable ASCII sans quotes.
    let quoted: String = description
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    let at = match error {
        Some(e) => format!(
            "Bearer error=\"{e}\", error_description=\"{quoted}\", resource_metadata=\"{metadata}\""
        ),
        None => format!("Bearer resource_metadata=\"{metadata}\""),
    };
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({
            "error": error.unwrap_or("unauthorized"),
            "error_description": description,
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&at) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// What the client software is and where it connected from.
fn client_info(headers: &HeaderMap, extensions: &axum::http::Extensions) -> ClientInfo {
    ClientInfo {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        peer: extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.to_string()),
    }
}

fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| Secret::new(token.trim()))
}

/// The MCP server: the tools, each call through the pipeline.
struct Tools<S> {
    front: Arc<McpFront<S>>,
}

impl<S> Clone for Tools<S> {
    fn clone(&self) -> Self {
        Tools {
            front: Arc::clone(&self.front),
        }
    }
}

impl<S: Source + 'static> ServerHandler for Tools<S> {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("querygate", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "querygate: every call is authenticated, decided by policy, masked, audited \
                 and recorded. Refusals say why and what to do instead.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let front = &self.front;
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let headers = parts.map(|p| &p.headers);
        // Without a project: the first source the caller may use (else the first).
        let identity = parts.and_then(|p| p.extensions.get::<Identity>());
        let default_project = front
            .sources
            .iter()
            .find(|s| identity.is_some_and(|i| front.pipeline.may_use(i, s.name())))
            .or_else(|| front.sources.iter().next())
            .map(|s| s.default_project().to_string())
            .unwrap_or_default();
        let mut decoded = decode(
            &request.name,
            request.arguments.as_ref(),
            &default_project,
            front.max_rows,
        );
        let source = front.sources.get(&decoded.project).cloned();
        let call = match source
            .as_ref()
            .map(|s| s.call_for(&decoded.action, &decoded.paging))
        {
            Some(Ok(call)) => Some(call),
            // What the source cannot serve is refused, audited, as a malformed request.
            Some(Err(denial)) => {
                decoded.action = querygate_core::Action::Malformed {
                    problem: querygate_core::Malformed::Invalid,
                    message: denial.message,
                };
                source
                    .as_ref()
                    .and_then(|s| s.call_for(&decoded.action, &decoded.paging).ok())
            }
            None => None,
        };
        let client = parts
            .map(|p| client_info(&p.headers, &p.extensions))
            .unwrap_or_default();
        let session = headers
            .and_then(|h| h.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .map(|s| format!("mcp-{s}"));
        let tool = decoded.method.clone();
        let dry_run = matches!(
            &decoded.action,
            querygate_core::Action::Query(q) if q.dry_run
        );
        let pipeline_request = Request {
            id: RequestId(format!("qg-{}", uuid::Uuid::new_v4().simple())),
            credential: headers.and_then(bearer),
            delegation: None,
            audience: front.audience(),
            client,
            target: decoded.project.clone(),
            method: decoded.method,
            action: decoded.action,
            job_id: None,
            reason: None,
            wait: decoded.wait,
            session,
            codes: &crate::CODES,
        };
        let result = match (source, call) {
            (Some(source), Some(call)) => {
                let (outcome, explanation) = front
                    .pipeline
                    .handle_explained(pipeline_request, Some(source.as_ref()), call)
                    .await;
                render(&tool, outcome, &explanation, dry_run)
            }
            // No such project: the pipeline answers (and audits) "not found".
            (None, _) | (_, None) => {
                let outcome = front.pipeline.handle_unrouted::<S>(pipeline_request).await;
                render(&tool, outcome, &Explanation::default(), dry_run)
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}
