//! Operating the server: metrics, logs-free of secrets, shutdown.

use http::Method;
use piqchat_inbox::{client::HttpClient, pb};

use crate::harness::TestApp;

async fn metrics(app: &TestApp) -> String {
    let base = app.metrics_url.trim_end_matches("/metrics");
    let reply = HttpClient::new(base, None)
        .json(Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body.to_vec()).unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_requests_auth_failures_and_parcels_on_the_admin_address() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    bob.set_contacts(&[&alice]).await;
    app.get_info().await;
    app.http()
        .json(Method::GET, "/v1/info", None)
        .await
        .unwrap();
    let _: pb::GetInfoResponse = app
        .http()
        .grpc_web_unary(
            "/piqchat.inbox.v1.InfoService/GetInfo",
            &pb::GetInfoRequest {},
        )
        .await
        .unwrap();
    alice
        .send("MEDIA", &[&bob], Some(vec![7; 1234]))
        .await
        .unwrap();
    let id = bob.list().await[0].id.clone();
    bob.parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest { parcel_id: id })
        .await
        .unwrap();
    let mut stale = alice.http().request(
        Method::GET,
        "/v1/info",
        Default::default(),
        Default::default(),
    );
    stale.headers_mut().remove("signature");
    app.http().send(stale).await.unwrap();

    let text = metrics(&app).await;
    for protocol in ["grpc", "grpc-web", "json"] {
        let series = format!(
            "piqchat_requests_total{{protocol=\"{protocol}\",rpc=\"/piqchat.inbox.v1.InfoService/GetInfo\",code=\"Ok\"}}"
        );
        assert_eq!(value(&text, &series), 1.0, "{protocol}");
    }
    assert!(text.contains("piqchat_request_duration_seconds_bucket{"));
    assert_eq!(
        value(
            &text,
            "piqchat_auth_failures_total{reason=\"missing_header\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "piqchat_parcels_stored_total{kind=\"MEDIA\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "piqchat_attachment_bytes_stored_total"),
        1234.0
    );
    assert_eq!(
        value(&text, "piqchat_parcels_deleted_total{reason=\"recipient\"}"),
        1.0
    );
    // Sign-ups, contacts, the send and the delete each committed.
    assert!(
        value(&text, "piqchat_database_commits_total") >= 4.0,
        "{text}"
    );
    // No ids, tokens or content in any label.
    for secret in [alice.id(), bob.id()] {
        assert!(!text.contains(&secret));
    }
    // Unknown RPC paths do not create new label values.
    let err = app
        .http()
        .grpc_web_unary::<_, pb::GetInfoResponse>(
            "/piqchat.inbox.v1.Nope/Nothing",
            &pb::GetInfoRequest {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let text = metrics(&app).await;
    assert!(
        text.contains("rpc=\"other\",code=\"Unimplemented\""),
        "{text}"
    );
    assert!(!text.contains("Nope"));
    // The metrics are not on the public port.
    let reply = app
        .http()
        .json(Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_the_shim() {
    let app = TestApp::spawn().await;
    let reply = app
        .http()
        .json(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/info", "get"),
        ("/v1/parcels", "post"),
        ("/v1/parcels/{parcel_id}/attachment", "get"),
        ("/v1/exchanges/{token}:accept", "post"),
        ("/v1/account/push-subscription", "put"),
        ("/v1/account/push-subscription", "delete"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["signature"].is_object());
}

#[tokio::test]
async fn readiness_says_whether_the_database_and_attachment_store_answer() {
    let app = TestApp::spawn().await;
    let reply = app.http().json(Method::GET, "/readyz", None).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.as_ref(), b"ready\n");
    if app.state.config.attachments_s3.is_some() {
        eprintln!("skipped the unreachable-store half: it removes the local attachments folder");
        return;
    }
    // The attachments folder vanishes (an unmounted volume): after the last
    // answer's second is over, the instance says it is not ready, and why.
    std::fs::remove_dir_all(&app.state.config.attachments_path).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let reply = app.http().json(Method::GET, "/readyz", None).await.unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(
        std::str::from_utf8(&reply.body).unwrap(),
        "not ready: the attachment store does not answer\n"
    );
    // /healthz only says the process serves.
    let health = app
        .http()
        .json(Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(health.status, 200);
}

/// The binary with `LOG_REQUESTS=errors`: a call that succeeds gets no log
/// line, one that fails does.
#[tokio::test]
async fn log_requests_errors_logs_only_failed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _, log) =
        crate::shutdown::start_logged(dir.path(), false, &[("LOG_REQUESTS", "errors")]);
    let next_line = |what: &str| {
        log.recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no log line while waiting for {what}"))
    };
    let anon = HttpClient::new(&format!("http://{addr}"), None);

    let info = anon.json(Method::GET, "/v1/info", None).await.unwrap();
    assert_eq!(info.status, 200);
    // Unsigned: the handler answers UNAUTHENTICATED.
    let listed = anon.json(Method::GET, "/v1/parcels", None).await.unwrap();
    assert_eq!(listed.status, 401);

    // The first request line must be the failed list, not the info call.
    let line = loop {
        let v = next_line("the failed call's line");
        if v["message"] == "request" {
            break v;
        }
    };
    assert_eq!(
        line["rpc"], "/piqchat.inbox.v1.ParcelService/ListParcels",
        "{line}"
    );
    assert_eq!(line["code"], "Unauthenticated", "{line}");
    assert_eq!(line["protocol"], "json", "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}
