//! Seeding a large database, and timing one retention run on it.

use std::time::Instant;

use anyhow::Context as _;
use piqchat_inbox::{
    client::UserKey,
    clock::{Clock, HOUR},
    domain::{AttachmentId, ExchangeToken, ParcelId, UserId},
    store::{NewParcel, NewParcels, Store},
};
use serde::{Deserialize, Serialize};

use crate::pools::card;
use crate::probes::tempfile_dir;
use crate::{RetentionArgs, SeedArgs, SeedBacklogArgs, write_json};

#[derive(Serialize, Deserialize)]
pub(crate) struct SeedResult {
    pub(crate) kind: String,
    pub(crate) database: String,
    pub(crate) users: u64,
    pub(crate) parcels: u64,
    pub(crate) users_s: f64,
    pub(crate) parcels_s: f64,
    pub(crate) parcels_per_s: f64,
    pub(crate) database_mib: f64,
}

pub(crate) async fn retention(args: RetentionArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.database)
        .await
        .with_context(|| format!("opening {}", args.database.display()))?;
    let temp = tempfile_dir()?;
    let folder = args.attachments.clone().unwrap_or_else(|| temp.clone());
    let blobs = piqchat_inbox::blobs::Blobs::open(&folder)?;
    let later = Clock::system().now() + 91 * 24 * HOUR;
    let t = Instant::now();
    let (parcels, files) =
        piqchat_inbox::jobs::expire_parcels_once(&store, &blobs, later, 90).await?;
    let took = t.elapsed().as_secs_f64();
    store.close().await;
    let _ = std::fs::remove_dir_all(&temp);
    println!(
        "retention: {parcels} expired parcels and {files} attachment files deleted in {took:.2} s ({:.0} parcels/s, batches of {})",
        parcels as f64 / took.max(1e-9),
        piqchat_inbox::store::RETENTION_BATCH
    );
    Ok(())
}

/// The recipient `seed-backlog` made, for `--recipient-key`.
#[derive(Serialize, Deserialize)]
pub(crate) struct BacklogKey {
    pub(crate) kind: String,
    /// The recipient's secret key (base64url): a throwaway benchmark user.
    pub(crate) secret: String,
    pub(crate) user_id: String,
    /// Parcels waiting for it after the seed.
    pub(crate) parcels: u64,
    /// Each one's attachment size in its row; the files are sparse.
    pub(crate) attachment_bytes: u64,
    pub(crate) seed_s: f64,
}

impl BacklogKey {
    pub(crate) fn read(path: &std::path::Path) -> anyhow::Result<(Self, UserKey)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the recipient key {}", path.display()))?;
        let key: BacklogKey = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a seed-backlog key file", path.display()))?;
        let user = UserKey::from_base64url(&key.secret)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok((key, user))
    }
}

/// One recipient and `parcels` waiting parcels for it, each with its own
/// attachment row of `attachment_bytes`, one send (transaction) per parcel
/// as the server stores them, so every per-recipient record the store keeps
/// is kept here too. The attachment files are sparse (the right length, no
/// data): a send's cost depends on the rows, not on the old files' bytes.
pub(crate) async fn seed_backlog(args: SeedBacklogArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let store = Store::open(&args.database)
        .await
        .with_context(|| format!("opening {}", args.database.display()))?;
    // A benchmark database made before the server starts: the seed need not
    // wait for the disk after each of its transactions (the server's own
    // connections use their own settings when it starts).
    store.set_writer_pragma("synchronous", 0).await?;
    std::fs::create_dir_all(&args.attachments)
        .with_context(|| format!("creating {}", args.attachments.display()))?;
    let clock = Clock::system();
    let now = clock.now();
    let token = ExchangeToken::random();
    store
        .insert_exchange(&token, None, "", now, now + HOUR)
        .await?;
    let user = UserKey::generate();
    store
        .accept_exchange(&token, None, Some(&user.user_id()), now)
        .await?;
    let recipient = store
        .user_by_key(&user.user_id())
        .await?
        .context("the seeded recipient exists")?
        .entry_id;
    let sender = UserKey::generate().user_id();
    let contents: Vec<String> = (0..256).map(|_| card("key")).collect();
    for i in 0..args.parcels {
        let id = AttachmentId::random();
        std::fs::File::create(args.attachments.join(id.to_string()))
            .and_then(|f| f.set_len(args.attachment_bytes))
            .with_context(|| format!("creating an attachment in {}", args.attachments.display()))?;
        let new = NewParcels {
            sender,
            kind: "MEDIA".into(),
            attachment: Some((id, args.attachment_bytes)),
            parcels: vec![NewParcel {
                id: ParcelId::random(),
                recipient,
                content: contents[(i % 256) as usize].clone(),
            }],
            now: clock.now(),
            max_waiting_parcels: u32::MAX,
            max_waiting_attachment_bytes: u64::MAX,
            push: None,
        };
        store
            .insert_parcels(new)
            .await?
            .map_err(|q| anyhow::anyhow!("quota refused the seed: {q:?}"))?;
        if (i + 1).is_multiple_of(5000) {
            eprintln!("seed-backlog: {} parcels", i + 1);
        }
    }
    store.checkpoint().await;
    store.close().await;
    let key = BacklogKey {
        kind: "backlog-key".into(),
        secret: user.secret_base64url(),
        user_id: user.user_id().to_string(),
        parcels: args.parcels,
        attachment_bytes: args.attachment_bytes,
        seed_s: t.elapsed().as_secs_f64(),
    };
    write_json(&args.key_out, &key)?;
    println!(
        "seeded one recipient with {} waiting parcels ({} B sparse attachment each) in {:.1} s; key in {}",
        key.parcels,
        key.attachment_bytes,
        key.seed_s,
        args.key_out.display()
    );
    Ok(())
}

