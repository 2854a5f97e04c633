//! One leader among the instances sharing a database: the one holding a
//! session advisory lock on a connection of its own (not from the pool, so
//! the lock lives exactly as long as that connection). When the leader's
//! process or connection dies, PostgreSQL releases the lock and a follower
//! takes it on its next try.

use std::{sync::Arc, time::Duration};

use sqlx::{ConnectOptions as _, Connection as _, PgConnection, postgres::PgConnectOptions};
use tokio::sync::{Mutex, watch};

use crate::store::Leadership;

/// The advisory lock key of leadership ("piqchat" in ASCII).
const LEADER_LOCK: i64 = 0x0070_6971_6368_6174;
/// How often a follower tries to take the lock.
pub(super) const RETRY: Duration = Duration::from_secs(10);
/// How often the leader checks that its connection (and so the lock) is
/// still there; a lost connection is lost leadership.
const CHECK: Duration = Duration::from_secs(2);
/// A check that takes longer than this counts as a lost connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(super) struct Leader {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Leader {
    pub(super) fn start(options: PgConnectOptions) -> Self {
        let (set, leading) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(compete(options, set, stopped));
        Leader {
            leading,
            stop,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    pub(super) fn leadership(&self) -> Leadership {
        Leadership::watching(self.leading.clone())
    }

    /// Closes the lock's connection, so another instance can lead at once.
    pub(super) async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn compete(
    options: PgConnectOptions,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<PgConnection> = None;
    loop {
        let wait = match try_lead(&options, &mut conn, &leading).await {
            Ok(true) => CHECK,
            Ok(false) => RETRY,
            Err(e) => {
                if leading.send_replace(false) {
                    tracing::warn!(error = %e, "lost the database connection that held leadership");
                }
                conn = None;
                RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    leading.send_replace(false);
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

/// One round: connects if needed, then either checks the held lock or tries
/// to take it. Returns whether this instance leads.
async fn try_lead(
    options: &PgConnectOptions,
    conn: &mut Option<PgConnection>,
    leading: &watch::Sender<bool>,
) -> Result<bool, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(options.connect().await?);
    }
    let c = conn.as_mut().expect("connected above");
    if *leading.borrow() {
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *c))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        return Ok(true);
    }
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut *c)
        .await?;
    if got {
        tracing::info!("this instance now runs the scheduled jobs (leader)");
        leading.send_replace(true);
    }
    Ok(got)
}
