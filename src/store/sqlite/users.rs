//! `users` and `contacts`.

use super::SqliteStore;
use crate::store::rows::*;
use crate::{domain::UserId, error::Result};

pub(super) type RawUser = (i64, Vec<u8>, Option<i64>, i64, Option<i64>, Option<String>);

pub(super) fn user_row(raw: RawUser) -> Option<UserRow> {
    let (entry_id, key, invited_by, created_at, last_seen_at, client_version) = raw;
    Some(UserRow {
        entry_id,
        user_id: UserId::from_slice(&key)?,
        invited_by,
        created_at,
        last_seen_at,
        client_version,
    })
}

/// The columns of a [`RawUser`], in order; a macro so that queries are
/// built by `concat!` at compile time rather than per call.
macro_rules! user_columns {
    () => {
        "id, public_key, invited_by, created_at, last_seen_at, client_version"
    };
}
pub(super) use user_columns;

impl SqliteStore {
    pub async fn user_by_key(&self, id: &UserId) -> Result<Option<UserRow>> {
        let raw: Option<RawUser> = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE public_key = $1"
        ))
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        Ok(raw.and_then(user_row))
    }

    /// The user ids on a user's whitelist.
    pub async fn contacts(&self, entry_id: i64) -> Result<Vec<UserId>> {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT contact_key FROM contacts WHERE user_id = $1 ORDER BY contact_key",
        )
        .bind(entry_id)
        .fetch_all(&mut *self.readers.get().await?)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k,)| UserId::from_slice(&k))
            .collect())
    }

    /// Replaces a user's whitelist.
    pub async fn set_contacts(&self, entry_id: i64, contacts: &[UserId]) -> Result<()> {
        let contacts = contacts.to_vec();
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    sqlx::query("DELETE FROM contacts WHERE user_id = $1")
                        .bind(entry_id)
                        .execute(&mut *tx)
                        .await?;
                    for contact in &contacts {
                        sqlx::query(
                            "INSERT INTO contacts (user_id, contact_key) VALUES ($1, $2) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(entry_id)
                        .bind(contact.as_bytes().as_slice())
                        .execute(&mut *tx)
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    pub async fn has_push_subscription(&self, entry_id: i64) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM push_subscriptions WHERE user_id = $1")
                .bind(entry_id)
                .fetch_optional(&mut *self.readers.get().await?)
                .await?;
        Ok(row.is_some())
    }
}
