//! Rate limits: every limit the server applies, in one table.
//!
//! Each row of [`TABLE`] is a named token bucket (GCRA, from `governor`):
//! `burst` requests (or KiB) at once, refilled at `burst` per `period`, one
//! bucket per key. The buckets live in [`Limiters`] (one per server, in
//! `AppState`) and are checked at the edge:
//!
//! - `ip` in [`LimitLayer::per_address`], before the signature check (no crypto spent
//!   on a client over its budget);
//! - `key_reads` / `key_writes`, `create_exchange`, `put_backup`,
//!   `set_contacts` and `accept_exchange` in [`LimitLayer::per_rpc`] on the tonic
//!   routes, which every protocol reaches, by the gRPC method;
//! - `send_pair` and `recipient_bytes` in the `SendParcel` handler, the
//!   first place the recipients are known.
//!
//! Memory is bounded twice: keys whose bucket is full again (they are
//! indistinguishable from a fresh key) are dropped every [`PRUNE_EVERY`],
//! and no limiter holds more than `RATE_LIMIT_MAX_KEYS` keys. A new key
//! that arrives while its limiter is full is let through without a bucket
//! (counted in `piqchat_rate_limit_untracked`): a flood of fresh keys or
//! addresses can then escape that one limit for a while, but can never make
//! the server refuse a client it has not seen yet — a registered user who
//! opens the app during the flood is served. The other defences (the per-IP
//! limit, the nonce budgets, the connection caps) still apply to the flood.
//!
//! A refusal is `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` in the
//! status details (`grpc-status-details-bin`); the JSON gateway turns that
//! into HTTP 429 with `Retry-After`.

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use futures_util::future::BoxFuture;
use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, MonotonicClock},
    nanos::Nanos,
    state::{StateStore, keyed::ShrinkableKeyedStateStore},
};
use http::{Request, Response};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tonic::Status;
use tower::{Layer, Service};

use super::{ClientIp, IpKey, Protocol, gateway};
use crate::{
    config::ConfigError,
    domain::{Caller, UserId},
    error::Error,
    metrics::{LimitLabels, Metrics},
};

/// The named limits; the order is the order of [`TABLE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Ip,
    KeyReads,
    KeyWrites,
    SendPair,
    RecipientBytes,
    CreateExchange,
    PutBackup,
    SetContacts,
    AcceptExchange,
}

const COUNT: usize = 9;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Requests,
    /// Attachment bytes, counted in KiB so that a day's budget fits a `u32`.
    Bytes,
}

/// One row of the table.
#[derive(Debug)]
pub struct Spec {
    pub limit: Limit,
    /// The metric label and the name in refusal messages.
    pub name: &'static str,
    /// The variable that sets or disables it.
    pub var: &'static str,
    pub default: Rate,
    pub unit: Unit,
    /// What one bucket belongs to.
    pub key: &'static str,
    /// Why the default is what it is.
    pub reason: &'static str,
}

/// `burst` cells at once, refilled at `burst` per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub period: Duration,
}

