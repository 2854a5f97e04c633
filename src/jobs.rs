//! Forgetting on schedule (SPEC §8) and scheduled database backups.
//!
//! Each job is a `*_once(now)` function that deletes what is past its limit
//! at `now`, in bounded batches, and returns a count; [`run_once`] runs them
//! all and logs the counts. [`scheduler`] runs `run_once` shortly after start
//! and then daily at the configured UTC time (or every N minutes).

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::{
    app::AppState,
    blobs::Blobs,
    clock::{DAY, HOUR, MINUTE, Millis, SECOND},
    domain::accounts,
    error::Result,
    metrics::KindLabels,
    store::{self, Store},
};

/// Files younger than this are never swept: they may belong to an upload in
/// flight (written and renamed before its rows commit).
pub const ORPHAN_GRACE: Millis = HOUR;
/// The first run after start-up waits this long, so start-up stays fast.
const FIRST_RUN_DELAY: Duration = Duration::from_secs(30);
/// Accounts deleted per batch by the inactivity job.
const USER_BATCH: i64 = 100;

/// What one run deleted, as counts only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub parcels: u64,
    pub attachments: u64,
    pub exchanges: u64,
    pub users: u64,
    pub stats_rows: u64,
    pub orphan_files: u64,
    pub temp_files: u64,
    pub outbox_rows: u64,
}

/// Parcels older than the configured age, with the attachments they leave
/// unreferenced. Returns (parcels, attachment files).
pub async fn expire_parcels_once(
    store: &Store,
    blobs: &Blobs,
    now: Millis,
    max_age_days: u32,
) -> Result<(u64, u64)> {
    let cutoff = now - i64::from(max_age_days) * DAY;
    let (mut parcels, mut files) = (0, 0);
    loop {
        let (n, orphans) = store.expire_parcels_batch(cutoff).await?;
        for id in &orphans {
            blobs.remove(id).await?;
        }
        parcels += n;
        files += orphans.len() as u64;
        if n == 0 {
            return Ok((parcels, files));
        }
        tokio::task::yield_now().await;
    }
}

