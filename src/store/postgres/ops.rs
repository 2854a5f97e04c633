//! Every storage operation in PostgreSQL SQL. Where the SQLite backend
//! relies on its single writer, these use a transaction (and, for quotas,
//! row locks); see each function.

use std::collections::HashSet;

use futures_util::future::BoxFuture;
use sqlx::{Postgres, Row as _, postgres::PgRow};

use super::PgStore;
use crate::{
    clock::{DAY, Millis},
    domain::{AttachmentId, ExchangeToken, ParcelId, UserId},
    error::Result,
    store::rows::*,
};

type Tx<'a> = sqlx::Transaction<'a, Postgres>;
type RawParcel = (i64, String, String, String, Vec<u8>, Millis, Option<i64>);
type RawUser = (
    i64,
    Option<Vec<u8>>,
    Option<i64>,
    i64,
    Option<i64>,
    Option<String>,
);

const USER_COLUMNS: &str = "id, public_key, invited_by, created_at, last_seen_at, client_version";
/// Rows deleted per statement when expired nonces are cleared.
const EXPIRE_BATCH: i64 = 10_000;
/// Serialises the first-start invite check across instances.
const INVITE_LOCK: i64 = 0x7069_7163_6869_6e76;
/// How long a claimed push stays with its worker: longer than any push
/// request may take (`PUSH_REQUEST_TIMEOUT_SECONDS` is at most 300), so a
/// live worker never loses a claim, and a crashed worker's pushes go out
/// this much later.
pub const PUSH_LEASE: Millis = 10 * 60 * 1000;

fn user_row(raw: RawUser) -> Option<UserRow> {
    let (entry_id, key, invited_by, created_at, last_seen_at, client_version) = raw;
    Some(UserRow {
        entry_id,
        user_id: UserId::from_slice(&key?)?,
        invited_by,
        created_at,
        last_seen_at,
        client_version,
    })
}

fn invited_row(r: PgRow) -> InvitedRow {
    InvitedRow {
        entry_id: r.get(0),
        user_id: r
            .get::<Option<Vec<u8>>, _>(1)
            .and_then(|k| UserId::from_slice(&k)),
        invited_by: r.get(2),
        last_seen_at: r.get(3),
        client_version: r.get(4),
    }
}

fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn keys(ids: &[UserId]) -> Vec<Vec<u8>> {
    ids.iter().map(|id| id.as_bytes().to_vec()).collect()
}

