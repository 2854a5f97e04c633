//! Plain HTTP pages beside the API: the landing page, the health check and
//! the readiness check.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::app::AppState;

pub fn router(openapi: &serde_json::Value, state: &AppState) -> Router {
    let openapi = axum::body::Bytes::from(openapi.to_string());
    let json = [(header::CONTENT_TYPE, "application/json")];
    let readiness = Arc::new(Readiness::new(state.clone()));
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move { readiness.answer().await }
            }),
        )
        .route(
            super::openapi::PATH,
            get(move || std::future::ready((json, openapi.clone()))),
        )
}

const INDEX: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>piqchat inbox server</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto; padding: 0 1em">
<h1>piqchat inbox server</h1>
<p>This server receives end-to-end-encrypted, self-destructing images for the users of
<a href="https://piqchat.net/">piqchat</a> who chose it as their inbox. It stores only ciphertext
and deletes everything as soon as it is no longer needed.</p>
<p>To use it, open <a href="https://piqchat.net/">the piqchat app</a>. Server facts:
<a href="/v1/info">/v1/info</a>.</p>
</body></html>
"#;

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
}

/// How long one probe's answer is served: anyone may call `/readyz`, and
/// each probe costs a database round trip and a request to the bucket.
const READY_TTL: Duration = Duration::from_secs(1);

/// Whether this instance can reach its database and attachment store, for a
/// load balancer deciding where to send requests. One probe runs at a time;
/// callers meanwhile get the last answer.
struct Readiness {
    state: AppState,
    last: Mutex<Option<(Instant, Option<&'static str>)>>,
    probing: tokio::sync::Mutex<()>,
}

impl Readiness {
    fn new(state: AppState) -> Self {
        Readiness {
            state,
            last: Mutex::new(None),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Option<&'static str>> {
        let last = *self.last.lock().expect("readiness poisoned");
        last.filter(|(at, _)| at.elapsed() < READY_TTL)
            .map(|(_, failed)| failed)
    }

    /// `None` when ready, else what cannot be reached.
    async fn check(&self) -> Option<&'static str> {
        if let Some(failed) = self.fresh() {
            return failed;
        }
        let _probing = self.probing.lock().await;
        if let Some(failed) = self.fresh() {
            return failed;
        }
        let failed = if let Err(e) = self.state.store.ping().await {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            Some("the database")
        } else if let Err(e) = self.state.blobs.ping().await {
            tracing::warn!(error = %e, "readiness: the attachment store does not answer");
            Some("the attachment store")
        } else {
            None
        };
        *self.last.lock().expect("readiness poisoned") = Some((Instant::now(), failed));
        failed
    }

    async fn answer(&self) -> impl IntoResponse + use<> {
        let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        match self.check().await {
            None => (StatusCode::OK, text, "ready\n".to_owned()),
            Some(what) => (
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                format!("not ready: {what} does not answer\n"),
            ),
        }
    }
}