/// Exchanges (invites) created more than the configured days ago.
pub async fn expire_exchanges_once(store: &Store, now: Millis, max_age_days: u32) -> Result<u64> {
    let cutoff = now - i64::from(max_age_days) * DAY;
    let mut total = 0;
    loop {
        let n = store.expire_exchanges_batch(cutoff).await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Accounts not seen for the configured days (or never seen and created that
/// long ago), deleted exactly as a user's own deletion does. Returns
/// (users, their parcels, attachment files).
pub async fn expire_users_once(
    store: &Store,
    blobs: &Blobs,
    now: Millis,
    inactive_days: u32,
) -> Result<(u64, u64, u64)> {
    let cutoff = now - i64::from(inactive_days) * DAY;
    let (mut users, mut parcels, mut files) = (0, 0, 0);
    loop {
        let batch = store.inactive_users(cutoff, USER_BATCH).await?;
        if batch.is_empty() {
            return Ok((users, parcels, files));
        }
        for entry in batch {
            let deleted = accounts::delete_entry(store, blobs, entry, now).await?;
            parcels += deleted.parcels;
            files += deleted.attachments;
            users += 1;
        }
    }
}

/// Daily statistics rows older than 7 days.
pub async fn expire_stats_once(store: &Store, now: Millis) -> Result<u64> {
    store.expire_stats(now).await
}

/// Pushes whose TTL has passed.
pub async fn expire_outbox_once(store: &Store, now: Millis) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = store.expire_outbox_batch(now).await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// Removes the files whose rows were deleted (listed in the deleting
/// transaction), without a grace period: nothing can reference them again.
/// Run at start and by every sweep, it finishes the removals a crash
/// interrupted. Returns how many files were still there.
pub async fn remove_deleted_files_once(store: &Store, blobs: &Blobs) -> Result<u64> {
    let mut removed = 0;
    loop {
        let ids = store.file_removals().await?;
        if ids.is_empty() {
            return Ok(removed);
        }
        for id in &ids {
            if blobs.remove(id).await? {
                removed += 1;
            }
        }
        store.forget_file_removals(&ids).await?;
    }
}

/// Files whose rows were deleted; attachment files no row references, and
/// abandoned temp files, older than [`ORPHAN_GRACE`]. Returns (orphan files,
/// temp files).
pub async fn sweep_files_once(store: &Store, blobs: &Blobs, now: Millis) -> Result<(u64, u64)> {
    let mut orphans = 0;
    for id in store.unreferenced_attachments().await? {
        blobs.remove(&id).await?;
        orphans += 1;
    }
    let cutoff = now - ORPHAN_GRACE;
    // Listed before the rows are read: a file renamed into place after this
    // listing is not looked at, and one listed here is either referenced by
    // then or older than the grace period.
    let files = blobs.files().await?;
    let known = store.attachment_ids().await?;
    for (id, modified) in files {
        if modified < cutoff && !known.contains(&id.to_string()) {
            blobs.remove(&id).await?;
            orphans += 1;
        }
    }
    let temp = blobs.sweep_stale_uploads(cutoff).await?;
    // After the removals above, which list their files too.
    orphans += remove_deleted_files_once(store, blobs).await?;
    Ok((orphans, temp))
}

/// Runs every retention job once and logs what went, as counts.
pub async fn run_once(state: &AppState, now: Millis) -> Result<Report> {
    let r = &state.config.retention;
    let (store, blobs) = (&state.store, &state.blobs);
    let (parcels, attachments) =
        expire_parcels_once(store, blobs, now, r.parcel_max_age_days).await?;
    let exchanges = expire_exchanges_once(store, now, r.exchange_max_age_days).await?;
    let (users, user_parcels, user_files) =
        expire_users_once(store, blobs, now, r.user_inactive_days).await?;
    let stats_rows = expire_stats_once(store, now).await?;
    let outbox_rows = expire_outbox_once(store, now).await?;
    let (orphan_files, temp_files) = sweep_files_once(store, blobs, now).await?;
    let report = Report {
        parcels: parcels + user_parcels,
        attachments: attachments + user_files,
        exchanges,
        users,
        stats_rows,
        orphan_files,
        temp_files,
        outbox_rows,
    };
    let m = &state.metrics;
    m.retention_runs.inc();
    for (kind, n) in [
        ("parcels", report.parcels),
        ("attachments", report.attachments),
        ("exchanges", report.exchanges),
        ("users", report.users),
        ("stats_rows", report.stats_rows),
        ("orphan_files", report.orphan_files),
        ("temp_files", report.temp_files),
        ("outbox_rows", report.outbox_rows),
    ] {
        m.retention_deleted
            .get_or_create(&KindLabels { kind })
            .inc_by(n);
    }
    m.parcel_deleted("retention", report.parcels);
    tracing::info!(
        parcels = report.parcels,
        attachments = report.attachments,
        exchanges = report.exchanges,
        users = report.users,
        stats_rows = report.stats_rows,
        orphan_files = report.orphan_files,
        temp_files = report.temp_files,
        outbox_rows = report.outbox_rows,
        "retention run finished"
    );
    Ok(report)
}

/// Milliseconds from `now` to the next run: the next `run_at_minute` of a UTC
/// day, or `interval` minutes when set.
pub fn next_run_in(now: Millis, run_at_minute: u32, interval_minutes: Option<u32>) -> Millis {
    if let Some(minutes) = interval_minutes {
        return i64::from(minutes) * MINUTE;
    }
    let today = now.div_euclid(DAY) * DAY + i64::from(run_at_minute) * MINUTE;
    let next = if today > now { today } else { today + DAY };
    next - now
}

/// Writes a backup file into `dir`, named by time, and removes backups older
/// than `keep_days` and the temporaries of interrupted ones. Returns the new
/// file's path.
pub async fn scheduled_backup_once(
    store: &Store,
    dir: &Path,
    keep_days: u32,
    now: Millis,
) -> anyhow::Result<std::path::PathBuf> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating backup folder {}", dir.display()))?;
    let cutoff = now - i64::from(keep_days) * DAY;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Only a backup that finished has the name; a temporary never does.
        if let Some(finished) = partial_backup(name) {
            store::remove_backup_temp(&dir.join(store::backup_temp_name(finished))).await?;
            tracing::info!(file = %entry.path().display(), "removed an interrupted backup");
        } else if backup_time(name).is_some_and(|t| t < cutoff) {
            tokio::fs::remove_file(entry.path()).await?;
            tracing::info!(file = %entry.path().display(), "removed an old backup");
        }
    }
    let path = dir.join(format!("inbox-{now}.sqlite"));
    store.backup_to(&path).await?;
    Ok(path)
}

/// The time in a scheduled backup's name `inbox-<unix ms>.sqlite`.
fn backup_time(name: &str) -> Option<Millis> {
    name.strip_prefix("inbox-")?
        .strip_suffix(".sqlite")?
        .parse()
        .ok()
}

/// For the temporary (or its journal) of a scheduled backup, the name the
/// backup would have had.
fn partial_backup(name: &str) -> Option<&str> {
    let temp = name.strip_suffix("-journal").unwrap_or(name);
    let finished = temp.strip_prefix('.')?.strip_suffix(".partial")?;
    (store::backup_temp_name(finished) == temp && backup_time(finished).is_some())
        .then_some(finished)
}

/// One scheduled round: retention, then the backup when configured; only
/// on the instance that leads (`Store::leadership`: always on SQLite, one
/// instance at a time on PostgreSQL). Returns whether this instance led.
pub async fn scheduled_round(state: &AppState, now: Millis) -> bool {
    if !state.store.leadership().is_leader() {
        tracing::debug!("another instance runs retention and backups");
        return false;
    }
    if let Err(e) = run_once(state, now).await {
        tracing::error!(error = %e, "retention run failed");
    }
    if let Some(dir) = &state.config.retention.backup_path {
        match scheduled_backup_once(
            &state.store,
            dir,
            state.config.retention.backup_keep_days,
            now,
        )
        .await
        {
            Ok(path) => tracing::info!(file = %path.display(), "database backup written"),
            Err(e) if is_sqlite_only(&e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(
                        "scheduled backups are skipped: {e:#} (BACKUP_PATH applies to SQLite only)"
                    );
                });
            }
            Err(e) => tracing::error!(error = %e, "database backup failed"),
        }
    }
    true
}

