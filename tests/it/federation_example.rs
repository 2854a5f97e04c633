//! examples/federation.rs against two real servers: Alice of server A sends
//! to Bob of server B, and B's store and Bob's own client agree.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use piqchat_inbox::{client::UserKey, domain::exchanges};

use crate::harness::{TestApp, TestUser};

#[path = "../../examples/federation.rs"]
#[allow(dead_code)]
mod example;

async fn sign_up_link(app: &TestApp) -> String {
    exchanges::create_sign_up_invite(&app.state.store, &app.state.config, app.clock.now())
        .await
        .expect("invite")
}

fn args(list: &[&str]) -> Result<example::Args, String> {
    example::parse_args(list.iter().map(|s| s.to_string()))
}

#[tokio::test]
async fn a_user_of_one_server_sends_to_a_user_of_another() {
    let (server_a, server_b) = (TestApp::spawn().await, TestApp::spawn().await);
    let (alice, bob) = (UserKey::generate(), UserKey::generate());
    let (invite_a, invite_b) = (sign_up_link(&server_a).await, sign_up_link(&server_b).await);
    let message = "a picture, encrypted";
    let content = "bob's key for it";
    let args = args(&[
        "--server-a",
        &server_a.url,
        "--invite-a",
        &invite_a,
        "--server-b",
        &server_b.url,
        "--invite-b",
        &invite_b,
        "--message",
        message,
        "--content",
        content,
    ])
    .unwrap();

    let parcel_id = example::run(args, alice.clone(), bob.clone())
        .await
        .expect("the example runs");

    // Bob, with his own client, finds exactly that parcel on B.
    let bob_on_b = TestUser::new(&server_b, bob.clone());
    let parcels = bob_on_b.list().await;
    assert_eq!(parcels.len(), 1, "{parcels:?}");
    let parcel = &parcels[0];
    assert_eq!(parcel.id, parcel_id);
    assert_eq!(parcel.sender_id, alice.user_id().to_string());
    assert_eq!(parcel.r#type, "MEDIA");
    assert_eq!(parcel.content, content);
    assert_eq!(parcel.attachment_size, Some(message.len() as u32));
    // The attachment over the JSON gateway this time, not the example's gRPC.
    let http = bob_on_b.http();
    let reply = http
        .send(http.request(
            Method::GET,
            &format!("/v1/parcels/{parcel_id}/attachment"),
            HeaderMap::new(),
            Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, message.as_bytes());

    // Each user has an account only on their own server: sending needs none.
    let on = |app: &TestApp, key: &UserKey| {
        let (store, id) = (app.state.store.clone(), key.user_id());
        async move { store.user_by_key(&id).await.unwrap().is_some() }
    };
    assert!(on(&server_a, &alice).await && on(&server_b, &bob).await);
    assert!(!on(&server_b, &alice).await && !on(&server_a, &bob).await);
    // Bob's whitelist on B holds Alice, as the exchange on A told him.
    assert!(
        TestUser::new(&server_b, alice.clone())
            .parcels()
            .await
            .check_acceptance(piqchat_inbox::pb::CheckAcceptanceRequest {
                recipient_id: bob.user_id().to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .accepted
    );
}

#[tokio::test]
async fn bad_input_is_a_message_not_a_panic() {
    let err = args(&["--server-a", "http://127.0.0.1:1"]).err().unwrap();
    assert!(err.contains("--server-b is required"), "{err}");
    let err = args(&["--server-a"]).err().unwrap();
    assert!(err.contains("--server-a needs a value"), "{err}");
    let err = args(&["--colour", "blue"]).err().unwrap();
    assert!(err.contains("unknown argument"), "{err}");

    let server = TestApp::spawn().await;
    let run = |invite: &str, server_b: &str| {
        let args = args(&[
            "--server-a",
            &server.url,
            "--invite-a",
            invite,
            "--server-b",
            server_b,
        ])
        .unwrap();
        example::run(args, UserKey::generate(), UserKey::generate())
    };
    let err = run("https://piqchat.net/", &server.url).await.unwrap_err();
    assert!(err.to_string().starts_with("invite link: "), "{err}");
    let err = run(&sign_up_link(&server).await, "not a url")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid server URL"), "{err}");
}
