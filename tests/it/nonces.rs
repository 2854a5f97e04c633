//! Replay protection that survives restarts and cannot be used to lock
//! users out; the conformance points of signature parsing and sign-up.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::Full;
use piqchat_inbox::{
    client::{HttpClient, HttpReply, RequestSigner, UserKey, grpc_frame},
    clock::MINUTE,
    pb,
};
use prost::Message;
use tonic::Code;

use crate::harness::{TestApp, clone_request, token_of_link};

const SEND_PARCEL: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";

/// The grpc-status of a gRPC-web reply (trailers-only: in the headers).
fn grpc_web_status(reply: &HttpReply) -> Option<i32> {
    if let Some(v) = reply.headers.get("grpc-status") {
        return v.to_str().ok()?.parse().ok();
    }
    let text = String::from_utf8_lossy(&reply.body);
    let at = text.find("grpc-status:")?;
    text[at + 12..].split("\r\n").next()?.trim().parse().ok()
}

/// A signed gRPC-web SendParcel of a text parcel from `http`'s signer.
fn send_request(http: &HttpClient, to: &str) -> http::Request<Full<Bytes>> {
    let message = pb::SendParcelRequest {
        r#type: "TEXT".into(),
        recipients: vec![pb::ParcelRecipient {
            user_id: to.to_owned(),
            content: "hello".into(),
        }],
        attachment: None,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc-web+proto"),
    );
    http.request(
        Method::POST,
        SEND_PARCEL,
        headers,
        grpc_frame(0, &message.encode_to_vec()),
    )
}

async fn nonce_rows(app: &TestApp) -> i64 {
    app.count_rows("nonces").await
}

