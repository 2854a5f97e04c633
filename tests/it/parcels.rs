//! Parcels and attachments (SPEC §4).

use http::{HeaderMap, Method};
use piqchat_inbox::pb::{self, LastSeen};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::{TestApp, TestUser};

const DOWNLOAD: &str = "/piqchat.inbox.v1.ParcelService/DownloadAttachment";
const SEND: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn download_grpc(
    user: &TestUser,
    parcel_id: &str,
) -> Result<(Vec<u8>, Option<String>), tonic::Status> {
    let response = user
        .parcels()
        .await
        .download_attachment(pb::DownloadAttachmentRequest {
            parcel_id: parcel_id.into(),
        })
        .await?;
    let length = response
        .metadata()
        .get("x-content-length")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut stream = response.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?.chunk;
        assert!(chunk.len() <= 1 << 20 && !chunk.is_empty());
        data.extend_from_slice(&chunk);
    }
    Ok((data, length))
}

#[tokio::test]
async fn a_parcel_with_attachment_round_trips_through_every_download_path() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    let data = random_bytes(700_000, 1);
    let sent = alice
        .send("MEDIA", &[&bob], Some(data.clone()))
        .await
        .unwrap();
    assert_eq!(sent.delivered_recipient_ids, vec![bob.id()]);
    assert!(sent.forbidden_recipient_ids.is_empty());

    let parcels = bob.list().await;
    assert_eq!(parcels.len(), 1);
    let p = &parcels[0];
    assert_eq!(
        (p.r#type.as_str(), p.content.as_str()),
        ("MEDIA", "content-0")
    );
    assert_eq!(p.sender_id, alice.id());
    assert_eq!(p.attachment_size, Some(700_000));
    assert!((p.sent_at.unwrap().seconds * 1000 - app.clock.now()).abs() < 2000);

    // gRPC server streaming.
    let (got, length) = download_grpc(&bob, &p.id).await.unwrap();
    assert!(got == data, "gRPC download differs");
    assert_eq!(length.as_deref(), Some("700000"));

    // gRPC-web server streaming.
    let chunks: Vec<pb::DownloadAttachmentResponse> = bob
        .http()
        .grpc_web_call(
            DOWNLOAD,
            &pb::DownloadAttachmentRequest {
                parcel_id: p.id.clone(),
            },
        )
        .await
        .unwrap();
    assert!(chunks.len() >= 2, "streamed in chunks");
    assert!(chunks.concat_chunks() == data, "gRPC-web download differs");

    // Plain HTTP GET on the gateway.
    let reply = bob
        .http()
        .send(bob.http().request(
            Method::GET,
            &format!("/v1/parcels/{}/attachment", p.id),
            HeaderMap::new(),
            Default::default(),
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/octet-stream");
    assert_eq!(reply.headers["content-length"], "700000");
    assert!(reply.body == data, "HTTP download differs");
}

trait Concat {
    fn concat_chunks(&self) -> Vec<u8>;
}

impl Concat for Vec<pb::DownloadAttachmentResponse> {
    fn concat_chunks(&self) -> Vec<u8> {
        self.iter().flat_map(|c| c.chunk.iter().copied()).collect()
    }
}

#[tokio::test]
async fn one_attachment_is_stored_once_for_many_recipients() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let mut friends = Vec::new();
    for _ in 0..5 {
        let f = app.registered_user().await;
        f.set_contacts(&[&alice]).await;
        friends.push(f);
    }
    let refs: Vec<&TestUser> = friends.iter().collect();
    let data = random_bytes(100_000, 2);
    let sent = alice
        .send("MEDIA", &refs, Some(data.clone()))
        .await
        .unwrap();
    assert_eq!(sent.delivered_recipient_ids.len(), 5);
    assert_eq!(app.attachment_files().await, 1);
    for (i, f) in friends.iter().enumerate() {
        let parcels = f.list().await;
        assert_eq!(parcels.len(), 1);
        assert_eq!(
            parcels[0].content,
            format!("content-{i}"),
            "each recipient gets their own content"
        );
        assert!(download_grpc(f, &parcels[0].id).await.unwrap().0 == data);
    }
}

#[tokio::test]
async fn recipients_that_do_not_accept_the_sender_are_reported() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    let carol = app.registered_user().await; // does not whitelist alice
    let stranger = app.user(); // not registered here
    let sent = alice
        .send("MEDIA", &[&bob, &carol, &stranger], None)
        .await
        .unwrap();
    assert_eq!(sent.delivered_recipient_ids, vec![bob.id()]);
    let mut forbidden = sent.forbidden_recipient_ids.clone();
    forbidden.sort();
    let mut expected = vec![carol.id(), stranger.id()];
    expected.sort();
    assert_eq!(forbidden, expected);
    assert!(carol.list().await.is_empty());
}

