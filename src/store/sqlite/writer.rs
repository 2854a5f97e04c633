//! Group commit on the single write connection, driven by a thread of its
//! own.
//!
//! Every acknowledged write must be on disk (`synchronous=FULL`), and an
//! fsync costs far more than the statements before it. So writes that arrive
//! together share one transaction and one fsync. Callers hand their work (a
//! "job": a closure over the connection) to the writer thread, which takes
//! every job waiting in its queue, runs each in a savepoint of the open
//! transaction (a failed job is rolled back alone and told at once), commits
//! them together, then tells each kept job the commit's outcome. A caller's
//! `run` returns only after the commit that holds its work; when a commit
//! fails, every job in it is told so and none of them is on disk.
//!
//! Why a thread and not a lock shared by the callers: the section that
//! cannot run in parallel (one job after another on one connection) must not
//! wait for the request workers, which are busy verifying signatures and
//! parsing requests; with a lock each hand-over queued behind that work.
//! And a job runs to its end even when its caller is cancelled, so the
//! connection is never left in a state the batch does not know.
//!
//! The savepoint is named `job` and reused: a kept job's `RELEASE` runs
//! together with the next job's `SAVEPOINT` (and `COMMIT` implies it), and a
//! failed job's `ROLLBACK TO` leaves an empty savepoint for the next job. A
//! job of one statement (`Writer::execute`) runs without a savepoint of its
//! own: SQLite undoes a failed statement alone.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt as _, future::BoxFuture};
use prometheus_client::metrics::counter::Counter;
use sqlx::{
    Executor as _, Sqlite, SqliteConnection,
    query::Query,
    sqlite::{SqliteArguments, SqliteQueryResult},
};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Jobs in one transaction at most; bounds how long the first one waits.
const MAX_JOBS: usize = 256;
/// A transaction older than this commits even while jobs are queued.
const MAX_AGE: Duration = Duration::from_millis(10);
/// Jobs queued for the writer at most; callers beyond wait to hand theirs in.
const QUEUE: usize = 1024;

/// The outcome of one commit, shared by the jobs in it.
type Outcome = Result<(), Arc<sqlx::Error>>;
/// Tells a kept job's caller how the commit went.
type Finish = Box<dyn FnOnce(Outcome) + Send>;
/// A job's work on the connection; `Some` when kept.
type Work =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Option<Finish>> + Send>;

struct Job {
    work: Work,
    /// One statement: atomic by itself (SQLite undoes a failed statement
    /// alone), so it needs no savepoint of its own.
    single_statement: bool,
}
/// Work outside any transaction.
type Solo = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, ()> + Send>;

enum Request {
    Job(Job),
    Solo(Solo),
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Request>,
    commits: Counter,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(super) fn start(conn: SqliteConnection) -> std::io::Result<Self> {
        let (queue, requests) = mpsc::channel(QUEUE);
        let commits = Counter::default();
        // No I/O driver: the connection talks over channels, and without one
        // an idle writer sleeps on a futex, which is cheaper to wake than
        // epoll with an eventfd.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || runtime.block_on(serve(conn, requests, counter)))?;
        Ok(Writer { queue, commits })
    }

