//! Two instances on one PostgreSQL database (and one attachment folder)
//! behave as one server. Runs only with `PIQCHAT_TEST_DATABASE_URL`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use piqchat_inbox::{client::HttpClient, jobs, pb};

use crate::harness::{TestApp, TestUser, clone_request, test_database_url, token_of_link};

/// True (and says why) when there is no PostgreSQL to run on.
fn no_postgres() -> bool {
    let missing = test_database_url().is_none();
    if missing {
        eprintln!("skipped: set PIQCHAT_TEST_DATABASE_URL to run the multi-instance tests");
    }
    missing
}

/// Polls `check` until it holds; fails after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_accepted_by_one_instance_is_a_replay_at_the_other() {
    if no_postgres() {
        return;
    }
    let a = TestApp::spawn().await;
    // Started before the request: its in-memory front never saw the nonce,
    // so only the shared table can refuse it.
    let b = a.another_instance().await;
    let user = a.user();
    let client = user.http();
    let req = client.request(Method::GET, "/v1/info", HeaderMap::new(), Bytes::new());
    let mut replay = clone_request(&req);
    assert_eq!(client.send(req).await.unwrap().status, 200);

    // The same signed request (its authority is A's) sent to B.
    replay.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(a.url.trim_start_matches("http://")).unwrap(),
    );
    *replay.uri_mut() = format!("{}/v1/info", b.url).parse().unwrap();
    let reply = HttpClient::new(&b.url, None).send(replay).await.unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("nonce was already used"),
        "{reply:?}"
    );
    // A fresh request to B is fine: B works, it refused only the replay.
    assert_eq!(
        b.user()
            .http()
            .json(Method::GET, "/v1/info", None)
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn each_queued_push_is_delivered_once_with_two_workers() {
    if no_postgres() {
        return;
    }
    let (a, service) = TestApp::spawn_with_push(|_| {}).await;
    let b = a.another_instance().await;
    let alice = a.registered_user().await;
    let bob = a.registered_user().await;
    bob.set_contacts(&[&alice]).await;
    let reply = bob
        .put_push_subscription(&service.subscription("bob").json)
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    // Only images push. Half the sends through each instance: each wakes its own worker, and
    // both workers poll the shared outbox.
    let alice_at_b = TestUser::new(&b, alice.key.clone());
    let bob_at_b = TestUser::new(&b, bob.key.clone());
    const SENDS: usize = 40;
    let sends: Vec<_> = (0..SENDS)
        .map(|i| {
            let (from, to) = if i % 2 == 0 {
                (alice.clone(), bob.clone())
            } else {
                (alice_at_b.clone(), bob_at_b.clone())
            };
            tokio::spawn(async move { from.send("MEDIA", &[&to], None).await })
        })
        .collect();
    for send in sends {
        send.await.unwrap().expect("send");
    }
    let got = service.wait_for(SENDS, Duration::from_secs(20)).await;
    assert_eq!(got.len(), SENDS);
    eventually("the outbox to empty", Duration::from_secs(10), async || {
        a.state.store.outbox_depth().await.unwrap() == 0
    })
    .await;
    // Time for a second delivery of anything, were a push claimed twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(service.received().len(), SENDS, "a push went out twice");
    let sent = |app: &TestApp| {
        app.state
            .metrics
            .pushes
            .get_or_create(&piqchat_inbox::metrics::ReasonLabels { reason: "sent" })
            .get()
    };
    eprintln!("pushes sent by A: {}, by B: {}", sent(&a), sent(&b));
    assert_eq!(sent(&a) + sent(&b), SENDS as u64);
}

#[tokio::test]
async fn scheduled_jobs_run_on_one_instance_and_the_other_takes_over() {
    if no_postgres() {
        return;
    }
    let a = TestApp::spawn().await;
    eventually(
        "the first instance to lead",
        Duration::from_secs(5),
        async || a.state.store.leadership().is_leader(),
    )
    .await;
    let b = a.another_instance().await;
    // B tried at start and found the lock taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.state.store.leadership().is_leader());
    let now = a.clock.now();
    assert!(
        jobs::scheduled_round(&a.state, now).await,
        "the leader runs"
    );
    assert!(
        !jobs::scheduled_round(&b.state, now).await,
        "the follower skips"
    );
    assert_eq!(a.state.metrics.retention_runs.get(), 1);
    assert_eq!(b.state.metrics.retention_runs.get(), 0);

    // The leader stops (its lock's connection closes): B takes over on its
    // next try, within the retry interval.
    a.stop().await;
    eventually(
        "the second instance to lead",
        Duration::from_secs(15),
        async || b.state.store.leadership().is_leader(),
    )
    .await;
    assert!(jobs::scheduled_round(&b.state, b.clock.now()).await);
    assert_eq!(b.state.metrics.retention_runs.get(), 1);
}

#[tokio::test]
async fn quotas_are_exact_under_concurrent_sends_through_both_instances() {
    if no_postgres() {
        return;
    }
    const QUOTA: u32 = 7;
    let a = TestApp::spawn_with(|c| c.limits.max_waiting_parcels = QUOTA).await;
    let b = a.another_instance().await;
    let (alice, bob) = a.pair().await;
    let carol = a.registered_user().await;
    bob.set_contacts(&[&alice, &carol]).await;
    let senders = [
        alice.clone(),
        TestUser::new(&b, alice.key.clone()),
        carol.clone(),
        TestUser::new(&b, carol.key.clone()),
    ];
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let from = senders[i % senders.len()].clone();
            let to = bob.clone();
            tokio::spawn(async move { from.send("TEXT", &[&to], None).await })
        })
        .collect();
    let (mut stored, mut refused) = (0, 0);
    for send in sends {
        match send.await.unwrap() {
            Ok(_) => stored += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((stored, refused), (QUOTA, 40 - QUOTA));
    assert_eq!(bob.list().await.len(), QUOTA as usize);
}

#[tokio::test]
async fn one_of_two_concurrent_accepts_wins() {
    if no_postgres() {
        return;
    }
    let a = TestApp::spawn().await;
    let b = a.another_instance().await;
    let alice = a.registered_user().await;
    for round in 0..10 {
        let token = alice.create_invite(&format!("card-{round}")).await;
        let accept = |url: String, answer: &'static str| {
            let token = token.clone();
            async move {
                let channel = piqchat_inbox::client::connect_anonymous(&url)
                    .await
                    .unwrap();
                pb::exchange_service_client::ExchangeServiceClient::new(channel)
                    .accept_exchange(pb::AcceptExchangeRequest {
                        token,
                        answer: Some(answer.to_owned()),
                        user_id: None,
                    })
                    .await
            }
        };
        let (at_a, at_b) = tokio::join!(
            accept(a.url.clone(), "from-a"),
            accept(b.url.clone(), "from-b")
        );
        assert_eq!(
            at_a.is_ok() as u32 + at_b.is_ok() as u32,
            1,
            "round {round}: {at_a:?} / {at_b:?}"
        );
        let loser = if at_a.is_ok() { at_b } else { at_a };
        assert_eq!(
            loser.unwrap_err().code(),
            tonic::Code::NotFound,
            "round {round}"
        );
    }
}

