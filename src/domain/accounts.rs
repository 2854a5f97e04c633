//! Accounts: who is registered here, and what they may see of their account.

use base64::{
    Engine,
    engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD},
};

use crate::{
    blobs::Blobs,
    clock::Millis,
    config::Config,
    domain::{Caller, UserId, parcels::LastSeen},
    error::{Error, Result},
    push::{guard::EndpointGuard, message::Encoding},
    store::{BackupRow, PushSubscriptionRow, Store, UserRow},
};

/// The caller's account, or PERMISSION_DENIED: the one gate for every call
/// that needs a registered user.
pub async fn require_registered(store: &Store, caller: &Caller) -> Result<UserRow> {
    store
        .user_by_key(&caller.user_id)
        .await?
        .ok_or_else(not_registered)
}

/// The caller's key has no account here.
pub fn not_registered() -> Error {
    Error::PermissionDenied(
        "this key has no account on this server; sign up through an invite first".into(),
    )
}

pub struct Account {
    pub user_id: UserId,
    pub created_at: Millis,
    pub push_subscribed: bool,
    pub contacts: Vec<UserId>,
    pub is_admin: bool,
}

pub async fn get_account(store: &Store, config: &Config, caller: &Caller) -> Result<Account> {
    let user = require_registered(store, caller).await?;
    Ok(Account {
        user_id: user.user_id,
        created_at: user.created_at,
        push_subscribed: store.has_push_subscription(user.entry_id).await?,
        contacts: store.contacts(user.entry_id).await?,
        is_admin: config.admin_id == Some(user.user_id),
    })
}

/// Replaces the caller's whitelist; returns how many distinct ids it holds.
pub async fn set_contacts(
    store: &Store,
    config: &Config,
    caller: &Caller,
    mut contacts: Vec<UserId>,
) -> Result<u32> {
    contacts.sort_unstable();
    contacts.dedup();
    let max = config.limits.max_contacts as usize;
    if contacts.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{} contacts; at most {max} are accepted (MAX_CONTACTS)",
            contacts.len()
        )));
    }
    let user = require_registered(store, caller).await?;
    store.set_contacts(user.entry_id, &contacts).await?;
    Ok(contacts.len() as u32)
}

/// One line of the invited-users view.
pub struct InvitedUser {
    pub user_id: Option<UserId>,
    pub entry_id: i64,
    pub invited_by: Option<i64>,
    pub last_seen: LastSeen,
    /// Only in the admin's view.
    pub client_version: Option<String>,
}

/// The caller and the users who signed up through the caller's invites;
/// the admin sees everybody, with client versions.
pub async fn invited_users(
    store: &Store,
    config: &Config,
    caller: &Caller,
    now: Millis,
) -> Result<Vec<InvitedUser>> {
    let user = require_registered(store, caller).await?;
    let is_admin = config.admin_id == Some(user.user_id);
    let rows = if is_admin {
        store.all_users().await?
    } else {
        store.invited_by(&user).await?
    };
    Ok(rows
        .into_iter()
        .map(|r| InvitedUser {
            user_id: r.user_id,
            entry_id: r.entry_id,
            invited_by: r.invited_by,
            last_seen: LastSeen::of(r.last_seen_at, now),
            client_version: if is_admin { r.client_version } else { None },
        })
        .collect())
}

/// Deletes the caller's account: parcels and their attachment files, backup,
/// push subscription, contacts and invites; the key is forgotten.
pub async fn delete_account(
    store: &Store,
    blobs: &Blobs,
    caller: &Caller,
    now: Millis,
) -> Result<Deleted> {
    let user = require_registered(store, caller).await?;
    let deleted = delete_entry(store, blobs, user.entry_id, now).await?;
    tracing::info!(
        user = %caller.user_id.short(),
        parcels = deleted.parcels,
        attachments = deleted.attachments,
        "account deleted"
    );
    Ok(deleted)
}

/// What deleting an account removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub parcels: u64,
    pub attachments: u64,
}

/// Deletes one account by its entry id: the one code path for deletion on
/// request and by retention. Returns how many attachment files went.
pub async fn delete_entry(
    store: &Store,
    blobs: &Blobs,
    entry_id: i64,
    now: Millis,
) -> Result<Deleted> {
    let (parcels, orphans) = store.delete_account(entry_id, now).await?;
    for id in &orphans {
        blobs.remove(id).await?;
    }
    Ok(Deleted {
        parcels,
        attachments: orphans.len() as u64,
    })
}

