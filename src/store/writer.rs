//! Group commit on the single write connection.
//!
//! Every acknowledged write must be on disk (`synchronous=FULL`), and an
//! fsync costs far more than the statements before it. So writes that arrive
//! together share one transaction and one fsync: each caller's work runs in
//! its own savepoint inside the open transaction (a failed or abandoned one
//! is rolled back alone), and the transaction commits when nobody else is
//! queued for the connection, or when it holds `MAX_JOBS` jobs or is
//! `MAX_AGE` old. A caller's `commit` returns only after the commit that
//! holds its work, with that commit's outcome; on a failed commit every job
//! in it is told so and none of them is on disk.
//!
//! Cancellation: a caller may be dropped at any await. Statements of the
//! batch's own (BEGIN, SAVEPOINT, RELEASE, COMMIT) run in tasks of their own,
//! so a cancellation never leaves the connection in a state the batch does
//! not know about; a job abandoned between them is marked and rolled back by
//! whoever holds the connection next.

use std::{
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use sqlx::{
    Executor as _, SqliteConnection,
    sqlite::{SqliteArguments, SqliteQueryResult},
};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot, watch};

use crate::error::{Error, Result};

/// Jobs in one transaction at most; bounds how long the first one waits.
const MAX_JOBS: usize = 256;
/// A transaction older than this commits even while callers are queued.
const MAX_AGE: Duration = Duration::from_millis(10);

/// The write connection, shared by all writers; cheap to clone.
#[derive(Clone)]
pub(super) struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    batch: Arc<Mutex<Batch>>,
    /// Callers queued for the connection: while there are any, the holder
    /// leaves the transaction open for them.
    waiting: AtomicUsize,
    /// Successful commits so far (exported as a metric).
    commits: Counter,
}

/// The outcome of one commit, shared by the jobs in it.
type Outcome = Result<(), Arc<str>>;

struct Batch {
    conn: Option<SqliteConnection>,
    /// A transaction is open (`BEGIN IMMEDIATE` ran).
    open: bool,
    opened_at: Instant,
    /// Jobs released into the open transaction.
    jobs: usize,
    /// The current job's savepoint was abandoned and must be rolled back
    /// before anything else runs.
    abandoned: bool,
    /// Tells the open transaction's jobs how its commit went.
    done: watch::Sender<Option<Outcome>>,
}

/// One caller's work: a savepoint in the open transaction. Derefs to the
/// connection; `commit` to keep the work, drop to roll it back.
pub(super) struct WriteTx {
    batch: Option<OwnedMutexGuard<Batch>>,
    inner: Arc<Inner>,
}

/// The connection with no transaction open (for statements such as a WAL
/// checkpoint that cannot run inside one).
pub(super) struct SoloConn {
    batch: OwnedMutexGuard<Batch>,
}

impl Writer {
    pub(super) fn new(conn: SqliteConnection) -> Self {
        Writer {
            inner: Arc::new(Inner {
                batch: Arc::new(Mutex::new(Batch {
                    conn: Some(conn),
                    open: false,
                    opened_at: Instant::now(),
                    jobs: 0,
                    abandoned: false,
                    done: watch::channel(None).0,
                })),
                waiting: AtomicUsize::new(0),
                commits: Counter::default(),
            }),
        }
    }

    /// Starts a job: waits for the connection, joins (or opens) the
    /// transaction and sets the job's savepoint.
    pub(super) async fn begin(&self) -> Result<WriteTx> {
        let mut batch = self.inner.lock().await;
        let inner = self.inner.clone();
        let (reply, tx) = oneshot::channel();
        // The connection's own statements run where no caller's cancellation
        // can cut them short (see the module comment).
        spawn_detached(async move {
            match batch.prepare().await {
                // A caller gone meanwhile drops its `WriteTx`: rolled back.
                Ok(()) => drop(reply.send(Ok(WriteTx {
                    batch: Some(batch),
                    inner,
                }))),
                Err(e) => {
                    inner.release(batch);
                    let _ = reply.send(Err(e));
                }
            }
        });
        tx.await.map_err(|_| stopped())?
    }

    /// Runs one statement as a job of its own.
    pub(super) async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments<'q>>,
    ) -> Result<SqliteQueryResult> {
        let mut tx = self.begin().await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// The connection outside any transaction: the open one commits first
    /// (its jobs get their outcome as usual).
    pub(super) async fn solo(&self) -> Result<SoloConn> {
        loop {
            let batch = self.inner.lock().await;
            if !batch.open && !batch.abandoned {
                batch.conn.as_ref().ok_or_else(closed)?;
                return Ok(SoloConn { batch });
            }
            // In a task of its own, so that dropping this caller cannot cut
            // the commit short; then look again.
            let _ = tokio::spawn(finish(batch, self.inner.clone())).await;
        }
    }

    /// Counts the transactions committed (each holds one or more jobs).
    pub(super) fn commits(&self) -> Counter {
        self.inner.commits.clone()
    }

    /// Commits what is open and closes the connection.
    pub(super) async fn close(&self) {
        let Ok(mut solo) = self.solo().await else {
            return;
        };
        if let Some(conn) = solo.batch.conn.take()
            && let Err(e) = sqlx::Connection::close(conn).await
        {
            tracing::warn!(error = %e, "closing the database failed");
        }
    }
}

