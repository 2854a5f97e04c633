//! `server_config`: server-wide values such as the server's key pairs.

use super::SqliteStore;
use crate::error::Result;

impl SqliteStore {
    /// Returns the value stored under `key`, storing `make()` first if there is
    /// none. Concurrent first starts agree on one value.
    pub async fn server_value_or_insert(
        &self,
        key: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        let (key, value) = (key.to_owned(), make());
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    sqlx::query(
            "INSERT INTO server_config (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&key)
        .bind(value)
        .execute(&mut *tx)
        .await?;
                    let (value,): (Vec<u8>,) =
                        sqlx::query_as("SELECT value FROM server_config WHERE key = $1")
                            .bind(&key)
                            .fetch_one(&mut *tx)
                            .await?;
                    Ok(value)
                })
            })
            .await
    }
}