#[tokio::test]
async fn a_first_start_of_two_instances_makes_one_invite_and_one_set_of_keys() {
    let Some((a, b)) = TestApp::spawn_two_at_once().await else {
        eprintln!("skipped: set PIQCHAT_TEST_DATABASE_URL to run the multi-instance tests");
        return;
    };
    let invites = [&a, &b]
        .iter()
        .filter(|app| app.sign_up_invite.is_some())
        .count();
    assert_eq!(invites, 1, "one of the two instances printed an invite");
    assert_eq!(a.count_rows("exchanges").await, 1);
    let (info_a, info_b) = (a.get_info().await, b.get_info().await);
    assert!(!info_a.server_public_key.is_empty());
    assert_eq!(info_a.server_public_key, info_b.server_public_key);
    assert_eq!(info_a.vapid_public_key, info_b.vapid_public_key);
    // The invite one printed signs up at the other.
    let link = a
        .sign_up_invite
        .clone()
        .or(b.sign_up_invite.clone())
        .unwrap();
    let user = b.user();
    let reply = b
        .exchanges()
        .await
        .accept_exchange(pb::AcceptExchangeRequest {
            token: token_of_link(&link),
            answer: None,
            user_id: Some(user.id()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.sign_up(), pb::SignUpResult::Created);
    // Both read the one maintained total (GetInfo caches its statistics).
    let now = a.clock.now();
    assert_eq!(a.state.store.statistics(now).await.unwrap().users_total, 1);
    assert_eq!(b.state.store.statistics(now).await.unwrap().users_total, 1);
}

#[tokio::test]
async fn migrate_copies_a_sqlite_server_into_postgres_and_refuses_a_full_target() {
    if no_postgres() {
        return;
    }
    // A SQLite server with a bit of everything; its test database on the
    // PostgreSQL server stays empty and is the target.
    let sqlite = TestApp::spawn_with(|c| c.database_url = None).await;
    let target = crate::harness::TestDatabase::create().await.unwrap();
    let (alice, bob) = sqlite.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(b"image".to_vec()))
        .await
        .unwrap();
    alice.send("TEXT", &[&bob], None).await.unwrap();
    alice.create_invite("card").await;
    let before = sqlite.get_info().await;
    let path = sqlite.db_path().to_owned();
    let _files = sqlite.dir.clone();
    sqlite.stop().await;

    let counts = piqchat_inbox::store::copy_sqlite_to_postgres(&path, &target.target, false)
        .await
        .unwrap();
    let rows = |table: &str| counts.iter().find(|c| c.table == table).unwrap().target;
    assert_eq!(rows("parcels"), 2);
    assert_eq!(rows("attachments"), 1);
    assert!(rows("users") >= 2 && rows("server_config") >= 2 && rows("nonces") > 0);
    // A second run finds data and refuses; with force it copies again.
    let refused = piqchat_inbox::store::copy_sqlite_to_postgres(&path, &target.target, false)
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("--force"), "{refused:#}");
    let again = piqchat_inbox::store::copy_sqlite_to_postgres(&path, &target.target, true)
        .await
        .unwrap();
    assert_eq!(again, counts);

    // A PostgreSQL server on the copy: same keys, same parcels, the counters
    // right, and new rows continue after the copied ones.
    let pg = TestApp::spawn_with(|c| c.database_url = Some(target.target.clone())).await;
    let after = pg.get_info().await;
    assert_eq!(after.server_public_key, before.server_public_key);
    let bob = TestUser::new(&pg, bob.key.clone());
    let alice = TestUser::new(&pg, alice.key.clone());
    assert_eq!(bob.list().await.len(), 2);
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    assert_eq!(bob.list().await.len(), 3);
    let stats = pg.state.store.statistics(pg.clock.now()).await.unwrap();
    assert_eq!((stats.users_total, stats.media_parcels_waiting), (2, 2));
    pg.stop().await;
    drop(target);
}

