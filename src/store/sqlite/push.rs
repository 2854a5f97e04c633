//! `push_outbox`: pushes waiting for delivery, with their subscription.

use crate::store::rows::*;
use sqlx::Row as _;

use super::SqliteStore;
use crate::{clock::Millis, error::Result};

impl SqliteStore {
    /// Up to `limit` pushes due at `now`, oldest first.
    pub async fn due_pushes(&self, now: Millis, limit: i64) -> Result<Vec<DuePush>> {
        let rows = sqlx::query(
            "SELECT o.id, o.user_id, o.payload, o.attempts, o.expires_at, \
             s.endpoint, s.p256dh, s.auth, s.content_encoding, s.expires_at \
             FROM push_outbox o JOIN push_subscriptions s ON s.user_id = o.user_id \
             WHERE o.next_attempt_at <= $1 ORDER BY o.next_attempt_at, o.id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *self.readers.get().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DuePush {
                id: r.get(0),
                user_id: r.get(1),
                payload: r.get(2),
                attempts: r.get(3),
                expires_at: r.get(4),
                subscription: PushSubscriptionRow {
                    endpoint: r.get(5),
                    p256dh: r.get(6),
                    auth: r.get(7),
                    content_encoding: r.get(8),
                    expires_at: r.get(9),
                },
            })
            .collect())
    }

    /// When the next push is due, if any is waiting.
    pub async fn next_push_due(&self) -> Result<Option<Millis>> {
        let (next,): (Option<Millis>,) =
            sqlx::query_as("SELECT MIN(next_attempt_at) FROM push_outbox")
                .fetch_one(&mut *self.readers.get().await?)
                .await?;
        Ok(next)
    }

    pub async fn outbox_depth(&self) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM push_outbox")
            .fetch_one(&mut *self.readers.get().await?)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// A push went out (or will never): forget it.
    pub async fn delete_push(&self, id: i64) -> Result<()> {
        self.writer
            .execute(sqlx::query("DELETE FROM push_outbox WHERE id = $1").bind(id))
            .await?;
        Ok(())
    }

    /// Tries a push again at `at`.
    pub async fn reschedule_push(&self, id: i64, attempts: i64, at: Millis) -> Result<()> {
        self.writer
            .execute(
                sqlx::query(
                    "UPDATE push_outbox SET attempts = $2, next_attempt_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(attempts)
                .bind(at),
            )
            .await?;
        Ok(())
    }

    /// No claims to end: one worker owns the file, and its in-flight set
    /// keeps it from taking a push twice.
    pub async fn release_pushes(&self, _ids: &[i64]) -> Result<()> {
        Ok(())
    }
}
