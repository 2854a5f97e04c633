//! Forgetting on schedule (SPEC §8) and database backups, with a moved clock.

use std::collections::HashSet;

use piqchat_inbox::{
    clock::{DAY, HOUR, SECOND},
    domain::AttachmentId,
    jobs, pb,
};
use sqlx::Connection;

use crate::harness::{TestApp, TestUser, browser_subscription};

#[tokio::test]
async fn parcels_expire_after_90_days_with_their_attachments() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    let t0 = app.clock.now();
    alice
        .send("MEDIA", &[&bob], Some(vec![1; 1000]))
        .await
        .unwrap();
    app.clock.advance(10 * SECOND);
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    let (store, blobs) = (&app.state.store, &app.state.blobs);

    let kept = jobs::expire_parcels_once(store, blobs, t0 + 90 * DAY - SECOND, 90)
        .await
        .unwrap();
    assert_eq!(kept, (0, 0));
    assert_eq!(bob.list().await.len(), 2);
    let gone = jobs::expire_parcels_once(store, blobs, t0 + 90 * DAY + SECOND, 90)
        .await
        .unwrap();
    assert_eq!(gone, (1, 1), "the first parcel and its attachment");
    assert_eq!(bob.list().await.len(), 1);
    assert_eq!(app.attachment_files().await, 0);
}

#[tokio::test]
async fn exchanges_expire_after_7_days() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let t0 = app.clock.now();
    let token = alice.create_invite("card").await;
    let store = &app.state.store;
    // The sign-up invites made by `registered_user` are as old as this one.
    assert_eq!(
        jobs::expire_exchanges_once(store, t0 + 7 * DAY - SECOND, 7)
            .await
            .unwrap(),
        0
    );
    assert!(
        jobs::expire_exchanges_once(store, t0 + 7 * DAY + SECOND, 7)
            .await
            .unwrap()
            >= 1
    );
    let err = alice
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest { token })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn inactive_users_are_deleted_with_everything_attached() {
    let app = TestApp::spawn().await;
    let t0 = app.clock.now();
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(vec![2; 500]))
        .await
        .unwrap();
    bob.backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: "backup".into(),
        })
        .await
        .unwrap();
    let reply = bob.put_push_subscription(&browser_subscription()).await;
    assert_eq!(reply.status, 200);
    let bob_row = app.user_row(&bob).await;
    assert!(
        app.state
            .store
            .push_subscription(bob_row.entry_id)
            .await
            .unwrap()
            .is_some()
    );
    // Alice lists a day later, so she was seen at t0 + 1 day; bob never lists.
    app.clock.advance(DAY);
    alice.list().await;
    let (store, blobs) = (&app.state.store, &app.state.blobs);

    assert_eq!(
        jobs::expire_users_once(store, blobs, t0 + 365 * DAY - SECOND, 365)
            .await
            .unwrap(),
        (0, 0, 0)
    );
    let deleted = jobs::expire_users_once(store, blobs, t0 + 365 * DAY + SECOND, 365)
        .await
        .unwrap();
    assert_eq!(
        deleted,
        (1, 1, 1),
        "bob (never seen, created a year ago), his parcel and its attachment"
    );
    assert!(
        store
            .user_by_key(&bob.key.user_id())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .push_subscription(bob_row.entry_id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(app.attachment_files().await, 0);
    // Alice, seen a day later, goes a day later.
    assert!(
        store
            .user_by_key(&alice.key.user_id())
            .await
            .unwrap()
            .is_some()
    );
    let (users, _, _) = jobs::expire_users_once(store, blobs, t0 + 366 * DAY + SECOND, 365)
        .await
        .unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn statistics_rows_older_than_a_week_go() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice.send("MEDIA", &[&bob], None).await.unwrap();
    let t0 = app.clock.now();
    let store = &app.state.store;
    assert_eq!(
        jobs::expire_stats_once(store, t0 + 6 * DAY).await.unwrap(),
        0
    );
    assert_eq!(
        jobs::expire_stats_once(store, t0 + 8 * DAY).await.unwrap(),
        1
    );
}

#[tokio::test]
async fn orphan_and_temp_files_are_swept_after_a_grace_period() {
    // Writes into the folder directly; tests/it/blobs.rs sweeps a bucket.
    let app = TestApp::spawn_with(|c| c.attachments_s3 = None).await;
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(vec![3; 100]))
        .await
        .unwrap();
    let dir = app.state.config.attachments_path.clone();
    let orphan = AttachmentId::random();
    std::fs::write(dir.join(orphan.to_string()), b"orphan").unwrap();
    std::fs::write(
        dir.join("tmp").join(AttachmentId::random().to_string()),
        b"half-written",
    )
    .unwrap();
    std::fs::write(dir.join("README"), b"not ours").unwrap();
    let now = app.clock.now();
    let (store, blobs) = (&app.state.store, &app.state.blobs);

    // Fresh files may belong to an upload in flight: kept.
    assert_eq!(
        jobs::sweep_files_once(store, blobs, now).await.unwrap(),
        (0, 0)
    );
    // Foreign names are not attachments.
    assert_eq!(app.attachment_files().await, 2);
    let swept = jobs::sweep_files_once(store, blobs, now + HOUR + 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(swept, (1, 1));
    // The referenced attachment and the foreign file stay.
    assert_eq!(app.attachment_files().await, 1);
    assert!(dir.join("README").exists());
    let parcels = bob.list().await;
    assert_eq!(parcels[0].attachment_size, Some(100));
}

#[tokio::test]
async fn a_full_run_reports_counts() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(vec![4; 10]))
        .await
        .unwrap();
    let report = jobs::run_once(&app.state, app.clock.now() + 400 * DAY)
        .await
        .unwrap();
    assert_eq!(report.parcels, 1);
    assert_eq!(report.attachments, 1);
    assert_eq!(report.users, 2);
    assert!(report.exchanges >= 2);
    assert_eq!(report.stats_rows, 1);
}