/// Adds `delta` to a maintained total (see the `counters` table), inside
/// the caller's transaction.
async fn bump(tx: &mut Tx<'_>, name: &str, delta: i64) -> Result<()> {
    if delta != 0 {
        sqlx::query("UPDATE counters SET value = value + $2 WHERE name = $1")
            .bind(name)
            .bind(delta)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Deletes the rows of those `candidates` that no parcel references any
/// more, lists their files in `file_removals`, and returns them.
async fn delete_unreferenced_attachments(
    tx: &mut Tx<'_>,
    candidates: impl IntoIterator<Item = String>,
) -> Result<Vec<AttachmentId>> {
    let mut candidates: Vec<String> = candidates.into_iter().collect();
    candidates.sort_unstable();
    candidates.dedup();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let gone: Vec<(String,)> = sqlx::query_as(
        "DELETE FROM attachments a WHERE a.id = ANY($1) \
         AND NOT EXISTS (SELECT 1 FROM parcels p WHERE p.attachment_id = a.id) RETURNING a.id",
    )
    .bind(&candidates)
    .fetch_all(&mut **tx)
    .await?;
    list_file_removals(tx, gone.iter().map(|(id,)| id.clone()).collect()).await?;
    Ok(gone
        .into_iter()
        .filter_map(|(id,)| AttachmentId::parse(&id).ok())
        .collect())
}

async fn list_file_removals(tx: &mut Tx<'_>, ids: Vec<String>) -> Result<()> {
    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO file_removals (id) SELECT * FROM UNNEST($1::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Deleted parcels' attachments and how many were MEDIA, from `RETURNING
/// attachment_id, type`.
fn deleted_parcels(rows: &[(Option<String>, String)]) -> (Vec<String>, i64) {
    let attachments = rows.iter().filter_map(|(a, _)| a.clone()).collect();
    let media = rows.iter().filter(|(_, t)| t == "MEDIA").count() as i64;
    (attachments, media)
}

impl PgStore {
    // ---- users and contacts ----

    pub async fn user_by_key(&self, id: &UserId) -> Result<Option<UserRow>> {
        let raw: Option<RawUser> = sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE public_key = $1"
        ))
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await?;
        Ok(raw.and_then(user_row))
    }

    pub async fn contacts(&self, entry_id: i64) -> Result<Vec<UserId>> {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT contact_key FROM contacts WHERE user_id = $1 ORDER BY contact_key",
        )
        .bind(entry_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k,)| UserId::from_slice(&k))
            .collect())
    }

    pub async fn set_contacts(&self, entry_id: i64, contacts: &[UserId]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM contacts WHERE user_id = $1")
            .bind(entry_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO contacts (user_id, contact_key) SELECT $1, k FROM UNNEST($2::bytea[]) k \
             ON CONFLICT DO NOTHING",
        )
        .bind(entry_id)
        .bind(keys(contacts))
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    pub async fn has_push_subscription(&self, entry_id: i64) -> Result<bool> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM push_subscriptions WHERE user_id = $1")
                .bind(entry_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    // ---- accounts ----

    pub async fn invited_by(&self, user: &UserRow) -> Result<Vec<InvitedRow>> {
        let rows = sqlx::query(
            "SELECT id, public_key, invited_by, last_seen_at, client_version FROM users \
             WHERE id = $1 OR invited_by = $1 ORDER BY id = $1 DESC, id",
        )
        .bind(user.entry_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(invited_row).collect())
    }

    pub async fn all_users(&self) -> Result<Vec<InvitedRow>> {
        let rows = sqlx::query(
            "SELECT id, public_key, invited_by, last_seen_at, client_version FROM users ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(invited_row).collect())
    }

    pub async fn delete_account(
        &self,
        entry_id: i64,
        now: Millis,
    ) -> Result<(u64, Vec<AttachmentId>)> {
        let mut tx = self.pool.begin().await?;
        // The user's row first: a send to this user waits (it locks the
        // recipients' rows) rather than adding parcels being deleted.
        let blanked = sqlx::query(
            "UPDATE users SET public_key = NULL, last_seen_at = NULL, \
             client_version = NULL, deleted_at = $2 WHERE id = $1 AND public_key IS NOT NULL",
        )
        .bind(entry_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let deleted: Vec<(Option<String>, String)> = sqlx::query_as(
            "DELETE FROM parcels WHERE recipient_id = $1 RETURNING attachment_id, type",
        )
        .bind(entry_id)
        .fetch_all(&mut *tx)
        .await?;
        for sql in [
            "DELETE FROM contacts WHERE user_id = $1",
            "DELETE FROM backups WHERE user_id = $1",
            "DELETE FROM push_subscriptions WHERE user_id = $1",
            "DELETE FROM push_outbox WHERE user_id = $1",
            "DELETE FROM exchanges WHERE creator_id = $1",
        ] {
            sqlx::query(sql).bind(entry_id).execute(&mut *tx).await?;
        }
        let (attachments, media) = deleted_parcels(&deleted);
        let orphans = delete_unreferenced_attachments(&mut tx, attachments).await?;
        bump(&mut tx, "media_waiting", -media).await?;
        bump(&mut tx, "users", -(blanked as i64)).await?;
        self.commit(tx).await?;
        Ok((deleted.len() as u64, orphans))
    }

    pub async fn put_backup(&self, entry_id: i64, content: &str, now: Millis) -> Result<()> {
        sqlx::query(
            "INSERT INTO backups (user_id, content, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET content = excluded.content, \
             updated_at = excluded.updated_at",
        )
        .bind(entry_id)
        .bind(content)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn read_backup(&self, entry_id: i64) -> Result<Option<BackupRow>> {
        let row: Option<(String, Millis, Option<Millis>)> = sqlx::query_as(
            "SELECT content, updated_at, last_read_at FROM backups WHERE user_id = $1",
        )
        .bind(entry_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(content, updated_at, last_read_at)| BackupRow {
            content,
            updated_at,
            last_read_at,
        }))
    }

    pub async fn record_backup_read(&self, entry_id: i64, now: Millis) -> Result<()> {
        sqlx::query("UPDATE backups SET last_read_at = $2 WHERE user_id = $1")
            .bind(entry_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn put_push_subscription(
        &self,
        entry_id: i64,
        sub: &PushSubscriptionRow,
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Pushes queued for an earlier subscription would go nowhere useful.
        sqlx::query("DELETE FROM push_outbox WHERE user_id = $1")
            .bind(entry_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO push_subscriptions \
             (user_id, endpoint, p256dh, auth, content_encoding, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (user_id) DO UPDATE SET endpoint = excluded.endpoint, \
             p256dh = excluded.p256dh, auth = excluded.auth, \
             content_encoding = excluded.content_encoding, \
             expires_at = excluded.expires_at, created_at = excluded.created_at",
        )
        .bind(entry_id)
        .bind(&sub.endpoint)
        .bind(&sub.p256dh)
        .bind(&sub.auth)
        .bind(&sub.content_encoding)
        .bind(sub.expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    pub async fn delete_push_subscription(&self, entry_id: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM push_outbox WHERE user_id = $1",
            "DELETE FROM push_subscriptions WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(entry_id).execute(&mut *tx).await?;
        }
        self.commit(tx).await
    }

    pub async fn push_subscription(&self, entry_id: i64) -> Result<Option<PushSubscriptionRow>> {
        let row = sqlx::query(
            "SELECT endpoint, p256dh, auth, content_encoding, expires_at \
             FROM push_subscriptions WHERE user_id = $1",
        )
        .bind(entry_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| PushSubscriptionRow {
            endpoint: r.get(0),
            p256dh: r.get(1),
            auth: r.get(2),
            content_encoding: r.get(3),
            expires_at: r.get(4),
        }))
    }

    // ---- exchanges ----

    pub async fn insert_exchange(
        &self,
        token: &ExchangeToken,
        creator: Option<i64>,
        offer: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO exchanges (token, creator_id, offer, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.to_string())
        .bind(creator)
        .bind(offer)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts the first sign-up invite unless somebody is registered or
    /// one is open. Instances starting together take turns on a
    /// transaction-scoped advisory lock, so the second sees the first's
    /// invite (each statement reads what committed before it began).
    pub async fn insert_first_sign_up_invite(
        &self,
        token: &ExchangeToken,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(INVITE_LOCK)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO exchanges (token, creator_id, offer, created_at, expires_at) \
             SELECT $1, NULL, '', $2, $3 WHERE NOT EXISTS \
             (SELECT 1 FROM users WHERE public_key IS NOT NULL) AND NOT EXISTS \
             (SELECT 1 FROM exchanges WHERE creator_id IS NULL \
             AND accepted_at IS NULL AND expires_at > $2)",
        )
        .bind(token.to_string())
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn exchange_of(
        &self,
        token: &ExchangeToken,
        creator: i64,
    ) -> Result<Option<ExchangeRow>> {
        let row: Option<(String, Option<String>, Option<Millis>, Millis)> = sqlx::query_as(
            "SELECT offer, answer, accepted_at, expires_at FROM exchanges \
             WHERE token = $1 AND creator_id = $2",
        )
        .bind(token.to_string())
        .bind(creator)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(offer, answer, accepted_at, expires_at)| ExchangeRow {
                offer,
                answer,
                accepted_at,
                expires_at,
            }),
        )
    }

    pub async fn delete_exchange(&self, token: &ExchangeToken, creator: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM exchanges WHERE token = $1 AND creator_id = $2")
            .bind(token.to_string())
            .bind(creator)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The state change is one conditional UPDATE: of concurrent accepts
    /// (from any instance) the second waits for the first's row lock, then
    /// finds `accepted_at` set and changes nothing, so exactly one wins.
    pub async fn accept_exchange(
        &self,
        token: &ExchangeToken,
        answer: Option<&str>,
        sign_up: Option<&UserId>,
        now: Millis,
    ) -> Result<AcceptOutcome> {
        let token = token.to_string();
        let mut tx = self.pool.begin().await?;
        let won: Option<(String, Millis, Option<i64>)> = sqlx::query_as(
            "UPDATE exchanges SET accepted_at = $1, answer = $2 \
             WHERE token = $3 AND accepted_at IS NULL AND expires_at > $1 \
             RETURNING offer, expires_at, creator_id",
        )
        .bind(now)
        .bind(answer)
        .bind(&token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((offer, expires_at, creator)) = won else {
            let found: Option<(Option<Millis>,)> =
                sqlx::query_as("SELECT accepted_at FROM exchanges WHERE token = $1")
                    .bind(&token)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(match found {
                None => AcceptOutcome::Unknown,
                Some((Some(_),)) => AcceptOutcome::AlreadyAccepted,
                Some((None,)) => AcceptOutcome::Expired,
            });
        };
        let account_created = match sign_up {
            None => None,
            Some(user) => {
                let inserted = sqlx::query(
                    "INSERT INTO users (public_key, invited_by, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (public_key) DO NOTHING",
                )
                .bind(user.as_bytes().as_slice())
                .bind(creator)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                bump(&mut tx, "users", inserted as i64).await?;
                Some(inserted == 1)
            }
        };
        self.commit(tx).await?;
        Ok(AcceptOutcome::Accepted {
            offer,
            expires_at,
            account_created,
        })
    }

    pub async fn open_sign_up_invite_exists(&self, now: Millis) -> Result<bool> {
        let row: Option<(i32,)> = sqlx::query_as(
            "SELECT 1 FROM exchanges WHERE creator_id IS NULL AND accepted_at IS NULL \
             AND expires_at > $1 LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    pub async fn has_users(&self) -> Result<bool> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM users WHERE public_key IS NOT NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    // ---- nonces ----

    /// The shared table decides: the insert succeeds for a new pair (or one
    /// whose old row went stale) and changes nothing for a live one, which
    /// another instance (or this one) accepted already. The row is durable
    /// when this returns.
    pub async fn record_nonce(
        &self,
        row: NonceRow,
        now: Millis,
    ) -> Result<Option<BoxFuture<'static, Result<()>>>> {
        let done = sqlx::query(
            "INSERT INTO nonces (id, key, class, until) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET key = excluded.key, class = excluded.class, \
             until = excluded.until WHERE nonces.until < $5",
        )
        .bind(row.id as i64)
        .bind(row.key as i64)
        .bind(i16::from(row.class))
        .bind(row.until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(Some(Box::pin(async { Ok(()) })))
    }

    pub async fn live_nonces(&self, now: Millis) -> Result<Vec<NonceRow>> {
        let rows: Vec<(i64, i64, i16, i64)> =
            sqlx::query_as("SELECT id, key, class, until FROM nonces WHERE until >= $1")
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, key, class, until)| NonceRow {
                id: id as u64,
                key: key as u64,
                class: u8::try_from(class).unwrap_or(u8::MAX),
                until,
            })
            .collect())
    }

    pub async fn expire_nonces(&self, now: Millis) -> Result<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM nonces WHERE id IN \
                 (SELECT id FROM nonces WHERE until < $1 LIMIT $2)",
            )
            .bind(now)
            .bind(EXPIRE_BATCH)
            .execute(&self.pool)
            .await?;
            total += done.rows_affected();
            if done.rows_affected() < EXPIRE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    pub async fn key_standing(&self, key: &UserId) -> Result<KeyStanding> {
        let (registered, accepted): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM users WHERE public_key = $1 AND deleted_at IS NULL), \
             EXISTS (SELECT 1 FROM contacts WHERE contact_key = $1)",
        )
        .bind(key.as_bytes().as_slice())
        .fetch_one(&self.pool)
        .await?;
        Ok(KeyStanding {
            registered,
            accepted_as_sender: accepted,
        })
    }

    // ---- parcels ----

    pub async fn accepting_recipients(
        &self,
        sender: &UserId,
        ids: &[UserId],
    ) -> Result<Vec<(UserId, i64)>> {
        let rows: Vec<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT u.public_key, u.id FROM users u \
             JOIN contacts c ON c.user_id = u.id AND c.contact_key = $2 \
             WHERE u.public_key = ANY($1)",
        )
        .bind(keys(ids))
        .bind(sender.as_bytes().as_slice())
        .fetch_all(&self.pool)
        .await?;
        Ok(crate::store::rows::in_order_of(ids, &rows))
    }

    /// Quotas stay exact across instances: the recipients' user rows are
    /// locked first, in id order (so two sends to overlapping recipients
    /// cannot deadlock), and held to the commit; a concurrent send to the
    /// same recipient counts only after this one committed or rolled back.
    pub async fn insert_parcels(&self, new: NewParcels) -> Result<Result<(), QuotaExceeded>> {
        let mut recipients: Vec<i64> = new.parcels.iter().map(|p| p.recipient).collect();
        recipients.sort_unstable();
        recipients.dedup();
        let mut tx = self.pool.begin().await?;
        // What each recipient has waiting, kept by triggers (migration
        // 0002), read under the lock.
        let waiting: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT id, waiting_parcels, waiting_bytes FROM users \
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&recipients)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(refused) = new.over_quota(&waiting) {
            tx.rollback().await?;
            return Ok(Err(refused));
        }
        if let Some((id, size)) = &new.attachment {
            sqlx::query("INSERT INTO attachments (id, size, created_at) VALUES ($1, $2, $3)")
                .bind(id.to_string())
                .bind(*size as i64)
                .bind(new.now)
                .execute(&mut *tx)
                .await?;
        }
        let ids: Vec<String> = new.parcels.iter().map(|p| p.id.to_string()).collect();
        let to: Vec<i64> = new.parcels.iter().map(|p| p.recipient).collect();
        let contents: Vec<&str> = new.parcels.iter().map(|p| p.content.as_str()).collect();
        sqlx::query(
            "INSERT INTO parcels (id, recipient_id, sender_key, type, content, attachment_id, created_at) \
             SELECT i, r, $4, $5, c, $6, $7 FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS t (i, r, c)",
        )
        .bind(&ids)
        .bind(&to)
        .bind(&contents)
        .bind(new.sender.as_bytes().as_slice())
        .bind(&new.kind)
        .bind(new.attachment.map(|(id, _)| id.to_string()))
        .bind(new.now)
        .execute(&mut *tx)
        .await?;
        if let Some(push) = &new.push {
            sqlx::query(
                "INSERT INTO push_outbox (user_id, payload, next_attempt_at, expires_at, created_at) \
                 SELECT s.user_id, $2, $3, $4, $3 FROM push_subscriptions s WHERE s.user_id = ANY($1)",
            )
            .bind(&recipients)
            .bind(&push.payload)
            .bind(new.now)
            .bind(new.now + push.ttl)
            .execute(&mut *tx)
            .await?;
        }
        if new.kind == "MEDIA" {
            let n = new.parcels.len() as i64;
            sqlx::query(
                "INSERT INTO daily_stats (day, media_received) VALUES ($1, $2) \
                 ON CONFLICT (day) DO UPDATE \
                 SET media_received = daily_stats.media_received + excluded.media_received",
            )
            .bind(day_of(new.now))
            .bind(n)
            .execute(&mut *tx)
            .await?;
            bump(&mut tx, "media_waiting", n).await?;
        }
        self.commit(tx).await?;
        Ok(Ok(()))
    }

    pub async fn inbox_of(&self, user: &UserId) -> Result<Option<(UserRow, Vec<ParcelRow>)>> {
        let Some(user) = self.user_by_key(user).await? else {
            return Ok(None);
        };
        let rows: Vec<RawParcel> = sqlx::query_as(
            "SELECT p.seq, p.id, p.type, p.content, p.sender_key, p.created_at, a.size \
                 FROM parcels p LEFT JOIN attachments a ON a.id = p.attachment_id \
                 WHERE p.recipient_id = $1 ORDER BY p.seq",
        )
        .bind(user.entry_id)
        .fetch_all(&self.pool)
        .await?;
        let parcels = rows
            .into_iter()
            .filter_map(|(seq, id, kind, content, sender, sent_at, size)| {
                Some(ParcelRow {
                    seq,
                    id: ParcelId::parse(&id).ok()?,
                    kind,
                    content,
                    sender: UserId::from_slice(&sender)?,
                    sent_at,
                    attachment_size: size.map(|s| s as u64),
                })
            })
            .collect();
        Ok(Some((user, parcels)))
    }

    pub async fn record_seen(
        &self,
        entry: i64,
        now: Millis,
        client_version: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE users SET last_seen_at = $1, \
             client_version = COALESCE($2, client_version) WHERE id = $3",
        )
        .bind(now)
        .bind(client_version)
        .bind(entry)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn attachment_of(
        &self,
        parcel: &ParcelId,
        recipient: i64,
    ) -> Result<Option<(AttachmentId, u64)>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT a.id, a.size FROM parcels p JOIN attachments a ON a.id = p.attachment_id \
             WHERE p.id = $1 AND p.recipient_id = $2",
        )
        .bind(parcel.to_string())
        .bind(recipient)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(id, size)| Some((AttachmentId::parse(&id).ok()?, size as u64))))
    }

    pub async fn delete_parcel(
        &self,
        parcel: &ParcelId,
        recipient: i64,
    ) -> Result<Option<Option<AttachmentId>>> {
        let mut tx = self.pool.begin().await?;
        let deleted: Option<(Option<String>, String)> = sqlx::query_as(
            "DELETE FROM parcels WHERE id = $1 AND recipient_id = $2 \
             RETURNING attachment_id, type",
        )
        .bind(parcel.to_string())
        .bind(recipient)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(deleted) = deleted else {
            tx.rollback().await?;
            return Ok(None);
        };
        let (attachments, media) = deleted_parcels(std::slice::from_ref(&deleted));
        let orphan = delete_unreferenced_attachments(&mut tx, attachments)
            .await?
            .pop();
        bump(&mut tx, "media_waiting", -media).await?;
        self.commit(tx).await?;
        Ok(Some(orphan))
    }

    pub async fn acceptance(
        &self,
        recipient: &UserId,
        sender: &UserId,
    ) -> Result<Option<(i64, Option<Millis>)>> {
        let row: Option<(i64, Option<Millis>)> = sqlx::query_as(
            "SELECT u.id, u.last_seen_at FROM users u \
             JOIN contacts c ON c.user_id = u.id AND c.contact_key = $2 \
             WHERE u.public_key = $1",
        )
        .bind(recipient.as_bytes().as_slice())
        .bind(sender.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub async fn waiting_media_from(&self, recipient: i64, sender: &UserId) -> Result<u32> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM parcels WHERE recipient_id = $1 AND sender_key = $2 \
             AND type = 'MEDIA'",
        )
        .bind(recipient)
        .bind(sender.as_bytes().as_slice())
        .fetch_one(&self.pool)
        .await?;
        Ok(count(n))
    }

    pub async fn attachment_exists(&self, id: &AttachmentId) -> Result<bool> {
        let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM attachments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    // ---- push outbox ----

    /// Claims up to `limit` due pushes for this worker: each row is leased
    /// (`lease_until`) in the statement that picks it, and rows another
    /// worker is claiming right now are skipped (`SKIP LOCKED`), so two
    /// workers never get the same push. A claim ends with the push's
    /// delete or reschedule, or runs out after [`PUSH_LEASE`].
    pub async fn due_pushes(&self, now: Millis, limit: i64) -> Result<Vec<DuePush>> {
        let rows = sqlx::query(
            "WITH due AS (SELECT o.id FROM push_outbox o \
             WHERE o.next_attempt_at <= $1 AND (o.lease_until IS NULL OR o.lease_until <= $1) \
             AND EXISTS (SELECT 1 FROM push_subscriptions s WHERE s.user_id = o.user_id) \
             ORDER BY o.next_attempt_at, o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED) \
             UPDATE push_outbox o SET lease_until = $3 FROM due, push_subscriptions s \
             WHERE o.id = due.id AND s.user_id = o.user_id \
             RETURNING o.id, o.user_id, o.payload, o.attempts, o.expires_at, \
             s.endpoint, s.p256dh, s.auth, s.content_encoding, s.expires_at",
        )
        .bind(now)
        .bind(limit)
        .bind(now + PUSH_LEASE)
        .fetch_all(&self.pool)
        .await?;
        let mut due: Vec<DuePush> = rows
            .into_iter()
            .map(|r| DuePush {
                id: r.get(0),
                user_id: r.get(1),
                payload: r.get(2),
                attempts: r.get(3),
                expires_at: r.get(4),
                subscription: PushSubscriptionRow {
                    endpoint: r.get(5),
                    p256dh: r.get(6),
                    auth: r.get(7),
                    content_encoding: r.get(8),
                    expires_at: r.get(9),
                },
            })
            .collect();
        // RETURNING keeps no order.
        due.sort_by_key(|p| p.id);
        Ok(due)
    }

    /// Ends the claims of pushes this worker took but did not start.
    pub async fn release_pushes(&self, ids: &[i64]) -> Result<()> {
        if !ids.is_empty() {
            sqlx::query("UPDATE push_outbox SET lease_until = NULL WHERE id = ANY($1)")
                .bind(ids)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn next_push_due(&self) -> Result<Option<Millis>> {
        let (next,): (Option<Millis>,) = sqlx::query_as(
            "SELECT MIN(GREATEST(next_attempt_at, COALESCE(lease_until, 0))) FROM push_outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next)
    }

    /// An exact count: the outbox holds only pushes not yet delivered, a
    /// queue that stays short (unlike the tables behind `statistics`).
    pub async fn outbox_depth(&self) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM push_outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    pub async fn delete_push(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM push_outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn reschedule_push(&self, id: i64, attempts: i64, at: Millis) -> Result<()> {
        sqlx::query(
            "UPDATE push_outbox SET attempts = $2, next_attempt_at = $3, lease_until = NULL \
             WHERE id = $1",
        )
        .bind(id)
        .bind(attempts)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- retention ----

    pub async fn expire_parcels_batch(&self, cutoff: Millis) -> Result<(u64, Vec<AttachmentId>)> {
        let mut tx = self.pool.begin().await?;
        let deleted: Vec<(Option<String>, String)> = sqlx::query_as(
            "DELETE FROM parcels WHERE seq IN \
             (SELECT seq FROM parcels WHERE created_at < $1 ORDER BY created_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED) RETURNING attachment_id, type",
        )
        .bind(cutoff)
        .bind(RETENTION_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let (attachments, media) = deleted_parcels(&deleted);
        let orphans = delete_unreferenced_attachments(&mut tx, attachments).await?;
        bump(&mut tx, "media_waiting", -media).await?;
        self.commit(tx).await?;
        Ok((deleted.len() as u64, orphans))
    }

    pub async fn expire_exchanges_batch(&self, cutoff: Millis) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM exchanges WHERE token IN \
             (SELECT token FROM exchanges WHERE created_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(RETENTION_BATCH)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn inactive_users(&self, cutoff: Millis, limit: i64) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM users WHERE public_key IS NOT NULL \
             AND COALESCE(last_seen_at, created_at) < $1 ORDER BY id LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn expire_stats(&self, now: Millis) -> Result<u64> {
        let done = sqlx::query("DELETE FROM daily_stats WHERE day <= $1")
            .bind(day_of(now) - 7)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn expire_outbox_batch(&self, now: Millis) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM push_outbox WHERE id IN \
             (SELECT id FROM push_outbox WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(RETENTION_BATCH)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn unreferenced_attachments(&self) -> Result<Vec<AttachmentId>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM attachments WHERE NOT EXISTS \
             (SELECT 1 FROM parcels WHERE parcels.attachment_id = attachments.id) RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await?;
        list_file_removals(&mut tx, rows.iter().map(|(id,)| id.clone()).collect()).await?;
        self.commit(tx).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id,)| AttachmentId::parse(&id).ok())
            .collect())
    }

    pub async fn file_removals(&self) -> Result<Vec<AttachmentId>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM file_removals LIMIT $1")
            .bind(RETENTION_BATCH)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id,)| AttachmentId::parse(&id).ok())
            .collect())
    }

    pub async fn forget_file_removals(&self, ids: &[AttachmentId]) -> Result<()> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        sqlx::query("DELETE FROM file_removals WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn attachment_ids(&self) -> Result<HashSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM attachments")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    // ---- server config and statistics ----

    /// Insert-if-absent, then read back: of instances starting together,
    /// the first insert wins (the others' conflict waits for its commit)
    /// and every instance reads that one value.
    pub async fn server_value_or_insert(
        &self,
        key: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        sqlx::query(
            "INSERT INTO server_config (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(make())
        .execute(&self.pool)
        .await?;
        let (value,): (Vec<u8>,) = sqlx::query_as("SELECT value FROM server_config WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(value)
    }

    /// Totals come from `counters` (kept in the transactions that add and
    /// delete users and parcels), the active counts from a range of the
    /// `last_seen_at` index (only the active users), the 7-day count from
    /// at most 8 `daily_stats` rows: no statement scans a whole table.
    pub async fn statistics(&self, now: Millis) -> Result<Statistics> {
        let (users, media, active_7d, active_30d, received): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT (SELECT value FROM counters WHERE name = 'users'), \
                 (SELECT value FROM counters WHERE name = 'media_waiting'), \
                 (SELECT COUNT(*) FROM users WHERE last_seen_at >= $1 AND public_key IS NOT NULL), \
                 (SELECT COUNT(*) FROM users WHERE last_seen_at >= $2 AND public_key IS NOT NULL), \
                 (SELECT COALESCE(SUM(media_received), 0)::BIGINT FROM daily_stats WHERE day > $3)",
            )
            .bind(now - 7 * DAY)
            .bind(now - 30 * DAY)
            .bind(day_of(now) - 7)
            .fetch_one(&self.pool)
            .await?;
        Ok(Statistics {
            users_total: count(users),
            users_active_7d: count(active_7d),
            users_active_30d: count(active_30d),
            media_parcels_waiting: count(media),
            media_parcels_received_7d: count(received),
        })
    }
}