const fn rate(burst: u32, period_secs: u64) -> Rate {
    Rate {
        burst,
        period: Duration::from_secs(period_secs),
    }
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Every rate limit of the server. Defaults are sized so that a normal app
/// user never meets them: someone sending a few hundred images a day to a
/// few dozen friends, a browser tab that lists the inbox every few seconds
/// while open, several such people behind one carrier-grade NAT address.
pub static TABLE: [Spec; COUNT] = [
    Spec {
        limit: Limit::Ip,
        name: "ip",
        var: "RATE_LIMIT_IP",
        default: rate(3000, MINUTE),
        unit: Unit::Requests,
        key: "client address (IPv6 by /64)",
        reason: "any request, before the signature check; an open browser tab lists about every 2 s \
                 (30 a minute), so 50 a second fits some 40 busy people behind one NAT address \
                 while one attacker address gets nowhere near the thousands of signature checks a second that hurt",
    },
    Spec {
        limit: Limit::KeyReads,
        name: "key_reads",
        var: "RATE_LIMIT_KEY_READS",
        default: rate(600, MINUTE),
        unit: Unit::Requests,
        key: "signing key",
        reason: "Get/List/Check/Download calls; polling every 2 s is 0.5 a second, scrolling \
                 through a full inbox downloads a few images a second; 10 a second sustained, 600 at once",
    },
    Spec {
        limit: Limit::KeyWrites,
        name: "key_writes",
        var: "RATE_LIMIT_KEY_WRITES",
        default: rate(300, MINUTE),
        unit: Unit::Requests,
        key: "signing key",
        reason: "every other call; sending a day's few hundred images at once or deleting \
                 100 viewed parcels in a row fits the burst, 5 a second sustained",
    },
    Spec {
        limit: Limit::SendPair,
        name: "send_pair",
        var: "RATE_LIMIT_SEND_PAIR",
        default: rate(300, HOUR),
        unit: Unit::Requests,
        key: "(sender, recipient)",
        reason: "parcels one sender leaves for one recipient; a few hundred images a day, \
                 even all to one friend, fit; a hostile contact cannot bury one inbox",
    },
    Spec {
        limit: Limit::RecipientBytes,
        name: "recipient_bytes",
        var: "RATE_LIMIT_RECIPIENT_ATTACHMENT_BYTES",
        default: rate(4 << 20, DAY),
        unit: Unit::Bytes,
        key: "recipient",
        reason: "attachment bytes all senders leave for one recipient; a few hundred images \
                 of a few MiB is about 1.5 GiB a day, 4 GiB leaves room and caps what contacts \
                 can make one user's share of the disk grow by in a day",
    },
    Spec {
        limit: Limit::CreateExchange,
        name: "create_exchange",
        var: "RATE_LIMIT_CREATE_EXCHANGE",
        default: rate(30, HOUR),
        unit: Unit::Requests,
        key: "signing key",
        reason: "each invite stores a card of up to 64 KiB; adding 30 contacts in an hour \
                 at a party fits, an invite factory does not",
    },
    Spec {
        limit: Limit::PutBackup,
        name: "put_backup",
        var: "RATE_LIMIT_PUT_BACKUP",
        default: rate(60, HOUR),
        unit: Unit::Requests,
        key: "signing key",
        reason: "the app backs up its profile after changes (up to 1 MiB each); one a minute \
                 is more than editing by hand produces",
    },
    Spec {
        limit: Limit::SetContacts,
        name: "set_contacts",
        var: "RATE_LIMIT_SET_CONTACTS",
        default: rate(60, HOUR),
        unit: Unit::Requests,
        key: "signing key",
        reason: "the app sends its whole contact list (up to 5,000 entries) after each change; \
                 one a minute is more than adding contacts by hand produces",
    },
    Spec {
        limit: Limit::AcceptExchange,
        name: "accept_exchange",
        var: "RATE_LIMIT_ACCEPT_EXCHANGE",
        default: rate(60, HOUR),
        unit: Unit::Requests,
        key: "client address (IPv6 by /64)",
        reason: "the public call that accepts invites and signs up new users; a meetup \
                 where many people behind one address scan each other's codes fits",
    },
];

/// How often keys whose bucket is full again are dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30);

impl Limit {
    pub fn spec(self) -> &'static Spec {
        &TABLE[self as usize]
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.burst, period_text(self.period))
    }
}

fn period_text(period: Duration) -> String {
    let s = period.as_secs();
    for (unit, len) in [("d", DAY), ("h", HOUR), ("m", MINUTE)] {
        if s >= len && s.is_multiple_of(len) {
            return format!("{}{unit}", s / len);
        }
    }
    format!("{s}s")
}

/// The configured rate of every limit (`None`: off) and the key cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    rates: [Option<Rate>; COUNT],
    /// Most keys one limiter tracks (`RATE_LIMIT_MAX_KEYS`).
    pub max_keys: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            rates: std::array::from_fn(|i| Some(TABLE[i].default)),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// Default of `RATE_LIMIT_MAX_KEYS`.
pub const DEFAULT_MAX_KEYS: u32 = 20_000;

