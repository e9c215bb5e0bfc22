//! The HTTP endpoints (axum).
//!
//! | endpoint | answers |
//! |---|---|
//! | `POST /sql` | the query in the body; JSON rows, or CSV (`Accept: text/csv`), or an Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`); 400 with DataFusion's message for a bad query, 408 past the query timeout |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | 200 while the process is up |
//! | `GET /readyz` | 200 when the source is connected (or finished) and the sinks are healthy, else 503 |
//! | `POST /ingest` | a JSON event, a JSON array (batch) or NDJSON for the `http` source: 202 accepted, 429 when the pipeline's queue is full, 503 when there is no running http source |
//!
//! With a token configured, every endpoint but the two probes requires
//! `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Engine, QueryError};
use crate::live::{IngestRefused, Phase};

/// Largest request body accepted (an ingest batch or a query).
pub const MAX_BODY: usize = 32 << 20;

struct Ctx {
    engine: Arc<Engine>,
    token: Option<String>,
}

/// Binds `addr` (so a busy port fails at start-up, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ctx = Arc::new(Ctx { engine, token });
    let app = Router::new()
        .route("/sql", post(sql))
        .route("/metrics", get(metrics))
        .route("/ingest", post(ingest))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn auth(State(ctx): State<Arc<Ctx>>, req: Request, next: Next) -> Response {
    if let Some(token) = &ctx.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
        .into_response()
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

async fn sql(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(query) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the query is not UTF-8");
    };
    if query.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "empty query: send the SQL text as the request body",
        );
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let batches = match ctx.engine.query(query).await {
        Ok(b) => b,
        Err(e @ QueryError::Timeout(_)) => {
            return error(StatusCode::REQUEST_TIMEOUT, &e.to_string());
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let encoded = if accept.contains(ARROW_STREAM) {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        super::to_arrow_ipc(&schema, &batches).map(|b| (ARROW_STREAM, b))
    } else if accept.contains("text/csv") {
        super::to_csv(&batches).map(|b| ("text/csv; charset=utf-8", b))
    } else {
        super::to_json(&batches).map(|b| ("application/json", b))
    };
    match encoded {
        Ok((kind, body)) => (StatusCode::OK, [(header::CONTENT_TYPE, kind)], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&ctx.engine.hub, &ctx.engine.queries),
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    let hub = &ctx.engine.hub;
    let phase = hub.phase();
    let source = match phase {
        Phase::Starting => "starting",
        Phase::Running
            if hub
                .source_connected
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            "connected"
        }
        Phase::Running => "disconnected",
        Phase::Finished => "finished",
        Phase::Failed => "failed",
        Phase::Stopping => "stopping",
    };
    let sinks_ok = hub.sinks.errors.load(std::sync::atomic::Ordering::Relaxed) == 0;
    let ready = sinks_ok && matches!(source, "connected" | "finished");
    let body = serde_json::json!({
        "ready": ready,
        "source": source,
        "sinks": if sinks_ok { "ok" } else { "failed" },
    })
    .to_string();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
        .into_response()
}

async fn ingest(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Response {
    if body.iter().all(|c| c.is_ascii_whitespace()) {
        return error(
            StatusCode::BAD_REQUEST,
            "empty body: send a JSON event, a JSON array or NDJSON",
        );
    }
    let data = one_line_if_single_document(&body);
    match ctx.engine.hub.ingest(data) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"accepted\":true}\n",
        )
            .into_response(),
        Err(IngestRefused::Busy) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "the pipeline is behind: retry after a moment",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(IngestRefused::Unavailable) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no running http source: configure [source] kind = \"http\"",
        ),
    }
}

/// A body that is one JSON document spread over several lines (a pretty-printed
/// event or batch) becomes one line: a raw newline can only be whitespace between
/// JSON tokens (inside a string it must be escaped), so replacing it is safe.
/// Anything else is taken as NDJSON, line by line; invalid lines are dead-lettered
/// by the pipeline with their reason.
fn one_line_if_single_document(body: &[u8]) -> Vec<u8> {
    let mut data = body.to_vec();
    let multi_line = {
        let trimmed = body.trim_ascii();
        trimmed.contains(&b'\n')
    };
    if multi_line && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        for c in &mut data {
            if *c == b'\n' || *c == b'\r' {
                *c = b' ';
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pretty_printed_document_becomes_one_line_and_ndjson_stays() {
        let pretty = b"{\n  \"a\": 1,\n  \"b\": \"x\\ny\"\n}\n";
        let one = one_line_if_single_document(pretty);
        assert!(!one.trim_ascii().contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(v["b"], "x\ny");
        let nd = b"{\"a\":1}\n{\"a\":2}\n";
        assert_eq!(one_line_if_single_document(nd), nd.to_vec());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
