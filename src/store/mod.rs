//! The only code that writes SQL. Typed functions per table over SQLite
//! (`sqlx`, `$N` placeholders so a PostgreSQL backend can follow).
//!
//! Writes go through a single-connection pool: SQLite allows one writer at a
//! time anyway, and a lone writer never hits `SQLITE_BUSY` when a read
//! transaction upgrades to a write. Reads use a pool of their own (WAL lets
//! them run beside the writer).

mod accounts;
mod exchanges;
mod parcels;
mod push;
mod retention;
mod server_config;
mod stats;
mod users;

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use accounts::{BackupRow, InvitedRow, PushSubscriptionRow};
pub use exchanges::{AcceptOutcome, ExchangeRow};
pub use parcels::{NewParcel, NewParcels, ParcelRow, QuotaExceeded};
pub use push::{DuePush, NewPush};
pub use retention::BATCH as RETENTION_BATCH;
pub use stats::Statistics;
pub use users::UserRow;

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the
    /// embedded migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the call that made it returns.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Deleted content is overwritten, not left in free pages.
            .pragma("secure_delete", "ON");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        Ok(Store { writer, reader })
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Converts a count from SQLite to the wire's unsigned 32-bit counts.
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}