#[tokio::test]
async fn a_backup_taken_under_writes_is_consistent_and_restores() {
    let app = TestApp::spawn().await;
    if app.skip_unless_sqlite("restores a SQLite backup file") {
        return;
    }
    let (alice, bob) = app.pair().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (alice, bob, stop, acked) = (alice.clone(), bob.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut parcels = alice.parcels().await;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 500 {
                let content = format!("w{w}-{n}");
                parcels
                    .send_parcel(pb::SendParcelRequest {
                        r#type: "MEDIA".into(),
                        recipients: vec![pb::ParcelRecipient {
                            user_id: bob.id(),
                            content: content.clone(),
                        }],
                        attachment: None,
                    })
                    .await
                    .unwrap();
                acked.lock().unwrap().push(content);
                n += 1;
            }
        }));
    }
    // Let some writes land, note what was acknowledged, then back up.
    while acked.lock().unwrap().len() < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let backup = app.dir.path().join("backup.sqlite");
    app.state.store.backup_to(&backup).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", backup.display()))
        .await
        .unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);

    // Restore: a fresh server on the backup file reads the data back.
    let restored = TestApp::spawn_with(|c| c.database_path = backup.clone()).await;
    assert_eq!(
        restored.server_tag, app.server_tag,
        "the server keys are in the backup"
    );
    let bob_there = TestUser::new(&restored, bob.key.clone());
    let contents: HashSet<String> = bob_there
        .list()
        .await
        .into_iter()
        .map(|p| p.content)
        .collect();
    let missing: Vec<_> = before.difference(&contents).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup but missing: {missing:?}"
    );
}

#[tokio::test]
async fn scheduled_backups_prune_old_files() {
    let app = TestApp::spawn().await;
    if app.on_postgres() {
        // No file backups of a shared database: the refusal says what to use.
        let dir = app.dir.path().join("backups");
        let refused = jobs::scheduled_backup_once(&app.state.store, &dir, 7, app.clock.now())
            .await
            .unwrap_err();
        assert!(format!("{refused:#}").contains("pg_dump"), "{refused:#}");
        return;
    }
    let dir = app.dir.path().join("backups");
    let now = app.clock.now();
    let store = &app.state.store;
    let old = jobs::scheduled_backup_once(store, &dir, 7, now - 8 * DAY)
        .await
        .unwrap();
    let recent = jobs::scheduled_backup_once(store, &dir, 7, now - 6 * DAY)
        .await
        .unwrap();
    let new = jobs::scheduled_backup_once(store, &dir, 7, now)
        .await
        .unwrap();
    assert!(!old.exists(), "older than 7 days");
    assert!(recent.exists() && new.exists());
    // Taking a backup onto an existing file fails instead of overwriting it.
    assert!(store.backup_to(&new).await.is_err());
}
