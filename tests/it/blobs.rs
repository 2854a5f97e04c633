//! Attachment storage through the Blobs API: a folder by default, a bucket
//! with `PIQCHAT_TEST_S3_URL` set (see `harness::test_bucket`).

use piqchat_inbox::{
    app::App,
    blobs::{self, Blobs},
    clock::{Clock, HOUR, SECOND},
    config::Config,
    domain::AttachmentId,
    jobs, pb,
};
use tokio::io::AsyncReadExt as _;
use tokio_stream::StreamExt as _;

use crate::harness::{TestApp, now_ms, test_bucket};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn a_large_attachment_is_stored_and_streamed_back_in_chunks() {
    // Above the 8 MiB part size: a bucket gets a multipart upload.
    let size = 21 << 20;
    let app = TestApp::spawn_with(|c| c.limits.max_attachment_bytes = 24 << 20).await;
    let (alice, bob) = app.pair().await;
    let data = pattern(size);
    alice
        .send("MEDIA", &[&bob], Some(data.clone()))
        .await
        .unwrap();
    assert_eq!(app.attachment_files().await, 1);
    let id = bob.list().await[0].id.clone();
    let response = bob
        .parcels()
        .await
        .download_attachment(pb::DownloadAttachmentRequest { parcel_id: id })
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("x-content-length").unwrap(),
        size.to_string().as_str()
    );
    let mut stream = response.into_inner();
    let (mut got, mut chunks) = (Vec::with_capacity(size), 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap().chunk;
        assert!(
            !chunk.is_empty() && chunk.len() <= 256 << 10,
            "{}",
            chunk.len()
        );
        got.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert_eq!(got.len(), size);
    assert!(got == data, "the bytes came back unchanged");
    assert_eq!(chunks, size.div_ceil(256 << 10), "full chunks but the last");

    // The reader yields the start without the rest having been read.
    let (file, stored) = app.state.blobs.files().await.unwrap()[0];
    assert!(stored > 0);
    let mut reader = app.state.blobs.open_read(&file).await.unwrap();
    let mut head = vec![0; 1000];
    reader.read_exact(&mut head).await.unwrap();
    assert_eq!(head, data[..1000]);
}

#[tokio::test]
async fn removed_attachments_are_gone_and_removing_again_is_no_error() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(pattern(5000)))
        .await
        .unwrap();
    let blobs = &app.state.blobs;
    let (id, _) = blobs.files().await.unwrap()[0];
    assert!(blobs.exists(&id).await.unwrap());
    let parcel = bob.list().await[0].id.clone();
    bob.parcels()
        .await
        .delete_parcel(pb::DeleteParcelRequest { parcel_id: parcel })
        .await
        .unwrap();
    assert!(!blobs.exists(&id).await.unwrap());
    assert_eq!(app.attachment_files().await, 0);
    assert!(!blobs.remove(&id).await.unwrap(), "was not there any more");
    let err = blobs.open_read(&id).await.err().expect("gone");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn the_orphan_sweep_lists_and_removes_only_old_unreferenced_attachments() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(pattern(100)))
        .await
        .unwrap();
    let blobs = &app.state.blobs;
    // An attachment no row references, as after a crash between the write
    // and the rows' commit.
    let orphan = AttachmentId::random();
    blobs.write(&orphan, pattern(10)).await.unwrap();
    let listed = blobs.files().await.unwrap();
    assert_eq!(listed.len(), 2);
    let now = app.clock.now();
    for (_, modified) in &listed {
        assert!(
            (now - 60 * SECOND..now + 60 * SECOND).contains(modified),
            "modification time {modified} near {now}"
        );
    }
    let store = &app.state.store;
    assert_eq!(
        jobs::sweep_files_once(store, blobs, now).await.unwrap(),
        (0, 0),
        "fresh attachments may belong to a send in flight"
    );
    assert_eq!(
        jobs::sweep_files_once(store, blobs, now + HOUR + 60 * SECOND)
            .await
            .unwrap(),
        (1, 0)
    );
    assert!(!blobs.exists(&orphan).await.unwrap());
    assert_eq!(app.attachment_files().await, 1);
    assert_eq!(bob.list().await[0].attachment_size, Some(100));
}

#[tokio::test]
async fn the_store_answers_the_readiness_ping() {
    let app = TestApp::spawn().await;
    app.state.blobs.ping().await.unwrap();
    if let Some(s3) = test_bucket() {
        let missing = piqchat_inbox::blobs::S3Settings {
            bucket: "piqchat-no-such-bucket".into(),
            ..s3
        };
        let blobs = Blobs::from_config(&Config {
            attachments_s3: Some(missing),
            ..(*app.state.config).clone()
        })
        .unwrap();
        assert!(blobs.ping().await.is_err(), "a missing bucket is not ready");
    }
}

