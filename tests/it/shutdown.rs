//! The real binary: graceful shutdown on SIGTERM, and a crash (SIGKILL).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use piqchat_inbox::{
    client::{HttpClient, RequestSigner, UserKey, grpc_frame},
    pb,
};
use prost::Message;

use crate::harness::token_of_link;

/// Starts the binary on a free loopback port; returns the child, its
/// address and the sign-up invite link it printed (when nobody is
/// registered yet it prints one; `expect_invite` says whether to wait for it).
pub(crate) fn start(
    dir: &std::path::Path,
    expect_invite: bool,
) -> (std::process::Child, String, Option<String>) {
    let (child, addr, link, _) = start_logged(dir, expect_invite, &[]);
    (child, addr, link)
}

/// [`start`] with further environment variables, also returning the JSON log
/// lines that follow the listening line.
pub(crate) fn start_logged(
    dir: &std::path::Path,
    expect_invite: bool,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    String,
    Option<String>,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_piqchat-inbox"))
        .env_clear()
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", "0")
        .env("METRICS_ADDRESS", "off")
        .env("LOG_FORMAT", "json")
        .env("DATABASE_PATH", dir.join("inbox.sqlite"))
        .env("PARCEL_ATTACHMENTS_UPLOAD_PATH", dir.join("attachments"))
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut out_lines = stdout.lines();
    let link = expect_invite.then(|| {
        out_lines
            .by_ref()
            .map(Result::unwrap)
            .find(|l| l.starts_with("https://piqchat.net/"))
            .expect("an invite link on stdout")
    });
    std::thread::spawn(move || for _ in out_lines {});
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let addr = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            (v["message"] == "piqchat inbox server listening")
                .then(|| v["addr"].as_str().unwrap().to_owned())
        })
        .expect("a listening log line");
    // Keep draining stderr so the server never blocks on a full pipe.
    let (log_tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = log_tx.send(v);
            }
        }
    });
    (child, addr, link, log)
}

/// Accepts the exchange `token` and signs `user` up with it.
pub(crate) async fn accept(anon: &HttpClient, token: String, user: &RequestSigner) {
    let _: pb::AcceptExchangeResponse = anon
        .grpc_web_unary(
            "/piqchat.inbox.v1.ExchangeService/AcceptExchange",
            &pb::AcceptExchangeRequest {
                token,
                answer: None,
                user_id: Some(user.user_id().to_string()),
            },
        )
        .await
        .unwrap();
}

/// The server's public key (the signatures' `tag`).
pub(crate) async fn server_tag(url: &str) -> String {
    let info = HttpClient::new(url, None)
        .json(http::Method::GET, "/v1/info", None)
        .await
        .unwrap();
    info.json()["serverPublicKey"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_send_finish_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, link) = start(dir.path(), true);
    let link = link.unwrap();
    let url = format!("http://{addr}");
    let tag = server_tag(&url).await;
    let alice = RequestSigner::new(UserKey::generate(), tag.clone());
    let bob = RequestSigner::new(UserKey::generate(), tag.clone());

    // Bob signs up with the printed invite, then a second invite for alice
    // comes from bob's friend invite.
    let anon = HttpClient::new(&url, None);
    accept(&anon, token_of_link(&link), &bob).await;
    let bob_http = HttpClient::new(&url, Some(bob.clone()));
    let created: pb::CreateExchangeResponse = bob_http
        .grpc_web_unary(
            "/piqchat.inbox.v1.ExchangeService/CreateExchange",
            &pb::CreateExchangeRequest {
                offer: "card".into(),
            },
        )
        .await
        .unwrap();
    accept(&anon, created.token, &alice).await;
    let _: pb::SetContactsResponse = bob_http
        .grpc_web_unary(
            "/piqchat.inbox.v1.AccountService/SetContacts",
            &pb::SetContactsRequest {
                contact_ids: vec![alice.user_id().to_string()],
            },
        )
        .await
        .unwrap();

    // A 10 MiB send whose body arrives in two halves, SIGTERM in between.
    let message = pb::SendParcelRequest {
        r#type: "MEDIA".into(),
        recipients: vec![pb::ParcelRecipient {
            user_id: bob.user_id().to_string(),
            content: "key".into(),
        }],
        attachment: Some(vec![9; 10 << 20]),
    };
    let body = grpc_frame(0, &message.encode_to_vec());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("{url}/piqchat.inbox.v1.ParcelService/SendParcel"))
        .header("content-type", "application/grpc-web+proto")
        .header("content-length", body.len())
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    alice.sign_request(&mut req).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let in_flight = tokio::spawn(async move { client.request(req).await });
    let half = body.len() / 2;
    tx.send(Ok(Frame::data(body.slice(..half)))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The listener is closed: a new connection is refused.
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(
        refused.is_err(),
        "a new connection after SIGTERM was accepted"
    );

    // The rest of the body arrives; the send completes and is acknowledged.
    tx.send(Ok(Frame::data(body.slice(half..)))).await.unwrap();
    drop(tx);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight send got a response");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let trailers = String::from_utf8_lossy(&bytes);
    assert!(
        headers.get("grpc-status").is_none_or(|s| s == "0") && trailers.contains("grpc-status:0"),
        "{headers:?} {trailers}"
    );

    // The server exits cleanly once the send is done.
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    // After a restart the parcel is there.
    let (mut child, addr, _) = start(dir.path(), false);
    let listed: pb::ListParcelsResponse = HttpClient::new(&format!("http://{addr}"), Some(bob))
        .grpc_web_unary(
            "/piqchat.inbox.v1.ParcelService/ListParcels",
            &pb::ListParcelsRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(listed.parcels.len(), 1);
    assert_eq!(listed.parcels[0].attachment_size, Some(10 << 20));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[tokio::test]
async fn a_killed_server_keeps_every_write_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, link) = start(dir.path(), true);
    let url = format!("http://{addr}");
    let bob = RequestSigner::new(UserKey::generate(), server_tag(&url).await);
    accept(
        &HttpClient::new(&url, None),
        token_of_link(&link.unwrap()),
        &bob,
    )
    .await;

    // Writers that keep creating exchanges (which share commits) until the
    // server is gone; each keeps the tokens it got an answer for.
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let http = HttpClient::new(&url, Some(bob.clone()));
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                loop {
                    let created: Result<pb::CreateExchangeResponse, _> = http
                        .grpc_web_unary(
                            "/piqchat.inbox.v1.ExchangeService/CreateExchange",
                            &pb::CreateExchangeRequest {
                                offer: "card".into(),
                            },
                        )
                        .await;
                    match created {
                        Ok(created) => acknowledged.push(created.token),
                        Err(_) => return acknowledged,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() > 16,
        "only {} writes before the kill",
        acknowledged.len()
    );

    // After a restart every acknowledged exchange is there.
    let (mut child, addr, _) = start(dir.path(), false);
    let http = HttpClient::new(&format!("http://{addr}"), Some(bob));
    for token in &acknowledged {
        let found: Result<pb::GetExchangeResponse, _> = http
            .grpc_web_unary(
                "/piqchat.inbox.v1.ExchangeService/GetExchange",
                &pb::GetExchangeRequest {
                    token: token.clone(),
                },
            )
            .await;
        assert!(found.is_ok(), "acknowledged exchange lost: {found:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