/// The backup refused because the database is not a SQLite file.
fn is_sqlite_only(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::error::Error>(),
        Some(crate::error::Error::FailedPrecondition(_))
    )
}

/// Runs [`scheduled_round`] shortly after start and then at the configured
/// times until `shutdown` turns true.
pub async fn scheduler(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let r = state.config.retention.clone();
    let mut wait = FIRST_RUN_DELAY;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        scheduled_round(&state, state.clock.now()).await;
        let next = next_run_in(state.clock.now(), r.run_at_minute, r.interval_minutes);
        wait = Duration::from_millis(next.max(SECOND) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_run_is_the_next_configured_time_of_day() {
        let day = 20_000 * DAY;
        // 03:00 -> 04:00 the same day.
        assert_eq!(next_run_in(day + 3 * HOUR, 240, None), HOUR);
        // 04:00 exactly -> tomorrow.
        assert_eq!(next_run_in(day + 4 * HOUR, 240, None), DAY);
        // 05:00 -> 04:00 tomorrow.
        assert_eq!(next_run_in(day + 5 * HOUR, 240, None), 23 * HOUR);
        assert_eq!(next_run_in(day, 240, Some(15)), 15 * MINUTE);
    }

    #[test]
    fn only_finished_backups_have_a_time_and_temporaries_are_recognised() {
        assert_eq!(
            backup_time("inbox-1795684497852.sqlite"),
            Some(1795684497852)
        );
        assert_eq!(backup_time(".inbox-1795684497852.sqlite.partial"), None);
        assert_eq!(backup_time("inbox-1795684497852.sqlite-journal"), None);
        let temp = crate::store::backup_temp_name("inbox-17.sqlite");
        assert_eq!(partial_backup(&temp), Some("inbox-17.sqlite"));
        assert_eq!(
            partial_backup(&format!("{temp}-journal")),
            Some("inbox-17.sqlite")
        );
        assert_eq!(partial_backup("inbox-17.sqlite"), None);
        assert_eq!(partial_backup(".other.sqlite.partial"), None);
    }
}
