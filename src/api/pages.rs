//! Plain HTTP pages beside the API: the landing page and the health check.

use axum::{Router, http::header, response::IntoResponse, routing::get};

pub fn router(openapi: &serde_json::Value) -> Router {
    let openapi = axum::body::Bytes::from(openapi.to_string());
    let json = [(header::CONTENT_TYPE, "application/json")];
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
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