impl Inner {
    /// Queues for the connection, counted in `waiting` meanwhile.
    async fn lock(self: &Arc<Self>) -> OwnedMutexGuard<Batch> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let queued = Queued(self.clone());
        let batch = self.batch.clone().lock_owned().await;
        queued.leave();
        batch
    }

    /// Hands the connection on. The transaction commits now if nobody is
    /// queued to add to it (or it is full or old enough); otherwise the next
    /// holder decides the same way.
    fn release(self: &Arc<Self>, batch: OwnedMutexGuard<Batch>) {
        let alone = self.waiting.load(Ordering::SeqCst) == 0;
        let full = batch.jobs >= MAX_JOBS || batch.opened_at.elapsed() >= MAX_AGE;
        let due = batch.open && (alone || (full && batch.jobs > 0));
        if due || (batch.abandoned && alone) {
            spawn_detached(finish(batch, self.clone()));
        }
    }
}

/// A caller in the queue for the connection. Dropped without `leave` (the
/// caller was cancelled while queued), it makes sure that a transaction the
/// previous holder left open for it still commits.
struct Queued(Arc<Inner>);

impl Queued {
    fn leave(self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        std::mem::forget(self);
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            let inner = self.0.clone();
            spawn_detached(async move {
                let batch = inner.lock().await;
                inner.release(batch);
            });
        }
    }
}

fn spawn_detached(task: impl Future<Output = ()> + Send + 'static) {
    // Without a runtime (only while the process ends) there is nobody left
    // to wait for the outcome.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

/// Rolls back an abandoned job, then commits the open transaction (or, with
/// no job in it, rolls it back) and tells its jobs the outcome.
async fn finish(mut batch: OwnedMutexGuard<Batch>, inner: Arc<Inner>) {
    batch.settle().await;
    if !batch.open {
        return;
    }
    if batch.jobs == 0 {
        batch.end(Ok(()), "ROLLBACK").await;
        return;
    }
    let outcome = match batch.run("COMMIT").await {
        Ok(()) => {
            inner.commits.inc();
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = batch.jobs, "a database commit failed");
            Err(Arc::from(e.to_string()))
        }
    };
    // After a successful COMMIT nothing is open; after a failed one the
    // ROLLBACK makes sure nothing of the batch stays behind.
    let undo = if outcome.is_ok() { "" } else { "ROLLBACK" };
    batch.end(outcome, undo).await;
}

impl Batch {
    fn conn(&mut self) -> Result<&mut SqliteConnection> {
        self.conn.as_mut().ok_or_else(closed)
    }

    async fn run(&mut self, sql: &'static str) -> Result<()> {
        self.conn()?.execute(sql).await?;
        Ok(())
    }

    /// Makes the connection ready for a job.
    async fn prepare(&mut self) -> Result<()> {
        self.settle().await;
        if !self.open {
            self.run("BEGIN IMMEDIATE").await?;
            self.open = true;
            self.opened_at = Instant::now();
        }
        self.run("SAVEPOINT job").await
    }

    /// Rolls back an abandoned job's savepoint. If that fails the
    /// transaction is gone (SQLite ends it on some errors), so the whole
    /// batch is reported failed.
    async fn settle(&mut self) {
        if !self.abandoned {
            return;
        }
        self.abandoned = false;
        if let Err(e) = self.run("ROLLBACK TO job; RELEASE job").await {
            tracing::error!(error = %e, "rolling back a write failed; the batch is dropped");
            self.end(Err(Arc::from(e.to_string())), "ROLLBACK").await;
        }
    }

    /// Ends the transaction with `undo` (if any) and reports `outcome`.
    async fn end(&mut self, outcome: Outcome, undo: &'static str) {
        if !undo.is_empty() {
            // Fails only when SQLite already ended the transaction.
            let _ = self.run(undo).await;
        }
        self.open = false;
        self.jobs = 0;
        self.done.send_replace(Some(outcome));
        self.done = watch::channel(None).0;
    }
}

impl WriteTx {
    /// Keeps this job's work; returns once it is on disk.
    pub(super) async fn commit(mut self) -> Result<()> {
        let mut batch = self.batch.take().expect("present until commit or drop");
        let inner = self.inner.clone();
        let (reply, joined) = oneshot::channel();
        spawn_detached(async move {
            match batch.run("RELEASE job").await {
                Ok(()) => {
                    batch.jobs += 1;
                    let outcome = batch.done.subscribe();
                    inner.release(batch);
                    let _ = reply.send(Ok(outcome));
                }
                Err(e) => {
                    batch.abandoned = true;
                    inner.release(batch);
                    let _ = reply.send(Err(e));
                }
            }
        });
        let mut outcome = joined.await.map_err(|_| stopped())??;
        let outcome = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| stopped())?
            .clone();
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(message)) => Err(Error::internal(format!("commit failed: {message}"))),
            None => Err(stopped()),
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(mut batch) = self.batch.take() {
            batch.abandoned = true;
            self.inner.release(batch);
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        let batch = self.batch.as_ref().expect("present until commit or drop");
        batch.conn.as_ref().expect("open while a job runs")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        let batch = self.batch.as_mut().expect("present until commit or drop");
        batch.conn.as_mut().expect("open while a job runs")
    }
}

