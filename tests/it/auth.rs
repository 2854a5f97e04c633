//! RFC 9421 request authentication at the edge, for all three protocols.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use piqchat_inbox::{
    client::{HttpClient, RequestSigner, UserKey, grpc_frame},
    clock::Clock,
    httpsig, pb,
};
use tonic::Code;

use crate::harness::{TestApp, TestUser, clone_request, now_ms};

const GET_INFO: &str = "/piqchat.inbox.v1.InfoService/GetInfo";
const GET_ACCOUNT: &str = "/piqchat.inbox.v1.AccountService/GetAccount";

fn grpc_web_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc-web+proto"),
    );
    h
}

/// The grpc-status of a gRPC-web reply (trailers-only: in the headers).
fn grpc_web_status(reply: &piqchat_inbox::client::HttpReply) -> Option<i32> {
    if let Some(v) = reply.headers.get("grpc-status") {
        return v.to_str().ok()?.parse().ok();
    }
    let text = String::from_utf8_lossy(&reply.body);
    let at = text.find("grpc-status:")?;
    text[at + 12..].split("\r\n").next()?.trim().parse().ok()
}

#[tokio::test]
async fn a_valid_signature_is_accepted_on_every_protocol_and_reaches_the_handler() {
    let app = TestApp::spawn().await;
    let user = app.user();

    // gRPC: the handler sees the caller (not registered: PERMISSION_DENIED,
    // where an unsigned call gets UNAUTHENTICATED).
    let err = user
        .accounts()
        .await
        .get_account(pb::GetAccountRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut anon = pb::account_service_client::AccountServiceClient::new(app.channel().await);
    let err = anon
        .get_account(pb::GetAccountRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A signed public call works.
    user.info()
        .await
        .get_info(pb::GetInfoRequest {})
        .await
        .expect("signed GetInfo");

    // gRPC-web.
    let err = user
        .http()
        .grpc_web_unary::<_, pb::GetAccountResponse>(GET_ACCOUNT, &pb::GetAccountRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = app
        .http()
        .grpc_web_unary::<_, pb::GetAccountResponse>(GET_ACCOUNT, &pb::GetAccountRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // JSON gateway.
    let reply = user
        .http()
        .json(Method::GET, "/v1/account", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{:?}", reply.json());
    assert_eq!(reply.json()["code"], 7);
    let reply = app
        .http()
        .json(Method::GET, "/v1/account", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 401, "{:?}", reply.json());
    let reply = user
        .http()
        .json(Method::GET, "/v1/info?x=1", None)
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        400,
        "unknown query field after a valid signature with @query: {:?}",
        reply.json()
    );
}

/// Sends `req` over gRPC-web and JSON variants and expects a 401 whose
/// reason contains `reason`.
async fn expect_json_401(
    app: &TestApp,
    mut headers_from: impl FnMut(&mut http::Request<http_body_util::Full<Bytes>>),
    reason: &str,
) {
    let client = app.user().http();
    let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    headers_from(&mut req);
    let reply = client.send(req).await.unwrap();
    assert_eq!(
        reply.status,
        401,
        "expected 401 for {reason:?}, got {:?}",
        reply.json()
    );
    assert_eq!(reply.json()["code"], 16);
    let message = reply.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(reason),
        "{message:?} should mention {reason:?}"
    );
}

#[tokio::test]
async fn missing_and_malformed_signature_headers_are_401() {
    let app = TestApp::spawn().await;
    expect_json_401(
        &app,
        |r| {
            r.headers_mut().remove("signature");
        },
        "both signature-input and signature",
    )
    .await;
    expect_json_401(
        &app,
        |r| {
            r.headers_mut().remove("signature-input");
        },
        "both signature-input and signature",
    )
    .await;
    for garbage in [
        "",
        "piqchat",
        "piqchat=(",
        "piqchat=(\"@method\" \"@path\";created=1",
        "piqchat=\"@method\"",
        "PIQCHAT=(\"@method\")",
        "piqchat=(\"@method\");created=\"yesterday\"",
        "piqchat=(\"@method\");unknown=1",
        "piqchat=(\"@method\" \"@method\")",
        "piqchat=(\"@status\")",
        "\u{1F600}",
    ] {
        let reply = {
            let client = app.user().http();
            let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
            match HeaderValue::from_str(garbage) {
                Ok(v) => {
                    req.headers_mut().insert("signature-input", v);
                }
                Err(_) => {
                    req.headers_mut().insert(
                        "signature-input",
                        HeaderValue::from_bytes(garbage.as_bytes()).unwrap(),
                    );
                }
            }
            client.send(req).await.unwrap()
        };
        assert_eq!(reply.status, 401, "{garbage:?}: {:?}", reply.json());
    }
    for garbage in [
        "piqchat=abc",
        "piqchat=:!!!:",
        "piqchat=:AAAA:",
        "other=:AAAA:",
    ] {
        let client = app.user().http();
        let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
        req.headers_mut()
            .insert("signature", HeaderValue::from_static(garbage));
        let reply = client.send(req).await.unwrap();
        assert_eq!(reply.status, 401, "{garbage:?}: {:?}", reply.json());
    }
    // The server is still fine.
    app.get_info().await;
}

#[tokio::test]
async fn a_signature_by_another_key_is_401() {
    let app = TestApp::spawn().await;
    let alice = app.user();
    let mallory = app.user();
    let client = mallory.http();
    let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    // Claim to be alice while signing with mallory's key.
    let input = req.headers()["signature-input"]
        .to_str()
        .unwrap()
        .replace(&mallory.id(), &alice.id());
    req.headers_mut()
        .insert("signature-input", HeaderValue::try_from(input).unwrap());
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "signature does not verify");
}

#[tokio::test]
async fn a_signature_over_another_path_or_method_is_401() {
    let app = TestApp::spawn().await;
    let user = app.user();
    let client = user.http();
    // Signed for GET /v1/info, sent to GET /v1/account.
    let signed = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    let mut other = client.request(Method::GET, "/v1/account", HeaderMap::new(), Bytes::new());
    *other.headers_mut() = signed.headers().clone();
    let reply = client.send(other).await.unwrap();
    assert_eq!(reply.status, 401, "{:?}", reply.json());

    // Signed for GET, sent as DELETE.
    let signed = client.request(Method::GET, "/v1/account", HeaderMap::new(), Bytes::new());
    let mut other = client.request(
        Method::DELETE,
        "/v1/account",
        HeaderMap::new(),
        Bytes::new(),
    );
    *other.headers_mut() = signed.headers().clone();
    let reply = client.send(other).await.unwrap();
    assert_eq!(reply.status, 401, "{:?}", reply.json());

    // Signed for one query, sent with another.
    let signed = client.request(Method::GET, "/v1/info?a=1", HeaderMap::new(), Bytes::new());
    let mut other = client.request(Method::GET, "/v1/info?a=2", HeaderMap::new(), Bytes::new());
    *other.headers_mut() = signed.headers().clone();
    let reply = client.send(other).await.unwrap();
    assert_eq!(reply.status, 401, "{:?}", reply.json());
}

#[tokio::test]
async fn stale_and_future_signatures_are_401() {
    let app = TestApp::spawn().await;
    let key = UserKey::generate();
    for (offset_ms, reason) in [(-301_000, "too old"), (301_000, "from the future")] {
        let clock = Clock::manual(app.clock.now() + offset_ms);
        let signer = RequestSigner::new(key.clone(), app.server_tag.clone()).with_clock(clock);
        let reply = HttpClient::new(&app.url, Some(signer.clone()))
            .json(Method::GET, "/v1/info", None)
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{reason}");
        assert!(
            reply.json()["message"].as_str().unwrap().contains(reason),
            "{:?}",
            reply.json()
        );
        // The same over gRPC.
        let channel = piqchat_inbox::client::connect(&app.url, signer)
            .await
            .unwrap();
        let err = pb::info_service_client::InfoServiceClient::new(channel)
            .get_info(pb::GetInfoRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains(reason), "{err:?}");
    }
    // Within the window on both sides: accepted.
    for offset_ms in [-290_000, 290_000] {
        let signer = RequestSigner::new(key.clone(), app.server_tag.clone())
            .with_clock(Clock::manual(app.clock.now() + offset_ms));
        let reply = HttpClient::new(&app.url, Some(signer))
            .json(Method::GET, "/v1/info", None)
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{offset_ms}: {:?}", reply.json());
    }
    // The server clock moves (tests move time instead of sleeping).
    let user = app.user();
    let req = user
        .http()
        .request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    app.clock.advance(301_000);
    let reply = user.http().send(req).await.unwrap();
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn an_expired_signature_is_401() {
    let app = TestApp::spawn().await;
    let user = app.user();
    let mut params = user.signer.params(false, &HeaderMap::new()).unwrap();
    params.expires = Some(app.clock.now() / 1000 - 1);
    let uri: http::Uri = format!("{}/v1/info", app.url).parse().unwrap();
    let (input, sig) = user
        .signer
        .sign_with(&params, &Method::GET, &uri, &HeaderMap::new())
        .unwrap();
    let client = app.http();
    let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    req.headers_mut()
        .insert("signature-input", HeaderValue::try_from(input).unwrap());
    req.headers_mut()
        .insert("signature", HeaderValue::try_from(sig).unwrap());
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "signature has expired");
}

#[tokio::test]
async fn a_replayed_nonce_is_401_on_every_protocol() {
    let app = TestApp::spawn().await;
    let user = app.user();
    let client = user.http();

    let req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    let copy = clone_request(&req);
    assert_eq!(client.send(req).await.unwrap().status, 200);
    let reply = client.send(copy).await.unwrap();
    assert_eq!(reply.status, 401);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("nonce was already used")
    );

    let req = client.request(
        Method::POST,
        GET_INFO,
        grpc_web_headers(),
        grpc_frame(0, &[]),
    );
    let copy = clone_request(&req);
    assert_eq!(grpc_web_status(&client.send(req).await.unwrap()), Some(0));
    assert_eq!(grpc_web_status(&client.send(copy).await.unwrap()), Some(16));
}

#[tokio::test]
async fn required_parameters_and_components_are_enforced() {
    let app = TestApp::spawn().await;
    let user = app.user();
    let uri: http::Uri = format!("{}/v1/info?q=1", app.url).parse().unwrap();
    let base = user.signer.params(true, &HeaderMap::new()).unwrap();
    type Change = Box<dyn Fn(&mut httpsig::SignatureParams)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|p| p.nonce = None), "nonce is required"),
        (
            Box::new(|p| p.nonce = Some("short".into())),
            "nonce must be",
        ),
        (Box::new(|p| p.created = None), "created is required"),
        (Box::new(|p| p.alg = None), "alg must be"),
        (
            Box::new(|p| p.alg = Some("hmac-sha256".into())),
            "alg must be",
        ),
        (Box::new(|p| p.keyid = None), "keyid is required"),
        (Box::new(|p| p.tag = None), "tag must be"),
        (
            Box::new(|p| p.components.retain(|c| c.name() != "@authority")),
            "\"@authority\"",
        ),
        (
            Box::new(|p| p.components.retain(|c| c.name() != "@path")),
            "\"@path\"",
        ),
        (
            Box::new(|p| p.components.retain(|c| c.name() != "@method")),
            "\"@method\"",
        ),
        (
            Box::new(|p| p.components.retain(|c| c.name() != "@query")),
            "\"@query\"",
        ),
    ];
    for (change, reason) in cases {
        let mut params = base.clone();
        params.nonce = Some(format!("{}{}", base.nonce.clone().unwrap(), reason.len()));
        change(&mut params);
        let (input, sig) = user
            .signer
            .sign_with(&params, &Method::GET, &uri, &HeaderMap::new())
            .unwrap();
        let client = app.http();
        let mut req = client.request(Method::GET, "/v1/info?q=1", HeaderMap::new(), Bytes::new());
        req.headers_mut()
            .insert("signature-input", HeaderValue::try_from(input).unwrap());
        req.headers_mut()
            .insert("signature", HeaderValue::try_from(sig).unwrap());
        let reply = client.send(req).await.unwrap();
        assert_eq!(reply.status, 401, "{reason}");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains(reason),
            "{message:?} should mention {reason:?}"
        );
    }
}