impl RateLimits {
    /// Every limit off.
    pub fn off() -> Self {
        RateLimits {
            rates: [None; COUNT],
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    pub fn get(&self, limit: Limit) -> Option<Rate> {
        self.rates[limit as usize]
    }

    pub fn set(&mut self, limit: Limit, rate: Option<Rate>) {
        self.rates[limit as usize] = rate;
    }

    /// Reads each limit's variable through `get` (unset: the default).
    pub fn parse(get: impl Fn(&str) -> Option<String>, max_keys: u32) -> Result<Self, ConfigError> {
        let mut limits = RateLimits {
            max_keys,
            ..RateLimits::default()
        };
        for spec in &TABLE {
            if let Some(value) = get(spec.var) {
                let rate = parse_rate(&value, spec.unit).map_err(|message| ConfigError {
                    var: spec.var,
                    message,
                })?;
                limits.set(spec.limit, rate);
            }
        }
        Ok(limits)
    }
}

/// `off`, or `BURST/PERIOD` such as `300/1m` (periods in s, m, h or d; for
/// bytes the burst may end in KiB, MiB, GiB or TiB).
fn parse_rate(value: &str, unit: Unit) -> Result<Option<Rate>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let example = match unit {
        Unit::Requests => "300/1m",
        Unit::Bytes => "4GiB/1d",
    };
    let wrong = || format!("expected BURST/PERIOD like {example}, or off; got {value:?}");
    let (burst, period) = value.split_once('/').ok_or_else(wrong)?;
    let burst = match unit {
        Unit::Requests => burst.trim().parse::<u64>().map_err(|_| wrong())?,
        Unit::Bytes => parse_bytes(burst.trim()).ok_or_else(wrong)?.div_ceil(1024),
    };
    let period = parse_period(period.trim()).ok_or_else(wrong)?;
    let burst = u32::try_from(burst)
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("the burst must be from 1 to {}; got {value:?}", u32::MAX))?;
    if period.is_zero() || period > Duration::from_secs(30 * DAY) {
        return Err(format!("the period must be from 1s to 30d; got {value:?}"));
    }
    Ok(Some(Rate { burst, period }))
}