#[tokio::test]
async fn when_nobody_accepts_nothing_is_kept() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let carol = app.registered_user().await;
    let err = alice
        .send("MEDIA", &[&carol], Some(random_bytes(50_000, 3)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(app.attachment_files().await, 0);
    assert!(carol.list().await.is_empty());
    // An unsigned send is not even considered.
    let mut anon = pb::parcel_service_client::ParcelServiceClient::new(app.channel().await);
    let err = anon
        .send_parcel(pb::SendParcelRequest {
            r#type: "MEDIA".into(),
            recipients: vec![],
            attachment: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_20_mib_attachment_travels_over_grpc_web_from_an_http1_client() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    let data = random_bytes(20 << 20, 4);
    let sent: pb::SendParcelResponse = alice
        .http()
        .grpc_web_unary(
            SEND,
            &pb::SendParcelRequest {
                r#type: "MEDIA".into(),
                recipients: vec![pb::ParcelRecipient {
                    user_id: bob.id(),
                    content: "key".into(),
                }],
                attachment: Some(data.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(sent.delivered_recipient_ids, vec![bob.id()]);
    let parcels = bob.list().await;
    assert_eq!(parcels[0].attachment_size, Some(20 << 20));
    let chunks: Vec<pb::DownloadAttachmentResponse> = bob
        .http()
        .grpc_web_call(
            DOWNLOAD,
            &pb::DownloadAttachmentRequest {
                parcel_id: parcels[0].id.clone(),
            },
        )
        .await
        .unwrap();
    assert!(chunks.concat_chunks() == data);
}

#[tokio::test]
async fn over_limit_sends_are_refused_and_store_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_attachment_bytes = 100_000;
        c.limits.max_content_bytes = 1000;
        c.limits.max_recipients = 3;
    })
    .await;
    let (alice, bob) = app.pair().await;

    // Just over the attachment limit: our own check.
    let err = alice
        .send("MEDIA", &[&bob], Some(random_bytes(100_001, 5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most 100000 bytes"), "{err:?}");
    // Far over: the message-size limit refuses it before it is buffered.
    let err = alice
        .send("MEDIA", &[&bob], Some(random_bytes(2 << 20, 5)))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    // At the limit: fine.
    alice
        .send("MEDIA", &[&bob], Some(random_bytes(100_000, 5)))
        .await
        .unwrap();
    assert_eq!(bob.list().await.len(), 1);

    let mut req = pb::SendParcelRequest {
        r#type: "MEDIA".into(),
        recipients: vec![pb::ParcelRecipient {
            user_id: bob.id(),
            content: "x".repeat(1001),
        }],
        attachment: None,
    };
    let err = alice
        .parcels()
        .await
        .send_parcel(req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("content for recipient 0"), "{err:?}");

    let others: Vec<TestUser> = (0..3).map(|_| app.user()).collect();
    req.recipients = std::iter::once(&bob)
        .chain(others.iter())
        .map(|u| pb::ParcelRecipient {
            user_id: u.id(),
            content: "c".into(),
        })
        .collect();
    let err = alice
        .parcels()
        .await
        .send_parcel(req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 3"), "{err:?}");

    for (kind, why) in [
        ("", "empty"),
        ("a".repeat(33).as_str(), "too long"),
        ("ME DIA", "space"),
    ] {
        let err = alice.send(kind, &[&bob], None).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{why}");
    }
    let err = alice
        .send("MEDIA", &[&bob], Some(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = alice.send("MEDIA", &[&bob, &bob], None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = alice.send("MEDIA", &[], None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    req.recipients = vec![pb::ParcelRecipient {
        user_id: "nope".into(),
        content: String::new(),
    }];
    let err = alice.parcels().await.send_parcel(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("recipient 0: invalid user id"),
        "{err:?}"
    );

    // Only the one good send is stored.
    assert_eq!(bob.list().await.len(), 1);
    assert_eq!(app.attachment_files().await, 1);
}

#[tokio::test]
async fn per_recipient_quotas_refuse_the_whole_send() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_waiting_parcels = 2;
        c.limits.max_waiting_attachment_bytes = 250_000;
    })
    .await;
    let (alice, bob) = app.pair().await;
    let carol = app.registered_user().await;
    carol.set_contacts(&[&alice]).await;

    alice
        .send("MEDIA", &[&bob], Some(random_bytes(100_000, 6)))
        .await
        .unwrap();
    alice
        .send("MEDIA", &[&bob, &carol], Some(random_bytes(100_000, 7)))
        .await
        .unwrap();
    // Bob has 2 waiting: a send to bob and carol stores nothing at all.
    let err = alice
        .send("MEDIA", &[&carol, &bob], None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("MAX_WAITING_PARCELS_PER_RECIPIENT"),
        "{err:?}"
    );
    assert_eq!(carol.list().await.len(), 1);

    // Carol has 100 KB waiting: 200 KB more would pass 250 KB.
    let err = alice
        .send("MEDIA", &[&carol], Some(random_bytes(200_000, 8)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("MAX_WAITING_ATTACHMENT_BYTES_PER_RECIPIENT"),
        "{err:?}"
    );
    assert_eq!(
        app.attachment_files().await,
        2,
        "the refused attachment was removed"
    );
}

/// The quota reads counters kept beside each user: every way a parcel
/// goes (deleted by the recipient, expired by retention) frees its place
/// and its bytes, and a refused send adds nothing.
#[tokio::test]
async fn quotas_free_up_as_parcels_go() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_waiting_parcels = 2;
        c.limits.max_waiting_attachment_bytes = 250_000;
    })
    .await;
    let (alice, bob) = app.pair().await;
    let full = |e: tonic::Status, what: &str| {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains(what), "{e:?}");
    };
    for seed in 0..2 {
        alice
            .send("MEDIA", &[&bob], Some(random_bytes(100_000, 20 + seed)))
            .await
            .unwrap();
    }
    full(
        alice.send("TEXT", &[&bob], None).await.unwrap_err(),
        "MAX_WAITING_PARCELS_PER_RECIPIENT",
    );

    // Bob deletes one: one place and 100 KB free again.
    let first = bob.list().await[0].id.clone();
    bob.parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest { parcel_id: first })
        .await
        .unwrap();
    full(
        alice
            .send("MEDIA", &[&bob], Some(random_bytes(150_001, 22)))
            .await
            .unwrap_err(),
        "MAX_WAITING_ATTACHMENT_BYTES_PER_RECIPIENT",
    );
    alice
        .send("MEDIA", &[&bob], Some(random_bytes(150_000, 23)))
        .await
        .unwrap();
    full(
        alice.send("TEXT", &[&bob], None).await.unwrap_err(),
        "MAX_WAITING_PARCELS_PER_RECIPIENT",
    );

    // Retention removes both: the whole quota is free.
    let later = app.clock.now() + 91 * 24 * 3_600_000;
    let (expired, _) =
        piqchat_inbox::jobs::expire_parcels_once(&app.state.store, &app.state.blobs, later, 90)
            .await
            .unwrap();
    assert_eq!(expired, 2);
    assert!(bob.list().await.is_empty());
    for seed in 0..2 {
        alice
            .send("MEDIA", &[&bob], Some(random_bytes(125_000, 24 + seed)))
            .await
            .unwrap();
    }
    full(
        alice.send("TEXT", &[&bob], None).await.unwrap_err(),
        "MAX_WAITING_PARCELS_PER_RECIPIENT",
    );
}

#[tokio::test]
async fn a_disk_space_floor_refuses_new_attachments() {
    // The floor guards the folder's disk; a bucket has none to fill.
    let app = TestApp::spawn_with(|c| {
        c.attachments_s3 = None;
        c.limits.min_free_disk_bytes = u64::MAX / 4;
    })
    .await;
    let (alice, bob) = app.pair().await;
    let err = alice
        .send("MEDIA", &[&bob], Some(random_bytes(1000, 9)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("disk space"));
    assert_eq!(app.attachment_files().await, 0);
    // Parcels without attachments still go through.
    alice.send("PROFILE", &[&bob], None).await.unwrap();
}

#[tokio::test]
async fn a_sender_from_another_server_sends_here() {
    let here = TestApp::spawn().await;
    let there = TestApp::spawn().await;
    let xavier_there = there.registered_user().await;
    // Xavier's key, signing for *this* server (tag = this server's key).
    let xavier = TestUser::new(&here, xavier_there.key.clone());
    let bob = here.registered_user().await;
    bob.set_contacts(&[&xavier]).await;
    let accepted = xavier
        .parcels()
        .await
        .check_acceptance(pb::CheckAcceptanceRequest {
            recipient_id: bob.id(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(accepted.accepted);
    xavier
        .send("MEDIA", &[&bob], Some(random_bytes(10_000, 10)))
        .await
        .unwrap();
    assert_eq!(bob.list().await[0].sender_id, xavier.id());
    // The same key signing with the other server's tag is refused here.
    let err = xavier_there
        .parcels()
        .await
        .check_acceptance(pb::CheckAcceptanceRequest {
            recipient_id: bob.id(),
        })
        .await;
    assert!(err.is_ok(), "a signature for `there` works at `there`");
    let wrong = TestUser {
        signer: xavier_there.signer.clone(),
        ..xavier.clone()
    };
    let err = wrong.send("MEDIA", &[&bob], None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn only_the_recipient_can_list_download_and_delete() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    let mallory = app.registered_user().await;
    alice
        .send("MEDIA", &[&bob], Some(random_bytes(1000, 11)))
        .await
        .unwrap();
    let id = bob.list().await[0].id.clone();

    assert!(mallory.list().await.is_empty());
    assert!(alice.list().await.is_empty(), "the sender does not see it");
    for user in [&mallory, &alice] {
        let err = download_grpc(user, &id).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = user
            .parcels()
            .await
            .delete_parcel(pb::DeleteParcelRequest {
                parcel_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let reply = mallory
        .http()
        .json(Method::GET, &format!("/v1/parcels/{id}/attachment"), None)
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    let err = app
        .user()
        .parcels()
        .await
        .list_parcels(pb::ListParcelsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = download_grpc(&bob, "not-an-id").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Bob can, over the JSON gateway too.
    let reply = bob
        .http()
        .json(Method::DELETE, &format!("/v1/parcels/{id}"), None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert!(bob.list().await.is_empty());
    assert_eq!(app.attachment_files().await, 0);
}

#[tokio::test]
async fn a_shared_attachment_goes_with_its_last_parcel() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    let carol = app.registered_user().await;
    bob.set_contacts(&[&alice]).await;
    carol.set_contacts(&[&alice]).await;
    let data = random_bytes(5000, 12);
    alice
        .send("MEDIA", &[&bob, &carol], Some(data.clone()))
        .await
        .unwrap();
    let bob_parcel = bob.list().await[0].id.clone();
    let carol_parcel = carol.list().await[0].id.clone();
    assert_eq!(app.attachment_files().await, 1);

    bob.parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest {
            parcel_id: bob_parcel,
        })
        .await
        .unwrap();
    assert_eq!(
        app.attachment_files().await,
        1,
        "carol's parcel still needs it"
    );
    assert!(download_grpc(&carol, &carol_parcel).await.unwrap().0 == data);
    carol
        .parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest {
            parcel_id: carol_parcel.clone(),
        })
        .await
        .unwrap();
    assert_eq!(app.attachment_files().await, 0);
    let err = carol
        .parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest {
            parcel_id: carol_parcel,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn delivery_status_counts_waiting_media_and_buckets_last_seen() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    let status = |user: TestUser, recipient: String| async move {
        user.parcels()
            .await
            .get_delivery_status(pb::GetDeliveryStatusRequest {
                recipient_id: recipient,
            })
            .await
            .map(tonic::Response::into_inner)
    };
    let s = status(alice.clone(), bob.id()).await.unwrap();
    assert_eq!(
        (s.waiting_media_parcels, s.last_seen()),
        (0, LastSeen::Never)
    );

    alice.send("MEDIA", &[&bob], None).await.unwrap();
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    alice.send("PROFILE_UPDATE", &[&bob], None).await.unwrap();
    let s = status(alice.clone(), bob.id()).await.unwrap();
    assert_eq!(
        (s.waiting_media_parcels, s.last_seen()),
        (2, LastSeen::Never)
    );

    let parcels = bob.list().await;
    assert_eq!(parcels.len(), 3);
    assert_eq!(
        status(alice.clone(), bob.id()).await.unwrap().last_seen(),
        LastSeen::Recently
    );
    const DAY: i64 = 86_400_000;
    for (moved, bucket) in [
        (2 * DAY - 1000, LastSeen::Recently),
        (2 * DAY + 1000, LastSeen::WithinWeek),
        (7 * DAY - 1000, LastSeen::WithinWeek),
        (7 * DAY + 1000, LastSeen::WithinMonth),
        (31 * DAY - 1000, LastSeen::WithinMonth),
        (31 * DAY + 1000, LastSeen::LongTime),
    ] {
        // Move both clocks: the server's and the signer's (they share it).
        app.clock.advance(moved);
        assert_eq!(
            status(alice.clone(), bob.id()).await.unwrap().last_seen(),
            bucket,
            "{moved} ms later"
        );
        app.clock.advance(-moved);
    }
    bob.parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest {
            parcel_id: parcels[0].id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        status(alice.clone(), bob.id())
            .await
            .unwrap()
            .waiting_media_parcels,
        1
    );

    // Callers the recipient does not accept learn nothing.
    let mallory = app.registered_user().await;
    let err = status(mallory.clone(), bob.id()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let accepted = mallory
        .parcels()
        .await
        .check_acceptance(pb::CheckAcceptanceRequest {
            recipient_id: bob.id(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!accepted.accepted);
    // Over the JSON gateway.
    let reply = alice
        .http()
        .json(
            Method::GET,
            &format!("/v1/recipients/{}/delivery-status", bob.id()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json()["waitingMediaParcels"], 1);
    assert_eq!(reply.json()["lastSeen"], "LAST_SEEN_RECENTLY");
}

#[tokio::test]
async fn listing_records_the_client_version_and_stats_count_media() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    alice
        .send("CONTACT_SUGGESTION", &[&bob], None)
        .await
        .unwrap();

    let mut req = tonic::Request::new(pb::ListParcelsRequest::default());
    req.metadata_mut()
        .insert("x-client-version", "2.4.1".parse().unwrap());
    bob.parcels().await.list_parcels(req).await.unwrap();
    let row = app.user_row(&bob).await;
    assert_eq!(row.client_version.as_deref(), Some("2.4.1"));
    assert_eq!(row.last_seen_at, Some(app.clock.now()));
    // Listing again within a minute writes nothing; later it does.
    let first_seen = app.clock.now();
    app.clock.advance(30 * 1000);
    bob.list().await;
    let row = app.user_row(&bob).await;
    assert_eq!(row.last_seen_at, Some(first_seen));
    app.clock.advance(60 * 1000);
    bob.list().await;
    let row = app.user_row(&bob).await;
    assert_eq!(row.last_seen_at, Some(app.clock.now()));
    assert_eq!(
        row.client_version.as_deref(),
        Some("2.4.1"),
        "kept when not sent"
    );

    let stats = app.get_info().await.statistics.unwrap();
    assert_eq!(stats.media_parcels_waiting, 2);
    assert_eq!(stats.media_parcels_received_7d, 2);
    assert_eq!(stats.users_total, 2);
    assert_eq!(stats.users_active_7d, 1);
    // A week later the received count has rolled off (and the cache expired).
    app.clock.advance(8 * 86_400_000);
    let stats = app.get_info().await.statistics.unwrap();
    assert_eq!(stats.media_parcels_received_7d, 0);
    assert_eq!(stats.media_parcels_waiting, 2);
    assert_eq!(stats.users_active_7d, 0);
    assert_eq!(stats.users_active_30d, 1);
}

#[tokio::test]
async fn an_attachment_whose_file_is_gone_is_not_found() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(random_bytes(1000, 13)))
        .await
        .unwrap();
    let id = bob.list().await[0].id.clone();
    // As after restoring a database backup without the attachments.
    for (file, _) in app.state.blobs.files().await.unwrap() {
        assert!(app.state.blobs.remove(&file).await.unwrap());
    }
    let err = download_grpc(&bob, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "the attachment is no longer stored");
    // The parcel itself can still be deleted.
    bob.parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest { parcel_id: id })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stalled_upload_gives_its_turn_back() {
    use http_body_util::{BodyExt, StreamBody};
    let app = TestApp::spawn_with(|c| {
        c.limits.max_concurrent_uploads = 1;
        c.limits.upload_timeout_secs = 1;
    })
    .await;
    let (alice, bob) = app.pair().await;
    // An upload that sends half its body and then nothing.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>(1);
    let mut req = http::Request::post(format!("{}{SEND}", app.url))
        .header("content-type", "application/grpc-web+proto")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    alice.signer.sign_request(&mut req).unwrap();
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&[
        0, 0, 1, 0, 0,
    ]))))
    .await
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let stalled = client.request(req).await.unwrap();
    assert_eq!(stalled.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    let _ = stalled.into_body().collect().await;
    drop(tx);
    // The only permit is free again: a normal send goes through.
    alice
        .send("MEDIA", &[&bob], Some(vec![1; 10]))
        .await
        .unwrap();
}

#[tokio::test]
async fn half_written_attachments_are_removed_at_start() {
    // Temp files are the folder's; a bucket has none.
    let app = TestApp::spawn_with(|c| c.attachments_s3 = None).await;
    let tmp = app.state.config.attachments_path.join("tmp");
    let leftover = tmp.join(piqchat_inbox::domain::AttachmentId::random().to_string());
    std::fs::write(&leftover, b"half an upload").unwrap();
    let app = app.restart().await;
    assert!(
        !leftover.exists(),
        "the leftover temp file was removed at start"
    );
    assert!(tmp.is_dir());
    drop(app);
}

#[tokio::test]
async fn the_inbox_is_listed_in_pages_on_grpc_and_json() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    for _ in 0..3 {
        alice.send("note", &[&bob], None).await.unwrap();
    }
    let all = bob.list().await;
    assert_eq!(all.len(), 3);
    let list = |page_size: i32, page_token: String| {
        let bob = bob.clone();
        async move {
            bob.parcels()
                .await
                .list_parcels(pb::ListParcelsRequest {
                    page_size,
                    page_token,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let first = list(2, String::new()).await.unwrap();
    assert_eq!(first.parcels, all[..2]);
    assert!(!first.next_page_token.is_empty());
    let second = list(2, first.next_page_token.clone()).await.unwrap();
    assert_eq!(second.parcels, all[2..]);
    assert_eq!(second.next_page_token, "");
    // Without a size: everything, no token.
    let whole = list(0, String::new()).await.unwrap();
    assert_eq!(
        (whole.parcels.len(), whole.next_page_token.as_str()),
        (3, "")
    );
    // Mistakes name the field.
    let err = list(-1, String::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_size"), "{err:?}");
    let err = list(2, "forged".into()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{err:?}");

    // The JSON gateway takes the same as query parameters (docs/AUTH.md's
    // worked example is `GET /v1/parcels?page_size=20`).
    let reply = bob
        .http()
        .json(Method::GET, "/v1/parcels?page_size=2", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["parcels"].as_array().unwrap().len(), 2);
    let token = body["nextPageToken"].as_str().unwrap().to_owned();
    let reply = bob
        .http()
        .json(
            Method::GET,
            &format!("/v1/parcels?page_size=2&page_token={token}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["parcels"].as_array().unwrap().len(), 1);
}
