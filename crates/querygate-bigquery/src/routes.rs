//! The HTTP service of the BigQuery front: read the body, decode, run the pipeline, render.
//!
//! This is glue only. Bodies are read up to a limit (also after gzip decoding, so a
//! small compressed body cannot expand without bound); responses are gzip-compressed
//! when the client accepts it. `/healthz` and `/readyz` answer without authentication;
//! [`crate::token::PATH`] is the OAuth token endpoint of `querygate connect`'s credentials.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::routing::{any, get};
use bytes::Bytes;
use http::{HeaderValue, Request as HttpRequest, Response, header};
use http_body_util::{BodyExt, Limited};
use querygate_core::RequestId;
use querygate_pipeline::{Pipeline, Sources};
use tower_http::compression::CompressionLayer;

use crate::decode::{BodyProblem, WireRequest, decode};
use crate::render::render;
use crate::source::BigQuerySource;

/// Everything the BigQuery front needs.
#[derive(Debug)]
pub struct Front {
    pub pipeline: Arc<Pipeline>,
    /// The configured sources, found by the project id clients use.
    pub sources: Arc<Sources<BigQuerySource>>,
    /// Largest request body accepted, after decompression.
    pub max_body_bytes: usize,
    /// Seals and opens the access tokens of the token endpoint.
    pub tokens: Arc<crate::token::Tokens>,
}

pub fn router(front: Arc<Front>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route(crate::token::PATH, any(crate::token::grant))
        .fallback(handle)
        .layer(CompressionLayer::new().gzip(true))
        .with_state(front)
}

async fn handle(State(front): State<Arc<Front>>, request: HttpRequest<Body>) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    front.tokens.unseal_bearer(&mut parts.headers);
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned();
    let request_id = RequestId(format!("qg-{}", uuid::Uuid::new_v4().simple()));
    let body = read_body(&parts.headers, body, front.max_body_bytes).await;
    let (request, call) = decode(WireRequest {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body,
        peer: peer.map(|ConnectInfo(a)| a.to_string()),
        request_id: request_id.clone(),
    });
    let sql = request.statement().is_some();
    let project = request.target.clone();
    let api = call.api;
    let source = front.sources.get(&request.target).cloned();
    let outcome = front
        .pipeline
        .handle(request, source.as_deref(), call)
        .await;
    let mut response = render(outcome, sql, &api, &project);
    if let Ok(v) = HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert("x-querygate-request-id", v);
    }
    response
}

/// Reads a body up to `limit` bytes, decoding `Content-Encoding: gzip`.
async fn read_body(
    headers: &http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyProblem> {
    let raw = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                BodyProblem::TooLarge { limit }
            } else {
                BodyProblem::Unreadable("the connection failed while sending the body".into())
            }
        })?
        .to_bytes();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(raw),
        Some("gzip") => {
            let mut out = Vec::new();
            let decoder = flate2::read::GzDecoder::new(&raw[..]);
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| BodyProblem::Unreadable("the gzip body is not valid gzip".into()))?;
            if out.len() > limit {
                return Err(BodyProblem::TooLarge { limit });
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(BodyProblem::Unreadable(format!(
            "Content-Encoding {other} is not supported (use gzip or none)"
        ))),
    }
}
