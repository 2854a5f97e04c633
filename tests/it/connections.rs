//! Connections: caps, idle and body timeouts, answers an HTTP/1.1 client can
//! read while it is still sending, and the HTTP rules of the edge.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use piqchat_inbox::pb;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

use crate::harness::TestApp;

/// Opens a TCP connection to the app from `source` (any loopback address).
async fn connect_from(app: &TestApp, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(app.addr).await.expect("connect")
}

/// Reads until the server closes; what it sent.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection in time")
        .expect("a clean close, not a reset");
    out
}

/// Reads one HTTP/1.1 response with a `content-length`: its head and body.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("a response in time")
            .expect("the response reads");
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.expect("the body reads");
    (head, body)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: inbox\r\n\r\n";

#[tokio::test]
async fn idle_connections_are_closed_after_the_timeouts() {
    let app = TestApp::spawn_with(|c| {
        c.connections.idle_timeout_secs = 1;
        c.connections.header_timeout_secs = 1;
    })
    .await;

    // No request at all, and an unfinished request head.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nho")
        .await
        .unwrap();
    let start = Instant::now();
    assert!(
        read_to_close(&mut silent, Duration::from_secs(10))
            .await
            .is_empty()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        partial.read_to_end(&mut Vec::new()),
    )
    .await
    .expect("the half-sent request is cut in time");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "closed after {waited:?}"
    );

    // HTTP/1.1 keep-alive after one answered request.
    let mut kept = TcpStream::connect(app.addr).await.unwrap();
    kept.write_all(HEALTHZ).await.unwrap();
    let (head, body) = read_response(&mut kept).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");
    let start = Instant::now();
    assert!(
        read_to_close(&mut kept, Duration::from_secs(10))
            .await
            .is_empty()
    );
    assert!(start.elapsed() >= Duration::from_millis(800));

    // HTTP/2: the connection ends (GOAWAY) after an answered request.
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let res = sender
        .send_request(
            http::Request::get(format!("{}/healthz", app.url))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("h2 request");
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the server ends an idle HTTP/2 connection")
        .unwrap()
        .expect("a clean end");
    assert!(start.elapsed() >= Duration::from_millis(800));

    let text = reqwest_metrics(&app).await;
    assert!(
        text.contains("piqchat_connections_closed_total{reason=\"idle\"}"),
        "{text}"
    );
}

