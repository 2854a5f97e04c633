//! Statistics that GetInfo publishes, computed from the real tables.

use super::{SqliteStore, count};
use crate::store::rows::*;
use crate::{
    clock::{DAY, Millis},
    error::Result,
};

impl SqliteStore {
    pub async fn statistics(&self, now: Millis) -> Result<Statistics> {
        let (total, active_7d, active_30d): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), \
             COUNT(*) FILTER (WHERE last_seen_at >= $1), \
             COUNT(*) FILTER (WHERE last_seen_at >= $2) \
             FROM users WHERE public_key IS NOT NULL",
        )
        .bind(now - 7 * DAY)
        .bind(now - 30 * DAY)
        .fetch_one(&mut *self.readers.get().await?)
        .await?;
        let (waiting,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM parcels WHERE type = 'MEDIA'")
                .fetch_one(&mut *self.readers.get().await?)
                .await?;
        let (received,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(media_received), 0) FROM daily_stats WHERE day > $1",
        )
        .bind(day_of(now) - 7)
        .fetch_one(&mut *self.readers.get().await?)
        .await?;
        Ok(Statistics {
            users_total: count(total),
            users_active_7d: count(active_7d),
            users_active_30d: count(active_30d),
            media_parcels_waiting: count(waiting),
            media_parcels_received_7d: count(received),
        })
    }
}
