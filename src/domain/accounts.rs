//! Accounts: who is registered here, and what they may see of their account.

use crate::{
    clock::Millis,
    config::Config,
    domain::{Caller, UserId},
    error::{Error, Result},
    store::{Store, UserRow},
};

/// The caller's account, or PERMISSION_DENIED: the one gate for every call
/// that needs a registered user.
pub async fn require_registered(store: &Store, caller: &Caller) -> Result<UserRow> {
    store.user_by_key(&caller.user_id).await?.ok_or_else(|| {
        Error::PermissionDenied(
            "this key has no account on this server; sign up through an invite first".into(),
        )
    })
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