pub async fn put_backup(
    store: &Store,
    config: &Config,
    caller: &Caller,
    content: &str,
    now: Millis,
) -> Result<Millis> {
    let max = config.limits.max_backup_bytes as usize;
    if content.is_empty() {
        return Err(Error::InvalidArgument(
            "content is required: the encrypted backup".into(),
        ));
    }
    if content.len() > max {
        return Err(Error::InvalidArgument(format!(
            "backup is {} bytes; at most {max} bytes are accepted",
            content.len()
        )));
    }
    let user = require_registered(store, caller).await?;
    store.put_backup(user.entry_id, content, now).await?;
    Ok(now)
}

/// The caller's backup; records this read (the result shows the one before).
/// The record is bookkeeping: when it cannot be written (a full disk), the
/// backup is still answered.
pub async fn get_backup(store: &Store, caller: &Caller, now: Millis) -> Result<BackupRow> {
    let user = require_registered(store, caller).await?;
    let backup = store
        .read_backup(user.entry_id)
        .await?
        .ok_or_else(|| Error::NotFound("no backup stored".into()))?;
    if let Err(e) = store.record_backup_read(user.entry_id, now).await {
        tracing::warn!(error = %e, "recording a backup read failed; the backup is answered anyway");
    }
    Ok(backup)
}

/// A push subscription as the browser's `PushSubscription.toJSON()` gives it.
pub struct NewPushSubscription {
    pub endpoint: String,
    pub expiration_time: Option<f64>,
    pub p256dh: String,
    pub auth: String,
    pub content_encoding: Option<String>,
}

/// Checks a subscription field by field; errors name the field to fix.
pub fn parse_push_subscription(
    guard: &EndpointGuard,
    sub: NewPushSubscription,
) -> Result<PushSubscriptionRow> {
    let invalid = |m: &str| Error::InvalidArgument(m.to_owned());
    // Plainly bad endpoints (not https, internal addresses) are refused now;
    // the send-time check after DNS resolution catches the rest.
    guard
        .check_url(&sub.endpoint)
        .map_err(|e| Error::InvalidArgument(format!("endpoint: {e}")))?;
    let p256dh = decode_b64url(&sub.p256dh)
        .filter(|k| k.len() == 65 && k[0] == 4 && p256::PublicKey::from_sec1_bytes(k).is_ok())
        .ok_or_else(|| {
            invalid("keys.p256dh: expected an uncompressed P-256 public key (65 bytes, base64url)")
        })?;
    let auth = decode_b64url(&sub.auth)
        .filter(|a| a.len() == 16)
        .ok_or_else(|| invalid("keys.auth: expected 16 bytes, base64url"))?;
    let content_encoding = match sub.content_encoding.as_deref() {
        None => Encoding::Aes128Gcm,
        Some(name) => Encoding::parse(name)
            .ok_or_else(|| invalid("contentEncoding: expected \"aes128gcm\" or \"aesgcm\""))?,
    };
    let expires_at = match sub.expiration_time {
        None => None,
        Some(t) if t.is_finite() && (0.0..1e15).contains(&t) => Some(t as Millis),
        Some(_) => {
            return Err(invalid(
                "expirationTime: expected milliseconds since the epoch, or null",
            ));
        }
    };
    Ok(PushSubscriptionRow {
        endpoint: sub.endpoint,
        p256dh,
        auth,
        content_encoding: content_encoding.as_str().to_owned(),
        expires_at,
    })
}

/// Browsers give unpadded base64url; padded input is accepted too.
fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

pub async fn set_push_subscription(
    store: &Store,
    guard: &EndpointGuard,
    caller: &Caller,
    sub: NewPushSubscription,
    now: Millis,
) -> Result<()> {
    let row = parse_push_subscription(guard, sub)?;
    let user = require_registered(store, caller).await?;
    store.put_push_subscription(user.entry_id, &row, now).await
}

pub async fn delete_push_subscription(store: &Store, caller: &Caller) -> Result<()> {
    let user = require_registered(store, caller).await?;
    store.delete_push_subscription(user.entry_id).await
}
