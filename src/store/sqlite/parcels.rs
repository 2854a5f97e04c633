//! `parcels`, `attachments` and the daily statistics they feed.

use super::{
    SqliteStore, count,
    users::{user_columns, user_row},
};
use crate::store::rows::*;
use crate::{
    clock::Millis,
    domain::{AttachmentId, ParcelId, UserId},
    error::Result,
};

/// A recipient's parcels (`p`), oldest first, as one JSON array in one
/// value: each row of a result is a message between the connection's thread
/// and ours, and for a full inbox those cost more than the query.
macro_rules! parcels_json {
    () => {
        "SELECT json_group_array(json_array(p.id, p.type, p.content, \
         hex(p.sender_key), p.created_at, a.size, p.seq) ORDER BY p.seq) \
         FROM parcels p LEFT JOIN attachments a ON a.id = p.attachment_id"
    };
}

impl SqliteStore {
    /// The registered recipients among `ids` that have `sender` on their
    /// whitelist, as (user id, entry id), in the order of `ids`. One query
    /// for all of them (the ids go in as a JSON array of hex keys).
    pub async fn accepting_recipients(
        &self,
        sender: &UserId,
        ids: &[UserId],
    ) -> Result<Vec<(UserId, i64)>> {
        let keys: Vec<String> = ids.iter().map(|id| hex(id.as_bytes())).collect();
        let keys = serde_json::to_string(&keys).map_err(crate::error::Error::internal)?;
        let rows: Vec<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT u.public_key, u.id FROM users u \
             JOIN contacts c ON c.user_id = u.id AND c.contact_key = $2 \
             WHERE u.public_key IN (SELECT unhex(value) FROM json_each($1))",
        )
        .bind(keys)
        .bind(sender.as_bytes().as_slice())
        .fetch_all(&mut *self.readers.get().await?)
        .await?;
        Ok(crate::store::rows::in_order_of(ids, &rows))
    }

    /// Stores the attachment row and every parcel in one transaction, after
    /// checking each recipient's quota inside it (the single writer makes the
    /// check exact). On `Err(QuotaExceeded)` nothing was stored.
    pub async fn insert_parcels(&self, new: NewParcels) -> Result<Result<(), QuotaExceeded>> {
        self.writer
            .run(move |tx| Box::pin(async move { insert_parcels(tx, &new).await }))
            .await
    }

    /// A user (by id) with their parcels, oldest first, in one query: the
    /// listing is the hottest read, and each query is a round trip to a
    /// connection's thread.
    pub async fn inbox_of(&self, user: &UserId) -> Result<Option<(UserRow, Vec<ParcelRow>)>> {
        type Row = (
            i64,
            Vec<u8>,
            Option<i64>,
            i64,
            Option<i64>,
            Option<String>,
            String,
        );
        let row: Option<Row> = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            ", (",
            parcels_json!(),
            " WHERE p.recipient_id = users.id) FROM users WHERE public_key = $1"
        ))
        .bind(user.as_bytes().as_slice())
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        let Some((id, key, invited_by, created_at, last_seen_at, client_version, json)) = row
        else {
            return Ok(None);
        };
        let raw = (
            id,
            key,
            invited_by,
            created_at,
            last_seen_at,
            client_version,
        );
        let Some(user) = user_row(raw) else {
            return Ok(None);
        };
        Ok(Some((user, parcel_rows(&json)?)))
    }

    /// Records that a user listed their inbox.
    pub async fn record_seen(
        &self,
        entry: i64,
        now: Millis,
        client_version: Option<&str>,
    ) -> Result<()> {
        self.writer
            .execute(
                sqlx::query(
                    "UPDATE users SET last_seen_at = $1, \
                     client_version = COALESCE($2, client_version) WHERE id = $3",
                )
                .bind(now)
                .bind(client_version.map(str::to_owned))
                .bind(entry),
            )
            .await?;
        Ok(())
    }

    /// The attachment of one of `recipient`'s parcels.
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
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        Ok(row.and_then(|(id, size)| Some((AttachmentId::parse(&id).ok()?, size as u64))))
    }

    /// Deletes one of `recipient`'s parcels. Returns `None` when there was no
    /// such parcel, else the attachment that no parcel references any more
    /// (its row is gone; the caller removes the file).
    pub async fn delete_parcel(
        &self,
        parcel: &ParcelId,
        recipient: i64,
    ) -> Result<Option<Option<AttachmentId>>> {
        let parcel = *parcel;
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    let deleted: Option<(Option<String>,)> = sqlx::query_as(
            "DELETE FROM parcels WHERE id = $1 AND recipient_id = $2 RETURNING attachment_id",
        )
        .bind(parcel.to_string())
        .bind(recipient)
        .fetch_optional(&mut *tx)
        .await?;
                    let Some((attachment,)) = deleted else {
                        return Ok(None);
                    };
                    let orphan = delete_unreferenced_attachments(&mut *tx, attachment)
                        .await?
                        .pop();
                    Ok(Some(orphan))
                })
            })
            .await
    }

    /// Whether `recipient` (a user id) is registered and has `sender` on its
    /// whitelist; returns the recipient's row id and last-seen time if so.
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
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        Ok(row)
    }

    /// `sender`'s `MEDIA` parcels waiting at `recipient`.
    pub async fn waiting_media_from(&self, recipient: i64, sender: &UserId) -> Result<u32> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM parcels WHERE recipient_id = $1 AND sender_key = $2 AND type = 'MEDIA'",
        )
        .bind(recipient)
        .bind(sender.as_bytes().as_slice())
        .fetch_one(&mut *self.readers.get().await?)
        .await?;
        Ok(count(n))
    }

    /// Whether an attachment row exists (tests check nothing stays behind).
    pub async fn attachment_exists(&self, id: &AttachmentId) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM attachments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.readers.get().await?)
            .await?;
        Ok(row.is_some())
    }
}