#[tokio::test]
async fn a_replay_after_a_restart_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.user();
    let client = user.http();
    let req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    let replay = clone_request(&req);
    assert_eq!(client.send(req).await.unwrap().status, 200);

    let app = app.restart().await;
    let client = HttpClient::new(&app.url, None);
    let mut replay = replay;
    // Same request, same signature, to the new port (the authority is signed,
    // so the replay goes to the address it was made for: the Host header).
    replay.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(user.url.trim_start_matches("http://")).unwrap(),
    );
    *replay.uri_mut() = format!("{}/v1/info", app.url).parse().unwrap();
    let reply = client.send(replay).await.unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("nonce was already used"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn an_acknowledged_send_replayed_after_kill_9_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, link) = crate::shutdown::start(dir.path(), true);
    let url = format!("http://{addr}");
    let tag = crate::shutdown::server_tag(&url).await;
    let bob = RequestSigner::new(UserKey::generate(), tag.clone());
    // Alice has no account here; bob accepts her as a sender.
    let alice = RequestSigner::new(UserKey::generate(), tag);
    crate::shutdown::accept(
        &HttpClient::new(&url, None),
        token_of_link(&link.unwrap()),
        &bob,
    )
    .await;
    let bob_http = HttpClient::new(&url, Some(bob.clone()));
    let _: pb::SetContactsResponse = bob_http
        .grpc_web_unary(
            "/piqchat.inbox.v1.AccountService/SetContacts",
            &pb::SetContactsRequest {
                contact_ids: vec![alice.user_id().to_string()],
            },
        )
        .await
        .unwrap();
    let alice_http = HttpClient::new(&url, Some(alice));
    let req = send_request(&alice_http, &bob.user_id().to_string());
    let replay = clone_request(&req);
    let reply = alice_http.send(req).await.unwrap();
    assert_eq!(grpc_web_status(&reply), Some(0), "{reply:?}");
    child.kill().unwrap();
    child.wait().unwrap();

    // The restarted server listens on another port; the replay carries the
    // signed authority in its Host header.
    let (mut child, addr, _) = crate::shutdown::start(dir.path(), false);
    let mut replay = replay;
    *replay.uri_mut() = format!("http://{addr}{SEND_PARCEL}").parse().unwrap();
    let signed_authority = url.trim_start_matches("http://").to_owned();
    replay.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(&signed_authority).unwrap(),
    );
    let anon = HttpClient::new(&format!("http://{addr}"), None);
    let reply = anon.send(replay).await.unwrap();
    assert_eq!(
        grpc_web_status(&reply),
        Some(Code::Unauthenticated as i32),
        "{reply:?}"
    );
    let listed: pb::ListParcelsResponse = HttpClient::new(&format!("http://{addr}"), Some(bob))
        .grpc_web_unary(
            "/piqchat.inbox.v1.ParcelService/ListParcels",
            &pb::ListParcelsRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(listed.parcels.len(), 1, "the replay stored a second parcel");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_flood_of_unknown_keys_refuses_only_unknown_keys() {
    let app = TestApp::spawn_with(|c| {
        c.nonce_budgets.unknown = 100;
        c.nonce_budgets.contacts = 100;
    })
    .await;
    let (alice, bob) = app.pair().await;
    let carol = app.user(); // no account; bob accepts her as a sender
    bob.set_contacts(&[&alice, &carol]).await;

    // Valid signatures from throwaway keys, on a call that needs no account.
    let mut refused = 0;
    for _ in 0..150 {
        let reply = app
            .user()
            .http()
            .json(Method::GET, "/v1/info", None)
            .await
            .unwrap();
        match reply.status.as_u16() {
            200 => {}
            503 => {
                assert!(
                    reply.json()["message"]
                        .as_str()
                        .unwrap()
                        .contains("unknown keys"),
                    "{reply:?}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    assert_eq!(refused, 50, "the unknown budget of 100 was not what filled");
    assert_eq!(app.state.nonces.live()[2], 100);

    // Registered users and accepted senders are not affected.
    for _ in 0..5 {
        bob.list().await;
        alice
            .send("TEXT", &[&bob], None)
            .await
            .expect("alice sends");
        carol
            .send("TEXT", &[&bob], None)
            .await
            .expect("carol sends");
    }
    assert_eq!(bob.list().await.len(), 10);
    // A newly registered key is in its class at once.
    let dave = app.user();
    app.sign_up(&dave).await;
    dave.accounts()
        .await
        .get_account(pb::GetAccountRequest {})
        .await
        .expect("a new user's first signed call");
}

#[tokio::test]
async fn one_key_cannot_hold_more_than_its_cap() {
    let app = TestApp::spawn_with(|c| c.nonce_budgets.per_key = 10).await;
    let (alice, bob) = app.pair().await;
    let mut info = alice.info().await;
    // Alice signed nothing yet (she signed up unsigned).
    for _ in 0..10 {
        info.get_info(pb::GetInfoRequest {}).await.unwrap();
    }
    let err = info.get_info(pb::GetInfoRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("this key"), "{err:?}");
    // Other keys go on.
    bob.list().await;
    // Once the window has passed, the key may sign again.
    app.clock.advance(11 * MINUTE);
    info.get_info(pb::GetInfoRequest {}).await.unwrap();
}

#[tokio::test]
async fn expired_nonces_are_forgotten_in_memory_and_on_disk() {
    let app = TestApp::spawn().await;
    let user = app.user();
    let mut info = user.info().await;
    for _ in 0..5 {
        info.get_info(pb::GetInfoRequest {}).await.unwrap();
    }
    assert_eq!(app.state.nonces.live()[2], 5);
    assert_eq!(nonce_rows(&app).await, 5);

    // Past the window (created + skew) every one of them is stale.
    app.clock.advance(11 * MINUTE);
    info.get_info(pb::GetInfoRequest {}).await.unwrap();
    assert_eq!(app.state.nonces.live()[2], 1);
    let mut rows = nonce_rows(&app).await;
    for _ in 0..50 {
        if rows == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows = nonce_rows(&app).await;
    }
    assert_eq!(rows, 1, "stale nonce rows were not deleted");

    // And a restart loads only what is live.
    app.clock.advance(11 * MINUTE);
    let app = app.restart().await;
    assert_eq!(app.state.nonces.live(), [0, 0, 0]);
    assert_eq!(nonce_rows(&app).await, 0);
}

/// A GET /v1/info signed with `change` applied to the parameters.
async fn signed_info_with(
    app: &TestApp,
    change: impl FnOnce(&mut piqchat_inbox::httpsig::SignatureParams),
    extra: Option<(&str, &str)>,
) -> HttpReply {
    let user = app.user();
    let uri: http::Uri = format!("{}/v1/info", app.url).parse().unwrap();
    let mut params = user.signer.params(false, &HeaderMap::new()).unwrap();
    change(&mut params);
    let (mut input, mut sig) = user
        .signer
        .sign_with(&params, &Method::GET, &uri, &HeaderMap::new())
        .unwrap();
    if let Some((more_input, more_sig)) = extra {
        input = format!("{input}, {more_input}");
        sig = format!("{sig}, {more_sig}");
    }
    let client = app.http();
    let mut req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    req.headers_mut()
        .insert("signature-input", HeaderValue::try_from(input).unwrap());
    req.headers_mut()
        .insert("signature", HeaderValue::try_from(sig).unwrap());
    client.send(req).await.unwrap()
}

#[tokio::test]
async fn nonces_outside_the_alphabet_are_refused() {
    let app = TestApp::spawn().await;
    let good = "AAAAAAAAAAAAAAAAAAAAAA";
    for bad in ['+', '=', ' ', '%', '/', '.'] {
        let nonce = format!("{good}{bad}x");
        let reply = signed_info_with(&app, |p| p.nonce = Some(nonce), None).await;
        assert_eq!(reply.status, 401, "{bad:?}: {reply:?}");
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("A-Z a-z 0-9 - _"),
            "{bad:?}: {reply:?}"
        );
    }
    // Hex and base64url pass.
    for ok in ["00112233445566778899aabbccddeeff", "oKGio6SlpqeoqaqrrK2u-_"] {
        let reply = signed_info_with(&app, |p| p.nonce = Some(ok.into()), None).await;
        assert_eq!(reply.status, 200, "{ok}: {reply:?}");
    }
}

#[tokio::test]
async fn every_signature_present_must_be_64_bytes() {
    let app = TestApp::spawn().await;
    // A second, unverified signature of 3 bytes.
    let reply = signed_info_with(
        &app,
        |_| {},
        Some((r#"other=("@method");created=1"#, "other=:AAAA:")),
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("64 bytes"),
        "{reply:?}"
    );
    // A well-formed second signature is fine (only `piqchat` is verified).
    let other = format!("other=:{}:", base64_of(&[7; 64]));
    let reply = signed_info_with(
        &app,
        |_| {},
        Some((r#"other=("@method");created=1"#, &other)),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn sign_up_refuses_a_key_that_can_never_sign() {
    let app = TestApp::spawn().await;
    let link = piqchat_inbox::domain::exchanges::create_sign_up_invite(
        &app.state.store,
        &app.state.config,
        app.clock.now(),
    )
    .await
    .unwrap();
    let token = token_of_link(&link);
    // The identity point and the point of order 2: small order, so no
    // signature by them can verify.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut order_two = [0xff_u8; 32];
    order_two[0] = 0xec;
    order_two[31] = 0x7f;
    for key in [identity, order_two] {
        let id = piqchat_inbox::domain::UserId::from_bytes(key).to_string();
        let err = app
            .exchanges()
            .await
            .accept_exchange(pb::AcceptExchangeRequest {
                token: token.clone(),
                answer: None,
                user_id: Some(id),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("usable Ed25519"), "{err:?}");
    }
    // The invite is still open for a real key.
    let user = app.user();
    let reply = app
        .exchanges()
        .await
        .accept_exchange(pb::AcceptExchangeRequest {
            token,
            answer: None,
            user_id: Some(user.id()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.sign_up(), pb::SignUpResult::Created);
}
