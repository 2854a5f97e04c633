//! Up to a fixed number of read connections, each opened when first needed
//! (so a start stays quick and an idle server small) and then kept open.
//!
//! `sqlx`'s own pool pings a connection on every release (a round trip to
//! the connection's thread per query); for a local SQLite file that only
//! costs time, so reads borrow connections from this simpler set instead.

use std::{
    ops::{Deref, DerefMut},
    sync::Mutex,
};

use sqlx::{ConnectOptions as _, SqliteConnection, sqlite::SqliteConnectOptions};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{Error, Result};

pub(super) struct Readers {
    options: SqliteConnectOptions,
    free: Mutex<Vec<SqliteConnection>>,
    permits: Semaphore,
    size: u32,
}

/// A borrowed read connection; goes back to the set when dropped.
pub(in crate::store) struct ReadConn<'a> {
    conn: Option<SqliteConnection>,
    readers: &'a Readers,
    _permit: SemaphorePermit<'a>,
}

impl Readers {
    pub(super) fn new(options: SqliteConnectOptions, size: u32) -> Self {
        Readers {
            options,
            free: Mutex::new(Vec::with_capacity(size as usize)),
            permits: Semaphore::new(size as usize),
            size,
        }
    }

    pub(super) async fn get(&self) -> Result<ReadConn<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // With a permit and none free, fewer than `size` are open.
        let conn = match free {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        Ok(ReadConn {
            conn: Some(conn),
            readers: self,
            _permit: permit,
        })
    }

    /// Waits for every borrowed connection to come back, then closes them.
    pub(super) async fn close(&self) {
        if let Ok(all) = self.permits.acquire_many(self.size).await {
            all.forget();
            self.permits.close();
        }
        let conns = std::mem::take(&mut *self.free.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in conns {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

impl Deref for ReadConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        // Back in the set before the permit (a later field) is released.
        if let Some(conn) = self.conn.take() {
            self.readers
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}