/// The rows of one send: the attachment (when there is one), a parcel per
/// recipient ($1: a JSON array of [id, recipient, content]), a push for each
/// recipient with a subscription (when $7, the payload, is set; they commit
/// or not with the parcels), and the day's count of received images.
const STORE_SEND: &str = "\
    INSERT INTO attachments (id, size, created_at) SELECT $4, $5, $6 WHERE $4 IS NOT NULL; \
    INSERT INTO parcels (id, recipient_id, sender_key, type, content, attachment_id, created_at) \
        SELECT value ->> 0, value ->> 1, $2, $3, value ->> 2, $4, $6 FROM json_each($1); \
    INSERT INTO push_outbox (user_id, payload, next_attempt_at, expires_at, created_at) \
        SELECT value ->> 1, $7, $6, $8, $6 FROM json_each($1) \
        WHERE $7 IS NOT NULL \
        AND EXISTS (SELECT 1 FROM push_subscriptions WHERE user_id = value ->> 1); \
    INSERT INTO daily_stats (day, media_received) SELECT $9, $10 WHERE $3 = 'MEDIA' \
        ON CONFLICT (day) DO UPDATE SET media_received = media_received + excluded.media_received";

/// The work of `SqliteStore::insert_parcels`, on the writer's connection.
async fn insert_parcels(
    tx: &mut sqlx::SqliteConnection,
    new: &NewParcels,
) -> Result<Result<(), QuotaExceeded>> {
    // What each recipient has waiting: two numbers per recipient, kept by
    // triggers (migration 0004), so the check costs the same however full
    // the inbox is.
    let recipients: Vec<i64> = new.parcels.iter().map(|p| p.recipient).collect();
    let recipients = serde_json::to_string(&recipients).map_err(crate::error::Error::internal)?;
    let waiting: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT id, waiting_parcels, waiting_bytes FROM users \
         WHERE id IN (SELECT value FROM json_each($1))",
    )
    .bind(&recipients)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(refused) = new.over_quota(&waiting) {
        return Ok(Err(refused));
    }
    // Every row in one round trip to the connection's thread (a statement
    // each is a hand-over each, and the writer runs one job after another):
    // the statements share the numbered parameters, and those that do not
    // apply to this send select no rows.
    let rows: Vec<(String, i64, &str)> = new
        .parcels
        .iter()
        .map(|p| (p.id.to_string(), p.recipient, p.content.as_str()))
        .collect();
    sqlx::query(STORE_SEND)
        .bind(serde_json::to_string(&rows).map_err(crate::error::Error::internal)?)
        .bind(new.sender.as_bytes().as_slice())
        .bind(&new.kind)
        .bind(new.attachment.map(|(id, _)| id.to_string()))
        .bind(new.attachment.map(|(_, size)| size as i64))
        .bind(new.now)
        .bind(new.push.as_ref().map(|push| push.payload.as_str()))
        .bind(new.push.as_ref().map(|push| new.now + push.ttl))
        .bind(day_of(new.now))
        .bind(new.parcels.len() as i64)
        .execute(&mut *tx)
        .await?;
    Ok(Ok(()))
}

