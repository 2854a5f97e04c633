//! Uploads cannot be starved: only signed uploads take a permit, one client
//! address holds only a few, and uploads slower than the minimum rate are cut.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use piqchat_inbox::{
    client::{RequestSigner, UserKey, grpc_frame},
    pb,
};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::TestApp;

const SEND_PARCEL: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";

/// Opens an HTTP/1.1 SendParcel that declares `len` body bytes and sends
/// only the first few: signed by `signer` when given.
async fn stalled_upload(addr: SocketAddr, signer: Option<&RequestSigner>, len: usize) -> TcpStream {
    stalled_upload_from("127.0.0.1", addr, signer, len).await
}

/// The same, over a connection from `local`.
async fn stalled_upload_from(
    local: &str,
    addr: SocketAddr,
    signer: Option<&RequestSigner>,
    len: usize,
) -> TcpStream {
    let uri: http::Uri = format!("http://{addr}{SEND_PARCEL}").parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc-web+proto"),
    );
    let mut head = format!(
        "POST {SEND_PARCEL} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: {len}\r\n"
    );
    if let Some(signer) = signer {
        let (input, signature) = signer.sign(&Method::POST, &uri, &headers).unwrap();
        head.push_str(&format!(
            "signature-input: {input}\r\nsignature: {signature}\r\n"
        ));
    }
    head.push_str("\r\n");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[0, 0, 0x10, 0, 0]).await.unwrap();
    stream
}

/// Reads what the server answers on `stream` within `wait`.
async fn answer(stream: &mut TcpStream, wait: Duration) -> String {
    let mut buf = vec![0; 16 * 1024];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A signed gRPC-web send of a 1 MiB attachment from `signer` to `to`, over
/// a connection from `local`; returns the grpc-status and how long it took.
async fn send_from(
    local: &str,
    addr: SocketAddr,
    signer: &RequestSigner,
    to: &str,
) -> (String, Duration) {
    let message = pb::SendParcelRequest {
        r#type: "MEDIA".into(),
        recipients: vec![pb::ParcelRecipient {
            user_id: to.to_owned(),
            content: "key".into(),
        }],
        attachment: Some(vec![5; 1 << 20]),
    };
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local.parse().unwrap()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{SEND_PARCEL}"))
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .body(Full::new(grpc_frame(0, &message.encode_to_vec())))
        .unwrap();
    signer.sign_request(&mut req).unwrap();
    let started = Instant::now();
    let res = client.request(req).await.unwrap();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    let status = match headers.get("grpc-status") {
        Some(v) => v.to_str().unwrap().to_owned(),
        None => {
            let text = String::from_utf8_lossy(&body).into_owned();
            let at = text.find("grpc-status:").expect("a grpc-status") + 12;
            text[at..].split("\r\n").next().unwrap().trim().to_owned()
        }
    };
    (status, took)
}

#[tokio::test]
async fn slow_uploads_from_one_address_do_not_starve_another() {
    // Room for 200 connections from one address: the connection cap per
    // address is tested in `connections`; here the upload gate must hold.
    let app = TestApp::spawn_with(|c| c.connections.max_per_ip = 1000).await;
    let (alice, bob) = app.pair().await;
    // 200 signed uploads from 127.0.0.1 that declare 1 MiB and stall.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let signer = RequestSigner::new(UserKey::generate(), app.server_tag.clone())
            .with_clock(app.clock.clone());
        slow.push(stalled_upload(app.addr, Some(&signer), (1 << 20) + 5).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A legitimate 1 MiB send from another address.
    let (status, took) = send_from("127.0.0.2", app.addr, &alice.signer, &bob.id()).await;
    assert_eq!(status, "0");
    assert!(took < Duration::from_secs(1), "the send took {took:?}");
    assert_eq!(bob.list().await.len(), 1);
    // The slow uploads were still there all along.
    let mut probe = [0u8; 1];
    for stream in &mut slow[..4] {
        let pending =
            tokio::time::timeout(Duration::from_millis(10), stream.read(&mut probe)).await;
        assert!(pending.is_err(), "a slow upload was answered already");
    }
}

#[tokio::test]
async fn stalled_uploads_from_many_addresses_hold_no_budget() {
    // 20 addresses, each with its full share of stalled uploads: far more
    // uploads than MAX_CONCURRENT_UPLOADS (8), all signed, none sending.
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    let per_client = app.state.config.limits.max_concurrent_uploads_per_client;
    let mut slow = Vec::new();
    for host in 2..22 {
        let local = format!("127.0.0.{host}");
        for _ in 0..per_client {
            let signer = RequestSigner::new(UserKey::generate(), app.server_tag.clone())
                .with_clock(app.clock.clone());
            slow.push(stalled_upload_from(&local, app.addr, Some(&signer), (1 << 20) + 5).await);
        }
    }
    assert!(slow.len() > 8 * 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = send_from("127.0.0.1", app.addr, &alice.signer, &bob.id()).await;
    assert_eq!(status, "0");
    assert!(took < Duration::from_secs(1), "the send took {took:?}");
    assert_eq!(bob.list().await.len(), 1);
}

#[tokio::test]
async fn an_upload_slower_than_the_minimum_rate_is_cut() {
    let app = TestApp::spawn_with(|c| c.limits.upload_rate_grace_secs = 1).await;
    let signer = RequestSigner::new(UserKey::generate(), app.server_tag.clone())
        .with_clock(app.clock.clone());
    let started = Instant::now();
    let mut stream = stalled_upload(app.addr, Some(&signer), 1 << 20).await;
    let reply = answer(&mut stream, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(reply.contains("grpc-status: 4"), "{reply}");
    assert!(reply.contains("slower%20than%2032%20KiB"), "{reply}");
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
}

#[tokio::test]
async fn unsigned_and_badly_signed_uploads_never_take_a_permit() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_concurrent_uploads = 1;
        // The refusal waits for the unread body this long before it goes out.
        c.connections.drain_secs = 1;
    })
    .await;
    let (alice, bob) = app.pair().await;
    // Unsigned: refused at once, before its body is read.
    let mut unsigned = stalled_upload(app.addr, None, 1 << 20).await;
    let reply = answer(&mut unsigned, Duration::from_secs(5)).await;
    assert!(reply.contains("grpc-status: 16"), "{reply}");
    // Signed for another server: refused as well.
    let other = RequestSigner::new(UserKey::generate(), alice.signer.user_id().to_string());
    let mut wrong = stalled_upload(app.addr, Some(&other), 1 << 20).await;
    let reply = answer(&mut wrong, Duration::from_secs(5)).await;
    assert!(reply.contains("grpc-status: 16"), "{reply}");
    // Many such, still open: the one permit stays free for a real send.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(stalled_upload(app.addr, None, 1 << 20).await);
    }
    let (status, took) = send_from("127.0.0.1", app.addr, &alice.signer, &bob.id()).await;
    assert_eq!(status, "0");
    assert!(took < Duration::from_secs(5), "the send took {took:?}");
}
