//! The storage facade: [`Store`] is the only storage API the rest of the
//! server sees, with one method per operation. Each method dispatches to the
//! backend chosen at start from `DATABASE_URL`:
//!
//! - `sqlite/`: the embedded default. One write connection on a thread of
//!   its own with group commit, read connections beside it (WAL).
//! - `postgres/`: a shared PostgreSQL database, for several instances acting
//!   as one server: row locks and `SKIP LOCKED` claims instead of the single
//!   writer, an advisory lock for the one instance that runs the jobs.
//!
//! Both take and return the row types of `rows`. An enum rather than a trait
//! object or generics over `sqlx::Database`: each arm keeps its own types
//! and SQL, and a reader sees every backend at each call.

mod migrate;
mod postgres;
mod rows;
mod sqlite;

use std::{fmt, path::Path, time::Duration};

use futures_util::future::BoxFuture;

pub use migrate::{TableCount, copy_sqlite_to_postgres};
pub use postgres::{PgStore, PgTarget};
pub use rows::*;
pub use sqlite::{SqliteStore, backup_temp_name, remove_backup_temp};

use crate::{
    clock::Millis,
    domain::{AttachmentId, ExchangeToken, ParcelId, UserId},
    error::{Error, Result},
};

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// Calls the same method on whichever backend runs.
macro_rules! dispatch {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(s) => s.$method($($arg),*).await,
            Backend::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

/// Whether this instance runs the jobs only one instance may run at a time
/// (retention, the orphan sweep, scheduled backups). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership(Option<tokio::sync::watch::Receiver<bool>>);

impl Leadership {
    /// A single instance (SQLite) always leads.
    pub fn always() -> Self {
        Leadership(None)
    }

    pub(crate) fn watching(leading: tokio::sync::watch::Receiver<bool>) -> Self {
        Leadership(Some(leading))
    }

    /// Whether this instance leads now.
    pub fn is_leader(&self) -> bool {
        self.0.as_ref().is_none_or(|l| *l.borrow())
    }
}

/// Where the data lives, as `check-config` shows it (never a password).
#[derive(Clone)]
pub enum DatabaseTarget {
    Sqlite(std::path::PathBuf),
    Postgres(Box<PgTarget>),
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseTarget::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            DatabaseTarget::Postgres(pg) => fmt::Debug::fmt(pg, f),
        }
    }
}