#[tokio::test]
async fn a_server_whose_bucket_is_missing_does_not_start() {
    let Some(s3) = test_bucket() else {
        eprintln!("skipped: set PIQCHAT_TEST_S3_URL to run against a bucket");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_dir(dir.path());
    config.attachments_s3 = Some(piqchat_inbox::blobs::S3Settings {
        bucket: "piqchat-no-such-bucket".into(),
        ..s3
    });
    let Err(err) = App::build(config, Clock::manual(now_ms())).await else {
        panic!("the server started without its bucket");
    };
    let err = format!("{err:#}");
    assert!(
        err.contains("reaching the attachment store, bucket piqchat-no-such-bucket"),
        "{err}"
    );
    assert!(err.contains("NoSuchBucket"), "{err}");
}

/// Sends three attachments on a folder-backed server; returns it and the
/// sizes of what it stored.
async fn app_with_three_attachments() -> (TestApp, Vec<(AttachmentId, u64)>) {
    let app = TestApp::spawn_with(|c| c.attachments_s3 = None).await;
    let (alice, bob) = app.pair().await;
    for len in [10, 20_000, 9 << 20] {
        alice
            .send("MEDIA", &[&bob], Some(pattern(len)))
            .await
            .unwrap();
    }
    let mut sizes: Vec<_> = app.state.blobs.sizes().await.unwrap().into_iter().collect();
    sizes.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(sizes.len(), 3);
    (app, sizes)
}

#[tokio::test]
async fn copying_all_attachments_checks_sizes_skips_what_is_there_and_refuses_a_full_target() {
    let (app, sizes) = app_with_three_attachments().await;
    let target_dir = tempfile::tempdir().unwrap();
    let target = Blobs::open(target_dir.path()).unwrap();
    let report = blobs::copy_all(&app.state.blobs, &target, false)
        .await
        .unwrap();
    assert_eq!((report.copied, report.skipped), (3, 0));
    assert_eq!(
        report.copied_bytes,
        sizes.iter().map(|(_, s)| s).sum::<u64>()
    );
    let mut copied: Vec<_> = target.sizes().await.unwrap().into_iter().collect();
    copied.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(copied, sizes);

    let err = blobs::copy_all(&app.state.blobs, &target, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    // One copy lost: a forced re-run copies just that one.
    target.remove(&sizes[0].0).await.unwrap();
    let report = blobs::copy_all(&app.state.blobs, &target, true)
        .await
        .unwrap();
    assert_eq!((report.copied, report.skipped), (1, 2));
}

/// `piqchat-inbox migrate-attachments --to s3://…` against the test bucket,
/// then a server on the bucket serves the same bytes.
#[tokio::test]
async fn migrate_attachments_copies_a_folder_into_the_bucket() {
    let Some(s3) = test_bucket() else {
        eprintln!("skipped: set PIQCHAT_TEST_S3_URL to run against a bucket");
        return;
    };
    let (app, sizes) = app_with_three_attachments().await;
    let folder = app.state.config.attachments_path.clone();
    let endpoint = s3.endpoint.clone().expect("test bucket endpoint");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_piqchat-inbox"))
            .arg("migrate-attachments")
            .arg("--to")
            .arg(s3.url())
            .args(extra)
            .current_dir(app.dir.path())
            .env_remove("ATTACHMENT_STORE_URL")
            .env("PARCEL_ATTACHMENTS_UPLOAD_PATH", &folder)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&[]);
    assert!(ok, "{out}");
    assert!(out.contains("copied 3 attachments"), "{out}");
    let bucket = Blobs::from_config(&Config {
        attachments_s3: Some(s3.clone()),
        ..(*app.state.config).clone()
    })
    .unwrap();
    let mut copied: Vec<_> = bucket.sizes().await.unwrap().into_iter().collect();
    copied.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(copied, sizes);

    let (ok, out) = run(&[]);
    assert!(!ok, "a target with attachments is refused: {out}");
    assert!(out.contains("--force"), "{out}");
    let (ok, out) = run(&["--force"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("copied 0 attachments (0 bytes), skipped 3"),
        "{out}"
    );

    // A server on the bucket reads every attachment intact.
    let app = app
        .restart_with(|c| c.attachments_s3 = Some(s3.clone()))
        .await;
    for (id, size) in &sizes {
        let mut reader = app.state.blobs.open_read(id).await.unwrap();
        let mut data = Vec::new();
        reader.read_to_end(&mut data).await.unwrap();
        assert!(data == pattern(*size as usize), "{id:?} intact");
    }
}