#[tokio::test]
async fn a_signature_for_another_server_is_401_even_with_a_forged_host() {
    let here = TestApp::spawn().await;
    let there = TestApp::spawn().await;
    let key = UserKey::generate();
    let for_there = TestUser::new(&there, key.clone());
    // A request signed for `there`, captured and replayed against `here` with
    // the Host header forged to match.
    let client = for_there.http();
    let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    assert_eq!(client.send(clone_request(&req)).await.unwrap().status, 200);
    *req.uri_mut() = format!("{}/v1/info", here.url).parse().unwrap();
    req.headers_mut().insert(
        header::HOST,
        HeaderValue::try_from(there.addr.to_string()).unwrap(),
    );
    let reply = here.http().send(req).await.unwrap();
    assert_eq!(reply.status, 401);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("another server"),
        "{:?}",
        reply.json()
    );
}

#[tokio::test]
async fn a_tampered_body_with_content_digest_covered_is_401() {
    let app = TestApp::spawn().await;
    let key = UserKey::generate();
    let signer = RequestSigner::new(key, app.server_tag.clone())
        .with_clock(app.clock.clone())
        .covering(&["content-digest"]);
    let client = HttpClient::new(&app.url, Some(signer));
    let body = grpc_frame(0, &[]);

    // Honest digest: accepted.
    let mut headers = grpc_web_headers();
    headers.insert(
        "content-digest",
        HeaderValue::try_from(httpsig::content_digest_sha256(&body)).unwrap(),
    );
    let reply = client
        .send(client.request(Method::POST, GET_INFO, headers.clone(), body.clone()))
        .await
        .unwrap();
    assert_eq!(grpc_web_status(&reply), Some(0), "{reply:?}");

    // Same headers, other body: refused before the handler.
    let tampered = grpc_frame(0, &[0x0a, 0x00]);
    let reply = client
        .send(client.request(Method::POST, GET_INFO, headers.clone(), tampered.clone()))
        .await
        .unwrap();
    assert_eq!(grpc_web_status(&reply), Some(16), "{reply:?}");

    // JSON gateway.
    let json = Bytes::from_static(b"{}");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "content-digest",
        HeaderValue::try_from(httpsig::content_digest_sha256(&json)).unwrap(),
    );
    let reply = client
        .send(client.request(
            Method::PUT,
            "/v1/account/backup",
            headers.clone(),
            Bytes::from_static(b"{\"content\":\"x\"}"),
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, 401, "{:?}", reply.json());
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("content-digest"),
        "{:?}",
        reply.json()
    );

    // Covered but absent.
    let mut headers = grpc_web_headers();
    headers.insert(
        "content-digest",
        HeaderValue::try_from(httpsig::content_digest_sha256(&body)).unwrap(),
    );
    let mut req = client.request(Method::POST, GET_INFO, headers, body);
    req.headers_mut().remove("content-digest");
    let reply = client.send(req).await.unwrap();
    assert_eq!(grpc_web_status(&reply), Some(16));
}