pub(crate) async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    let users_n = args.users.unwrap_or((args.parcels / 100).max(1));
    let store = Store::open(&args.database)
        .await
        .with_context(|| format!("opening {}", args.database.display()))?;
    let clock = Clock::system();

    // Users sign up the way the server does it: an invite, accepted with a
    // user id (two small transactions each).
    let t = Instant::now();
    let mut entries = Vec::with_capacity(users_n as usize);
    for i in 0..users_n {
        let now = clock.now();
        let token = ExchangeToken::random();
        store
            .insert_exchange(&token, None, "", now, now + HOUR)
            .await?;
        let user = UserKey::generate().user_id();
        store
            .accept_exchange(&token, None, Some(&user), now)
            .await?;
        let row = store
            .user_by_key(&user)
            .await?
            .context("the seeded user exists")?;
        entries.push(row.entry_id);
        if (i + 1).is_multiple_of(2000) {
            eprintln!("seed: {} users", i + 1);
        }
    }
    let users_s = t.elapsed().as_secs_f64();

    // Parcels: `batch` per transaction, user after user (so only the random
    // parcel id lands at random places in the indexes), from a few senders.
    let t = Instant::now();
    let senders: Vec<UserId> = (0..16).map(|_| UserKey::generate().user_id()).collect();
    let contents: Vec<String> = (0..256).map(|_| card("key")).collect();
    let mut inserted = 0u64;
    let mut batch_no = 0usize;
    while inserted < args.parcels {
        let n = (args.parcels - inserted).min(args.batch as u64);
        let parcels: Vec<NewParcel> = (0..n)
            .map(|k| {
                let i = inserted + k;
                NewParcel {
                    id: piqchat_inbox::domain::ParcelId::random(),
                    recipient: entries[((i * users_n) / args.parcels) as usize],
                    content: contents[(i % 256) as usize].clone(),
                }
            })
            .collect();
        let new = NewParcels {
            sender: senders[batch_no % senders.len()],
            kind: "MEDIA".into(),
            attachment: None,
            parcels,
            now: clock.now(),
            max_waiting_parcels: u32::MAX,
            max_waiting_attachment_bytes: u64::MAX,
            push: None,
        };
        store
            .insert_parcels(new)
            .await?
            .map_err(|q| anyhow::anyhow!("quota refused the seed: {q:?}"))?;
        inserted += n;
        batch_no += 1;
        if batch_no.is_multiple_of(10) {
            eprintln!("seed: {inserted} parcels");
        }
    }
    let parcels_s = t.elapsed().as_secs_f64();
    store.close().await;

    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", args.database.display())).ok())
        .map(|m| m.len())
        .sum();
    let result = SeedResult {
        kind: "seed".into(),
        database: args.database.display().to_string(),
        users: users_n,
        parcels: args.parcels,
        users_s,
        parcels_s,
        parcels_per_s: args.parcels as f64 / parcels_s,
        database_mib: size as f64 / (1024.0 * 1024.0),
    };
    println!(
        "seeded {} users in {:.1} s and {} parcels in {:.1} s ({:.0} parcels/s); database {:.0} MiB",
        result.users,
        result.users_s,
        result.parcels,
        result.parcels_s,
        result.parcels_per_s,
        result.database_mib
    );
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}