/// Deletes the rows of those `candidates` that no parcel references any
/// more (an attachment goes with its last parcel), inside the caller's
/// transaction, and lists their files in `file_removals`. Returns them; the
/// caller removes their files after commit.
pub(super) async fn delete_unreferenced_attachments(
    tx: &mut sqlx::SqliteConnection,
    candidates: impl IntoIterator<Item = String>,
) -> Result<Vec<AttachmentId>> {
    let mut candidates: Vec<String> = candidates.into_iter().collect();
    candidates.sort_unstable();
    candidates.dedup();
    let mut orphans = Vec::new();
    for id in candidates {
        let gone = sqlx::query(
            "DELETE FROM attachments WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM parcels WHERE attachment_id = $1)",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        if gone.rows_affected() > 0 {
            list_file_removal(&mut *tx, &id).await?;
            orphans.extend(AttachmentId::parse(&id).ok());
        }
    }
    Ok(orphans)
}

/// Lists an attachment file for removal in the transaction that deletes its
/// row, so that a crash after the commit cannot leave the file behind.
pub(super) async fn list_file_removal(tx: &mut sqlx::SqliteConnection, id: &str) -> Result<()> {
    sqlx::query("INSERT OR IGNORE INTO file_removals (id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Decodes the value of `parcels_json!`.
fn parcel_rows(json: &str) -> Result<Vec<ParcelRow>> {
    type Raw = (String, String, String, String, Millis, Option<i64>, i64);
    let raw: Vec<Raw> = serde_json::from_str(json).map_err(crate::error::Error::internal)?;
    Ok(raw
        .into_iter()
        .filter_map(|(id, kind, content, sender, sent_at, size, seq)| {
            Some(ParcelRow {
                seq,
                id: ParcelId::parse(&id).ok()?,
                kind,
                content,
                sender: UserId::from_bytes(decode_hex32(&sender)?),
                sent_at,
                attachment_size: size.map(|s| s as u64),
            })
        })
        .collect())
}

/// Hex of `bytes`, as SQLite's `unhex()` reads it.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Decodes SQLite's `hex()` of a 32-byte key.
fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode_hex32;

    #[test]
    fn decodes_sqlite_hex() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 8 + 3) as u8);
        let text: String = key.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(decode_hex32(&text), Some(key));
        assert_eq!(decode_hex32(&text.to_lowercase()), Some(key));
        assert_eq!(decode_hex32(&text[1..]), None);
        assert_eq!(decode_hex32(&format!("{}zz", &text[2..])), None);
        assert_eq!(decode_hex32(&super::hex(&key)), Some(key));
    }
}
