//! Rate limits on the real server: each refuses past its burst with 429 +
//! `Retry-After` (JSON) or RESOURCE_EXHAUSTED + `google.rpc.RetryInfo`
//! (gRPC, gRPC-web), refills, and keeps its keys apart.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use piqchat_inbox::{
    api::{
        limits::{Limit, Rate, RateLimits},
        peer::TrustedProxies,
    },
    config::Config,
    domain::exchanges,
    pb,
};
use prost::Message as _;
use serde_json::json;

use crate::harness::{TestApp, TestUser, token_of_link};

fn rate(burst: u32, period: Duration) -> Option<Rate> {
    Some(Rate { burst, period })
}

const HOUR: Duration = Duration::from_secs(3600);

/// Only `limit` on, at `burst` per `period`.
fn only(config: &mut Config, limit: Limit, burst: u32, period: Duration) {
    config.rate_limits = RateLimits::off();
    config.rate_limits.set(limit, rate(burst, period));
}

/// `google.rpc.Status` and `google.rpc.RetryInfo`, to decode the details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

/// The retry delay a refusal's status details carry.
fn retry_info(details: &[u8]) -> Duration {
    let status = RpcStatus::decode(details).expect("details are a google.rpc.Status");
    assert_eq!(status.code, tonic::Code::ResourceExhausted as i32);
    let any = status
        .details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/google.rpc.RetryInfo")
        .expect("a RetryInfo detail");
    let delay = RetryInfo::decode(any.value.as_slice())
        .unwrap()
        .retry_delay
        .expect("a delay");
    Duration::new(delay.seconds as u64, delay.nanos as u32)
}

/// A refused gRPC call: RESOURCE_EXHAUSTED with a RetryInfo; its delay.
fn assert_grpc_refused(status: &tonic::Status, limit: &str) -> Duration {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("rate limit {limit}")),
        "{status:?}"
    );
    let delay = retry_info(status.details());
    assert!(delay > Duration::ZERO);
    delay
}

/// A refused JSON call: 429, `Retry-After`, the RetryInfo in the body.
fn assert_json_refused(status: StatusCode, headers: &HeaderMap, body: &[u8], limit: &str) -> u64 {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(after >= 1);
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["code"], 8, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("rate limit {limit}")),
        "{body}"
    );
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    assert!(
        body["details"][0]["retryDelay"]
            .as_str()
            .unwrap()
            .ends_with('s')
    );
    after
}

