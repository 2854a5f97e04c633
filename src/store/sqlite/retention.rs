//! Deletions by age, in bounded batches so that a large backlog never holds
//! the writer for long.

use super::{
    SqliteStore,
    parcels::{delete_unreferenced_attachments, list_file_removal},
};
use crate::store::rows::*;
use crate::{clock::Millis, domain::AttachmentId, error::Result};

use crate::store::rows::RETENTION_BATCH as BATCH;

impl SqliteStore {
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
                    for (id,) in &rows {
                        list_file_removal(&mut *tx, id).await?;
                    }
                    Ok(rows
                        .into_iter()
                        .filter_map(|(id,)| AttachmentId::parse(&id).ok())
                        .collect())
                })
            })
            .await
    }

    /// Up to one batch of files listed for removal (see `file_removals`).
    pub async fn file_removals(&self) -> Result<Vec<AttachmentId>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM file_removals LIMIT $1")
            .bind(BATCH)
            .fetch_all(&mut *self.readers.get().await?)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id,)| AttachmentId::parse(&id).ok())
            .collect())
    }

    /// Forgets listed removals whose files are gone.
    pub async fn forget_file_removals(&self, ids: &[AttachmentId]) -> Result<()> {
        let ids = serde_json::to_string(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(crate::error::Error::internal)?;
        self.writer
            .execute(
                sqlx::query(
                    "DELETE FROM file_removals WHERE id IN (SELECT value FROM json_each($1))",
                )
                .bind(ids),
            )
            .await?;
        Ok(())
    }

    /// The ids of every attachment row.
    pub async fn attachment_ids(&self) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM attachments")
            .fetch_all(&mut *self.readers.get().await?)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Writes a consistent copy of the database to `path` (which must not
    /// exist) while the server keeps running and writing. The copy is made
    /// under [`backup_temp_name`] in the same folder, fsync'd, renamed and
    /// the folder fsync'd: a file under `path` is always a complete
    /// database, even when the process dies mid-way.
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<()> {
        let invalid = |m: &str| crate::error::Error::InvalidArgument(m.into());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| invalid("backup path must end in a UTF-8 file name"))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        // Never overwrite: the rename below would replace an existing file.
        if tokio::fs::try_exists(path).await? {
            return Err(invalid("the backup file exists already; choose a new name"));
        }
        let temp = dir.join(backup_temp_name(name));
        let temp_text = temp
            .to_str()
            .ok_or_else(|| invalid("backup path is not valid UTF-8"))?
            .to_owned();
        // A temporary of the same name is left from an interrupted run.
        remove_backup_temp(&temp).await?;
        let copied = sqlx::query("VACUUM INTO $1")
            .bind(temp_text)
            .execute(&mut *self.readers.get().await?)
            .await;
        if let Err(e) = copied {
            remove_backup_temp(&temp).await?;
            return Err(e.into());
        }
        let (temp2, path) = (temp.clone(), path.to_owned());
        let settled = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&temp2)?.sync_all()?;
            std::fs::rename(&temp2, &path)?;
            // The rename is durable once the folder is.
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)?;
        if let Err(e) = settled {
            remove_backup_temp(&temp).await?;
            return Err(e.into());
        }
        Ok(())
    }
}

/// The temporary a backup to `name` is written under: hidden, and not ending
/// in `.sqlite`, so neither a listing of backups nor a restore by pattern
/// (`inbox-*.sqlite`) can take it for a finished one.
pub fn backup_temp_name(name: &str) -> String {
    format!(".{name}.partial")
}

/// Removes a backup temporary and the rollback journal SQLite may leave
/// beside it; missing files are fine.
pub async fn remove_backup_temp(temp: &std::path::Path) -> std::io::Result<()> {
    let mut journal = temp.as_os_str().to_owned();
    journal.push("-journal");
    for file in [temp.as_os_str(), journal.as_os_str()] {
        match tokio::fs::remove_file(file).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