/// How long a readiness probe waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// the embedded migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::open(path).await?),
        })
    }

    /// Opens the database `target` names, applying its migrations;
    /// `max_connections` bounds a PostgreSQL pool.
    pub async fn connect(target: &DatabaseTarget, max_connections: u32) -> anyhow::Result<Self> {
        match target {
            DatabaseTarget::Sqlite(path) => Self::open(path).await,
            DatabaseTarget::Postgres(pg) => Ok(Store {
                backend: Backend::Postgres(PgStore::connect(pg, max_connections).await?),
            }),
        }
    }

    /// "sqlite" or "postgres", for logs and tests.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Counts the database's commits (on SQLite one commit holds every
    /// write that arrived together, see `sqlite::writer`).
    pub fn commit_counter(&self) -> prometheus_client::metrics::counter::Counter {
        match &self.backend {
            Backend::Sqlite(s) => s.commit_counter(),
            Backend::Postgres(s) => s.commit_counter(),
        }
    }

    /// Whether this instance runs the single-instance jobs now.
    pub fn leadership(&self) -> Leadership {
        match &self.backend {
            Backend::Sqlite(_) => Leadership::always(),
            Backend::Postgres(s) => s.leadership(),
        }
    }

    /// A cheap round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        let answered = tokio::time::timeout(PING_TIMEOUT, async { dispatch!(self, ping()) }).await;
        answered.map_err(|_| Error::Unavailable("the database did not answer in time".into()))?
    }

    /// Sets a pragma on the SQLite write connection only, where it holds for
    /// every later write: tests make the database "full" with
    /// `max_page_count` or refuse every write with `query_only`. The name
    /// must be a plain word.
    #[doc(hidden)]
    pub async fn set_writer_pragma(&self, name: &'static str, value: i64) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.set_writer_pragma(name, value).await,
            Backend::Postgres(_) => Err(sqlite_only("writer pragmas")),
        }
    }

    /// On SQLite: moves the write-ahead log into the database file and
    /// truncates it, so that deleted content (zeroed in place by
    /// `secure_delete`) does not linger in old WAL frames. Best effort.
    /// PostgreSQL has no such step (VACUUM reclaims dead rows; see README).
    pub async fn checkpoint(&self) {
        if let Backend::Sqlite(s) = &self.backend {
            s.checkpoint().await;
        }
    }

    /// Writes a consistent copy of the SQLite database to `path` (which must
    /// not exist) while the server keeps running and writing. On PostgreSQL
    /// the operator's tools do this (`pg_dump`).
    pub async fn backup_to(&self, path: &Path) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => s.backup_to(path).await,
            Backend::Postgres(_) => Err(Error::FailedPrecondition(PG_BACKUP.into())),
        }
    }

    /// Creates the first sign-up invite unless somebody is registered or an
    /// invite is open; atomic, so instances starting together create one.
    /// Returns whether it was created.
    pub async fn insert_first_sign_up_invite(
        &self,
        token: &ExchangeToken,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool> {
        dispatch!(self, insert_first_sign_up_invite(token, now, expires_at))
    }

    /// Commits what is pending and closes every connection.
    pub async fn close(&self) {
        dispatch!(self, close())
    }

    /// `user` first, then the accounts created through `user`'s invites.
    pub async fn invited_by(&self, user: &UserRow) -> Result<Vec<InvitedRow>> {
        dispatch!(self, invited_by(user))
    }

    /// Every account, in order of sign-up (the admin's view).
    pub async fn all_users(&self) -> Result<Vec<InvitedRow>> {
        dispatch!(self, all_users())
    }

    /// Deletes everything of an account in one transaction and blanks its
    /// row (kept so that others' `invited_by` links keep their shape).
    /// Returns how many parcels went and the attachments no parcel
    /// references any more, whose files the caller removes.
    pub async fn delete_account(
        &self,
        entry_id: i64,
        now: Millis,
    ) -> Result<(u64, Vec<AttachmentId>)> {
        dispatch!(self, delete_account(entry_id, now))
    }

    pub async fn put_backup(&self, entry_id: i64, content: &str, now: Millis) -> Result<()> {
        dispatch!(self, put_backup(entry_id, content, now))
    }

    /// A user's backup, as stored (with the read before this one).
    pub async fn read_backup(&self, entry_id: i64) -> Result<Option<BackupRow>> {
        dispatch!(self, read_backup(entry_id))
    }

    /// Records that a user read their backup.
    pub async fn record_backup_read(&self, entry_id: i64, now: Millis) -> Result<()> {
        dispatch!(self, record_backup_read(entry_id, now))
    }

    pub async fn put_push_subscription(
        &self,
        entry_id: i64,
        sub: &PushSubscriptionRow,
        now: Millis,
    ) -> Result<()> {
        dispatch!(self, put_push_subscription(entry_id, sub, now))
    }

    /// Removes a user's push subscription and its pending pushes.
    pub async fn delete_push_subscription(&self, entry_id: i64) -> Result<()> {
        dispatch!(self, delete_push_subscription(entry_id))
    }

    pub async fn push_subscription(&self, entry_id: i64) -> Result<Option<PushSubscriptionRow>> {
        dispatch!(self, push_subscription(entry_id))
    }

    pub async fn insert_exchange(
        &self,
        token: &ExchangeToken,
        creator: Option<i64>,
        offer: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<()> {
        dispatch!(
            self,
            insert_exchange(token, creator, offer, now, expires_at)
        )
    }

    /// One of `creator`'s exchanges; another user's token finds nothing.
    pub async fn exchange_of(
        &self,
        token: &ExchangeToken,
        creator: i64,
    ) -> Result<Option<ExchangeRow>> {
        dispatch!(self, exchange_of(token, creator))
    }

    /// Deletes one of `creator`'s exchanges; false when there was none.
    pub async fn delete_exchange(&self, token: &ExchangeToken, creator: i64) -> Result<bool> {
        dispatch!(self, delete_exchange(token, creator))
    }

    /// Accepts an exchange and signs the acceptor up, in one transaction.
    /// The state change is a single conditional UPDATE, so of concurrent
    /// accepts exactly one wins.
    pub async fn accept_exchange(
        &self,
        token: &ExchangeToken,
        answer: Option<&str>,
        sign_up: Option<&UserId>,
        now: Millis,
    ) -> Result<AcceptOutcome> {
        dispatch!(self, accept_exchange(token, answer, sign_up, now))
    }

    /// Whether a sign-up invite (no creator) is still open.
    pub async fn open_sign_up_invite_exists(&self, now: Millis) -> Result<bool> {
        dispatch!(self, open_sign_up_invite_exists(now))
    }

    /// Whether anybody is registered.
    pub async fn has_users(&self) -> Result<bool> {
        dispatch!(self, has_users())
    }

    /// Records an accepted nonce. `None`: the database already holds it live
    /// (another instance accepted it), a replay. `Some(durable)`: fresh; the
    /// future resolves once the row is on disk. On SQLite the row is queued
    /// for the next group commit (writes queued later commit with it or
    /// after, so a request's writes are never durable without its nonce);
    /// on PostgreSQL the shared insert decides and is durable at once.
    pub async fn record_nonce(
        &self,
        row: NonceRow,
        now: Millis,
    ) -> Result<Option<BoxFuture<'static, Result<()>>>> {
        dispatch!(self, record_nonce(row, now))
    }

    /// Every nonce still live at `now`.
    pub async fn live_nonces(&self, now: Millis) -> Result<Vec<NonceRow>> {
        dispatch!(self, live_nonces(now))
    }

    /// Deletes the nonces that went stale before `now`, in batches; returns
    /// how many went.
    pub async fn expire_nonces(&self, now: Millis) -> Result<u64> {
        dispatch!(self, expire_nonces(now))
    }

    /// Whether `key` is registered, or accepted as a sender by someone: two
    /// index lookups in one statement.
    pub async fn key_standing(&self, key: &UserId) -> Result<KeyStanding> {
        dispatch!(self, key_standing(key))
    }

    /// The registered recipients among `ids` that have `sender` on their
    /// whitelist, as (user id, entry id), in the order of `ids`. One query
    /// for all of them (the ids go in as a JSON array of hex keys).
    pub async fn accepting_recipients(
        &self,
        sender: &UserId,
        ids: &[UserId],
    ) -> Result<Vec<(UserId, i64)>> {
        dispatch!(self, accepting_recipients(sender, ids))
    }

    /// Stores the attachment row and every parcel in one transaction, after
    /// checking each recipient's quota inside it (the single writer makes the
    /// check exact). On `Err(QuotaExceeded)` nothing was stored.
    pub async fn insert_parcels(&self, new: NewParcels) -> Result<Result<(), QuotaExceeded>> {
        dispatch!(self, insert_parcels(new))
    }

    /// A user (by id) with their parcels, oldest first, in one query: the
    /// listing is the hottest read, and each query is a round trip to a
    /// connection's thread.
    pub async fn inbox_of(&self, user: &UserId) -> Result<Option<(UserRow, Vec<ParcelRow>)>> {
        dispatch!(self, inbox_of(user))
    }

    /// Records that a user listed their inbox.
    pub async fn record_seen(
        &self,
        entry: i64,
        now: Millis,
        client_version: Option<&str>,
    ) -> Result<()> {
        dispatch!(self, record_seen(entry, now, client_version))
    }

    /// The attachment of one of `recipient`'s parcels.
    pub async fn attachment_of(
        &self,
        parcel: &ParcelId,
        recipient: i64,
    ) -> Result<Option<(AttachmentId, u64)>> {
        dispatch!(self, attachment_of(parcel, recipient))
    }

    /// Deletes one of `recipient`'s parcels. Returns `None` when there was no
    /// such parcel, else the attachment that no parcel references any more
    /// (its row is gone; the caller removes the file).
    pub async fn delete_parcel(
        &self,
        parcel: &ParcelId,
        recipient: i64,
    ) -> Result<Option<Option<AttachmentId>>> {
        dispatch!(self, delete_parcel(parcel, recipient))
    }

    /// Whether `recipient` (a user id) is registered and has `sender` on its
    /// whitelist; returns the recipient's row id and last-seen time if so.
    pub async fn acceptance(
        &self,
        recipient: &UserId,
        sender: &UserId,
    ) -> Result<Option<(i64, Option<Millis>)>> {
        dispatch!(self, acceptance(recipient, sender))
    }

    /// `sender`'s `MEDIA` parcels waiting at `recipient`.
    pub async fn waiting_media_from(&self, recipient: i64, sender: &UserId) -> Result<u32> {
        dispatch!(self, waiting_media_from(recipient, sender))
    }

    /// Whether an attachment row exists (tests check nothing stays behind).
    pub async fn attachment_exists(&self, id: &AttachmentId) -> Result<bool> {
        dispatch!(self, attachment_exists(id))
    }

    /// Up to `limit` pushes due at `now`, oldest first.
    pub async fn due_pushes(&self, now: Millis, limit: i64) -> Result<Vec<DuePush>> {
        dispatch!(self, due_pushes(now, limit))
    }

    /// When the next push is due, if any is waiting.
    /// Ends the claims on pushes `due_pushes` returned that this worker did
    /// not start, so another worker (or this one, next round) takes them.
    pub async fn release_pushes(&self, ids: &[i64]) -> Result<()> {
        dispatch!(self, release_pushes(ids))
    }

    pub async fn next_push_due(&self) -> Result<Option<Millis>> {
        dispatch!(self, next_push_due())
    }

    pub async fn outbox_depth(&self) -> Result<u64> {
        dispatch!(self, outbox_depth())
    }

    /// A push went out (or will never): forget it.
    pub async fn delete_push(&self, id: i64) -> Result<()> {
        dispatch!(self, delete_push(id))
    }

    /// Tries a push again at `at`.
    pub async fn reschedule_push(&self, id: i64, attempts: i64, at: Millis) -> Result<()> {
        dispatch!(self, reschedule_push(id, attempts, at))
    }

    /// Deletes up to one batch of parcels created before `cutoff`; returns how
    /// many went and the attachments no parcel references any more (their rows
    /// are gone; the caller removes the files).
    pub async fn expire_parcels_batch(&self, cutoff: Millis) -> Result<(u64, Vec<AttachmentId>)> {
        dispatch!(self, expire_parcels_batch(cutoff))
    }

    /// Deletes up to one batch of exchanges created before `cutoff`.
    pub async fn expire_exchanges_batch(&self, cutoff: Millis) -> Result<u64> {
        dispatch!(self, expire_exchanges_batch(cutoff))
    }

    /// Up to `limit` accounts not seen since `cutoff` (or never seen and
    /// created before it).
    pub async fn inactive_users(&self, cutoff: Millis, limit: i64) -> Result<Vec<i64>> {
        dispatch!(self, inactive_users(cutoff, limit))
    }

    /// Deletes daily statistics older than 7 days before `now`.
    pub async fn expire_stats(&self, now: Millis) -> Result<u64> {
        dispatch!(self, expire_stats(now))
    }

    /// Deletes up to one batch of pushes whose TTL has passed.
    pub async fn expire_outbox_batch(&self, now: Millis) -> Result<u64> {
        dispatch!(self, expire_outbox_batch(now))
    }

    /// Deletes attachment rows that no parcel references (there should be
    /// none; a crash between two statements could leave one).
    pub async fn unreferenced_attachments(&self) -> Result<Vec<AttachmentId>> {
        dispatch!(self, unreferenced_attachments())
    }

    /// Up to one batch of files listed for removal (see `file_removals`).
    pub async fn file_removals(&self) -> Result<Vec<AttachmentId>> {
        dispatch!(self, file_removals())
    }

    /// Forgets listed removals whose files are gone.
    pub async fn forget_file_removals(&self, ids: &[AttachmentId]) -> Result<()> {
        dispatch!(self, forget_file_removals(ids))
    }

    /// The ids of every attachment row.
    pub async fn attachment_ids(&self) -> Result<std::collections::HashSet<String>> {
        dispatch!(self, attachment_ids())
    }

    /// Returns the value stored under `key`, storing `make()` first if there is
    /// none. Concurrent first starts agree on one value.
    pub async fn server_value_or_insert(
        &self,
        key: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        dispatch!(self, server_value_or_insert(key, make))
    }

    pub async fn statistics(&self, now: Millis) -> Result<Statistics> {
        dispatch!(self, statistics(now))
    }

    pub async fn user_by_key(&self, id: &UserId) -> Result<Option<UserRow>> {
        dispatch!(self, user_by_key(id))
    }

    /// The user ids on a user's whitelist.
    pub async fn contacts(&self, entry_id: i64) -> Result<Vec<UserId>> {
        dispatch!(self, contacts(entry_id))
    }

    /// Replaces a user's whitelist.
    pub async fn set_contacts(&self, entry_id: i64, contacts: &[UserId]) -> Result<()> {
        dispatch!(self, set_contacts(entry_id, contacts))
    }

    pub async fn has_push_subscription(&self, entry_id: i64) -> Result<bool> {
        dispatch!(self, has_push_subscription(entry_id))
    }
}

/// Why a backup through the server does not exist on PostgreSQL.
pub const PG_BACKUP: &str = "the database is PostgreSQL: back it up with pg_dump \
(e.g. `pg_dump --format=custom --file=inbox.dump \"$DATABASE_URL\"`) or your provider's \
snapshots; the server's own backup copies SQLite files only";

fn sqlite_only(what: &str) -> Error {
    Error::FailedPrecondition(format!("{what} exist only on the SQLite backend"))
}
