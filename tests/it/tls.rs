//! Built-in TLS: gRPC (HTTP/2 by ALPN), gRPC-web (HTTP/1.1) and JSON over
//! rustls, with a certificate made in the test, reloaded when it changes.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use piqchat_inbox::{
    client::{RequestSigner, UserKey, grpc_frame},
    pb,
};
use prost::Message;

use crate::harness::TestApp;

/// A self-signed certificate for localhost, written as PEM files.
fn write_cert(dir: &Path) -> Vec<u8> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem.new"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem.new"), made.signing_key.serialize_pem()).unwrap();
    // Replace both files by rename so a reload never sees half a pair.
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
    made.cert.der().to_vec()
}

/// hyper-rustls sets ALPN itself from the enabled HTTP versions.
fn client_config(trusted: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An HTTP/1.1-only client trusting `trusted`.
fn http1_client(
    trusted: &[u8],
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(client_config(trusted))
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn grpc_grpc_web_and_json_work_over_tls_and_certificates_reload() {
    let certs = tempfile::tempdir().unwrap();
    let first = write_cert(certs.path());
    let app = TestApp::spawn_with(|c| {
        c.tls_cert_path = Some(certs.path().join("cert.pem"));
        c.tls_key_path = Some(certs.path().join("key.pem"));
        c.tls_reload_interval_secs = 1;
    })
    .await;
    let base = format!("https://localhost:{}", app.addr.port());

    // JSON over HTTP/1.1.
    let client = http1_client(&first);
    let res = client
        .request(
            http::Request::get(format!("{base}/v1/info"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_11);
    let info: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(info["serverPublicKey"], app.server_tag);

    // A signed gRPC-web call over HTTP/1.1 reaches its handler.
    let signer = RequestSigner::new(UserKey::generate(), app.server_tag.clone())
        .with_clock(app.clock.clone());
    let mut req = http::Request::post(format!("{base}/piqchat.inbox.v1.AccountService/GetAccount"))
        .header("content-type", "application/grpc-web+proto")
        .body(Full::new(grpc_frame(
            0,
            &pb::GetAccountRequest {}.encode_to_vec(),
        )))
        .unwrap();
    signer.sign_request(&mut req).unwrap();
    let res = client.request(req).await.unwrap();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let status = headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| String::from_utf8_lossy(&body).to_string());
    assert!(
        status.contains('7'),
        "PERMISSION_DENIED (signed, not registered): {status}"
    );

    // gRPC over HTTP/2, negotiated by ALPN.
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&first))
        .https_only()
        .enable_http2()
        .build();
    let channel = tonic::transport::Endpoint::from_shared(base.clone())
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    let reply = pb::info_service_client::InfoServiceClient::new(channel)
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.server_public_key, app.server_tag);

    // A new certificate on disk is served to new connections.
    let second = write_cert(certs.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = http1_client(&second);
        let ok = fresh
            .request(
                http::Request::get(format!("{base}/healthz"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Plain HTTP is not spoken on a TLS port.
    let plain = piqchat_inbox::client::HttpClient::new(
        &format!("http://127.0.0.1:{}", app.addr.port()),
        None,
    );
    assert!(
        plain
            .json(http::Method::GET, "/v1/info", None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_a_clear_message() {
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(certs.path().join("key.pem"), "not a key").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = piqchat_inbox::config::Config::for_dir(dir.path());
    config.tls_cert_path = Some(certs.path().join("cert.pem"));
    config.tls_key_path = Some(certs.path().join("key.pem"));
    let err = piqchat_inbox::app::App::build(config, piqchat_inbox::clock::Clock::system())
        .await
        .err()
        .expect("the start fails");
    assert!(format!("{err:#}").contains("TLS_CERT_PATH"), "{err:#}");
}
