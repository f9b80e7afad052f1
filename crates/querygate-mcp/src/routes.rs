//! The MCP front's listener glue: MCP Streamable HTTP at `/mcp` (rmcp's server, the
//! current protocol and the earlier session-based one clients in use today open with),
//! behind a layer that answers a request without a bearer credential with 401 and
//! `WWW-Authenticate` naming the protected-resource metadata (RFC 9728), which is served at
//! `/.well-known/oauth-protected-resource` (and its `/mcp` suffixed form).
//!
//! Each tool call: the bearer credential and client facts from the HTTP request, decode,
//! the source's call for the neutral action, `Pipeline::handle`, render. The credential is
//! the pipeline's to check (API keys and OIDC tokens as everywhere); it never goes upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Request as HttpRequest, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use querygate_core::{ClientInfo, Request, RequestId, Secret};
use querygate_pipeline::{Pipeline, Source, Sources};
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
    /// The canonical URI tokens must be issued for (`[mcp] resource`), when set.
    pub resource: Option<String>,
    /// The issuers that mint tokens for it.
    pub authorization_servers: Vec<String>,
    /// Hosts the server answers for (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
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
        .layer(middleware::from_fn(bearer_required))
        .route("/.well-known/oauth-protected-resource", metadata.clone())
        .route("/.well-known/oauth-protected-resource/mcp", metadata)
        .with_state(front)
}

/// RFC 9728 protected-resource metadata.
async fn metadata<S: Source + 'static>(
    State(front): State<Arc<McpFront<S>>>,
    headers: HeaderMap,
) -> Response {
    let resource = front
        .resource
        .clone()
        .unwrap_or_else(|| format!("{}/mcp", origin(&headers)));
    axum::Json(json!({
        "resource": resource,
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

/// A request without `Authorization: Bearer …` gets 401 and where to find out how to get
/// a token; the credential itself is checked by the pipeline with each tool call.
async fn bearer_required(request: HttpRequest<Body>, next: Next) -> Response {
    if bearer(request.headers()).is_some() {
        return next.run(request).await;
    }
    let at = format!(
        "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        origin(request.headers())
    );
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ "error": "unauthorized", "error_description": "querygate needs a bearer credential: an API key or a token issued for this server" })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&at) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
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
        let default_project = front
            .sources
            .iter()
            .next()
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
        let client = ClientInfo {
            user_agent: headers
                .and_then(|h| h.get(header::USER_AGENT))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            peer: parts
                .and_then(|p| p.extensions.get::<ConnectInfo<SocketAddr>>())
                .map(|ConnectInfo(a)| a.to_string()),
        };
        let session = headers
            .and_then(|h| h.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .map(|s| format!("mcp-{s}"));
        let tool = decoded.method.clone();
        let pipeline_request = Request {
            id: RequestId(format!("qg-{}", uuid::Uuid::new_v4().simple())),
            credential: headers.and_then(bearer),
            delegation: None,
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
            (Some(source), Some(call)) => render(
                &tool,
                front
                    .pipeline
                    .handle(pipeline_request, Some(source.as_ref()), call)
                    .await,
            ),
            // No such project: the pipeline answers (and audits) "not found".
            (None, _) | (_, None) => {
                let outcome = front.pipeline.handle_unrouted::<S>(pipeline_request).await;
                render(&tool, outcome)
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}
