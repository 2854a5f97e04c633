//! Deletions by age, in bounded batches so that a large backlog never holds
//! the writer for long.

use super::{Store, parcels::delete_unreferenced_attachments};
use crate::{clock::Millis, domain::AttachmentId, error::Result, store::stats::day_of};

/// Rows deleted per statement; between batches other writes get their turn.
pub const BATCH: i64 = 1000;

impl Store {
    /// Deletes up to one batch of parcels created before `cutoff`; returns how
    /// many went and the attachments no parcel references any more (their rows
    /// are gone; the caller removes the files).
    pub async fn expire_parcels_batch(&self, cutoff: Millis) -> Result<(u64, Vec<AttachmentId>)> {
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    let deleted: Vec<(Option<String>,)> = sqlx::query_as(
                        "DELETE FROM parcels WHERE seq IN \
                         (SELECT seq FROM parcels WHERE created_at < $1 \
                         ORDER BY created_at LIMIT $2) \
                         RETURNING attachment_id",
                    )
                    .bind(cutoff)
                    .bind(BATCH)
                    .fetch_all(&mut *tx)
                    .await?;
                    let candidates = deleted.iter().filter_map(|(a,)| a.clone());
                    let orphans = delete_unreferenced_attachments(&mut *tx, candidates).await?;
                    Ok((deleted.len() as u64, orphans))
                })
            })
            .await
    }

    /// Deletes up to one batch of exchanges created before `cutoff`.
    pub async fn expire_exchanges_batch(&self, cutoff: Millis) -> Result<u64> {
        let done = self
            .writer
            .execute(
                sqlx::query(
                    "DELETE FROM exchanges WHERE token IN \
                     (SELECT token FROM exchanges WHERE created_at < $1 LIMIT $2)",
                )
                .bind(cutoff)
                .bind(BATCH),
            )
            .await?;
        Ok(done.rows_affected())
    }

    /// Up to `limit` accounts not seen since `cutoff` (or never seen and
    /// created before it).
    pub async fn inactive_users(&self, cutoff: Millis, limit: i64) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM users WHERE public_key IS NOT NULL \
             AND COALESCE(last_seen_at, created_at) < $1 ORDER BY id LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&mut *self.readers.get().await?)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Deletes daily statistics older than 7 days before `now`.
    pub async fn expire_stats(&self, now: Millis) -> Result<u64> {
        let done = self
            .writer
            .execute(sqlx::query("DELETE FROM daily_stats WHERE day <= $1").bind(day_of(now) - 7))
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes up to one batch of pushes whose TTL has passed.
    pub async fn expire_outbox_batch(&self, now: Millis) -> Result<u64> {
        let done = self
            .writer
            .execute(
                sqlx::query(
                    "DELETE FROM push_outbox WHERE id IN \
                     (SELECT id FROM push_outbox WHERE expires_at <= $1 LIMIT $2)",
                )
                .bind(now)
                .bind(BATCH),
            )
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes attachment rows that no parcel references (there should be
    /// none; a crash between two statements could leave one).
    pub async fn unreferenced_attachments(&self) -> Result<Vec<AttachmentId>> {
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    let rows: Vec<(String,)> = sqlx::query_as(
                        "DELETE FROM attachments WHERE NOT EXISTS \
                         (SELECT 1 FROM parcels WHERE parcels.attachment_id = attachments.id) \
                         RETURNING id",
                    )
                    .fetch_all(&mut *tx)
                    .await?;
                    Ok(rows
                        .into_iter()
                        .filter_map(|(id,)| AttachmentId::parse(&id).ok())
                        .collect())
                })
            })
            .await
    }

    /// The ids of every attachment row.
    pub async fn attachment_ids(&self) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM attachments")
            .fetch_all(&mut *self.readers.get().await?)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Writes a consistent copy of the database to `path` (which must not
    /// exist) while the server keeps running and writing.
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<()> {
        let path = path.to_str().ok_or_else(|| {
            crate::error::Error::InvalidArgument("backup path is not valid UTF-8".into())
        })?;
        sqlx::query("VACUUM INTO $1")
            .bind(path)
            .execute(&mut *self.readers.get().await?)
            .await?;
        Ok(())
    }
}
