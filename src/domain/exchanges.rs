//! Contact exchanges ("friend invites") and sign-up invites.

use crate::{
    clock::{MINUTE, Millis},
    config::Config,
    domain::{Caller, ExchangeToken, UserId, accounts::require_registered},
    error::{Error, Result},
    store::{AcceptOutcome, Store},
};

pub use crate::ids::HOST_PLACEHOLDER;
/// The web app that opens invite links.
pub const APP_URL: &str = "https://piqchat.net/";

pub struct Created {
    pub token: ExchangeToken,
    pub accept_url: String,
    pub expires_at: Millis,
}

pub enum State {
    Initiated,
    Accepted { answer: Option<String> },
}

pub struct Exchange {
    pub state: State,
    pub expires_at: Millis,
}

pub struct Accepted {
    pub offer: String,
    pub expires_at: Millis,
    pub account_created: Option<bool>,
}

/// The URL at which `token` is accepted, on the server at `base`
/// (e.g. `https://inbox.example.org`).
pub fn accept_url(base: &str, token: &ExchangeToken) -> String {
    format!("{}/v1/exchanges/{token}:accept", base.trim_end_matches('/'))
}

/// The base URL accept URLs are built on: `PUBLIC_URL` when configured, else
/// `https://` and the authority the request was sent to.
pub fn public_base(config: &Config, request_authority: Option<&str>) -> String {
    match (&config.public_url, request_authority) {
        (Some(url), _) => url.clone(),
        (None, Some(authority)) => format!("https://{authority}"),
        (None, None) => format!("https://{HOST_PLACEHOLDER}"),
    }
}

fn check_card(config: &Config, what: &str, card: &str) -> Result<()> {
    let max = config.limits.max_exchange_card_bytes as usize;
    if card.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes; at most {max} bytes are accepted",
            card.len()
        )));
    }
    Ok(())
}

fn lifetime(config: &Config) -> Millis {
    i64::from(config.exchange_ttl_minutes) * MINUTE
}

pub async fn create(
    store: &Store,
    config: &Config,
    caller: &Caller,
    offer: &str,
    base_url: &str,
    now: Millis,
) -> Result<Created> {
    if offer.is_empty() {
        return Err(Error::InvalidArgument(
            "offer is required: the creator's encrypted contact card".into(),
        ));
    }
    check_card(config, "offer", offer)?;
    let creator = require_registered(store, caller).await?;
    let token = ExchangeToken::random();
    let expires_at = now + lifetime(config);
    store
        .insert_exchange(&token, Some(creator.entry_id), offer, now, expires_at)
        .await?;
    tracing::info!(creator = %caller.user_id.short(), token = %token.short(), "exchange created");
    Ok(Created {
        accept_url: accept_url(base_url, &token),
        token,
        expires_at,
    })
}

/// Unknown, foreign and expired tokens look alike, so tokens cannot be probed.
fn not_found() -> Error {
    Error::NotFound("no such exchange".into())
}

pub async fn get(
    store: &Store,
    caller: &Caller,
    token: &ExchangeToken,
    now: Millis,
) -> Result<Exchange> {
    let creator = require_registered(store, caller).await?;
    let row = store
        .exchange_of(token, creator.entry_id)
        .await?
        .ok_or_else(not_found)?;
    // An accepted exchange stays readable until retention removes it, so the
    // creator can fetch the answer late; an open one ends at expires_at.
    let state = match row.accepted_at {
        Some(_) => State::Accepted { answer: row.answer },
        None if row.expires_at <= now => return Err(not_found()),
        None => State::Initiated,
    };
    Ok(Exchange {
        state,
        expires_at: row.expires_at,
    })
}

pub async fn revoke(store: &Store, caller: &Caller, token: &ExchangeToken) -> Result<()> {
    let creator = require_registered(store, caller).await?;
    if store.delete_exchange(token, creator.entry_id).await? {
        Ok(())
    } else {
        Err(not_found())
    }
}

pub async fn accept(
    store: &Store,
    config: &Config,
    token: &ExchangeToken,
    answer: Option<&str>,
    sign_up: Option<&UserId>,
    now: Millis,
) -> Result<Accepted> {
    if answer.is_none() && sign_up.is_none() {
        return Err(Error::InvalidArgument(
            "give an answer (your encrypted contact card), a user_id to sign up, or both".into(),
        ));
    }
    if let Some(answer) = answer {
        check_card(config, "answer", answer)?;
    }
    // An account for a key that can never sign could never be used.
    if sign_up.is_some_and(|id| !id.is_usable_key()) {
        return Err(Error::InvalidArgument(
            "user_id is not a usable Ed25519 public key (not a curve point, or of small order): generate a new key pair".into(),
        ));
    }
    match store.accept_exchange(token, answer, sign_up, now).await? {
        AcceptOutcome::Accepted {
            offer,
            expires_at,
            account_created,
        } => {
            tracing::info!(
                token = %token.short(),
                signed_up = ?account_created,
                "exchange accepted"
            );
            Ok(Accepted {
                offer,
                expires_at,
                account_created,
            })
        }
        AcceptOutcome::Unknown => Err(Error::NotFound("unknown invite: check the link".into())),
        AcceptOutcome::AlreadyAccepted => {
            Err(Error::NotFound("this invite was already used".into()))
        }
        AcceptOutcome::Expired => Err(Error::NotFound(
            "this invite has expired; ask for a new one".into(),
        )),
    }
}

/// Creates a sign-up invite (no creator, empty offer) and returns its link.
pub async fn create_sign_up_invite(store: &Store, config: &Config, now: Millis) -> Result<String> {
    let token = ExchangeToken::random();
    store
        .insert_exchange(&token, None, "", now, now + lifetime(config))
        .await?;
    Ok(sign_up_link(&token))
}

fn sign_up_link(token: &ExchangeToken) -> String {
    invite_link(&accept_url(&format!("https://{HOST_PLACEHOLDER}"), token))
}

/// On start: a sign-up invite when nobody is registered and none is open, or
/// when `force` is set. Returns the link of the invite it created.
pub async fn ensure_sign_up_invite(
    store: &Store,
    config: &Config,
    force: bool,
    now: Millis,
) -> Result<Option<String>> {
    if force {
        return create_sign_up_invite(store, config, now).await.map(Some);
    }
    // Check and insert in one step: instances starting together make one.
    let token = ExchangeToken::random();
    if !store
        .insert_first_sign_up_invite(&token, now, now + lifetime(config))
        .await?
    {
        return Ok(None);
    }
    Ok(Some(sign_up_link(&token)))
}

/// The web-app link that opens an exchange: the accept URL, URL-encoded.
pub fn invite_link(accept_url: &str) -> String {
    let encoded: String = url_encode(accept_url);
    format!("{APP_URL}#?exchange-url={encoded}&exchange-key=")
}

/// What JavaScript's `encodeURIComponent` leaves alone, so the app decodes
/// the link exactly.
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URI_COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_links_encode_the_accept_url() {
        let token = ExchangeToken::parse("3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f").unwrap();
        let url = accept_url("https://input_inbox_server_host", &token);
        assert_eq!(
            url,
            "https://input_inbox_server_host/v1/exchanges/3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f:accept"
        );
        assert_eq!(
            invite_link(&url),
            "https://piqchat.net/#?exchange-url=https%3A%2F%2Finput_inbox_server_host%2Fv1%2Fexchanges%2F3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f%3Aaccept&exchange-key="
        );
    }
}
