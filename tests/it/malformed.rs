//! Malformed input is the caller's error, on every protocol: undecodable
//! protobuf, invalid UTF-8 in a string field and broken framing are
//! INVALID_ARGUMENT; a message over the decode limit is RESOURCE_EXHAUSTED
//! with the configured limit named.

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use piqchat_inbox::client::{RequestSigner, grpc_frame};

use crate::harness::TestApp;

const GET_INFO: &str = "/piqchat.inbox.v1.InfoService/GetInfo";
const GET_EXCHANGE: &str = "/piqchat.inbox.v1.ExchangeService/GetExchange";
const SEND_PARCEL: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";

/// A GetExchangeRequest whose `token` (field 1, a string) is not UTF-8.
fn bad_utf8_message() -> Vec<u8> {
    vec![0x0a, 0x02, 0xff, 0xfe]
}

/// Not protobuf: a field tag of wire type 7, which does not exist.
fn undecodable_message() -> Vec<u8> {
    vec![0x0f, 0x01, 0x02]
}

/// A frame whose prefix announces `announced` bytes, followed by `sent`.
fn frame_announcing(announced: u32, sent: usize) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(announced);
    b.put_bytes(b'a', sent);
    b.freeze()
}

/// (grpc-status, grpc-message) of a raw gRPC call over h2c.
async fn grpc(app: &TestApp, path: &str, body: Bytes) -> (i32, String) {
    grpc_with(app, path, HeaderMap::new(), body).await
}

async fn grpc_with(app: &TestApp, path: &str, extra: HeaderMap, body: Bytes) -> (i32, String) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("{}{path}", app.url))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap();
    req.headers_mut().extend(extra);
    let res = client.request(req).await.expect("the server answers");
    assert_eq!(res.status(), 200);
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.expect("the body ends");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    status_of(&parts.headers)
        .or_else(|| status_of(&trailers))
        .expect("a grpc-status")
}

fn status_of(h: &HeaderMap) -> Option<(i32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = h
        .get("grpc-message")
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Some((code, message))
}

/// (grpc-status, grpc-message) of a raw gRPC-web call over HTTP/1.1.
async fn grpc_web(
    app: &TestApp,
    path: &str,
    content_type: &'static str,
    body: Bytes,
) -> (i32, String) {
    grpc_web_with(app, path, content_type, HeaderMap::new(), body).await
}

async fn grpc_web_with(
    app: &TestApp,
    path: &str,
    content_type: &'static str,
    mut headers: HeaderMap,
    body: Bytes,
) -> (i32, String) {
    let http = app.http();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let reply = http
        .send(http.request(Method::POST, path, headers, body))
        .await
        .expect("the server answers");
    assert_eq!(reply.status, 200, "{reply:?}");
    if let Some(status) = status_of(&reply.headers) {
        return status;
    }
    // The status in a trailer frame (flag 0x80) at the end of the body.
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let mut trailers = HeaderMap::new();
    for line in text.split("\r\n") {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::try_from(
                    name.trim_start_matches(|c: char| !c.is_ascii_alphabetic())
                        .trim()
                        .to_ascii_lowercase(),
                ),
                HeaderValue::try_from(value.trim()),
            )
        {
            trailers.insert(n, v);
        }
    }
    status_of(&trailers).expect("a grpc-status")
}

/// Every protocol's answer to the same bytes: gRPC, gRPC-web (binary).
async fn both(app: &TestApp, path: &str, body: Bytes) -> [(i32, String); 2] {
    [
        grpc(app, path, body.clone()).await,
        grpc_web(app, path, "application/grpc-web+proto", body).await,
    ]
}

/// The same, signed by `signer` (a fresh signature per call): sends need one
/// before the server reads their body.
async fn both_signed(
    app: &TestApp,
    signer: &RequestSigner,
    path: &str,
    body: Bytes,
) -> [(i32, String); 2] {
    let signed = |content_type: &'static str| {
        let uri: http::Uri = format!("{}{path}", app.url).parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let (input, signature) = signer.sign(&Method::POST, &uri, &headers).unwrap();
        let mut out = HeaderMap::new();
        out.insert("signature-input", input.parse().unwrap());
        out.insert("signature", signature.parse().unwrap());
        out
    };
    [
        grpc_with(app, path, signed("application/grpc"), body.clone()).await,
        grpc_web_with(
            app,
            path,
            "application/grpc-web+proto",
            signed("application/grpc-web+proto"),
            body,
        )
        .await,
    ]
}

