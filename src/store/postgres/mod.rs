//! The PostgreSQL backend: the same operations as `sqlite`, for several
//! instances sharing one database.
//!
//! There is no single writer to lean on, so what SQLite gets from it is
//! done with the database's own tools: each multi-statement write is a
//! transaction; sends lock their recipients' rows in a fixed order before
//! counting quotas; an accept is one conditional UPDATE; queued pushes are
//! claimed with a lease (`FOR UPDATE SKIP LOCKED`); the nonce insert itself
//! decides whether a signature was seen; one instance at a time leads the
//! scheduled jobs by holding an advisory lock on a connection of its own
//! (`leader`).

mod leader;
mod ops;

use std::{fmt, str::FromStr, time::Duration};

use prometheus_client::metrics::counter::Counter;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::Leadership;
use crate::error::Result;

/// A PostgreSQL database to connect to, parsed from `DATABASE_URL`. Shown
/// (Debug) as host, port, database, user and sslmode, never the password.
#[derive(Clone)]
pub struct PgTarget {
    options: PgConnectOptions,
    sslmode: String,
}

impl PgTarget {
    /// Parses a `postgres://` or `postgresql://` URL; every libpq parameter
    /// sqlx knows (`sslmode`, `sslrootcert`, `options`, …) is honoured.
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("expected a postgres:// or postgresql:// URL".into());
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            // sqlx's message may quote the URL; say only what is wrong.
            let kind = match e {
                sqlx::Error::Configuration(_) => "a parameter is invalid",
                _ => "it cannot be parsed",
            };
            format!(
                "not a valid PostgreSQL URL ({kind}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=...]"
            )
        })?;
        let sslmode = url
            .split_once('?')
            .into_iter()
            .flat_map(|(_, query)| query.split('&'))
            .find_map(|pair| pair.strip_prefix("sslmode="))
            .unwrap_or("prefer")
            .to_owned();
        Ok(PgTarget { options, sslmode })
    }

    /// The same server with another database (tests make one per run).
    pub fn with_database(&self, database: &str) -> Self {
        PgTarget {
            options: self.options.clone().database(database),
            sslmode: self.sslmode.clone(),
        }
    }

    pub fn database(&self) -> &str {
        self.options.get_database().unwrap_or("")
    }

    /// The options to connect with (tests and tools connect beside the
    /// server, e.g. to create a database).
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{} (sslmode={})",
            self.options.get_username(),
            self.options.get_host(),
            self.options.get_port(),
            self.database(),
            self.sslmode
        )
    }
}

/// How long a request waits for a pooled connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle to the PostgreSQL database; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    commits: Counter,
    leader: leader::Leader,
}

impl PgStore {
    /// Connects a pool of up to `max_connections`, applies the migrations
    /// (sqlx takes an advisory lock, so instances starting together migrate
    /// once) and starts competing for leadership.
    pub async fn connect(target: &PgTarget, max_connections: u32) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(target.connect_options())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore {
            pool,
            commits: Counter::default(),
            leader: leader::Leader::start(target.connect_options()),
        })
    }

    pub fn commit_counter(&self) -> Counter {
        self.commits.clone()
    }

    pub fn leadership(&self) -> Leadership {
        self.leader.leadership()
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Gives up leadership and closes every connection.
    pub async fn close(&self) {
        self.leader.stop().await;
        self.pool.close().await;
    }

    /// Commits `tx` and counts the commit.
    async fn commit(&self, tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<()> {
        tx.commit().await?;
        self.commits.inc();
        Ok(())
    }
}