#[tokio::test]
async fn oversized_headers_are_refused_without_harm() {
    let app = TestApp::spawn().await;
    let client = app.user().http();
    // Over our signature-header limit: 401.
    let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    let big = format!("piqchat=(\"@method\");nonce=\"{}\"", "a".repeat(10_000));
    req.headers_mut()
        .insert("signature-input", HeaderValue::try_from(big).unwrap());
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 401);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("too large")
    );

    // Over the HTTP server's header limits: refused by the HTTP layer (431
    // over HTTP/1.1; a reset stream over HTTP/2), no panic.
    let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    req.headers_mut()
        .insert("x-big", HeaderValue::try_from("b".repeat(200_000)).unwrap());
    match client.send(req).await {
        Ok(reply) => assert_eq!(reply.status, 431),
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
    }
    let mut info = app.user().info().await;
    let mut req = tonic::Request::new(pb::GetInfoRequest {});
    req.metadata_mut()
        .insert("x-big", "b".repeat(100_000).parse().unwrap());
    assert!(info.get_info(req).await.is_err());

    // Still serving.
    assert_eq!(
        app.http()
            .json(Method::GET, "/v1/info", None)
            .await
            .unwrap()
            .status,
        200
    );
    app.get_info().await;
}

#[tokio::test]
async fn many_garbled_signatures_never_panic() {
    let app = TestApp::spawn().await;
    let client = app.user().http();
    let now = now_ms() / 1000;
    let mut seed = 7u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"piqchat=();\"@:,-_ *abcdefgqrstuvwxyzABC0123456789/+=";
    for _ in 0..200 {
        let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
        let input = req.headers()["signature-input"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut bytes = input.into_bytes();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = alphabet[(next() as usize) % alphabet.len()];
        }
        req.headers_mut()
            .insert("signature-input", HeaderValue::from_bytes(&bytes).unwrap());
        let reply = client.send(req).await.unwrap();
        assert!(
            reply.status == 401 || reply.status == 200,
            "{}: {:?}",
            reply.status,
            reply.json()
        );
    }
    let _ = now;
    assert_eq!(
        app.http()
            .json(Method::GET, "/v1/info", None)
            .await
            .unwrap()
            .status,
        200
    );
}