/// The Prometheus text of `app`.
async fn reqwest_metrics(app: &TestApp) -> String {
    let base = app.metrics_url.trim_end_matches("/metrics");
    let reply = piqchat_inbox::client::HttpClient::new(base, None)
        .json(http::Method::GET, "/metrics", None)
        .await
        .unwrap();
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn connections_per_address_are_capped_with_a_readable_refusal() {
    let app = TestApp::spawn_with(|c| c.connections.max_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(&app, "127.0.0.1").await;
        s.write_all(HEALTHZ).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(s);
    }
    let mut refused = connect_from(&app, "127.0.0.1").await;
    let answer =
        String::from_utf8(read_to_close(&mut refused, Duration::from_secs(10)).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );

    // Another address is not affected.
    let mut other = connect_from(&app, "127.0.0.2").await;
    other.write_all(HEALTHZ).await.unwrap();
    let (head, _) = read_response(&mut other).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from(&app, "127.0.0.1").await;
        let _ = s.write_all(HEALTHZ).await;
        let mut first = [0u8; 12];
        if s.read_exact(&mut first).await.is_ok() && &first == b"HTTP/1.1 200" {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connections_in_total_are_capped_with_a_readable_refusal() {
    let app = TestApp::spawn_with(|c| c.connections.max_total = Some(4)).await;
    let mut held = Vec::new();
    for source in ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut s = connect_from(&app, source).await;
        s.write_all(HEALTHZ).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(s);
    }
    let mut refused = connect_from(&app, "127.0.0.5").await;
    let answer =
        String::from_utf8(read_to_close(&mut refused, Duration::from_secs(10)).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("the server has too many connections open"),
        "{answer}"
    );
    let text = reqwest_metrics(&app).await;
    assert!(
        text.contains("piqchat_connections_closed_total{reason=\"total_limit\"} 1"),
        "{text}"
    );
    assert!(text.contains("piqchat_connections_open 4"), "{text}");
}

/// Raises this process's open-file soft limit to its hard limit (the server
/// and the test's clients share it).
fn raise_fd_limit(need: u64) {
    let soft = piqchat_inbox::serve::raise_nofile_limit().unwrap_or(u64::MAX);
    assert!(
        soft >= need,
        "this test needs {need} open files; the limit is {soft}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_list_answers_quickly_beside_idle_and_slowloris_connections() {
    const IDLE: usize = 2000;
    const SLOW: usize = 500;
    raise_fd_limit(2 * (IDLE + SLOW) as u64 + 512);
    let app = TestApp::spawn_with(|c| {
        c.connections.max_per_ip = 10_000;
        c.connections.max_total = Some(10_000);
        c.connections.header_timeout_secs = 120;
        c.connections.idle_timeout_secs = 120;
    })
    .await;
    let (alice, bob) = app.pair().await;
    alice.send("TEXT", &[&bob], None).await.expect("send");

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /v1/info HTTP/1.1\r\nhost: inbox\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // One byte per connection every 2 s, spread over the 2 s.
    let dribble = tokio::spawn(async move {
        let pause = Duration::from_secs(2) / SLOW as u32;
        loop {
            for s in &mut slow {
                if s.write_all(b"a").await.is_err() {
                    return "a slowloris connection was closed";
                }
                tokio::time::sleep(pause).await;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.state.metrics.connections_open.get() < (IDLE + SLOW) as i64 {
        assert!(
            Instant::now() < deadline,
            "the server did not take every connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut parcels = bob.parcels().await;
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let start = Instant::now();
        let listed = parcels
            .list_parcels(pb::ListParcelsRequest::default())
            .await
            .expect("list answers")
            .into_inner();
        slowest = slowest.max(start.elapsed());
        assert_eq!(listed.parcels.len(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_millis(100),
        "slowest list took {slowest:?}"
    );
    assert!(!dribble.is_finished(), "{:?}", dribble.await);
    assert!(app.state.metrics.connections_open.get() > (IDLE + SLOW) as i64);
    dribble.abort();
    drop(idle);
}

/// A JSON send with a signature that cannot verify, and `len` body bytes.
fn refused_send_head(len: usize) -> String {
    format!(
        "POST /v1/parcels HTTP/1.1\r\nhost: inbox\r\ncontent-type: application/json\r\n\
         content-length: {len}\r\nsignature-input: piqchat=(\"@method\");created=1\r\n\
         signature: piqchat=:AAAA:\r\n\r\n"
    )
}

#[tokio::test]
async fn refused_requests_are_readable_while_the_body_is_still_being_sent() {
    let app = TestApp::spawn().await;
    for len in [200_000, 5_000_000, 30_000_000] {
        let stream = TcpStream::connect(app.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            write.write_all(refused_send_head(len).as_bytes()).await?;
            let chunk = vec![b' '; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                write.write_all(&chunk[..n]).await?;
                left -= n;
            }
            Ok::<_, std::io::Error>(write)
        });
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), read.read(&mut byte))
                .await
                .expect("an answer in time")
                .unwrap_or_else(|e| panic!("{len} bytes: reading the answer failed: {e}"));
            assert_eq!(n, 1, "{len} bytes: closed before the answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 401"), "{len} bytes: {head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        read.read_exact(&mut body)
            .await
            .expect("the whole answer reads");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], 16, "{len} bytes: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        let mut write = tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("the body is taken in time")
            .unwrap()
            .unwrap_or_else(|e| panic!("{len} bytes: sending the body failed: {e}"));
        if len == 200_000 {
            // Drained: the connection stays usable.
            assert!(
                !head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            let mut stream = read.reunite(write).unwrap();
            stream.write_all(HEALTHZ).await.unwrap();
            let (next, _) = read_response(&mut stream).await;
            assert!(next.starts_with("HTTP/1.1 200"), "{next}");
        } else {
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            let _ = write.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_cut_with_a_clear_error() {
    let app = TestApp::spawn_with(|c| c.connections.body_timeout_secs = 1).await;

    // JSON: announced 100 bytes, sent 10.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /v1/exchanges HTTP/1.1\r\nhost: inbox\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"offer\":",
    )
    .await
    .unwrap();
    let start = Instant::now();
    let (head, body) = read_response(&mut s).await;
    let waited = start.elapsed();
    let body = String::from_utf8(body).unwrap();
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
    assert!(body.contains("the request body stopped arriving"), "{body}");
    assert!(waited >= Duration::from_millis(800), "{waited:?}");

    // gRPC over HTTP/2: a frame header, then nothing.
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(&[
        0, 0, 0, 0, 50,
    ]))))
    .await
    .unwrap();
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = http::Request::post(format!(
        "{}/piqchat.inbox.v1.ExchangeService/CreateExchange",
        app.url
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body)
    .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = parts
        .headers
        .get("grpc-status")
        .or(trailers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    let message = parts
        .headers
        .get("grpc-message")
        .or(trailers.get("grpc-message"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(status.as_deref(), Some("4"), "{message}");
    assert!(
        message.contains("stopped%20arriving") || message.contains("stopped arriving"),
        "{message}"
    );
    drop(tx);
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(vec![7; 1000]))
        .await
        .expect("send");
    let id = bob.list().await[0].id.clone();

    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in ["/", "/healthz", "/openapi.json", "/v1/info"] {
        let mut lengths = Vec::new();
        // HEAD then GET on one connection: a body after HEAD would garble
        // the next answer.
        for method in [http::Method::HEAD, http::Method::GET] {
            let req = http::Request::builder()
                .method(method.clone())
                .uri(path)
                .header("host", "inbox")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = sender.send_request(req).await.expect("an answer");
            assert_eq!(res.status(), 200, "{method} {path}");
            let declared: usize = res.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            if method == http::Method::HEAD {
                assert!(body.is_empty(), "HEAD {path}");
            } else {
                assert_eq!(body.len(), declared, "GET {path}");
            }
            lengths.push(declared);
        }
        assert_eq!(lengths[0], lengths[1], "{path}");
    }

    // A signed download, verified with HEAD as the method signed.
    let path = format!("/v1/parcels/{id}/attachment");
    let head = bob
        .http()
        .json(http::Method::HEAD, &path, None)
        .await
        .unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty());
    let get = bob
        .http()
        .json(http::Method::GET, &path, None)
        .await
        .unwrap();
    assert_eq!(get.status, 200);
    assert_eq!(get.body.len(), 1000);
}

#[tokio::test]
async fn http11_requests_need_exactly_one_host() {
    let app = TestApp::spawn().await;
    for request in [
        &b"GET /healthz HTTP/1.1\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(
            String::from_utf8_lossy(&body).contains("exactly one Host header"),
            "{body:?}"
        );
    }
    // HTTP/1.0 has no Host requirement.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
}

#[tokio::test]
async fn the_header_limit_holds_for_every_request_on_a_connection() {
    let app = TestApp::spawn().await;
    for size in [100 * 1024, 128 * 1024] {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(HEALTHZ).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let big = format!(
            "GET /healthz HTTP/1.1\r\nhost: inbox\r\nx-big: {}\r\n\r\n",
            "a".repeat(size)
        );
        // The server may stop reading once the limit is passed.
        let _ = s.write_all(big.as_bytes()).await;
        let answer = read_to_close(&mut s, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{size}: {answer}");
    }
}

#[test]
fn logs_carry_no_colour_escapes_when_stderr_is_not_a_terminal() {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_piqchat-inbox"))
        .env_clear()
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", "0")
        .env("METRICS_ADDRESS", "off")
        .env("DATABASE_PATH", dir.path().join("inbox.sqlite"))
        .env(
            "PARCEL_ATTACHMENTS_UPLOAD_PATH",
            dir.path().join("attachments"),
        )
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("listening")), "{seen:?}");
    assert!(seen.iter().all(|l| !l.contains('\u{1b}')), "{seen:?}");
    assert!(seen.iter().any(|l| l.contains("INFO")), "{seen:?}");
}
