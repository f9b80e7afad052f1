//! The benchmark's floor: a reverse proxy on querygate's own HTTP stack (tokio, hyper
//! through axum, reqwest to the upstream), with nothing else. No authentication, no
//! analysis, no audit, no recording. `bench/run.sh` measures it beside nginx and querygate,
//! so that the report separates what the HTTP stack costs from what querygate's work costs.
//!
//! Not a product: it forwards anything to anyone. Usage:
//! `passthrough <listen addr> <upstream base url>`, e.g.
//! `passthrough 127.0.0.1:9060 http://127.0.0.1:19050`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Request, Response, StatusCode, header};
use axum::serve::ListenerExt;

struct Upstream {
    base: String,
    client: reqwest::Client,
}

async fn forward(State(up): State<Arc<Upstream>>, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 16 << 20).await {
        Ok(b) => b,
        Err(_) => return answer(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad body")),
    };
    let mut url = format!("{}{}", up.base, parts.uri.path());
    if let Some(q) = parts.uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let sent = up
        .client
        .request(parts.method, url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(reply) => {
            let status = reply.status();
            match reply.bytes().await {
                Ok(bytes) => answer(status, bytes),
                Err(_) => answer(StatusCode::BAD_GATEWAY, Bytes::from_static(b"upstream")),
            }
        }
        Err(_) => answer(StatusCode::BAD_GATEWAY, Bytes::from_static(b"upstream")),
    }
}

fn answer(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: passthrough <listen addr> <upstream base url>");
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream = Arc::new(Upstream {
        base: base.trim_end_matches('/').to_string(),
        client: reqwest::Client::builder().build()?,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new().fallback(forward).with_state(upstream);
        let listener = tokio::net::TcpListener::bind(listen).await?.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    })
}
