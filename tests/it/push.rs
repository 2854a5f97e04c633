//! Web Push delivery (SPEC §6) against the push-service stand-in.

use std::time::Duration;

use http::Method;
use piqchat_inbox::{clock::SECOND, pb};
use serde_json::json;

use crate::{
    harness::{TestApp, TestUser},
    push_service::{PushService, Reply},
};

const WAIT: Duration = Duration::from_secs(10);

/// Alice and Bob, Bob accepting Alice and subscribed to push as `name`.
async fn subscribed_pair(
    app: &TestApp,
    service: &PushService,
    name: &str,
    encoding: Option<&str>,
) -> (TestUser, TestUser) {
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    bob.set_contacts(&[&alice]).await;
    let mut sub = service.subscription(name).json;
    if let Some(encoding) = encoding {
        sub["contentEncoding"] = json!(encoding);
    }
    let reply = bob.put_push_subscription(&sub).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    (alice, bob)
}

/// Polls until `check` holds, moving nothing; fails after a deadline.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the next push is due no earlier than `at`.
async fn retry_scheduled(app: &TestApp, at: i64) {
    eventually("the retry to be scheduled", async || {
        app.state
            .store
            .next_push_due()
            .await
            .unwrap()
            .is_some_and(|t| t >= at)
    })
    .await;
}

async fn outbox_depth(app: &TestApp) -> u64 {
    app.state.store.outbox_depth().await.unwrap()
}

#[tokio::test]
async fn a_media_parcel_pushes_the_exact_payload_in_both_encodings() {
    let (app, service) = TestApp::spawn_with_push(|_| {}).await;
    let info = app.get_info().await;
    assert!(info.push_enabled);
    for (name, encoding) in [("modern", None), ("legacy", Some("aesgcm"))] {
        let (alice, bob) = subscribed_pair(&app, &service, name, encoding).await;
        alice
            .send("MEDIA", &[&bob], Some(vec![1; 100]))
            .await
            .unwrap();
        let got = service
            .wait_for(if name == "modern" { 1 } else { 2 }, WAIT)
            .await;
        let push = got
            .iter()
            .find(|r| r.name == name)
            .expect("a push for this subscription");
        let expected = format!(
            r#"{{"type":"PARCEL","payload":{{"type":"MEDIA","sender":"{}"}}}}"#,
            alice.id()
        );
        assert_eq!(String::from_utf8(push.plaintext.clone()).unwrap(), expected);
        assert_eq!(push.encoding, encoding.unwrap_or("aes128gcm"));
        assert_eq!(push.ttl, 3 * 24 * 3600);
        assert_eq!(push.urgency, "high");
        assert_eq!(push.claims["sub"], "mailto:ops@example.org");
        assert_eq!(push.claims["aud"], service.origin());
    }
    assert!(
        service.rejections().is_empty(),
        "{:?}",
        service.rejections()
    );
    eventually("an empty outbox", async || outbox_depth(&app).await == 0).await;
}

#[tokio::test]
async fn only_media_parcels_to_subscribed_recipients_push() {
    let (app, service) = TestApp::spawn_with_push(|_| {}).await;
    let (alice, bob) = subscribed_pair(&app, &service, "bob", None).await;
    let carol = app.registered_user().await; // no subscription
    carol.set_contacts(&[&alice]).await;

    alice.send("PROFILE_UPDATE", &[&bob], None).await.unwrap();
    alice.send("MEDIA", &[&carol], None).await.unwrap();
    // Pushes are queued in the parcel's transaction: none was.
    assert_eq!(outbox_depth(&app).await, 0);
    // A MEDIA parcel to bob is the one and only push.
    alice.send("MEDIA", &[&bob, &carol], None).await.unwrap();
    let got = service.wait_for(1, WAIT).await;
    eventually("an empty outbox", async || outbox_depth(&app).await == 0).await;
    assert_eq!(service.received().len(), 1, "{got:?}");
}

