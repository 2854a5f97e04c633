//! Group commit on the single write connection.
//!
//! Every acknowledged write must be on disk (`synchronous=FULL`), and an
//! fsync costs far more than the statements before it. So writes that arrive
//! together share one transaction and one fsync: each caller's work (a
//! "job") runs in a savepoint inside the open transaction, so a failed or
//! abandoned job is rolled back alone. The transaction commits when nobody
//! else is queued for the connection, or when it holds `MAX_JOBS` jobs or is
//! `MAX_AGE` old. A caller's `commit` returns only after the commit that
//! holds its work, with that commit's outcome; when a commit fails, every
//! job in it is told so and none of them is on disk.
//!
//! The savepoint is named `job` and reused: a kept job's `RELEASE` runs
//! together with the next job's `SAVEPOINT` (or is implied by `COMMIT`), and
//! an abandoned job's `ROLLBACK TO` leaves an empty savepoint for the next
//! job. So a job costs one extra statement on the connection.
//!
//! Cancellation: a caller may be dropped at any await. The batch's own
//! statements run in tasks of their own, so a cancellation never leaves the
//! connection in a state the batch does not know about; a job dropped before
//! `commit` is rolled back by whoever holds the connection next.

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

/// What became of the last job's savepoint in the open transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Kept; its `RELEASE` is still to run (or `COMMIT` implies it).
    Kept,
    /// Dropped before `commit`; its `ROLLBACK TO` is still to run.
    Abandoned,
    /// A job is running in it.
    Running,
}

