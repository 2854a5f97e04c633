//! The SQLite backend: typed functions per table (`sqlx`).
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

pub use retention::{backup_temp_name, remove_backup_temp};

/// Read connections: enough for both cores and the blocking waits of a few
/// requests at once.
const READERS: u32 = 8;

/// Handle to the SQLite database; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Readers>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
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
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        Ok(SqliteStore {
            writer: Writer::start(writer)?,
            readers: Arc::new(Readers::new(options, READERS)),
        })
    }

    /// Counts the database's commits; one commit holds every write that
    /// arrived together (see `writer`).
    pub fn commit_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.writer.commits()
    }

    /// Sets a pragma on the write connection only, where it holds for every
    /// later write: tests make the database "full" with `max_page_count`
    /// (SQLite then fails writes with SQLITE_FULL, as on a full disk) or
    /// refuse every write with `query_only`. The name must be a plain word.
    pub async fn set_writer_pragma(
        &self,
        name: &'static str,
        value: i64,
    ) -> crate::error::Result<()> {
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(crate::error::Error::InvalidArgument(
                "a pragma name is lowercase letters and '_'".into(),
            ));
        }
        self.writer
            .solo(move |conn| {
                Box::pin(async move {
                    sqlx::query(&format!("PRAGMA {name} = {value}"))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .await
    }

    /// A read connection, for copying the database elsewhere (`migrate`).
    pub(in crate::store) async fn reader(&self) -> crate::error::Result<readers::ReadConn<'_>> {
        self.readers.get().await
    }

    /// A read on one of the read connections.
    pub async fn ping(&self) -> crate::error::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.readers.get().await?)
            .await?;
        Ok(())
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