/// One HTTP/1.1 request over a fresh connection from `local` (another
/// loopback address is another client).
async fn http_from(
    app: &TestApp,
    local: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (StatusCode, HeaderMap, Bytes) {
    let local: IpAddr = local.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", app.addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let res = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

async fn info_from(app: &TestApp, local: &str, headers: &[(&str, &str)]) -> StatusCode {
    http_from(app, local, Method::GET, "/v1/info", headers, None)
        .await
        .0
}

async fn metrics(app: &TestApp) -> String {
    let reply = piqchat_inbox::client::HttpClient::new(&app.metrics_url, None)
        .json(Method::GET, "", None)
        .await
        .unwrap();
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn per_ip_limit_answers_every_protocol_and_refills() {
    // A cell every 3 s.
    let app = TestApp::spawn_with(|c| only(c, Limit::Ip, 2, Duration::from_secs(6))).await;
    let http = app.http();
    for _ in 0..2 {
        let ok = http.json(Method::GET, "/v1/info", None).await.unwrap();
        assert_eq!(ok.status, StatusCode::OK);
    }
    let refused = http.json(Method::GET, "/v1/info", None).await.unwrap();
    let after = assert_json_refused(refused.status, &refused.headers, &refused.body, "ip");
    assert!(after <= 3, "{after}");

    let grpc = app
        .info()
        .await
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap_err();
    let delay = assert_grpc_refused(&grpc, "ip");
    assert!(delay <= Duration::from_secs(3), "{delay:?}");

    let web = http
        .send(http.request(
            Method::POST,
            "/piqchat.inbox.v1.InfoService/GetInfo",
            {
                let mut h = HeaderMap::new();
                h.insert(
                    "content-type",
                    "application/grpc-web+proto".parse().unwrap(),
                );
                h
            },
            piqchat_inbox::client::grpc_frame(0, &[]),
        ))
        .await
        .unwrap();
    assert_eq!(web.headers["grpc-status"], "8");
    let details = base64_header(&web.headers["grpc-status-details-bin"]);
    assert!(retry_info(&details) > Duration::ZERO);

    // The cell is back when the hint said.
    tokio::time::sleep(delay + Duration::from_millis(100)).await;
    let ok = http.json(Method::GET, "/v1/info", None).await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let again = http.json(Method::GET, "/v1/info", None).await.unwrap();
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
}

fn base64_header(value: &http::HeaderValue) -> Vec<u8> {
    use base64::Engine as _;
    let text = value.to_str().unwrap().trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn per_ip_limit_counts_each_address_apart() {
    let app = TestApp::spawn_with(|c| only(c, Limit::Ip, 2, HOUR)).await;
    for _ in 0..2 {
        assert_eq!(info_from(&app, "127.0.0.1", &[]).await, StatusCode::OK);
    }
    assert_eq!(
        info_from(&app, "127.0.0.1", &[]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A browser on another origin can read the hint.
    let (status, headers, _) = http_from(
        &app,
        "127.0.0.1",
        Method::GET,
        "/v1/info",
        &[("origin", "https://app.example")],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("retry-after"), "{exposed}");
    // Another address has its own bucket; a forwarding header from an
    // address that is not a trusted proxy changes nothing.
    assert_eq!(info_from(&app, "127.0.0.2", &[]).await, StatusCode::OK);
    assert_eq!(
        info_from(&app, "127.0.0.1", &[("x-forwarded-for", "203.0.113.7")]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        info_from(&app, "127.0.0.1", &[("forwarded", "for=203.0.113.8")]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn trusted_proxies_name_the_client_only_when_the_peer_is_listed() {
    // 127.0.0.1 is the proxy.
    let app = TestApp::spawn_with(|c| {
        only(c, Limit::Ip, 2, HOUR);
        c.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await;
    let from = |xff: &'static str| [("x-forwarded-for", xff)];
    for _ in 0..2 {
        assert_eq!(
            info_from(&app, "127.0.0.1", &from("203.0.113.1")).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        info_from(&app, "127.0.0.1", &from("203.0.113.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A client cannot escape by writing its own hop in front: the proxy's
    // (right-most) entry is the one that counts.
    assert_eq!(
        info_from(&app, "127.0.0.1", &from("198.51.100.9, 203.0.113.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the proxy has its own bucket, by either header.
    assert_eq!(
        info_from(&app, "127.0.0.1", &from("203.0.113.2")).await,
        StatusCode::OK
    );
    assert_eq!(
        info_from(
            &app,
            "127.0.0.1",
            &[("forwarded", "for=\"[2001:db8::1]:443\"")]
        )
        .await,
        StatusCode::OK
    );
    // An IPv6 client is its /64: another address in it shares the bucket.
    assert_eq!(
        info_from(&app, "127.0.0.1", &from("2001:db8::2")).await,
        StatusCode::OK
    );
    assert_eq!(
        info_from(&app, "127.0.0.1", &from("2001:db8::3")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;

    // Only 127.0.0.2 is a proxy: the test client's headers are ignored.
    let app = TestApp::spawn_with(|c| {
        only(c, Limit::Ip, 2, HOUR);
        c.trusted_proxies = TrustedProxies::parse("127.0.0.2").unwrap();
    })
    .await;
    for spoof in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(
            info_from(&app, "127.0.0.1", &from(spoof)).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        info_from(&app, "127.0.0.1", &from("203.0.113.3")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        info_from(&app, "127.0.0.2", &from("203.0.113.3")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn per_key_reads_and_writes_have_separate_budgets() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limits = RateLimits::off();
        c.rate_limits.set(Limit::KeyReads, rate(3, HOUR));
        c.rate_limits.set(Limit::KeyWrites, rate(2, HOUR));
    })
    .await;
    // Signing up is a write, but unsigned.
    let (alice, bob) = app.pair().await;
    // bob.set_contacts used one of bob's writes.
    let mut parcels = alice.parcels().await;
    for _ in 0..3 {
        parcels
            .list_parcels(pb::ListParcelsRequest::default())
            .await
            .unwrap();
    }
    let refused = parcels
        .list_parcels(pb::ListParcelsRequest::default())
        .await
        .unwrap_err();
    let delay = assert_grpc_refused(&refused, "key_reads");
    assert!(delay > Duration::from_secs(600), "{delay:?}");
    // The same over JSON.
    let json = alice
        .http()
        .json(Method::GET, "/v1/parcels", None)
        .await
        .unwrap();
    assert_json_refused(json.status, &json.headers, &json.body, "key_reads");

    // Writes are a budget of their own, and bob's reads are his.
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    let third = alice.send("MEDIA", &[&bob], None).await.unwrap_err();
    assert_grpc_refused(&third, "key_writes");
    assert_eq!(bob.list().await.len(), 2);
    // An unsigned call is not a key's.
    app.get_info().await;
}

#[tokio::test]
async fn sends_are_limited_per_sender_and_recipient() {
    let app = TestApp::spawn_with(|c| only(c, Limit::SendPair, 2, HOUR)).await;
    let (alice, bob) = app.pair().await;
    let carol = app.registered_user().await;
    let dave = app.registered_user().await;
    carol.set_contacts(&[&alice]).await;
    bob.set_contacts(&[&alice, &dave]).await;

    alice.send("TEXT", &[&bob], None).await.unwrap();
    alice.send("TEXT", &[&bob], None).await.unwrap();
    let refused = alice.send("TEXT", &[&bob], None).await.unwrap_err();
    assert_grpc_refused(&refused, "send_pair");
    assert!(refused.message().contains("recipient 0"), "{refused:?}");
    // A send to several names the recipient (by its place in the request)
    // that is over, and stores nothing.
    let refused = alice.send("TEXT", &[&carol, &bob], None).await.unwrap_err();
    assert!(refused.message().contains("recipient 1"), "{refused:?}");
    assert!(carol.list().await.is_empty());
    // Another recipient, another sender: their own buckets.
    alice.send("TEXT", &[&carol], None).await.unwrap();
    dave.send("TEXT", &[&bob], None).await.unwrap();
    assert_eq!(bob.list().await.len(), 3);
    let json = alice
        .http()
        .json(
            Method::POST,
            "/v1/parcels",
            Some(&json!({
                "type": "TEXT",
                "recipients": [{"userId": bob.id(), "content": "x"}],
            })),
        )
        .await
        .unwrap();
    assert_json_refused(json.status, &json.headers, &json.body, "send_pair");
}

#[tokio::test]
async fn attachment_bytes_are_limited_per_recipient() {
    // 10 KiB per 4 s for each recipient, from all senders together.
    let app =
        TestApp::spawn_with(|c| only(c, Limit::RecipientBytes, 10, Duration::from_secs(4))).await;
    let (alice, bob) = app.pair().await;
    let carol = app.registered_user().await;
    let dave = app.registered_user().await;
    carol.set_contacts(&[&alice]).await;
    bob.set_contacts(&[&alice, &dave]).await;

    dave.send("MEDIA", &[&bob], Some(vec![1; 6 * 1024]))
        .await
        .unwrap();
    let over = alice
        .send("MEDIA", &[&bob], Some(vec![2; 6 * 1024]))
        .await
        .unwrap_err();
    assert_grpc_refused(&over, "recipient_bytes");
    // Another recipient has a budget of its own.
    alice
        .send("MEDIA", &[&carol], Some(vec![2; 6 * 1024]))
        .await
        .unwrap();
    // Someone bob does not accept cannot use up his budget.
    let stranger = app.registered_user().await;
    let denied = stranger
        .send("MEDIA", &[&bob], Some(vec![3; 4 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    alice
        .send("MEDIA", &[&bob], Some(vec![4; 4 * 1024]))
        .await
        .unwrap();
    // Larger than the whole budget: never possible, so no retry hint.
    let huge = alice
        .send("MEDIA", &[&bob], Some(vec![5; 11 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::ResourceExhausted);
    assert!(huge.details().is_empty());
    assert!(huge.message().contains("send it smaller"), "{huge:?}");
    // Refilled after the period.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    alice
        .send("MEDIA", &[&bob], Some(vec![6; 9 * 1024]))
        .await
        .unwrap();
    // Over JSON: 429 with Retry-After.
    use base64::Engine as _;
    let json = alice
        .http()
        .json(
            Method::POST,
            "/v1/parcels",
            Some(&json!({
                "type": "MEDIA",
                "recipients": [{"userId": bob.id(), "content": "x"}],
                "attachment": base64::engine::general_purpose::STANDARD.encode(vec![7; 8 * 1024]),
            })),
        )
        .await
        .unwrap();
    assert_json_refused(json.status, &json.headers, &json.body, "recipient_bytes");
    assert_eq!(bob.list().await.len(), 3);
}

#[tokio::test]
async fn invites_backups_and_contact_lists_are_limited_per_user() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limits = RateLimits::off();
        c.rate_limits.set(Limit::CreateExchange, rate(1, HOUR));
        c.rate_limits.set(Limit::PutBackup, rate(1, HOUR));
        c.rate_limits.set(Limit::SetContacts, rate(1, HOUR));
    })
    .await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;

    alice.create_invite("card").await;
    let refused = alice
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest {
            offer: "card".into(),
        })
        .await
        .unwrap_err();
    assert_grpc_refused(&refused, "create_exchange");
    bob.create_invite("card").await;

    let backup = || pb::PutBackupRequest {
        content: "profile".into(),
    };
    alice.backups().await.put_backup(backup()).await.unwrap();
    let refused = alice
        .backups()
        .await
        .put_backup(backup())
        .await
        .unwrap_err();
    assert_grpc_refused(&refused, "put_backup");
    bob.backups().await.put_backup(backup()).await.unwrap();

    alice.set_contacts(&[&bob]).await;
    let json = alice
        .http()
        .json(
            Method::PUT,
            "/v1/account/contacts",
            Some(&json!({"contactIds": [bob.id()]})),
        )
        .await
        .unwrap();
    assert_json_refused(json.status, &json.headers, &json.body, "set_contacts");
    bob.set_contacts(&[&alice]).await;
    // Other calls are not affected.
    alice.list().await;
}

#[tokio::test]
async fn accept_exchange_is_limited_per_address() {
    let app = TestApp::spawn_with(|c| only(c, Limit::AcceptExchange, 2, HOUR)).await;
    app.registered_user().await;
    app.registered_user().await;
    let token = || async {
        let link =
            exchanges::create_sign_up_invite(&app.state.store, &app.state.config, app.clock.now())
                .await
                .unwrap();
        token_of_link(&link)
    };
    let refused = app
        .exchanges()
        .await
        .accept_exchange(pb::AcceptExchangeRequest {
            token: token().await,
            answer: None,
            user_id: Some(app.user().id()),
        })
        .await
        .unwrap_err();
    assert_grpc_refused(&refused, "accept_exchange");
    // From another address the same call goes through (JSON this time).
    let user = app.user();
    let path = format!("/v1/exchanges/{}:accept", token().await);
    let (status, _, body) = http_from(
        &app,
        "127.0.0.2",
        Method::POST,
        &path,
        &[],
        Some(json!({"userId": user.id()})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    // Other calls from the first address are not affected.
    app.get_info().await;
}

#[tokio::test]
async fn key_count_is_capped_and_metrics_are_exported() {
    let app = TestApp::spawn_with(|c| {
        only(c, Limit::KeyReads, 1, HOUR);
        c.rate_limits.max_keys = 2;
    })
    .await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(app.registered_user().await);
    }
    let list = |u: &TestUser| {
        let u = u.clone();
        async move {
            u.parcels()
                .await
                .list_parcels(pb::ListParcelsRequest::default())
                .await
        }
    };
    // The first two keys get buckets.
    for u in &users[..2] {
        list(u).await.unwrap();
        assert_grpc_refused(&list(u).await.unwrap_err(), "key_reads");
    }
    // The limiter is full: newcomers are served untracked, never refused.
    for u in &users[2..] {
        for _ in 0..3 {
            list(u).await.unwrap();
        }
    }
    assert_eq!(app.state.limits.keys(Limit::KeyReads), 2);
    let text = metrics(&app).await;
    for line in [
        "piqchat_rate_limit_keys{limit=\"key_reads\"} 2",
        "piqchat_rate_limited_total{limit=\"key_reads\"} 2",
        "piqchat_rate_limit_untracked_total{limit=\"key_reads\"} 6",
        "piqchat_requests_total{protocol=\"grpc\",rpc=\"/piqchat.inbox.v1.ParcelService/ListParcels\",code=\"ResourceExhausted\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn idle_keys_are_pruned() {
    let app = TestApp::spawn_with(|c| only(c, Limit::Ip, 5, Duration::from_millis(200))).await;
    for local in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        assert_eq!(info_from(&app, local, &[]).await, StatusCode::OK);
    }
    assert_eq!(app.state.limits.keys(Limit::Ip), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.state.limits.prune();
    assert_eq!(app.state.limits.keys(Limit::Ip), 0);
    assert!(
        metrics(&app)
            .await
            .contains("piqchat_rate_limit_keys{limit=\"ip\"} 0")
    );
}

/// The defaults must not bother a normal user: a browser tab listing every
/// few seconds, a day's images to a few friends, contacts and a backup.
#[tokio::test]
async fn defaults_do_not_bother_a_normal_user() {
    let app = TestApp::spawn_with(|c| c.rate_limits = RateLimits::default()).await;
    let alice = app.registered_user().await;
    let friends = [
        app.registered_user().await,
        app.registered_user().await,
        app.registered_user().await,
    ];
    for f in &friends {
        f.set_contacts(&[&alice]).await;
    }
    let to: Vec<&TestUser> = friends.iter().collect();
    for i in 0..150u8 {
        alice
            .send("MEDIA", &to, Some(vec![i; 32 * 1024]))
            .await
            .unwrap();
    }
    for _ in 0..60 {
        alice.list().await;
        friends[0].list().await;
    }
    alice.create_invite("card").await;
    alice.set_contacts(&to).await;
    alice
        .backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: "profile".into(),
        })
        .await
        .unwrap();
    assert_eq!(friends[0].list().await.len(), 150);
    let text = metrics(&app).await;
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("piqchat_rate_limited_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:?}");
}