#[tokio::test]
async fn a_claimed_push_is_not_claimed_again_until_its_lease_runs_out() {
    use piqchat_inbox::{
        clock::MINUTE,
        domain::ParcelId,
        store::{NewParcel, NewParcels, NewPush, PushSubscriptionRow},
    };
    if no_postgres() {
        return;
    }
    // No push configured: no worker runs, the test claims by hand.
    let a = TestApp::spawn().await;
    let b = a.another_instance().await;
    let (alice, bob) = a.pair().await;
    let bob_row = a.user_row(&bob).await;
    let now = a.clock.now();
    let (sa, sb) = (&a.state.store, &b.state.store);
    let sub = PushSubscriptionRow {
        endpoint: "https://push.example.org/bob".into(),
        p256dh: vec![4; 65],
        auth: vec![1; 16],
        content_encoding: "aes128gcm".into(),
        expires_at: None,
    };
    sa.put_push_subscription(bob_row.entry_id, &sub, now)
        .await
        .unwrap();
    sa.insert_parcels(NewParcels {
        sender: alice.key.user_id(),
        kind: "MEDIA".into(),
        attachment: None,
        parcels: vec![NewParcel {
            id: ParcelId::random(),
            recipient: bob_row.entry_id,
            content: "c".into(),
        }],
        now,
        max_waiting_parcels: 100,
        max_waiting_attachment_bytes: 1 << 20,
        push: Some(NewPush {
            payload: "p".into(),
            ttl: 60 * MINUTE,
        }),
    })
    .await
    .unwrap()
    .unwrap();

    let claimed = sa.due_pushes(now, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        sb.due_pushes(now, 10).await.unwrap().is_empty(),
        "claimed twice"
    );
    // The claimer "crashed": after the lease (10 min) another worker takes it.
    let later = now + 11 * MINUTE;
    let taken = sb.due_pushes(later, 10).await.unwrap();
    assert_eq!(
        taken.iter().map(|p| p.id).collect::<Vec<_>>(),
        [claimed[0].id]
    );
    // A released claim is due again at once.
    sb.release_pushes(&[taken[0].id]).await.unwrap();
    assert_eq!(sa.due_pushes(later, 10).await.unwrap().len(), 1);
}