    /// Runs `job` in the next transaction and returns its value once that
    /// transaction is on disk. An `Err` from the job undoes the job's work
    /// (only) and comes back at once.
    pub(super) async fn run<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.submit(job, false).await
    }

    /// Runs one statement as a job of its own (without a savepoint: see
    /// `batch`).
    pub(super) async fn execute(
        &self,
        query: Query<'static, Sqlite, SqliteArguments<'static>>,
    ) -> Result<SqliteQueryResult> {
        self.submit(
            move |tx| Box::pin(async move { Ok(query.execute(&mut *tx).await?) }),
            true,
        )
        .await
    }

    /// Like [`execute`](Self::execute), but returns as soon as the statement
    /// is queued, with a future for its commit: whatever is queued later
    /// commits in the same transaction or a later one.
    pub(super) async fn execute_queued(
        &self,
        query: Query<'static, Sqlite, SqliteArguments<'static>>,
    ) -> Result<BoxFuture<'static, Result<SqliteQueryResult>>> {
        self.enqueue(
            move |tx| Box::pin(async move { Ok(query.execute(&mut *tx).await?) }),
            true,
        )
        .await
    }

    async fn submit<T, F>(&self, job: F, single_statement: bool) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.enqueue(job, single_statement).await?.await
    }

    async fn enqueue<T, F>(
        &self,
        job: F,
        single_statement: bool,
    ) -> Result<BoxFuture<'static, Result<T>>>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let work: Work = Box::new(move |conn| {
            Box::pin(async move {
                match AssertUnwindSafe(job(conn)).catch_unwind().await {
                    Ok(Ok(value)) => Some(Box::new(move |outcome: Outcome| {
                        let _ = reply.send(match outcome {
                            Ok(()) => Ok(value),
                            // A full disk stays the caller's RESOURCE_EXHAUSTED.
                            Err(e) => Err(Error::database(e)),
                        });
                    }) as Finish),
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(e));
                        None
                    }
                    Err(_) => {
                        tracing::error!("a database job panicked; its writes are undone");
                        let _ = reply.send(Err(Error::internal("a database job failed")));
                        None
                    }
                }
            })
        });
        let job = Job {
            work,
            single_statement,
        };
        self.queue
            .send(Request::Job(job))
            .await
            .map_err(|_| closed())?;
        Ok(Box::pin(
            async move { answer.await.map_err(|_| stopped())? },
        ))
    }

    /// Runs `work` outside any transaction (for statements such as a WAL
    /// checkpoint that cannot run inside one), after what is open commits.
    pub(super) async fn solo<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let solo: Solo = Box::new(move |conn| {
            Box::pin(async move {
                let _ = reply.send(work(conn).await);
            })
        });
        self.queue
            .send(Request::Solo(solo))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Counts the transactions committed (each holds one or more jobs).
    pub(super) fn commits(&self) -> Counter {
        self.commits.clone()
    }

    /// Commits what is queued and closes the connection; later jobs fail.
    pub(super) async fn close(&self) {
        let (reply, closed) = oneshot::channel();
        if self.queue.send(Request::Close(reply)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// The writer thread's loop.
async fn serve(
    mut conn: SqliteConnection,
    mut requests: mpsc::Receiver<Request>,
    commits: Counter,
) {
    let mut next = requests.recv().await;
    while let Some(request) = next.take() {
        match request {
            Request::Job(job) => {
                next = batch(&mut conn, job, &mut requests, &commits).await;
                if next.is_none() {
                    next = requests.recv().await;
                }
            }
            Request::Solo(work) => {
                if AssertUnwindSafe(work(&mut conn))
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    tracing::error!("database work outside a transaction panicked");
                }
                next = requests.recv().await;
            }
            Request::Close(done) => {
                requests.close();
                if let Err(e) = sqlx::Connection::close(conn).await {
                    tracing::warn!(error = %e, "closing the database failed");
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// One transaction: `first`, then every job already queued (up to the
/// limits). Returns a request that must wait for the commit (a solo or
/// close).
async fn batch(
    conn: &mut SqliteConnection,
    first: Job,
    requests: &mut mpsc::Receiver<Request>,
    commits: &Counter,
) -> Option<Request> {
    if let Err(e) = conn.execute("BEGIN IMMEDIATE; SAVEPOINT job").await {
        tracing::error!(error = %e, "starting a database transaction failed");
        let _ = conn.execute("ROLLBACK").await;
        // The job's caller learns through its reply being dropped.
        drop(first);
        return None;
    }
    let opened = Instant::now();
    let mut kept: Vec<Finish> = Vec::new();
    // The savepoint holds work of earlier jobs: released (and a fresh one
    // set) before a job that needs a savepoint of its own.
    let mut holds_work = false;
    // A lone statement failed: SQLite may have ended the transaction (it
    // does on some errors), so the next job first checks that the savepoint
    // is still there; without the check a lone statement would run outside
    // any transaction.
    let mut check = false;
    let mut job = first;
    let mut after = None;
    let mut broken = None;
    loop {
        let single = job.single_statement;
        if check || (holds_work && !single) {
            if let Err(e) = conn.execute("RELEASE job; SAVEPOINT job").await {
                broken = Some(e);
                drop(job);
                break;
            }
            (holds_work, check) = (false, false);
        }
        match (job.work)(conn).await {
            Some(finish) => {
                kept.push(finish);
                holds_work = true;
            }
            // Undone by SQLite alone.
            None if single => check = true,
            None => {
                if let Err(e) = conn.execute("ROLLBACK TO job").await {
                    broken = Some(e);
                    break;
                }
            }
        }
        if kept.len() >= MAX_JOBS || opened.elapsed() >= MAX_AGE {
            break;
        }
        match requests.try_recv() {
            Ok(Request::Job(next)) => job = next,
            Ok(other) => {
                after = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    let outcome: Outcome = match broken {
        // SQLite ended the transaction (it does on some errors).
        Some(e) => Err(Arc::new(e)),
        None if kept.is_empty() => Ok(()),
        None => conn
            .execute("COMMIT")
            .await
            .map(|_| {
                commits.inc();
            })
            .map_err(Arc::new),
    };
    if kept.is_empty() || outcome.is_err() {
        // Nothing to keep, or the commit failed: nothing of it stays.
        let _ = conn.execute("ROLLBACK").await;
    }
    if let Err(e) = &outcome {
        tracing::error!(error = %e, jobs = kept.len(), "a database commit failed");
    }
    for finish in kept {
        finish(outcome.clone());
    }
    after
}

/// The job's reply was dropped unsent: the transaction it was queued for
/// could not start or broke before it ran, or the writer is gone.
fn stopped() -> Error {
    Error::internal("the database did not take the write")
}

fn closed() -> Error {
    Error::Unavailable("the database is closed".into())
}

#[cfg(test)]
mod tests {
    use sqlx::{ConnectOptions as _, SqliteConnection, sqlite::SqliteConnectOptions};

    use super::Writer;
    use crate::error::{Error, Result};

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
            writer: Writer::start(conn).unwrap(),
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

    /// Inserts `keys` in one job; `fail` makes the job fail after them.
    async fn insert(writer: &Writer, keys: Vec<i64>, fail: bool) -> Result<usize> {
        writer
            .run(move |tx| {
                Box::pin(async move {
                    for k in &keys {
                        sqlx::query("INSERT INTO t (k, v) VALUES ($1, 'x')")
                            .bind(k)
                            .execute(&mut *tx)
                            .await?;
                    }
                    if fail {
                        return Err(Error::InvalidArgument("refused".into()));
                    }
                    Ok(keys.len())
                })
            })
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_land() {
        let db = db().await;
        let tasks: Vec<_> = (0..200)
            .map(|k| {
                let writer = db.writer.clone();
                tokio::spawn(async move { insert(&writer, vec![k], false).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        assert_eq!(committed(&db.options).await, (0..200).collect::<Vec<_>>());
        let commits = db.writer.commits().get();
        assert!(
            (1..200).contains(&commits),
            "200 concurrent writes took {commits} commits"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_job_is_undone_alone() {
        let db = db().await;
        insert(&db.writer, vec![1], false).await.unwrap();
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let writer = db.writer.clone();
                tokio::spawn(async move {
                    match i % 3 {
                        // Fails on its own terms after writing.
                        0 => insert(&writer, vec![100 + i, 200 + i], true).await,
                        // Fails in SQL (duplicate key 1) after writing.
                        1 => insert(&writer, vec![100 + i, 1], false).await,
                        _ => insert(&writer, vec![100 + i, 200 + i], false).await,
                    }
                })
            })
            .collect();
        for (i, task) in (0..60).zip(tasks) {
            let done = task.await.unwrap();
            assert_eq!(done.is_ok(), i % 3 == 2, "job {i}: {done:?}");
        }
        let mut expected: Vec<i64> = std::iter::once(1)
            .chain(
                (0..60)
                    .filter(|i| i % 3 == 2)
                    .flat_map(|i| [100 + i, 200 + i]),
            )
            .collect();
        expected.sort_unstable();
        assert_eq!(committed(&db.options).await, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_statements_share_savepoints_and_fail_alone() {
        let db = db().await;
        insert(&db.writer, vec![1], false).await.unwrap();
        let tasks: Vec<_> = (0..90)
            .map(|i| {
                let writer = db.writer.clone();
                tokio::spawn(async move {
                    let lone =
                        |k: i64| sqlx::query("INSERT INTO t (k, v) VALUES ($1, 's')").bind(k);
                    match i % 6 {
                        0 => writer.execute(lone(100 + i)).await.map(|_| ()),
                        // A lone statement that fails: duplicate key.
                        1 => writer.execute(lone(1)).await.map(|_| ()),
                        2 => insert(&writer, vec![100 + i, 200 + i], false)
                            .await
                            .map(|_| ()),
                        // A job that fails after writing.
                        3 => insert(&writer, vec![100 + i, 200 + i], true)
                            .await
                            .map(|_| ()),
                        4 => writer.execute(lone(100 + i)).await.map(|_| ()),
                        _ => insert(&writer, vec![100 + i, 1], false).await.map(|_| ()),
                    }
                })
            })
            .collect();
        let mut expected = vec![1];
        for (i, task) in (0..90).zip(tasks) {
            let done = task.await.unwrap();
            let ok = matches!(i % 6, 0 | 2 | 4);
            assert_eq!(done.is_ok(), ok, "job {i}: {done:?}");
            match i % 6 {
                0 | 4 => expected.push(100 + i),
                2 => expected.extend([100 + i, 200 + i]),
                _ => {}
            }
        }
        expected.sort_unstable();
        assert_eq!(committed(&db.options).await, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_caller_never_leaves_half_a_job() {
        let db = db().await;
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let writer = db.writer.clone();
                tokio::spawn(async move { insert(&writer, vec![i, 1000 + i], false).await })
            })
            .collect();
        for task in tasks.iter().step_by(3) {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        // The writer goes on, and each job is there whole or not at all.
        insert(&db.writer, vec![5000], false).await.unwrap();
        let rows = committed(&db.options).await;
        for i in 0..100 {
            assert_eq!(rows.contains(&i), rows.contains(&(1000 + i)), "job {i}");
        }
        assert!(rows.contains(&5000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_is_undone_and_the_writer_goes_on() {
        let db = db().await;
        let panicked = db
            .writer
            .run(|tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO t (k, v) VALUES (9, 'p')")
                        .execute(&mut *tx)
                        .await?;
                    if std::hint::black_box(true) {
                        panic!("a bug in a job");
                    }
                    Ok(())
                })
            })
            .await;
        assert!(panicked.is_err());
        insert(&db.writer, vec![10], false).await.unwrap();
        assert_eq!(committed(&db.options).await, vec![10]);
    }

    #[tokio::test]
    async fn solo_work_runs_outside_a_transaction_and_close_refuses_later_jobs() {
        let db = db().await;
        insert(&db.writer, vec![1], false).await.unwrap();
        db.writer
            .solo(|conn| {
                Box::pin(async move {
                    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .await
            .unwrap();
        db.writer.close().await;
        assert_eq!(committed(&db.options).await, vec![1]);
        let refused = insert(&db.writer, vec![2], false).await;
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    }
}
