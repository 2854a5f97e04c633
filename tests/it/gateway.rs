//! The JSON gateway on the real API: routing, request mapping and errors.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use piqchat_inbox::pb;
use serde_json::json;

use crate::harness::TestApp;

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = TestApp::spawn().await;
    let reply = app
        .http()
        .json(Method::GET, "/v1/nothing-here", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.json()["code"], 5);
    assert!(reply.json()["details"].is_array());

    let reply = app
        .http()
        .json(Method::PATCH, "/v1/info", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.headers["allow"], "GET");
    assert_eq!(reply.json()["code"], 12);
}

#[tokio::test]
async fn path_variables_body_and_query_map_onto_the_request() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    bob.set_contacts(&[&alice]).await;

    // Path variable.
    let reply = alice
        .http()
        .json(
            Method::GET,
            &format!("/v1/recipients/{}/acceptance", bob.id()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json(), json!({"accepted": true}));
    // Percent-encoded path variable decodes to the same value.
    let encoded = bob.id().replace('-', "%2D").replace('_', "%5F");
    let reply = alice
        .http()
        .json(
            Method::GET,
            &format!("/v1/recipients/{encoded}/acceptance"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.json(), json!({"accepted": true}));

    // body "*" with repeated messages and bytes (base64) in JSON; both JSON
    // and proto field names are accepted.
    let body = json!({
        "type": "MEDIA",
        "recipients": [{"user_id": bob.id(), "content": "k"}],
        "attachment": "aGVsbG8="
    });
    let reply = alice
        .http()
        .json(Method::POST, "/v1/parcels", Some(&body))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json()["deliveredRecipientIds"], json!([bob.id()]));
    assert_eq!(reply.json()["forbiddenRecipientIds"], json!([]));
    let listed = bob
        .http()
        .json(Method::GET, "/v1/parcels", None)
        .await
        .unwrap()
        .json();
    assert_eq!(listed["parcels"][0]["attachmentSize"], 5);
    assert_eq!(listed["parcels"][0]["senderId"], alice.id());
    assert!(
        listed["parcels"][0]["sentAt"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "RFC 3339 timestamp"
    );

    // A path variable overrides nothing else, and a query parameter for an
    // unknown field is refused by name.
    let reply = alice
        .http()
        .json(
            Method::GET,
            &format!("/v1/recipients/{}/acceptance?bogus=1", bob.id()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"].as_str().unwrap().contains("bogus"),
        "{:?}",
        reply.json()
    );
}

#[tokio::test]
async fn bad_bodies_get_400_413_and_415() {
    let app = TestApp::spawn_with(|c| c.limits.max_backup_bytes = 1000).await;
    let alice = app.registered_user().await;
    let client = alice.http();
    let send = |body: &'static [u8], ct: Option<&'static str>| {
        let mut headers = HeaderMap::new();
        if let Some(ct) = ct {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        client.send(client.request(
            Method::PUT,
            "/v1/account/backup",
            headers,
            Bytes::from_static(body),
        ))
    };
    let reply = send(b"{not json", Some("application/json")).await.unwrap();
    assert_eq!(reply.status, 400, "{:?}", reply.json());
    assert_eq!(reply.json()["code"], 3);
    let reply = send(b"{\"contents\": \"x\"}", Some("application/json"))
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("contents"),
        "{:?}",
        reply.json()
    );
    let reply = send(b"{\"content\": 5}", Some("application/json"))
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    let reply = send(b"content=x", Some("application/x-www-form-urlencoded"))
        .await
        .unwrap();
    assert_eq!(reply.status, 415);
    let reply = send(
        b"{\"content\": \"x\"}",
        Some("application/json; charset=utf-8"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());

    let big = json!({"content": "x".repeat(100_000)});
    let reply = client
        .json(Method::PUT, "/v1/account/backup", Some(&big))
        .await
        .unwrap();
    assert_eq!(reply.status, 413, "{:?}", reply.json());
    // Within the body limit but over the backup limit: the service's own 400.
    let over = json!({"content": "x".repeat(1001)});
    let reply = client
        .json(Method::PUT, "/v1/account/backup", Some(&over))
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("at most 1000 bytes")
    );
}

#[tokio::test]
async fn grpc_statuses_map_to_http_statuses() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let stranger = app.user();
    let token = uuid::Uuid::new_v4();
    for (client, method, path, status, code) in [
        (app.http(), Method::GET, "/v1/account".to_owned(), 401, 16),
        (
            stranger.http(),
            Method::GET,
            "/v1/account".to_owned(),
            403,
            7,
        ),
        (
            alice.http(),
            Method::GET,
            format!("/v1/exchanges/{token}"),
            404,
            5,
        ),
        (
            alice.http(),
            Method::GET,
            "/v1/exchanges/not-a-uuid".to_owned(),
            400,
            3,
        ),
        (
            alice.http(),
            Method::GET,
            "/v1/account/backup".to_owned(),
            404,
            5,
        ),
    ] {
        let reply = client.json(method, &path, None).await.unwrap();
        assert_eq!(reply.status, status, "{path}: {:?}", reply.json());
        assert_eq!(reply.json()["code"], code, "{path}");
        assert!(!reply.json()["message"].as_str().unwrap().is_empty());
    }
    // Same value through JSON and gRPC for a successful call.
    let grpc = alice
        .accounts()
        .await
        .get_account(pb::GetAccountRequest {})
        .await
        .unwrap()
        .into_inner();
    let json = alice
        .http()
        .json(Method::GET, "/v1/account", None)
        .await
        .unwrap()
        .json();
    assert_eq!(json["userId"], grpc.user_id);
    assert_eq!(json["isAdmin"], false);
}

#[test]
fn every_annotated_rpc_has_a_route_and_the_upload_gate_knows_the_send_route() {
    use piqchat_inbox::api::{FILE_DESCRIPTOR_SET, gateway::RouteTable, uploads};
    let pool = prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let table = RouteTable::from_pool(&pool).unwrap();
    let methods: usize = pool
        .services()
        .filter(|s| s.package_name() == "piqchat.inbox.v1")
        .map(|s| s.methods().len())
        .sum();
    assert_eq!(table.len(), methods, "one route per RPC");
    let send = table
        .iter()
        .find(|r| r.grpc_path() == uploads::SEND_PARCEL_PATH)
        .expect("SendParcel has a route");
    assert_eq!(send.template_text(), uploads::SEND_PARCEL_ROUTE.1);
    assert_eq!(
        format!("{:?}", send.http_method()),
        format!(
            "{:?}",
            piqchat_inbox::api::gateway::RouteMethod::Exact(uploads::SEND_PARCEL_ROUTE.0)
        )
    );
}
