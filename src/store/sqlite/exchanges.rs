//! `exchanges`: contact exchanges and sign-up invites.

use crate::store::rows::*;
use sqlx::Row as _;

use super::SqliteStore;
use crate::{
    clock::Millis,
    domain::{ExchangeToken, UserId},
    error::Result,
};

impl SqliteStore {
    pub async fn insert_exchange(
        &self,
        token: &ExchangeToken,
        creator: Option<i64>,
        offer: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<()> {
        self.writer
            .execute(
                sqlx::query(
                    "INSERT INTO exchanges (token, creator_id, offer, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(token.to_string())
                .bind(creator)
                .bind(offer.to_owned())
                .bind(now)
                .bind(expires_at),
            )
            .await?;
        Ok(())
    }

    /// One of `creator`'s exchanges; another user's token finds nothing.
    pub async fn exchange_of(
        &self,
        token: &ExchangeToken,
        creator: i64,
    ) -> Result<Option<ExchangeRow>> {
        let row = sqlx::query(
            "SELECT offer, answer, accepted_at, expires_at FROM exchanges WHERE token = $1 AND creator_id = $2",
        )
        .bind(token.to_string())
        .bind(creator)
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        Ok(row.map(|r| ExchangeRow {
            offer: r.get(0),
            answer: r.get(1),
            accepted_at: r.get(2),
            expires_at: r.get(3),
        }))
    }

    /// Deletes one of `creator`'s exchanges; false when there was none.
    pub async fn delete_exchange(&self, token: &ExchangeToken, creator: i64) -> Result<bool> {
        let done = self
            .writer
            .execute(
                sqlx::query("DELETE FROM exchanges WHERE token = $1 AND creator_id = $2")
                    .bind(token.to_string())
                    .bind(creator),
            )
            .await?;
        Ok(done.rows_affected() > 0)
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
        let token = token.to_string();
        let answer = answer.map(str::to_owned);
        let sign_up = sign_up.copied();
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    let won: Option<(String, Millis, Option<i64>)> = sqlx::query_as(
                        "UPDATE exchanges SET accepted_at = $1, answer = $2 \
                         WHERE token = $3 AND accepted_at IS NULL AND expires_at > $1 \
                         RETURNING offer, expires_at, creator_id",
                    )
                    .bind(now)
                    .bind(answer.as_deref())
                    .bind(&token)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((offer, expires_at, creator)) = won else {
                        let found: Option<(Option<Millis>,)> =
                            sqlx::query_as("SELECT accepted_at FROM exchanges WHERE token = $1")
                                .bind(&token)
                                .fetch_optional(&mut *tx)
                                .await?;
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
                                "INSERT INTO users (public_key, invited_by, created_at) \
                                 VALUES ($1, $2, $3) \
                                 ON CONFLICT (public_key) DO NOTHING",
                            )
                            .bind(user.as_bytes().as_slice())
                            .bind(creator)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            Some(inserted.rows_affected() == 1)
                        }
                    };
                    Ok(AcceptOutcome::Accepted {
                        offer,
                        expires_at,
                        account_created,
                    })
                })
            })
            .await
    }

    /// Whether a sign-up invite (no creator) is still open.
    pub async fn open_sign_up_invite_exists(&self, now: Millis) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM exchanges WHERE creator_id IS NULL AND accepted_at IS NULL AND expires_at > $1 LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&mut *self.readers.get().await?)
        .await?;
        Ok(row.is_some())
    }

    /// Whether anybody is registered.
    pub async fn has_users(&self) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM users WHERE public_key IS NOT NULL LIMIT 1")
                .fetch_optional(&mut *self.readers.get().await?)
                .await?;
        Ok(row.is_some())
    }

    /// Inserts a sign-up invite unless somebody is registered or one is
    /// open, in one job (the single writer makes check and insert atomic).
    pub async fn insert_first_sign_up_invite(
        &self,
        token: &ExchangeToken,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool> {
        let token = token.to_string();
        self.writer
            .run(move |tx| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "INSERT INTO exchanges (token, creator_id, offer, created_at, expires_at) \
                         SELECT $1, NULL, '', $2, $3 WHERE NOT EXISTS \
                         (SELECT 1 FROM users WHERE public_key IS NOT NULL) AND NOT EXISTS \
                         (SELECT 1 FROM exchanges WHERE creator_id IS NULL \
                         AND accepted_at IS NULL AND expires_at > $2)",
                    )
                    .bind(&token)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            })
            .await
    }
}
