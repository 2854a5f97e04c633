//! `nonces`: the durable side of replay protection (see `api::replay`), and
//! the one read that classifies a key for its nonce budget.

use crate::store::rows::*;
use futures_util::future::BoxFuture;

use super::SqliteStore;
use crate::{clock::Millis, domain::UserId, error::Result};

/// Rows deleted per statement when expired nonces are cleared.
const EXPIRE_BATCH: i64 = 10_000;

impl SqliteStore {
    /// Queues `row` for the next commit and returns once it is queued; the
    /// future resolves when it is on disk. Writes queued after this call
    /// commit with it or later, so a request's own writes are never durable
    /// without its nonce. Never `None`: the in-memory front decided already
    /// (one instance owns the file).
    pub async fn record_nonce(
        &self,
        row: NonceRow,
        _now: Millis,
    ) -> Result<Option<BoxFuture<'static, Result<()>>>> {
        let commit = self
            .writer
            .execute_queued(
                sqlx::query(
                    "INSERT INTO nonces (id, key, class, until) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET key = excluded.key, \
                     class = excluded.class, until = excluded.until",
                )
                .bind(row.id as i64)
                .bind(row.key as i64)
                .bind(i64::from(row.class))
                .bind(row.until),
            )
            .await?;
        Ok(Some(Box::pin(async move { commit.await.map(|_| ()) })))
    }

    /// Every nonce still live at `now`.
    pub async fn live_nonces(&self, now: Millis) -> Result<Vec<NonceRow>> {
        let rows: Vec<(i64, i64, i64, i64)> =
            sqlx::query_as("SELECT id, key, class, until FROM nonces WHERE until >= $1")
                .bind(now)
                .fetch_all(&mut *self.readers.get().await?)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, key, class, until)| NonceRow {
                id: id as u64,
                key: key as u64,
                class: u8::try_from(class).unwrap_or(u8::MAX),
                until,
            })
            .collect())
    }

    /// Deletes the nonces that went stale before `now`, in batches; returns
    /// how many went.
    pub async fn expire_nonces(&self, now: Millis) -> Result<u64> {
        let mut total = 0;
        loop {
            let done = self
                .writer
                .execute(
                    sqlx::query(
                        "DELETE FROM nonces WHERE id IN \
                         (SELECT id FROM nonces WHERE until < $1 LIMIT $2)",
                    )
                    .bind(now)
                    .bind(EXPIRE_BATCH),
                )
                .await?;
            total += done.rows_affected();
            if done.rows_affected() < EXPIRE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Whether `key` is registered, or accepted as a sender by someone: two
    /// index lookups in one statement.
    pub async fn key_standing(&self, key: &UserId) -> Result<KeyStanding> {
        let (registered, accepted): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM users WHERE public_key = $1 AND deleted_at IS NULL), \
             EXISTS (SELECT 1 FROM contacts WHERE contact_key = $1)",
        )
        .bind(key.as_bytes().as_slice())
        .fetch_one(&mut *self.readers.get().await?)
        .await?;
        Ok(KeyStanding {
            registered,
            accepted_as_sender: accepted,
        })
    }
}
