//! Faults lose nothing and mislead nobody: interrupted backups, full disks,
//! a crash right after an account deletion.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use piqchat_inbox::{jobs, pb, store};
use sqlx::{ConnectOptions as _, Connection as _, sqlite::SqliteConnectOptions};
use tonic::Code;

use crate::harness::TestApp;

/// `PRAGMA integrity_check` of the database file at `path`, opened read-only.
async fn integrity(path: &Path) -> String {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .expect("the backup opens as a database");
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity check runs");
    let (keys,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM server_config")
        .fetch_one(&mut conn)
        .await
        .expect("the backup has the server's tables");
    assert!(keys > 0, "the backup holds the server's keys");
    conn.close().await.expect("close");
    check
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("folder")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn backup_command(dir: &Path, file: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_piqchat-inbox"));
    cmd.env_clear()
        .env("DATABASE_PATH", dir.join("inbox.sqlite"))
        .env("PARCEL_ATTACHMENTS_UPLOAD_PATH", dir.join("attachments"))
        .env("LOG_FORMAT", "json")
        .arg("backup")
        .arg(file)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

#[tokio::test]
async fn a_killed_backup_leaves_no_file_under_the_final_name() {
    let app = TestApp::spawn().await;
    if app.skip_unless_sqlite("kills the SQLite backup copy") {
        return;
    }
    let keep = app.dir.clone();
    let dir = keep.path().to_owned();
    let db = app.db_path().to_owned();
    app.stop().await;
    // A database big enough that VACUUM INTO takes a while: 96 MiB of filler.
    {
        let mut conn = SqliteConnectOptions::new()
            .filename(&db)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE filler (b BLOB)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 96) \
             INSERT INTO filler SELECT randomblob(1048576) FROM n",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let out = dir.join("backups");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("b.sqlite");
    let temp = out.join(store::backup_temp_name("b.sqlite"));

    let mut child = backup_command(&dir, &file).spawn().expect("backup starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Kill it once the copy is under way.
    loop {
        if std::fs::metadata(&temp).is_ok_and(|m| m.len() > 0) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started writing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!file.exists(), "a killed backup left {}", file.display());
    assert!(
        entries(&out).iter().all(|n| !n.ends_with(".sqlite")),
        "{:?}",
        entries(&out)
    );

    // The next run to the same name cleans up and writes a valid database.
    let status = backup_command(&dir, &file).status().unwrap();
    assert!(status.success());
    assert_eq!(entries(&out), vec!["b.sqlite".to_owned()]);
    assert_eq!(integrity(&file).await, "ok");
}

#[tokio::test]
async fn scheduled_backups_remove_stale_temporaries_and_never_count_them() {
    let app = TestApp::spawn().await;
    if app.skip_unless_sqlite("reads SQLite backup files") {
        return;
    }
    let out = app.dir.path().join("backups");
    std::fs::create_dir_all(&out).unwrap();
    let now = app.clock.now();
    // What an interrupted run leaves: a temporary and its journal, named
    // after a time later than any finished backup.
    let stale = store::backup_temp_name(&format!("inbox-{}.sqlite", now + 1));
    std::fs::write(out.join(&stale), b"half a database").unwrap();
    std::fs::write(out.join(format!("{stale}-journal")), b"journal").unwrap();
    // Someone else's file is left alone.
    std::fs::write(out.join("notes.txt"), b"keep").unwrap();

    let path = jobs::scheduled_backup_once(&app.state.store, &out, 7, now)
        .await
        .expect("backup");
    assert_eq!(
        entries(&out),
        vec![format!("inbox-{now}.sqlite"), "notes.txt".to_owned()]
    );
    assert_eq!(integrity(&path).await, "ok");
    // The newest finished backup (by name, as an operator picks one) is a
    // valid database.
    let newest: PathBuf = entries(&out)
        .into_iter()
        .filter(|n| n.starts_with("inbox-") && n.ends_with(".sqlite"))
        .max()
        .map(|n| out.join(n))
        .unwrap();
    assert_eq!(integrity(&newest).await, "ok");
}

#[tokio::test]
async fn a_full_database_refuses_writes_as_resource_exhausted_and_keeps_nothing_half_done() {
    let app = TestApp::spawn().await;
    if app.skip_unless_sqlite("fills the SQLite file with a writer pragma") {
        return;
    }
    let (alice, bob) = app.pair().await;
    // Fill the database to its cap: every page a write needs is refused
    // with SQLITE_FULL ("database or disk is full").
    app.state
        .store
        .set_writer_pragma("max_page_count", 1)
        .await
        .unwrap();
    let big = "x".repeat(200_000);
    let err = alice
        .backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: big.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("storage is full"), "{err:?}");

    // A send whose rows need new pages (a large content): its attachment
    // file is written first, then the rows fail.
    let before = app.attachment_files().await;
    let err = alice
        .parcels()
        .await
        .send_parcel(pb::SendParcelRequest {
            r#type: "MEDIA".into(),
            recipients: vec![pb::ParcelRecipient {
                user_id: bob.id(),
                content: "k".repeat(60_000),
            }],
            attachment: Some(vec![7; 300_000]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // The attachment written before the rows failed is removed again.
    assert_eq!(app.attachment_files().await, before);

    // The same over the JSON gateway: 429 with the message, not 500.
    let reply = alice
        .http()
        .json(
            http::Method::PUT,
            "/v1/account/backup",
            Some(&serde_json::json!({ "content": big })),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 429, "{reply:?}");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("storage is full")
    );

    // Space again: the writes succeed.
    app.state
        .store
        .set_writer_pragma("max_page_count", 1 << 30)
        .await
        .unwrap();
    alice
        .send("MEDIA", &[&bob], Some(vec![7; 1000]))
        .await
        .unwrap();
}

#[tokio::test]
async fn reads_keep_working_when_no_write_succeeds() {
    let app = TestApp::spawn().await;
    if app.skip_unless_sqlite("refuses writes with a SQLite writer pragma") {
        return;
    }
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(b"image".to_vec()))
        .await
        .unwrap();
    bob.backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: "profile".into(),
        })
        .await
        .unwrap();
    // Far enough ahead that listing records last-seen again.
    app.clock.advance(3_600_000);
    app.state
        .store
        .set_writer_pragma("query_only", 1)
        .await
        .unwrap();
    // Writes fail...
    assert!(alice.send("MEDIA", &[&bob], None).await.is_err());
    // ...but the inbox, its attachment, the backup, the account and the
    // server info are still answered.
    let parcels = bob.list().await;
    assert_eq!(parcels.len(), 1);
    let chunks: Vec<u8> = {
        let mut stream = bob
            .parcels()
            .await
            .download_attachment(pb::DownloadAttachmentRequest {
                parcel_id: parcels[0].id.clone(),
            })
            .await
            .expect("download")
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.expect("chunk") {
            data.extend(chunk.chunk);
        }
        data
    };
    assert_eq!(chunks, b"image");
    let backup = bob
        .backups()
        .await
        .get_backup(pb::GetBackupRequest {})
        .await
        .expect("the backup is answered")
        .into_inner();
    assert_eq!(backup.content, "profile");
    bob.accounts()
        .await
        .get_account(pb::GetAccountRequest {})
        .await
        .expect("the account is answered");
    app.get_info().await;
    // JSON too.
    let reply = bob
        .http()
        .json(http::Method::GET, "/v1/parcels", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    app.state
        .store
        .set_writer_pragma("query_only", 0)
        .await
        .unwrap();
}

/// A tmpfs of `size` mounted at `path` for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this process may not mount (not root, or no
    /// CAP_SYS_ADMIN in a container).
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_attachment_disk_refuses_sends_as_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let attachments = dir.path().join("small-disk");
    let Some(_mount) = Tmpfs::mount(&attachments, "1m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    // No floor: the disk itself must refuse, with ENOSPC.
    let app = TestApp::spawn_with(|c| {
        c.attachments_s3 = None;
        c.attachments_path = attachments.clone();
        c.limits.min_free_disk_bytes = 0;
    })
    .await;
    let (alice, bob) = app.pair().await;
    let sends = (0..8).map(|_| {
        let (alice, bob) = (alice.clone(), bob.clone());
        tokio::spawn(async move { alice.send("MEDIA", &[&bob], Some(vec![1; 300_000])).await })
    });
    let mut stored = 0;
    let mut refused = 0;
    for send in sends {
        match send.await.unwrap() {
            Ok(_) => stored += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("storage is full"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(
        stored >= 1 && refused >= 1,
        "stored {stored}, refused {refused}"
    );
    // Every stored parcel has its file; no temp file is left.
    assert_eq!(app.attachment_files().await, stored);
    assert_eq!(entries(&attachments.join("tmp")), Vec::<String>::new());
    assert_eq!(bob.list().await.len(), stored);
    app.stop().await;
}

#[tokio::test]
async fn files_of_a_deletion_interrupted_after_its_commit_are_removed_at_start() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    for _ in 0..3 {
        alice
            .send("MEDIA", &[&bob], Some(vec![5; 1000]))
            .await
            .unwrap();
    }
    assert_eq!(app.attachment_files().await, 3);
    // The deletion commits, and the process dies before removing any file:
    // the store's part alone, then a restart.
    let entry = app.user_row(&bob).await.entry_id;
    let (parcels, orphans) = app
        .state
        .store
        .delete_account(entry, app.clock.now())
        .await
        .unwrap();
    assert_eq!((parcels, orphans.len()), (3, 3));
    assert_eq!(app.attachment_files().await, 3, "the files are still there");
    let app = app.restart().await;
    // Fresh files (well within the orphan sweep's hour of grace) are gone.
    assert_eq!(app.attachment_files().await, 0);
}

#[tokio::test]
async fn the_sweep_removes_files_of_deleted_rows_without_the_grace_period() {
    let app = TestApp::spawn().await;
    let (alice, bob) = app.pair().await;
    alice
        .send("MEDIA", &[&bob], Some(vec![5; 1000]))
        .await
        .unwrap();
    let entry = app.user_row(&bob).await.entry_id;
    app.state
        .store
        .delete_account(entry, app.clock.now())
        .await
        .unwrap();
    assert_eq!(app.attachment_files().await, 1);
    let (orphans, _) = jobs::sweep_files_once(&app.state.store, &app.state.blobs, app.clock.now())
        .await
        .unwrap();
    assert_eq!(orphans, 1);
    assert_eq!(app.attachment_files().await, 0);
}
