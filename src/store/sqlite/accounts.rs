//! Whole-account operations: the invited-users view, deletion, backups and
//! push subscriptions.

use crate::store::rows::*;
use sqlx::Row as _;

use super::{SqliteStore, parcels::delete_unreferenced_attachments};
use crate::{
    clock::Millis,
    domain::{AttachmentId, UserId},
    error::Result,
};

fn invited_row(r: sqlx::sqlite::SqliteRow) -> InvitedRow {
    InvitedRow {
        entry_id: r.get(0),
        user_id: r
            .get::<Option<Vec<u8>>, _>(1)
            .and_then(|k| UserId::from_slice(&k)),
        invited_by: r.get(2),
        last_seen_at: r.get(3),
        client_version: r.get(4),
    }
}

impl SqliteStore {
    /// `user` first, then the accounts created through `user`'s invites.
    pub async fn invited_by(&self, user: &UserRow) -> Result<Vec<InvitedRow>> {
        let rows = sqlx::query(
            "SELECT id, public_key, invited_by, last_seen_at, client_version FROM users \
             WHERE id = $1 OR invited_by = $1 ORDER BY id = $1 DESC, id",
        )
        .bind(user.entry_id)
        .fetch_all(&mut *self.readers.get().await?)
        .await?;
        Ok(rows.into_iter().map(invited_row).collect())
    }

    /// Every account, in order of sign-up (the admin's view).
    pub async fn all_users(&self) -> Result<Vec<InvitedRow>> {
        let rows = sqlx::query("SELECT id, public_key, invited_by, last_seen_at, client_version FROM users ORDER BY id")
            .fetch_all(&mut *self.readers.get().await?)
            .await?;
        Ok(rows.into_iter().map(invited_row).collect())
    }

    /// Deletes everything of an account in one transaction and blanks its
    /// row (kept so that others' `invited_by` links keep their shape).
    /// Returns how many parcels went and the attachments no parcel
    /// references any more, whose files the caller removes.
    pub async fn delete_account(
        &self,
        entry_id: i64,
        now: Millis,
    ) -> Result<(u64, Vec<AttachmentId>)> {
        let deleted = self
            .writer
            .run(move |tx| {
                Box::pin(async move {
                    let attachments: Vec<(String,)> = sqlx::query_as(
                        "SELECT DISTINCT attachment_id FROM parcels \
                         WHERE recipient_id = $1 AND attachment_id IS NOT NULL",
                    )
                    .bind(entry_id)
                    .fetch_all(&mut *tx)
                    .await?;
                    let parcels = sqlx::query("DELETE FROM parcels WHERE recipient_id = $1")
                        .bind(entry_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    for table in [
                        "DELETE FROM contacts WHERE user_id = $1",
                        "DELETE FROM backups WHERE user_id = $1",
                        "DELETE FROM push_subscriptions WHERE user_id = $1",
                        "DELETE FROM push_outbox WHERE user_id = $1",
                        "DELETE FROM exchanges WHERE creator_id = $1",
                    ] {
                        sqlx::query(table).bind(entry_id).execute(&mut *tx).await?;
                    }
                    let orphans = delete_unreferenced_attachments(
                        &mut *tx,
                        attachments.into_iter().map(|(id,)| id),
                    )
                    .await?;
                    sqlx::query(
                        "UPDATE users SET public_key = NULL, last_seen_at = NULL, \
                         client_version = NULL, deleted_at = $2 WHERE id = $1",
                    )
                    .bind(entry_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    Ok((parcels, orphans))
                })
            })
            .await?;
        self.checkpoint().await;
        Ok(deleted)
    }

    /// Moves the write-ahead log into the database file and truncates it, so
    /// that deleted content (zeroed in place by `secure_delete`) does not
    /// linger in old WAL frames. Best effort: a busy reader only delays it.
    pub async fn checkpoint(&self) {
        // Outside any transaction: a checkpoint cannot run inside one.
        let done = self
            .writer
            .solo(|conn| {
                Box::pin(async move {
                    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }

    pub async fn put_backup(&self, entry_id: i64, content: &str, now: Millis) -> Result<()> {
        self.writer
            .execute(
                sqlx::query(
                    "INSERT INTO backups (user_id, content, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id) DO UPDATE SET content = excluded.content, \
                     updated_at = excluded.updated_at",
                )
                .bind(entry_id)
                .bind(content.to_owned())
                .bind(now),
            )
            .await?;
        Ok(())
    }

    /// A user's backup, as stored (with the read before this one).
    pub async fn read_backup(&self, entry_id: i64) -> Result<Option<BackupRow>> {
        let row: Option<(String, Millis, Option<Millis>)> = sqlx::query_as(
            "SELECT content, updated_at, last_read_at FROM backups WHERE user_id = $1",
        )
        .bind(entry_id)
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        Ok(row.map(|(content, updated_at, last_read_at)| BackupRow {
            content,
            updated_at,
            last_read_at,
        }))
    }

    /// Records that a user read their backup.
    pub async fn record_backup_read(&self, entry_id: i64, now: Millis) -> Result<()> {
        self.writer
            .execute(
                sqlx::query("UPDATE backups SET last_read_at = $2 WHERE user_id = $1")
                    .bind(entry_id)
                    .bind(now),
            )
            .await?;
        Ok(())
    }

    pub async fn put_push_subscription(
        &self,
        entry_id: i64,
        sub: &PushSubscriptionRow,
        now: Millis,
    ) -> Result<()> {
        let sub = sub.clone();
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    // Pushes queued for an earlier subscription would go nowhere useful.
                    sqlx::query("DELETE FROM push_outbox WHERE user_id = $1")
                        .bind(entry_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO push_subscriptions \
                         (user_id, endpoint, p256dh, auth, content_encoding, \
                         expires_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (user_id) DO UPDATE SET endpoint = excluded.endpoint, \
                         p256dh = excluded.p256dh, \
                         auth = excluded.auth, content_encoding = excluded.content_encoding, \
                         expires_at = excluded.expires_at, created_at = excluded.created_at",
                    )
                    .bind(entry_id)
                    .bind(&sub.endpoint)
                    .bind(&sub.p256dh)
                    .bind(&sub.auth)
                    .bind(&sub.content_encoding)
                    .bind(sub.expires_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    /// Removes a user's push subscription and its pending pushes.
    pub async fn delete_push_subscription(&self, entry_id: i64) -> Result<()> {
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    for sql in [
                        "DELETE FROM push_outbox WHERE user_id = $1",
                        "DELETE FROM push_subscriptions WHERE user_id = $1",
                    ] {
                        sqlx::query(sql).bind(entry_id).execute(&mut *tx).await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    pub async fn push_subscription(&self, entry_id: i64) -> Result<Option<PushSubscriptionRow>> {
        let row = sqlx::query(
            "SELECT endpoint, p256dh, auth, content_encoding, expires_at FROM push_subscriptions WHERE user_id = $1",
        )
        .bind(entry_id)
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        Ok(row.map(|r| PushSubscriptionRow {
            endpoint: r.get(0),
            p256dh: r.get(1),
            auth: r.get(2),
            content_encoding: r.get(3),
            expires_at: r.get(4),
        }))
    }
}
