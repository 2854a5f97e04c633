//! Server info: public facts and statistics, the statistics cached briefly
//! so that a public call cannot make the server count every row at will.

use std::sync::Mutex;

use crate::{
    clock::{Millis, SECOND},
    config::{Config, Limits},
    error::Result,
    identity::ServerIdentity,
    store::{Statistics, Store},
};

/// How long computed statistics are served before they are computed again.
const STATS_TTL: Millis = 5 * SECOND;

pub struct ServerInfo {
    pub server_public_key: String,
    pub vapid_public_key: String,
    pub admin_display_name: String,
    pub admin_message: String,
    pub admin_id: String,
    pub privacy_policy_url: String,
    pub limits: Limits,
    pub exchange_lifetime_secs: u32,
    pub signature_max_skew_secs: u32,
    pub statistics: Statistics,
    pub push_enabled: bool,
}

/// The last statistics and when they were computed. When they are stale,
/// one caller recomputes them while the others are served the stale ones, so
/// a crowd of GetInfo calls costs one count, not one each.
#[derive(Default)]
pub struct StatsCache {
    value: Mutex<Option<(Millis, Statistics)>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl StatsCache {
    fn cached(&self) -> Option<(Millis, Statistics)> {
        self.value.lock().expect("stats cache poisoned").clone()
    }

    async fn get(&self, store: &Store, now: Millis) -> Result<Statistics> {
        let cached = self.cached();
        if let Some((at, stats)) = &cached
            && (0..STATS_TTL).contains(&(now - at))
        {
            return Ok(stats.clone());
        }
        let _refreshing = match (cached, self.refreshing.try_lock()) {
            (_, Ok(guard)) => guard,
            // Someone is already counting: the stale values will do.
            (Some((_, stats)), Err(_)) => return Ok(stats),
            // Nothing to serve yet: wait for the count under way.
            (None, Err(_)) => {
                let guard = self.refreshing.lock().await;
                if let Some((_, stats)) = self.cached() {
                    return Ok(stats);
                }
                guard
            }
        };
        let stats = store.statistics(now).await?;
        *self.value.lock().expect("stats cache poisoned") = Some((now, stats.clone()));
        Ok(stats)
    }
}

pub async fn server_info(
    config: &Config,
    identity: &ServerIdentity,
    store: &Store,
    cache: &StatsCache,
    now: Millis,
) -> Result<ServerInfo> {
    Ok(ServerInfo {
        server_public_key: identity.public_key().to_owned(),
        vapid_public_key: identity.vapid_public_key().to_owned(),
        admin_display_name: config.admin_display_name.clone(),
        admin_message: config.admin_message.clone(),
        admin_id: config.admin_id.map(|id| id.to_string()).unwrap_or_default(),
        privacy_policy_url: config.privacy_policy_url.clone(),
        limits: config.limits.clone(),
        exchange_lifetime_secs: config.exchange_ttl_minutes * 60,
        signature_max_skew_secs: config.signature_max_skew_secs,
        statistics: cache.get(store, now).await?,
        push_enabled: config.push_vapid_contact.is_some(),
    })
}
