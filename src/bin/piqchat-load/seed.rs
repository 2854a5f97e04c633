//! Seeding a large database, and timing one retention run on it.

use std::time::Instant;

use anyhow::Context as _;
use piqchat_inbox::{
    client::UserKey,
    clock::{Clock, HOUR},
    domain::{ExchangeToken, UserId},
    store::{NewParcel, NewParcels, Store},
};
use serde::{Deserialize, Serialize};

use crate::pools::card;
use crate::probes::tempfile_dir;
use crate::{RetentionArgs, SeedArgs, write_json};

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