fn parse_bytes(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let shift = match suffix.trim() {
        "" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_period(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = number.parse().ok()?;
    let len = match unit {
        "s" => 1,
        "m" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(len)?))
}

/// Why a request was refused, and when it may be tried again.
#[derive(Debug)]
pub struct Refusal {
    spec: &'static Spec,
    rate: Rate,
    /// `None` when the request can never fit (larger than the burst).
    retry_after: Option<Duration>,
    /// Which recipient of a send, for the per-recipient limits.
    recipient: Option<usize>,
}

impl Refusal {
    fn message(&self) -> String {
        let rate = match self.spec.unit {
            Unit::Requests => format!(
                "{} requests per {}",
                self.rate.burst,
                period_text(self.rate.period)
            ),
            Unit::Bytes => format!(
                "{} KiB of attachments per {}",
                self.rate.burst,
                period_text(self.rate.period)
            ),
        };
        let whom = match self.recipient {
            Some(i) => format!(" for recipient {i}"),
            None => String::new(),
        };
        match self.retry_after {
            Some(after) => format!(
                "rate limit {}{whom} reached ({rate} per {}); retry in {} s",
                self.spec.name,
                self.spec.key,
                gateway::retry_secs(after)
            ),
            None => format!(
                "the attachment is larger than rate limit {}{whom} ever allows ({rate} per {}); send it smaller",
                self.spec.name, self.spec.key
            ),
        }
    }

    /// `RESOURCE_EXHAUSTED`, with the retry delay when there is one.
    pub fn into_error(self) -> Error {
        let message = self.message();
        match self.retry_after {
            Some(retry_after) => Error::RateLimited {
                message,
                retry_after,
            },
            None => Error::ResourceExhausted(message),
        }
    }

    pub fn into_status(self) -> Status {
        self.into_error().into()
    }
}

/// A keyed state store with a cap on the number of keys: governor's
/// `HashMapStateStore` plus the cap and the key gauge.
struct CappedStore<K> {
    map: Mutex<HashMap<K, u64>>,
    cap: usize,
    keys: Gauge,
    untracked: Counter,
}

impl<K: Hash + Eq + Clone> StateStore for CappedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = map.get_mut(key) {
            let (outcome, next) = f(Some(Nanos::from(*state)).filter(|n| n.as_u64() != 0))?;
            *state = next.into();
            return Ok(outcome);
        }
        let (outcome, next) = f(None)?;
        if map.len() < self.cap {
            map.insert(key.clone(), next.into());
            self.keys.set(map.len() as i64);
        } else {
            // Full: let the newcomer through untracked rather than refuse
            // someone who has not used any budget (see the module docs).
            self.untracked.inc();
        }
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for CappedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, state| *state > drop_below.as_u64());
        self.keys.set(map.len() as i64);
    }

    fn shrink_to_fit(&self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One limit: its row, its rate and its buckets.
struct Keyed<K: Hash + Eq + Clone> {
    spec: &'static Spec,
    rate: Rate,
    limiter: RateLimiter<K, CappedStore<K>, MonotonicClock>,
    refusals: Counter,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(limit: Limit, limits: &RateLimits, metrics: &Metrics) -> Option<Self> {
        let spec = limit.spec();
        let rate = limits.get(limit)?;
        let burst = NonZeroU32::new(rate.burst)?;
        let quota = Quota::with_period(rate.period / rate.burst)?.allow_burst(burst);
        let labels = LimitLabels { limit: spec.name };
        let store = CappedStore {
            map: Mutex::new(HashMap::new()),
            cap: limits.max_keys as usize,
            keys: metrics.rate_limit_keys.get_or_create(&labels).clone(),
            untracked: metrics.rate_limit_untracked.get_or_create(&labels).clone(),
        };
        Some(Keyed {
            spec,
            rate,
            limiter: RateLimiter::new(quota, store, MonotonicClock),
            refusals: metrics.rate_limited.get_or_create(&labels).clone(),
        })
    }

    /// Takes `n` cells from `key`'s bucket, or says when they will be there.
    fn check(&self, key: &K, n: u32) -> Result<(), Refusal> {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let retry_after = match self.limiter.check_key_n(key, n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => Some(not_until.wait_time_from(MonotonicClock.now())),
            Err(_) => None,
        };
        self.refusals.inc();
        Err(Refusal {
            spec: self.spec,
            rate: self.rate,
            retry_after,
            recipient: None,
        })
    }

    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// Every limiter of one server; limits that are off are `None`.
pub struct Limiters {
    ip: Option<Keyed<IpKey>>,
    key_reads: Option<Keyed<UserId>>,
    key_writes: Option<Keyed<UserId>>,
    send_pair: Option<Keyed<(UserId, UserId)>>,
    recipient_bytes: Option<Keyed<UserId>>,
    create_exchange: Option<Keyed<UserId>>,
    put_backup: Option<Keyed<UserId>>,
    set_contacts: Option<Keyed<UserId>>,
    accept_exchange: Option<Keyed<IpKey>>,
}

fn check<K: Hash + Eq + Clone>(limiter: &Option<Keyed<K>>, key: &K, n: u32) -> Result<(), Refusal> {
    limiter.as_ref().map_or(Ok(()), |l| l.check(key, n))
}

impl Limiters {
    /// Builds the limiters and, inside a tokio runtime, the task that prunes
    /// them every [`PRUNE_EVERY`] for as long as they are in use.
    pub fn start(limits: &RateLimits, metrics: &Metrics) -> Arc<Self> {
        let limiters = Arc::new(Limiters {
            ip: Keyed::new(Limit::Ip, limits, metrics),
            key_reads: Keyed::new(Limit::KeyReads, limits, metrics),
            key_writes: Keyed::new(Limit::KeyWrites, limits, metrics),
            send_pair: Keyed::new(Limit::SendPair, limits, metrics),
            recipient_bytes: Keyed::new(Limit::RecipientBytes, limits, metrics),
            create_exchange: Keyed::new(Limit::CreateExchange, limits, metrics),
            put_backup: Keyed::new(Limit::PutBackup, limits, metrics),
            set_contacts: Keyed::new(Limit::SetContacts, limits, metrics),
            accept_exchange: Keyed::new(Limit::AcceptExchange, limits, metrics),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(prune_loop(Arc::downgrade(&limiters)));
        }
        limiters
    }

    /// Drops the keys whose bucket is full again and gives back the memory.
    pub fn prune(&self) {
        let Limiters {
            ip,
            key_reads,
            key_writes,
            send_pair,
            recipient_bytes,
            create_exchange,
            put_backup,
            set_contacts,
            accept_exchange,
        } = self;
        ip.iter().for_each(Keyed::prune);
        accept_exchange.iter().for_each(Keyed::prune);
        send_pair.iter().for_each(Keyed::prune);
        for l in [
            key_reads,
            key_writes,
            recipient_bytes,
            create_exchange,
            put_backup,
            set_contacts,
        ]
        .into_iter()
        .flatten()
        {
            l.prune();
        }
    }

    /// Keys tracked by `limit` (0 when it is off).
    pub fn keys(&self, limit: Limit) -> usize {
        match limit {
            Limit::Ip => self.ip.as_ref().map_or(0, Keyed::len),
            Limit::AcceptExchange => self.accept_exchange.as_ref().map_or(0, Keyed::len),
            Limit::SendPair => self.send_pair.as_ref().map_or(0, Keyed::len),
            Limit::KeyReads => self.key_reads.as_ref().map_or(0, Keyed::len),
            Limit::KeyWrites => self.key_writes.as_ref().map_or(0, Keyed::len),
            Limit::RecipientBytes => self.recipient_bytes.as_ref().map_or(0, Keyed::len),
            Limit::CreateExchange => self.create_exchange.as_ref().map_or(0, Keyed::len),
            Limit::PutBackup => self.put_backup.as_ref().map_or(0, Keyed::len),
            Limit::SetContacts => self.set_contacts.as_ref().map_or(0, Keyed::len),
        }
    }

    /// The per-address limit on every request.
    pub fn check_ip(&self, ip: ClientIp) -> Result<(), Refusal> {
        check(&self.ip, &ip.key(), 1)
    }

    /// The limits of one RPC call, by its gRPC path.
    fn check_rpc(
        &self,
        path: &str,
        caller: Option<Caller>,
        ip: Option<ClientIp>,
    ) -> Result<(), Refusal> {
        let method = path.rsplit('/').next().unwrap_or_default();
        if method == "AcceptExchange"
            && let Some(ip) = ip
        {
            check(&self.accept_exchange, &ip.key(), 1)?;
        }
        let Some(caller) = caller else {
            return Ok(());
        };
        let key = caller.user_id;
        if is_read(path) {
            return check(&self.key_reads, &key, 1);
        }
        check(&self.key_writes, &key, 1)?;
        match method {
            "CreateExchange" => check(&self.create_exchange, &key, 1),
            "PutBackup" => check(&self.put_backup, &key, 1),
            "SetContacts" => check(&self.set_contacts, &key, 1),
            _ => Ok(()),
        }
    }

    /// A send from `sender` to the `recipients` that accept it (with their
    /// index in the request), with an attachment of `attachment_bytes`: one
    /// parcel per (sender, recipient), the bytes against each recipient's
    /// daily budget. Only recipients that accept the sender count, so nobody
    /// can use up a stranger's budget.
    pub fn check_send(
        &self,
        sender: &UserId,
        recipients: impl IntoIterator<Item = (usize, UserId)>,
        attachment_bytes: u64,
    ) -> Result<(), Refusal> {
        let kib = u32::try_from(attachment_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        for (i, recipient) in recipients {
            let at = |mut r: Refusal| {
                r.recipient = Some(i);
                r
            };
            check(&self.send_pair, &(*sender, recipient), 1).map_err(at)?;
            if kib > 0 {
                check(&self.recipient_bytes, &recipient, kib).map_err(at)?;
            }
        }
        Ok(())
    }
}

async fn prune_loop(limiters: Weak<Limiters>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(limiters) = limiters.upgrade() else {
            return;
        };
        limiters.prune();
    }
}

/// Reads are the calls that only look: `Get…`, `List…`, `Check…`,
/// `Download…`, and the health and reflection services.
fn is_read(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    !path.starts_with("/piqchat.")
        || ["Get", "List", "Check", "Download"]
            .iter()
            .any(|prefix| method.starts_with(prefix))
}

/// Where on the request path a [`LimitLayer`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checkpoint {
    /// The per-address limit, in front of the signature check.
    Address,
    /// The per-key and per-call limits, on the tonic routes (which every
    /// protocol reaches), after the signature check put the `Caller` in.
    Rpc,
}

/// Refuses what a limit of its checkpoint refuses, before the inner service.
#[derive(Clone)]
pub struct LimitLayer {
    limiters: Arc<Limiters>,
    at: Checkpoint,
}

impl LimitLayer {
    /// The per-address limit, in front of the signature check.
    pub fn per_address(limiters: Arc<Limiters>) -> Self {
        LimitLayer {
            limiters,
            at: Checkpoint::Address,
        }
    }

    /// The per-key and per-call limits, on the tonic routes.
    pub fn per_rpc(limiters: Arc<Limiters>) -> Self {
        LimitLayer {
            limiters,
            at: Checkpoint::Rpc,
        }
    }

    /// The refusal for `req`, if a limit refuses it, in the form the
    /// checkpoint answers with.
    fn refusal(&self, req: &Request<Body>) -> Option<Response<Body>> {
        let ip = req.extensions().get::<ClientIp>().copied();
        match self.at {
            Checkpoint::Address => {
                let refusal = self.limiters.check_ip(ip?).err()?;
                Some(
                    Protocol::of(req)
                        .error_response(refusal.into_status(), http::StatusCode::TOO_MANY_REQUESTS),
                )
            }
            Checkpoint::Rpc => {
                let caller = req.extensions().get::<Caller>().copied();
                let refusal = self
                    .limiters
                    .check_rpc(req.uri().path(), caller, ip)
                    .err()?;
                // A trailers-only gRPC answer; gRPC-web and the gateway
                // translate it like any other status from the routes.
                Some(refusal.into_status().into_http::<Body>())
            }
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LimitService<S> {
    inner: S,
    layer: LimitLayer,
}

impl<S> Service<Request<Body>> for LimitService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(response) = self.layer.refusal(&req) {
            return Box::pin(async move { Ok(response) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_enum_order_and_names_are_unique() {
        for (i, spec) in TABLE.iter().enumerate() {
            assert_eq!(spec.limit as usize, i, "{}", spec.name);
            assert!(spec.var.starts_with("RATE_LIMIT_"), "{}", spec.var);
            assert!(!spec.reason.is_empty());
        }
        let mut names: Vec<_> = TABLE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNT);
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(
            parse_rate("300/1m", Unit::Requests),
            Ok(Some(rate(300, 60)))
        );
        assert_eq!(parse_rate("off", Unit::Requests), Ok(None));
        assert_eq!(
            parse_rate("4GiB/1d", Unit::Bytes),
            Ok(Some(rate(4 << 20, DAY)))
        );
        assert_eq!(parse_rate("1500/1d", Unit::Bytes), Ok(Some(rate(2, DAY))));
        for bad in [
            "300",
            "0/1m",
            "x/1m",
            "3/0s",
            "3/1w",
            "3/31d",
            "5000000000/1s",
        ] {
            assert!(parse_rate(bad, Unit::Requests).is_err(), "{bad}");
        }
        assert!(parse_rate("4GB/1d", Unit::Bytes).is_err());
        assert_eq!(rate(300, 60).to_string(), "300/1m");
        assert_eq!(rate(5, 90).to_string(), "5/90s");
    }

    #[test]
    fn retry_seconds_round_up() {
        use gateway::retry_secs;
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn reads_and_writes() {
        assert!(is_read("/piqchat.inbox.v1.ParcelService/ListParcels"));
        assert!(is_read(
            "/piqchat.inbox.v1.ParcelService/DownloadAttachment"
        ));
        assert!(is_read("/grpc.health.v1.Health/Check"));
        assert!(!is_read("/piqchat.inbox.v1.ParcelService/SendParcel"));
        assert!(!is_read("/piqchat.inbox.v1.ParcelService/DeleteParcel"));
        assert!(!is_read("/piqchat.inbox.v1.AccountService/SetContacts"));
    }

    #[test]
    fn a_full_limiter_tracks_no_new_keys_but_refuses_tracked_ones() {
        let mut limits = RateLimits::off();
        limits.set(Limit::KeyReads, Some(rate(2, 3600)));
        limits.max_keys = 2;
        let metrics = Metrics::new();
        let l = Keyed::<u32>::new(Limit::KeyReads, &limits, &metrics).unwrap();
        for key in [1, 2] {
            assert!(l.check(&key, 1).is_ok());
            assert!(l.check(&key, 1).is_ok());
            let refused = l.check(&key, 1).unwrap_err();
            assert!(refused.retry_after.unwrap() > Duration::from_secs(1000));
        }
        // The third key finds the limiter full: served, never tracked.
        for _ in 0..5 {
            assert!(l.check(&3, 1).is_ok());
        }
        assert_eq!(l.len(), 2);
        assert!(l.check(&1, 1).is_err());
        assert!(
            metrics
                .render()
                .contains("piqchat_rate_limit_untracked_total{limit=\"key_reads\"} 5")
        );
    }

    #[test]
    fn pruning_drops_only_full_buckets() {
        let mut limits = RateLimits::off();
        limits.set(
            Limit::KeyReads,
            Some(Rate {
                burst: 5,
                period: Duration::from_millis(50),
            }),
        );
        let metrics = Metrics::new();
        let l = Keyed::<u32>::new(Limit::KeyReads, &limits, &metrics).unwrap();
        assert!(l.check(&1, 1).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.check(&2, 5).is_ok());
        l.prune();
        // Key 1 has refilled (gone); key 2 has just emptied its bucket.
        assert_eq!(l.len(), 1);
        assert!(l.check(&2, 1).is_err());
    }
}
