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
//!
//! Rows that many requests add one each, of one kind (the replay nonces),
//! are "appended": they wait in the batch and go in as one statement just
//! before its `COMMIT`, so a hundred of them cost one hand-over to the
//! connection's thread instead of a hundred. Each hand-over is a thread
//! wake-up both ways, and those wake-ups, not SQLite, bound the writer.

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
/// Appended rows in one transaction at most (the statement's JSON stays small).
const MAX_APPENDED: usize = 1024;

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

/// A row for the appending statement, as JSON, and who waits for its commit.
struct Appended {
    row: String,
    reply: oneshot::Sender<Outcome>,
}

enum Request {
    Job(Job),
    Append(Appended),
    Solo(Solo),
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Request>,
    commits: Counter,
}

/// The statement that inserts every appended row of a transaction: it takes
/// them as one JSON array in `$1` (e.g. `... SELECT value ->> 0 FROM
/// json_each($1)`).
#[derive(Clone, Copy)]
pub(super) struct Appending(pub &'static str);

impl Writer {
    /// Starts the writer thread on `conn`; rows given to
    /// [`append`](Self::append) go in through `appending`.
    pub(super) fn start(conn: SqliteConnection, appending: Appending) -> std::io::Result<Self> {
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
            .spawn(move || runtime.block_on(serve(conn, appending, requests, counter)))?;
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

    /// Appends `row` (JSON, one element of the appending statement's array)
    /// to the next transaction; returns once it is queued, with a future for
    /// its commit: whatever is queued later commits with it or later (so a
    /// request's writes are never durable without its nonce). When the appending
    /// statement fails, the rows' futures fail and the transaction's other
    /// work commits without them.
    pub(super) async fn append(&self, row: String) -> Result<BoxFuture<'static, Result<()>>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Append(Appended { row, reply }))
            .await
            .map_err(|_| closed())?;
        Ok(Box::pin(async move {
            answer
                .await
                .map_err(|_| stopped())?
                .map_err(Error::database)
        }))
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
    appending: Appending,
    mut requests: mpsc::Receiver<Request>,
    commits: Counter,
) {
    let mut next = requests.recv().await;
    while let Some(request) = next.take() {
        match request {
            Request::Job(_) | Request::Append(_) => {
                next = batch(&mut conn, appending, request, &mut requests, &commits).await;
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

/// One transaction: `first` (a job or an appended row), then every job and
/// row already queued (up to the limits). Returns a request that must wait
/// for the commit (a solo or close).
async fn batch(
    conn: &mut SqliteConnection,
    appending: Appending,
    first: Request,
    requests: &mut mpsc::Receiver<Request>,
    commits: &Counter,
) -> Option<Request> {
    if let Err(e) = conn.execute("BEGIN IMMEDIATE; SAVEPOINT job").await {
        tracing::error!(error = %e, "starting a database transaction failed");
        let _ = conn.execute("ROLLBACK").await;
        // The callers learn through their replies being dropped.
        drop(first);
        return None;
    }
    let opened = Instant::now();
    let mut kept: Vec<Finish> = Vec::new();
    let mut appended: Vec<Appended> = Vec::new();
    // The savepoint holds work of earlier jobs: released (and a fresh one
    // set) before a job that needs a savepoint of its own.
    let mut holds_work = false;
    // A lone statement failed: SQLite may have ended the transaction (it
    // does on some errors), so the next job first checks that the savepoint
    // is still there; without the check a lone statement would run outside
    // any transaction.
    let mut check = false;
    let mut request = first;
    let mut after = None;
    let mut broken = None;
    loop {
        match request {
            Request::Append(row) => appended.push(row),
            Request::Job(job) => {
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
            }
            other => {
                after = Some(other);
                break;
            }
        }
        if kept.len() >= MAX_JOBS || appended.len() >= MAX_APPENDED || opened.elapsed() >= MAX_AGE {
            break;
        }
        match requests.try_recv() {
            Ok(next) => request = next,
            Err(_) => break,
        }
    }
    // The appended rows go in last, as one statement: every job queued after
    // a row is in this transaction or a later one. A failed statement is
    // undone alone (or, on some errors, SQLite ends the transaction, and the
    // COMMIT then fails for everything in it).
    let mut appended_outcome: Outcome = Ok(());
    if broken.is_none() && !appended.is_empty() {
        let rows = appended
            .iter()
            .map(|a| a.row.as_str())
            .collect::<Vec<_>>()
            .join(",");
        if let Err(e) = sqlx::query(appending.0)
            .bind(format!("[{rows}]"))
            .execute(&mut *conn)
            .await
        {
            tracing::error!(error = %e, rows = appended.len(), "appending rows failed");
            appended_outcome = Err(Arc::new(e));
        }
    }
    let holds_rows = !kept.is_empty() || (!appended.is_empty() && appended_outcome.is_ok());
    let outcome: Outcome = match broken {
        // SQLite ended the transaction (it does on some errors).
        Some(e) => Err(Arc::new(e)),
        None if !holds_rows => Ok(()),
        None => conn
            .execute("COMMIT")
            .await
            .map(|_| {
                commits.inc();
            })
            .map_err(Arc::new),
    };
    if !holds_rows || outcome.is_err() {
        // Nothing to keep, or the commit failed: nothing of it stays.
        let _ = conn.execute("ROLLBACK").await;
    }
    if let Err(e) = &outcome {
        tracing::error!(
            error = %e,
            jobs = kept.len(),
            rows = appended.len(),
            "a database commit failed"
        );
    }
    for finish in kept {
        finish(outcome.clone());
    }
    let rows_outcome = appended_outcome.and(outcome);
    for row in appended {
        let _ = row.reply.send(rows_outcome.clone());
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

    use super::{Appending, Writer};
    use crate::error::{Error, Result};

    /// Appended rows are `[k, v]`; a plain INSERT, so a duplicate key fails
    /// the statement.
    const APPEND: Appending =
        Appending("INSERT INTO t (k, v) SELECT value ->> 0, value ->> 1 FROM json_each($1)");

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
            writer: Writer::start(conn, APPEND).unwrap(),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appended_rows_commit_with_the_jobs_queued_after_them() {
        let db = db().await;
        let mut commits = Vec::new();
        let mut jobs = Vec::new();
        for i in 0..50i64 {
            // Queued first, so the job below commits with it or after it.
            commits.push(db.writer.append(format!("[{i}, \"a\"]")).await.unwrap());
            let writer = db.writer.clone();
            jobs.push(tokio::spawn(async move {
                insert(&writer, vec![1000 + i], false).await
            }));
        }
        // Extremes of the i64 range survive the JSON.
        commits.push(
            db.writer
                .append(format!("[{}, \"min\"]", i64::MIN))
                .await
                .unwrap(),
        );
        commits.push(
            db.writer
                .append(format!("[{}, \"max\"]", i64::MAX))
                .await
                .unwrap(),
        );
        for commit in commits {
            commit.await.unwrap();
        }
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        let mut expected: Vec<i64> = (0..50).chain(1000..1050).collect();
        expected.extend([i64::MIN, i64::MAX]);
        expected.sort_unstable();
        assert_eq!(committed(&db.options).await, expected);
        let commits = db.writer.commits().get();
        assert!(commits < 100, "100 writes took {commits} commits");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_appended_rows_fail_alone() {
        let db = db().await;
        insert(&db.writer, vec![1], false).await.unwrap();
        // Queued behind a job that holds the writer, so all of it is one
        // transaction: the rows' statement fails on the duplicate key 1.
        let (started, hold) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let writer = db.writer.clone();
        let holder = tokio::spawn(async move {
            writer
                .run(move |tx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO t (k, v) VALUES (2, 'h')")
                            .execute(&mut *tx)
                            .await?;
                        let _ = started.send(());
                        let _ = released.await;
                        Ok(())
                    })
                })
                .await
        });
        hold.await.unwrap();
        let duplicate = db.writer.append("[1, \"dup\"]".into()).await.unwrap();
        let fresh = db.writer.append("[3, \"new\"]".into()).await.unwrap();
        // Commits in that transaction or the next; either way without the rows.
        let writer = db.writer.clone();
        let job = tokio::spawn(async move { insert(&writer, vec![4], false).await });
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert!(duplicate.await.is_err());
        assert!(fresh.await.is_err(), "one statement: every row in it fails");
        job.await.unwrap().unwrap();
        assert_eq!(committed(&db.options).await, vec![1, 2, 4]);
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