struct Batch {
    conn: Option<SqliteConnection>,
    /// A transaction is open, with the savepoint `job` in it.
    open: bool,
    opened_at: Instant,
    last: Last,
    /// Jobs kept in the open transaction.
    jobs: usize,
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
                    last: Last::Kept,
                    jobs: 0,
                    done: watch::channel(None).0,
                })),
                waiting: AtomicUsize::new(0),
                commits: Counter::default(),
            }),
        }
    }

    /// Starts a job: waits for the connection, then joins (or opens) the
    /// transaction.
    pub(super) async fn begin(&self) -> Result<WriteTx> {
        let mut batch = self.inner.lock().await;
        let inner = self.inner.clone();
        let (reply, tx) = oneshot::channel();
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
    ///
    /// While the last job in the open transaction was kept, the statement
    /// runs straight in that job's savepoint, saving the round trip of a
    /// savepoint of its own: one statement is atomic by itself (SQLite undoes
    /// a failed statement alone), and an error that ends the whole
    /// transaction shows at the next `RELEASE` or `COMMIT`, which then fails
    /// the batch. A caller cancelled meanwhile leaves the statement either
    /// run or not, as with any request whose answer is lost.
    pub(super) async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments<'q>>,
    ) -> Result<SqliteQueryResult> {
        let batch = self.inner.lock().await;
        if !(batch.open && batch.last == Last::Kept) {
            drop(batch);
            let mut tx = self.begin().await?;
            let done = query.execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(done);
        }
        let mut held = Held {
            batch: Some(batch),
            inner: self.inner.clone(),
        };
        let done = query.execute(held.conn()?).await;
        let mut batch = held.batch.take().expect("held until here");
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                self.inner.release(batch);
                return Err(e.into());
            }
        };
        batch.jobs += 1;
        let outcome = batch.done.subscribe();
        self.inner.release(batch);
        wait_for_commit(outcome).await?;
        Ok(done)
    }

    /// The connection outside any transaction: the open one commits first
    /// (its jobs get their outcome as usual).
    pub(super) async fn solo(&self) -> Result<SoloConn> {
        loop {
            let batch = self.inner.lock().await;
            if !batch.open {
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
        if batch.open && (alone || full) {
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

/// Ends the open transaction: commits its kept jobs (after rolling back an
/// abandoned last one), or rolls back when none was kept, and tells the
/// jobs the outcome.
async fn finish(mut batch: OwnedMutexGuard<Batch>, inner: Arc<Inner>) {
    if !batch.open {
        return;
    }
    if batch.jobs == 0 {
        batch.end(Ok(())).await;
        return;
    }
    let sql = match batch.last {
        Last::Abandoned => "ROLLBACK TO job; COMMIT",
        _ => "COMMIT",
    };
    let outcome = match batch.run(sql).await {
        Ok(()) => {
            inner.commits.inc();
            batch.open = false;
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = batch.jobs, "a database commit failed");
            Err(Arc::from(e.to_string()))
        }
    };
    batch.end(outcome).await;
}

impl Batch {
    fn conn(&mut self) -> Result<&mut SqliteConnection> {
        self.conn.as_mut().ok_or_else(closed)
    }

    async fn run(&mut self, sql: &'static str) -> Result<()> {
        self.conn()?.execute(sql).await?;
        Ok(())
    }

    /// Makes the savepoint `job` ready for a job, in one round trip.
    async fn prepare(&mut self) -> Result<()> {
        if self.open {
            let sql = match self.last {
                Last::Kept => "RELEASE job; SAVEPOINT job",
                Last::Abandoned | Last::Running => "ROLLBACK TO job",
            };
            match self.run(sql).await {
                Ok(()) => {
                    self.last = Last::Running;
                    return Ok(());
                }
                Err(e) => {
                    // SQLite ended the transaction (it does on some errors):
                    // the kept jobs are gone. Start afresh for this one.
                    tracing::error!(error = %e, "the open transaction failed; its writes are dropped");
                    self.end(Err(Arc::from(e.to_string()))).await;
                }
            }
        }
        if let Err(e) = self.run("BEGIN IMMEDIATE; SAVEPOINT job").await {
            // Whatever of it ran is undone.
            let _ = self.run("ROLLBACK").await;
            return Err(e);
        }
        self.open = true;
        self.opened_at = Instant::now();
        self.last = Last::Running;
        Ok(())
    }

    /// Ends the transaction (rolling back whatever is still open) and
    /// reports `outcome` to its jobs.
    async fn end(&mut self, outcome: Outcome) {
        if self.open {
            // Fails only when SQLite already ended the transaction.
            let _ = self.run("ROLLBACK").await;
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
        batch.last = Last::Kept;
        batch.jobs += 1;
        let outcome = batch.done.subscribe();
        self.inner.release(batch);
        wait_for_commit(outcome).await
    }
}

/// Waits for the commit of the transaction behind `outcome`.
async fn wait_for_commit(mut outcome: watch::Receiver<Option<Outcome>>) -> Result<()> {
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

/// The connection held by a single-statement job; handed on when dropped,
/// also when the caller is cancelled.
struct Held {
    batch: Option<OwnedMutexGuard<Batch>>,
    inner: Arc<Inner>,
}

impl Held {
    fn conn(&mut self) -> Result<&mut SqliteConnection> {
        self.batch.as_mut().expect("held until taken").conn()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.inner.release(batch);
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(mut batch) = self.batch.take() {
            batch.last = Last::Abandoned;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_statements_join_kept_jobs_and_fail_alone() {
        let db = db().await;
        insert(&db.writer, 1).await.unwrap();
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let writer = db.writer.clone();
                tokio::spawn(async move {
                    match i % 3 {
                        // A job with a savepoint of its own.
                        0 => insert(&writer, 100 + i).await.map(|_| ()),
                        // A lone statement.
                        1 => writer
                            .execute(
                                sqlx::query("INSERT INTO t (k, v) VALUES ($1, 's')").bind(100 + i),
                            )
                            .await
                            .map(|_| ()),
                        // A lone statement that fails (duplicate key).
                        _ => writer
                            .execute(sqlx::query("INSERT INTO t (k, v) VALUES (1, 'dup')"))
                            .await
                            .map(|_| ()),
                    }
                })
            })
            .collect();
        for (i, task) in (0..60).zip(tasks) {
            let done = task.await.unwrap();
            assert_eq!(done.is_ok(), i % 3 != 2, "job {i}: {done:?}");
        }
        let expected: Vec<i64> = std::iter::once(1)
            .chain((0..60).filter(|i| i % 3 != 2).map(|i| 100 + i))
            .collect();
        assert_eq!(committed(&db.options).await, expected);
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
