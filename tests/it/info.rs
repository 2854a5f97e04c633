//! GetInfo through all three protocols, reflection, health and the pages.

use http::Method;
use piqchat_inbox::pb;
use tokio_stream::StreamExt;

use crate::harness::TestApp;

#[tokio::test]
async fn get_info_is_the_same_over_grpc_grpc_web_and_json() {
    let app = TestApp::spawn_with(|c| {
        c.admin_display_name = "Alice Admin".into();
        c.admin_message = "line one\nline two".into();
        c.privacy_policy_url = "https://example.org/privacy".into();
    })
    .await;

    let grpc = app.get_info().await;
    assert_eq!(grpc.server_public_key, app.server_tag);
    assert_eq!(grpc.server_public_key.len(), 43);
    assert_eq!(
        grpc.vapid_public_key.len(),
        87,
        "65-byte point in base64url"
    );
    assert_eq!(grpc.admin_display_name, "Alice Admin");
    assert_eq!(grpc.admin_message, "line one\nline two");
    assert_eq!(grpc.privacy_policy_url, "https://example.org/privacy");
    let limits = grpc.limits.expect("limits");
    assert_eq!(limits.max_attachment_bytes, 20 << 20);
    assert_eq!(limits.exchange_lifetime_seconds, 3600);
    assert!(!grpc.push_enabled);

    let web: pb::GetInfoResponse = app
        .http()
        .grpc_web_unary(
            "/piqchat.inbox.v1.InfoService/GetInfo",
            &pb::GetInfoRequest {},
        )
        .await
        .expect("gRPC-web GetInfo");
    assert_eq!(web, grpc);

    let json = app
        .http()
        .json(Method::GET, "/v1/info", None)
        .await
        .unwrap();
    assert_eq!(json.status, 200);
    assert_eq!(json.headers["content-type"], "application/json");
    let v = json.json();
    assert_eq!(v["serverPublicKey"], grpc.server_public_key);
    assert_eq!(v["vapidPublicKey"], grpc.vapid_public_key);
    assert_eq!(v["adminMessage"], "line one\nline two");
    assert_eq!(v["limits"]["maxAttachmentBytes"], 20 << 20);
    // Default values are emitted, so clients see every statistic.
    assert_eq!(v["statistics"]["usersTotal"], 0);
    assert_eq!(v["pushEnabled"], false);
}

#[tokio::test]
async fn server_keys_persist_across_restarts() {
    let app = TestApp::spawn().await;
    let first = app.get_info().await;
    let app = app.restart().await;
    let again = app.get_info().await;
    assert_eq!(again.server_public_key, first.server_public_key);
    assert_eq!(again.vapid_public_key, first.vapid_public_key);
    // Another server has other keys.
    let other = TestApp::spawn().await;
    assert_ne!(other.server_tag, app.server_tag);
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = TestApp::spawn().await;
    let expected = [
        "piqchat.inbox.v1.InfoService",
        "piqchat.inbox.v1.ExchangeService",
        "piqchat.inbox.v1.ParcelService",
        "piqchat.inbox.v1.AccountService",
        "piqchat.inbox.v1.BackupService",
        "grpc.health.v1.Health",
    ];

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }

    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "piqchat.inbox.v1.ParcelService".into(),
            ),
        ),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn health_answers_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel().await);
    for service in ["", "piqchat.inbox.v1.ParcelService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, 1, "SERVING for {service:?}");
    }
    let plain = app
        .http()
        .json(Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(plain.status, 200);
}

#[tokio::test]
async fn landing_page_links_to_the_app() {
    let app = TestApp::spawn().await;
    let page = app.http().json(Method::GET, "/", None).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("https://piqchat.net/"));
}
