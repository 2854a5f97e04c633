//! The only code that writes SQL. Typed functions per table over SQLite
//! (`sqlx`, `$N` placeholders so a PostgreSQL backend can follow).
//!
//! Writes go through one connection on a thread of its own (`writer`, with
//! group commit): SQLite allows one writer at a time anyway, and a lone
//! writer never hits `SQLITE_BUSY` when a read transaction upgrades to a
//! write. A write is a closure over that connection, so it owns what it
//! binds. Reads use connections of their own (`readers`; WAL lets them run
//! beside the writer).

mod accounts;
mod exchanges;
mod nonces;
mod parcels;
mod push;
mod readers;
mod retention;
mod server_config;
mod stats;
mod users;
mod writer;

use std::{fmt, path::Path, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    ConnectOptions as _,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use readers::Readers;
use writer::Writer;

pub use accounts::{BackupRow, InvitedRow, PushSubscriptionRow};
pub use exchanges::{AcceptOutcome, ExchangeRow};
pub use nonces::{KeyStanding, NonceRow};
pub use parcels::{NewParcel, NewParcels, ParcelRow, QuotaExceeded};
pub use push::{DuePush, NewPush};
pub use retention::BATCH as RETENTION_BATCH;
pub use stats::Statistics;
pub use users::UserRow;

/// Read connections: enough for both cores and the blocking waits of a few
/// requests at once.
const READERS: u32 = 8;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: Writer,
    readers: Arc<Readers>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
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
        let mut writer = options.connect().await?;
        sqlx::migrate!("./migrations").run(&mut writer).await?;
        Ok(Store {
            writer: Writer::start(writer)?,
            readers: Arc::new(Readers::new(options, READERS)),
        })
    }

    /// Counts the database's commits; one commit holds every write that
    /// arrived together (see `writer`).
    pub fn commit_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.writer.commits()
    }

    /// Commits what is pending and closes every connection.
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}

/// Converts a count from SQLite to the wire's unsigned 32-bit counts.
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}