impl Deref for SoloConn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.batch.conn.as_ref().expect("checked by solo")
    }
}

impl DerefMut for SoloConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.batch.conn.as_mut().expect("checked by solo")
    }
}

fn stopped() -> Error {
    Error::internal("the database writer stopped")
}

fn closed() -> Error {
    Error::Unavailable("the database is closed".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{ConnectOptions as _, SqliteConnection, sqlite::SqliteConnectOptions};

    use super::Writer;

    struct Db {
        _dir: tempfile::TempDir,
        options: SqliteConnectOptions,
        writer: Writer,
    }

    async fn db() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("w.sqlite"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut conn = options.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        Db {
            _dir: dir,
            writer: Writer::new(conn),
            options,
        }
    }

    /// The committed keys, read on a connection of its own.
    async fn committed(options: &SqliteConnectOptions) -> Vec<i64> {
        let mut conn: SqliteConnection = options.connect().await.unwrap();
        sqlx::query_scalar("SELECT k FROM t ORDER BY k")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    }

    async fn insert(writer: &Writer, k: i64) -> crate::error::Result<()> {
        let mut tx = writer.begin().await?;
        sqlx::query("INSERT INTO t (k, v) VALUES ($1, 'x')")
            .bind(k)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_land() {
        let db = db().await;
        let tasks: Vec<_> = (0..200)
            .map(|k| {
                let writer = db.writer.clone();
                tokio::spawn(async move { insert(&writer, k).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(committed(&db.options).await, (0..200).collect::<Vec<_>>());
        let commits = db.writer.commits().get();
        assert!(
            (1..200).contains(&commits),
            "200 concurrent writes took {commits} commits"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_job_is_rolled_back_alone() {
        let db = db().await;
        insert(&db.writer, 1).await.unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let writer = db.writer.clone();
                tokio::spawn(async move {
                    let mut tx = writer.begin().await?;
                    // Every third job writes a fresh row, then hits the
                    // duplicate key 1 and fails.
                    sqlx::query("INSERT INTO t (k, v) VALUES ($1, 'y')")
                        .bind(100 + i)
                        .execute(&mut *tx)
                        .await?;
                    if i % 3 == 0 {
                        sqlx::query("INSERT INTO t (k, v) VALUES (1, 'dup')")
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await
                })
            })
            .collect();
        let mut failed = 0;
        for task in tasks {
            if task.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 17);
        let expected: Vec<i64> = std::iter::once(1)
            .chain((0..50).filter(|i| i % 3 != 0).map(|i| 100 + i))
            .collect();
        assert_eq!(committed(&db.options).await, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_job_is_rolled_back_and_the_others_commit() {
        let db = db().await;
        // A job dropped after writing, with nobody else around.
        {
            let mut tx = db.writer.begin().await.unwrap();
            sqlx::query("INSERT INTO t (k, v) VALUES (7, 'gone')")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        insert(&db.writer, 8).await.unwrap();
        // Callers cancelled at every stage, among ones that finish.
        let mut tasks = Vec::new();
        for k in 10..60 {
            let writer = db.writer.clone();
            tasks.push(tokio::spawn(async move { insert(&writer, k).await }));
        }
        for task in tasks.iter().step_by(4) {
            task.abort();
        }
        let mut landed = vec![8];
        for (k, task) in (10..60).zip(tasks) {
            if let Ok(done) = task.await {
                done.unwrap();
                landed.push(k);
            }
        }
        // Every finished write is there and the abandoned one is not; an
        // aborted one may or may not have landed.
        let rows = tokio::time::timeout(Duration::from_secs(10), async {
            // The writer is not stuck: one more write goes through.
            insert(&db.writer, 1000).await.unwrap();
            committed(&db.options).await
        })
        .await
        .expect("the writer keeps going after cancelled callers");
        assert!(!rows.contains(&7));
        for k in landed.iter().chain([&1000]) {
            assert!(rows.contains(k), "{k} is missing");
        }
    }

    #[tokio::test]
    async fn solo_runs_outside_a_transaction_after_pending_work() {
        let db = db().await;
        insert(&db.writer, 1).await.unwrap();
        let mut conn = db.writer.solo().await.unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        db.writer.close().await;
        assert_eq!(committed(&db.options).await, vec![1]);
        let closed = db.writer.begin().await;
        assert!(closed.is_err(), "a closed writer refuses work");
    }
}