#[tokio::test]
async fn undecodable_protobuf_and_bad_utf8_are_invalid_argument() {
    let app = TestApp::spawn().await;
    for (code, message) in both(&app, GET_EXCHANGE, grpc_frame(0, &undecodable_message())).await {
        assert_eq!(code, 3, "{message}");
        assert!(message.contains("not valid protobuf"), "{message}");
    }
    for (code, message) in both(&app, GET_EXCHANGE, grpc_frame(0, &bad_utf8_message())).await {
        assert_eq!(code, 3, "{message}");
        assert!(message.contains("UTF-8"), "{message}");
    }
}

#[tokio::test]
async fn broken_framing_is_invalid_argument() {
    let app = TestApp::spawn().await;
    // Cut short: 100 bytes announced, 10 sent.
    for (code, message) in both(&app, GET_INFO, frame_announcing(100, 10)).await {
        assert_eq!(code, 3, "{message}");
        assert!(message.contains("ends inside a message"), "{message}");
    }
    // Cut inside the 5-byte prefix.
    for (code, message) in both(&app, GET_INFO, Bytes::from_static(&[0, 0, 0])).await {
        assert_eq!(code, 3, "{message}");
        assert!(message.contains("prefix"), "{message}");
    }
    // A flag byte that is neither 0 nor 1.
    let mut frame = grpc_frame(0, &[]).to_vec();
    frame[0] = 7;
    for (code, message) in both(&app, GET_INFO, Bytes::from(frame)).await {
        assert_eq!(code, 3, "{message}");
        assert!(message.contains("flag byte 7"), "{message}");
    }
    // Compressed, without saying how.
    for (code, message) in both(&app, GET_INFO, grpc_frame(1, &[])).await {
        assert_eq!(code, 3, "{message}");
        assert!(message.contains("grpc-encoding"), "{message}");
    }
    // No message at all.
    for (code, message) in both(&app, GET_INFO, Bytes::new()).await {
        assert_eq!(code, 3, "{message}");
        assert!(message.contains("no message"), "{message}");
    }
    // gRPC-web text whose base64 is broken.
    let (code, message) = grpc_web(
        &app,
        GET_INFO,
        "application/grpc-web-text",
        Bytes::from_static(b"!!!not base64!!!"),
    )
    .await;
    assert_eq!(code, 3, "{message}");
}

#[tokio::test]
async fn a_message_over_the_limit_names_the_configured_limit() {
    let app = TestApp::spawn_with(|c| c.limits.max_attachment_bytes = 1 << 20).await;
    // The prefix alone is enough: nothing past it is read.
    let frame = frame_announcing(64 << 20, 0);
    let sender = app.user();
    for (code, message) in both_signed(&app, &sender.signer, SEND_PARCEL, frame.clone()).await {
        assert_eq!(code, 8, "{message}");
        assert!(
            message.contains("1 MiB (MAX_ATTACHMENT_BYTES)"),
            "{message}"
        );
        assert!(
            message.contains(&format!("{} bytes", 64 << 20)),
            "{message}"
        );
    }
    for (code, message) in both(&app, GET_INFO, frame_announcing(1 << 20, 0)).await {
        assert_eq!(code, 8, "{message}");
        assert!(message.contains("16 KiB"), "{message}");
    }
}

#[tokio::test]
async fn the_json_gateway_refuses_protobuf_and_broken_json_as_the_callers_error() {
    let app = TestApp::spawn().await;
    let http = app.http();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    let reply = http
        .send(http.request(
            Method::POST,
            "/v1/exchanges/x:accept",
            headers,
            Bytes::from(bad_utf8_message()),
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, 415, "{reply:?}");
    assert_eq!(reply.json()["code"], 3, "{reply:?}");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let reply = http
        .send(http.request(
            Method::POST,
            "/v1/exchanges/x:accept",
            headers,
            Bytes::from_static(b"{\"token\": \"\xff\xfe\"}"),
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json()["code"], 3, "{reply:?}");
}

#[tokio::test]
async fn malformed_requests_are_counted_as_client_errors() {
    let app = TestApp::spawn().await;
    both(&app, GET_EXCHANGE, grpc_frame(0, &bad_utf8_message())).await;
    let metrics = metrics(&app).await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("piqchat_requests_total")
                && l.contains("GetExchange")
                && l.contains("code=\"InvalidArgument\"")
        })
        .unwrap_or_else(|| panic!("no InvalidArgument count for GetExchange:\n{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("GetExchange") && l.contains("code=\"Internal\"")),
        "{metrics}"
    );
}

async fn metrics(app: &TestApp) -> String {
    let base = app.metrics_url.trim_end_matches("/metrics");
    let reply = piqchat_inbox::client::HttpClient::new(base, None)
        .json(Method::GET, "/metrics", None)
        .await
        .unwrap();
    String::from_utf8_lossy(&reply.body).into_owned()
}