#[tokio::test]
async fn a_gone_subscription_is_forgotten() {
    let (app, service) = TestApp::spawn_with_push(|_| {}).await;
    let (alice, bob) = subscribed_pair(&app, &service, "bob", None).await;
    service.script(&[Reply::Status(410)]);
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    service.wait_for(1, WAIT).await;
    eventually("the subscription to be forgotten", async || {
        !bob.accounts()
            .await
            .get_account(pb::GetAccountRequest {})
            .await
            .unwrap()
            .into_inner()
            .push_subscribed
    })
    .await;
    assert_eq!(outbox_depth(&app).await, 0);
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_asked_delay() {
    let (app, service) = TestApp::spawn_with_push(|_| {}).await;
    let (alice, bob) = subscribed_pair(&app, &service, "bob", None).await;
    service.script(&[Reply::RetryAfter {
        status: 429,
        secs: 30,
    }]);
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    service.wait_for(1, WAIT).await;
    // Rescheduled 30 s out (Retry-After beats the 5 s back-off), not before.
    let now = app.clock.now();
    retry_scheduled(&app, now + 30 * SECOND).await;
    assert!(
        app.state
            .store
            .due_pushes(now + 29 * SECOND, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(service.received().len(), 1);

    app.clock.advance(31 * SECOND);
    app.state.push_wake.notify_one();
    let got = service.wait_for(2, WAIT).await;
    assert_eq!(got[1].reply, Reply::Status(201));
    eventually("an empty outbox", async || outbox_depth(&app).await == 0).await;
    assert_eq!(service.received().len(), 2, "delivered once after the 429");
}

#[tokio::test]
async fn server_errors_back_off_and_deliver_once() {
    let (app, service) = TestApp::spawn_with_push(|_| {}).await;
    let (alice, bob) = subscribed_pair(&app, &service, "bob", None).await;
    service.script(&[Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    // Back-off doubles: 5 s, 10 s, 20 s; move the clock past each.
    for (attempt, wait) in [(1, 5), (2, 10), (3, 20)] {
        service.wait_for(attempt, WAIT).await;
        let now = app.clock.now();
        retry_scheduled(&app, now + wait * SECOND).await;
        app.clock.advance(wait * SECOND + SECOND);
        app.state.push_wake.notify_one();
    }
    let got = service.wait_for(4, WAIT).await;
    let delivered: Vec<_> = got
        .iter()
        .filter(|r| r.reply == Reply::Status(201))
        .collect();
    assert_eq!(delivered.len(), 1);
    eventually("an empty outbox", async || outbox_depth(&app).await == 0).await;
    assert_eq!(service.received().len(), 4);
}

#[tokio::test]
async fn pending_pushes_survive_a_restart() {
    let (app, service) = TestApp::spawn_with_push(|_| {}).await;
    let (alice, bob) = subscribed_pair(&app, &service, "bob", None).await;
    service.script(&[Reply::Status(503)]);
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    service.wait_for(1, WAIT).await;
    let now = app.clock.now();
    retry_scheduled(&app, now + 1).await;
    let app = app.restart().await;
    assert_eq!(
        outbox_depth(&app).await,
        1,
        "the pending push is still there"
    );
    app.clock.advance(6 * SECOND);
    app.state.push_wake.notify_one();
    let got = service.wait_for(2, WAIT).await;
    assert_eq!(got[1].reply, Reply::Status(201));
    eventually("an empty outbox", async || outbox_depth(&app).await == 0).await;
}

#[tokio::test]
async fn a_hanging_push_service_does_not_slow_the_sender() {
    let (app, service) = TestApp::spawn_with_push(|c| c.push_request_timeout_secs = 2).await;
    let (alice, bob) = subscribed_pair(&app, &service, "bob", None).await;
    service.script(&[Reply::Hang]);
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    // The push is now stuck at the stand-in...
    service.wait_for(1, WAIT).await;
    // ...and further sends still complete while it hangs.
    for _ in 0..3 {
        alice.send("MEDIA", &[&bob], None).await.unwrap();
    }
    assert_eq!(bob.list().await.len(), 4);
    // Their pushes go out while the first still hangs: no push waits for
    // another one to end.
    let got = service.wait_for(4, Duration::from_millis(1500)).await;
    assert_eq!(got[0].reply, Reply::Hang);
}

#[tokio::test]
async fn internal_endpoints_are_refused_without_the_allow_setting() {
    let app =
        TestApp::spawn_with(|c| c.push_vapid_contact = Some("mailto:ops@example.org".into())).await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    bob.set_contacts(&[&alice]).await;
    let mut sub = crate::harness::browser_subscription();
    for endpoint in [
        "https://127.0.0.1/push/x",
        "https://10.0.0.1/push/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/push/x",
        "https://localhost/push/x",
        "http://push.example.org/push/x",
    ] {
        sub["endpoint"] = json!(endpoint);
        let reply = bob.put_push_subscription(&sub).await;
        assert_eq!(reply.status, 400, "{endpoint}: {:?}", reply.json());
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("endpoint:")
        );
    }

    // Host names from /etc/hosts that resolve to loopback: a single label
    // (`vm`, `intranet`) is refused at once, as a name the local resolver
    // completes; a dotted one passes the subscription-time check and is
    // refused when the push is sent, after resolution.
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let names: Vec<String> = hosts
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let ip: std::net::IpAddr = parts.next()?.parse().ok()?;
            ip.is_loopback().then(|| {
                parts
                    .take_while(|n| !n.starts_with('#'))
                    .filter(|n| !n.contains("localhost"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        })
        .flatten()
        .collect();
    for name in names.iter().filter(|n| !n.contains('.')) {
        sub["endpoint"] = json!(format!("https://{name}/push/x"));
        let reply = bob.put_push_subscription(&sub).await;
        assert_eq!(reply.status, 400, "{name}: {:?}", reply.json());
    }
    let Some(name) = names.iter().find(|n| n.contains('.')) else {
        eprintln!("skipped the send-time check: /etc/hosts names no dotted loopback host");
        return;
    };
    sub["endpoint"] = json!(format!("https://{name}/push/x"));
    let reply = bob.put_push_subscription(&sub).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    eventually("the push to be dropped", async || {
        outbox_depth(&app).await == 0
    })
    .await;
    let metrics =
        piqchat_inbox::client::HttpClient::new(app.metrics_url.trim_end_matches("/metrics"), None)
            .json(Method::GET, "/metrics", None)
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("piqchat_pushes_total{reason=\"dropped\"} 1"),
        "{text}"
    );
    assert!(!text.contains("reason=\"sent\""), "{text}");
}

#[tokio::test]
async fn removing_the_subscription_or_the_account_drops_pending_pushes() {
    let (app, service) = TestApp::spawn_with_push(|_| {}).await;
    let (alice, bob) = subscribed_pair(&app, &service, "bob", None).await;
    let carol = app.registered_user().await;
    carol.set_contacts(&[&alice]).await;
    let sub = service.subscription("carol").json;
    let reply = carol.put_push_subscription(&sub).await;
    assert_eq!(reply.status, 200);

    // Both pushes fail once and wait for a retry.
    service.script(&[Reply::Status(503), Reply::Status(503)]);
    alice.send("MEDIA", &[&bob, &carol], None).await.unwrap();
    service.wait_for(2, WAIT).await;
    eventually("two pushes waiting", async || outbox_depth(&app).await == 2).await;

    let reply = bob
        .http()
        .json(Method::DELETE, "/v1/account/push-subscription", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(outbox_depth(&app).await, 1);
    let reply = carol
        .http()
        .json(Method::DELETE, "/v1/account", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(outbox_depth(&app).await, 0);
}

#[tokio::test]
async fn push_services_that_never_answer_do_not_delay_other_pushes() {
    let app = TestApp::spawn().await;
    let vapid = app.get_info().await.vapid_public_key;
    let silent = PushService::start(vapid.clone()).await;
    let normal = PushService::start(vapid).await;
    let origins = format!("{},{}", silent.origin(), normal.origin());
    // The default request timeout (15 s): what a hung service costs.
    let app = app
        .restart_with(|c| {
            c.push_vapid_contact = Some("mailto:ops@example.org".into());
            c.push_allowed_insecure_origins = origins;
        })
        .await;
    silent.script(&[Reply::Hang; 20]);
    let alice = app.registered_user().await;
    let mut hung = Vec::new();
    for i in 0..20 {
        let user = app.registered_user().await;
        user.set_contacts(&[&alice]).await;
        let reply = user
            .put_push_subscription(&silent.subscription(&format!("s{i}")).json)
            .await;
        assert_eq!(reply.status, 200);
        hung.push(user);
    }
    let (carol, dave) = subscribed_pair(&app, &normal, "dave", None).await;
    let hung_refs: Vec<&TestUser> = hung.iter().collect();
    alice.send("MEDIA", &hung_refs, None).await.unwrap();
    // The silent service now holds pushes it never answers.
    silent.wait_for(1, WAIT).await;
    let start = tokio::time::Instant::now();
    carol.send("MEDIA", &[&dave], None).await.unwrap();
    normal.wait_for(1, WAIT).await;
    let waited = start.elapsed();
    eprintln!("a normal push behind 20 silent endpoints waited {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "a normal push waited {waited:?} behind 20 silent endpoints"
    );
    // The silent service got at most its share of the slots.
    assert!(silent.received().len() <= 4, "{}", silent.received().len());
}
