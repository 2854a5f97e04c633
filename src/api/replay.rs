//! Replay protection: each `(keyid, nonce)` pair is accepted once while its
//! signature could still be valid, across restarts too.
//!
//! [`NonceStore::check_and_insert`] is the one interface. Behind it, an
//! in-memory front decides (every live nonce is in it: loaded from the
//! database at start) and the database keeps each accepted nonce (queued for
//! the writer's next group commit as soon as the front accepted it; the
//! response waits for that commit, see `auth`). On a database shared
//! between instances (PostgreSQL) the front still refuses what it has seen,
//! but a pair it has not seen is fresh only if the database insert says so:
//! another instance may have accepted it.
//!
//! Memory is bounded per class of key, so that keys without an account here
//! cannot crowd out the users of this server:
//! - registered keys, keys some registered user accepts as a sender
//!   (contacts), and unknown keys each have a budget of live entries;
//! - every key has a cap on its own live entries.
//!
//! A key's class is looked up only after its signature verified (one indexed
//! read), and positive answers are cached for a few seconds. When a budget
//! is full of live entries, that class alone is refused (fail closed, never
//! forget a live nonce early) until entries age out.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::{
    clock::{Millis, SECOND},
    config::NonceBudgets,
    domain::UserId,
    error::Result,
    store::{NonceRow, Store},
};

const SHARDS: usize = 16;
/// Expired entries are swept at most this often per shard.
const SWEEP_EVERY: Millis = 10 * SECOND;
/// When a budget is full, all shards are swept, but at most this often.
const FULL_SWEEP_EVERY: Millis = SECOND;
/// Expired rows are deleted from the database at most this often.
const BACK_SWEEP_EVERY: Millis = 60 * SECOND;
/// How long a key stays in its class without a new lookup.
const CLASS_TTL: Duration = Duration::from_secs(5);
/// Keys whose class is cached, at most.
const CLASS_CACHE_MAX: usize = 65_536;

/// Whose key signed, as far as the nonce budgets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// Has an account here.
    Registered = 0,
    /// No account, but some registered user accepts it as a sender.
    Contact = 1,
    /// Anyone else.
    Unknown = 2,
}

impl KeyClass {
    const ALL: [KeyClass; 3] = [KeyClass::Registered, KeyClass::Contact, KeyClass::Unknown];

    fn from_u8(v: u8) -> Self {
        match v {
            0 => KeyClass::Registered,
            1 => KeyClass::Contact,
            _ => KeyClass::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyClass::Registered => "registered",
            KeyClass::Contact => "contact",
            KeyClass::Unknown => "unknown",
        }
    }
}

/// The answer for one signed request.
pub enum Replay {
    /// First use: accepted. The future resolves once the nonce is durable;
    /// the response must not be released before.
    Fresh(BoxFuture<'static, Result<()>>),
    /// Seen before within the window.
    Replayed,
    /// This key has as many live nonces as one key may have.
    KeyFull,
    /// The budget of this class of keys is full of live entries.
    Full(KeyClass),
}

/// The nonce store: in-memory front, durable back.
pub struct NonceStore {
    front: Front,
    store: Store,
    classes: ClassCache,
    next_back_sweep: AtomicI64,
}

impl NonceStore {
    /// Deletes what went stale while the server was down and loads every
    /// live nonce into the front.
    pub async fn open(store: Store, budgets: NonceBudgets, now: Millis) -> Result<Self> {
        store.expire_nonces(now).await?;
        let front = Front::new(budgets);
        let live = store.live_nonces(now).await?;
        for row in &live {
            front.load(row);
        }
        if !live.is_empty() {
            tracing::info!(nonces = live.len(), "live nonces loaded");
        }
        Ok(NonceStore {
            front,
            store,
            classes: ClassCache::default(),
            next_back_sweep: AtomicI64::new(now + BACK_SWEEP_EVERY),
        })
    }

    /// Records `(key, nonce)` unless it was seen before; `until` is when the
    /// signature stops being acceptable for other reasons. Call only after
    /// the signature verified.
    pub async fn check_and_insert(
        &self,
        key: &UserId,
        nonce: &str,
        until: Millis,
        now: Millis,
    ) -> Result<Replay> {
        let ids = Ids::of(key, nonce);
        let class = self.class_of(key).await?;
        match self.front.check_and_insert(ids, class, until, now) {
            Checked::Fresh => {}
            Checked::Replayed => return Ok(Replay::Replayed),
            Checked::KeyFull => return Ok(Replay::KeyFull),
            Checked::Full(class) => return Ok(Replay::Full(class)),
        }
        self.sweep_back(now);
        let row = NonceRow {
            id: ids.pair,
            key: ids.key,
            class: class as u8,
            until,
        };
        // The front only ever adds refusals: a database shared with other
        // instances may know the pair although this front did not.
        Ok(match self.store.record_nonce(row, now).await? {
            Some(durable) => Replay::Fresh(durable),
            None => Replay::Replayed,
        })
    }

    /// Live entries per class, in the order registered, contact, unknown.
    pub fn live(&self) -> [usize; 3] {
        KeyClass::ALL.map(|c| self.front.live[c as usize].load(Ordering::Relaxed))
    }

    async fn class_of(&self, key: &UserId) -> Result<KeyClass> {
        if let Some(class) = self.classes.get(key) {
            return Ok(class);
        }
        let standing = self.store.key_standing(key).await?;
        let class = if standing.registered {
            KeyClass::Registered
        } else if standing.accepted_as_sender {
            KeyClass::Contact
        } else {
            // Not cached: a key that signs up or is accepted next is in its
            // class with its next request.
            return Ok(KeyClass::Unknown);
        };
        self.classes.put(key, class);
        Ok(class)
    }

    /// Deletes stale rows in the background, at most once a minute.
    fn sweep_back(&self, now: Millis) {
        let due = self.next_back_sweep.load(Ordering::Relaxed);
        if now < due
            || self
                .next_back_sweep
                .compare_exchange(
                    due,
                    now + BACK_SWEEP_EVERY,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.expire_nonces(now).await {
                tracing::warn!(error = %e, "deleting stale nonces failed");
            }
        });
    }
}

/// The digests a pair is remembered by.
#[derive(Clone, Copy)]
struct Ids {
    /// 64 bits of SHA-256(key || nonce). A collision (about 1 in 10^7 at a
    /// million entries) refuses one honest request as replayed; the client
    /// retries with a new nonce.
    pair: u64,
    /// 64 bits of SHA-256(key): what the per-key cap counts by.
    key: u64,
}

impl Ids {
    fn of(key: &UserId, nonce: &str) -> Self {
        let first8 = |d: [u8; 32]| u64::from_le_bytes(d[..8].try_into().expect("8 of 32 bytes"));
        let key_digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut hasher = Sha256::new();
        hasher.update(key.as_bytes());
        hasher.update(nonce.as_bytes());
        Ids {
            pair: first8(hasher.finalize().into()),
            key: first8(key_digest),
        }
    }
}

enum Checked {
    Fresh,
    Replayed,
    KeyFull,
    Full(KeyClass),
}

/// The in-memory front: sharded by key, so that a key's count and its
/// entries sit behind one lock.
struct Front {
    shards: Vec<Mutex<Shard>>,
    /// Live entries per class.
    live: [AtomicUsize; 3],
    budgets: [usize; 3],
    per_key: u32,
    next_full_sweep: AtomicI64,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u64, Entry>,
    /// Live entries per key digest.
    per_key: HashMap<u64, u32>,
    next_sweep: Millis,
}

/// 16 bytes: the key digest, and seconds so that the rest packs.
#[derive(Clone, Copy)]
struct Entry {
    key: u64,
    /// Unix seconds, rounded up, after which the entry may go.
    until_secs: u32,
    class: u8,
}

impl Entry {
    fn live(&self, now: Millis) -> bool {
        i64::from(self.until_secs) * SECOND >= now
    }
}

impl Front {
    fn new(b: NonceBudgets) -> Self {
        Front {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            live: Default::default(),
            budgets: [b.registered, b.contacts, b.unknown],
            per_key: b.per_key,
            next_full_sweep: AtomicI64::new(0),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .expect("nonce store poisoned")
    }

    /// Takes a stored entry as it is: a live nonce is never dropped, even
    /// when the budgets are smaller than they were.
    fn load(&self, row: &NonceRow) {
        let entry = Entry {
            key: row.key,
            until_secs: secs(row.until),
            class: KeyClass::from_u8(row.class) as u8,
        };
        let mut shard = self.shard(row.key);
        if shard.entries.insert(row.id, entry).is_none() {
            *shard.per_key.entry(row.key).or_default() += 1;
            self.live[entry.class as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn check_and_insert(&self, ids: Ids, class: KeyClass, until: Millis, now: Millis) -> Checked {
        let first = self.try_insert(ids, class, until, now);
        if !matches!(first, Checked::Full(_)) {
            return first;
        }
        // Expired entries elsewhere may still be counted: sweep them all,
        // at most once a second, and try again.
        let due = self.next_full_sweep.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_full_sweep
                .compare_exchange(
                    due,
                    now + FULL_SWEEP_EVERY,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            for shard in &self.shards {
                self.sweep(&mut shard.lock().expect("nonce store poisoned"), now);
            }
            return self.try_insert(ids, class, until, now);
        }
        first
    }

    fn try_insert(&self, ids: Ids, class: KeyClass, until: Millis, now: Millis) -> Checked {
        let mut shard = self.shard(ids.key);
        if let Some(old) = shard.entries.get(&ids.pair).copied() {
            if old.live(now) {
                return Checked::Replayed;
            }
            self.remove(&mut shard, ids.pair, old);
        }
        if now >= shard.next_sweep {
            self.sweep(&mut shard, now);
        }
        if shard.per_key.get(&ids.key).copied().unwrap_or(0) >= self.per_key {
            return Checked::KeyFull;
        }
        let counter = &self.live[class as usize];
        let budget = self.budgets[class as usize];
        if counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < budget).then_some(n + 1)
            })
            .is_err()
        {
            return Checked::Full(class);
        }
        shard.entries.insert(
            ids.pair,
            Entry {
                key: ids.key,
                until_secs: secs(until),
                class: class as u8,
            },
        );
        *shard.per_key.entry(ids.key).or_default() += 1;
        Checked::Fresh
    }

    fn sweep(&self, shard: &mut Shard, now: Millis) {
        let Shard {
            entries, per_key, ..
        } = shard;
        entries.retain(|_, entry| {
            if entry.live(now) {
                return true;
            }
            release(per_key, &self.live, entry);
            false
        });
        shard.next_sweep = now + SWEEP_EVERY;
    }

    fn remove(&self, shard: &mut Shard, id: u64, entry: Entry) {
        shard.entries.remove(&id);
        release(&mut shard.per_key, &self.live, &entry);
    }
}

/// Uncounts a removed entry.
fn release(per_key: &mut HashMap<u64, u32>, live: &[AtomicUsize; 3], entry: &Entry) {
    live[entry.class as usize].fetch_sub(1, Ordering::Relaxed);
    if let Some(n) = per_key.get_mut(&entry.key) {
        *n -= 1;
        if *n == 0 {
            per_key.remove(&entry.key);
        }
    }
}

/// Unix ms to whole seconds, rounded up (an entry is kept a little longer,
/// never shorter).
fn secs(ms: Millis) -> u32 {
    u32::try_from((ms.max(0) + SECOND - 1) / SECOND).unwrap_or(u32::MAX)
}

/// Registered and contact keys seen lately (unknown keys are not cached: a
/// flood of them must not push the others out, and one that signs up must
/// count as registered at once).
#[derive(Default)]
struct ClassCache(Mutex<HashMap<UserId, (KeyClass, Instant)>>);

impl ClassCache {
    fn get(&self, key: &UserId) -> Option<KeyClass> {
        let map = self.0.lock().expect("class cache poisoned");
        map.get(key)
            .filter(|(_, at)| at.elapsed() < CLASS_TTL)
            .map(|(class, _)| *class)
    }

    fn put(&self, key: &UserId, class: KeyClass) {
        let mut map = self.0.lock().expect("class cache poisoned");
        if map.len() >= CLASS_CACHE_MAX {
            map.retain(|_, (_, at)| at.elapsed() < CLASS_TTL);
            if map.len() >= CLASS_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(*key, (class, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(registered: usize, contacts: usize, unknown: usize, per_key: u32) -> Front {
        Front::new(NonceBudgets {
            registered,
            contacts,
            unknown,
            per_key,
        })
    }

    fn ids(key: u8, nonce: &str) -> Ids {
        Ids::of(&UserId::from_bytes([key; 32]), nonce)
    }

    fn fresh(c: Checked) -> bool {
        matches!(c, Checked::Fresh)
    }

    #[test]
    fn a_nonce_is_accepted_once_until_it_expires() {
        let f = front(1000, 1000, 1000, 100);
        let r = KeyClass::Registered;
        assert!(fresh(f.check_and_insert(ids(1, "n1"), r, 100_000, 0)));
        assert!(matches!(
            f.check_and_insert(ids(1, "n1"), r, 100_000, 50_000),
            Checked::Replayed
        ));
        assert!(fresh(f.check_and_insert(ids(2, "n1"), r, 100_000, 50_000)));
        // After its window the entry may go (the signature is stale by then).
        assert!(fresh(f.check_and_insert(ids(1, "n1"), r, 500_000, 101_000)));
        assert_eq!(f.live[0].load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_full_class_refuses_only_itself_then_recovers() {
        let f = front(10, 10, 10, 100);
        for i in 0..10 {
            assert!(fresh(f.check_and_insert(
                ids(i, "x"),
                KeyClass::Unknown,
                1000,
                0
            )));
        }
        assert!(matches!(
            f.check_and_insert(ids(99, "x"), KeyClass::Unknown, 1000, 0),
            Checked::Full(KeyClass::Unknown)
        ));
        assert!(fresh(f.check_and_insert(
            ids(100, "x"),
            KeyClass::Registered,
            1000,
            0
        )));
        assert!(fresh(f.check_and_insert(
            ids(101, "x"),
            KeyClass::Contact,
            1000,
            0
        )));
        // Once the live entries have aged out, new ones are accepted again.
        assert!(fresh(f.check_and_insert(
            ids(99, "x"),
            KeyClass::Unknown,
            9000,
            2000
        )));
        assert_eq!(f.live[2].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_key_has_a_cap_of_its_own() {
        let f = front(1000, 1000, 1000, 3);
        for n in ["a", "b", "c"] {
            assert!(fresh(f.check_and_insert(
                ids(1, n),
                KeyClass::Registered,
                1000,
                0
            )));
        }
        assert!(matches!(
            f.check_and_insert(ids(1, "d"), KeyClass::Registered, 1000, 0),
            Checked::KeyFull
        ));
        assert!(fresh(f.check_and_insert(
            ids(2, "d"),
            KeyClass::Registered,
            1000,
            0
        )));
        // Past the sweep interval and the entries' window, the key may sign again.
        assert!(fresh(f.check_and_insert(
            ids(1, "d"),
            KeyClass::Registered,
            30_000,
            SWEEP_EVERY + 1000
        )));
    }

    #[test]
    fn loaded_entries_count_and_are_refused() {
        let f = front(1, 1, 1, 1);
        let i = ids(7, "n");
        f.load(&NonceRow {
            id: i.pair,
            key: i.key,
            class: 0,
            until: 5000,
        });
        assert!(matches!(
            f.check_and_insert(i, KeyClass::Registered, 5000, 1000),
            Checked::Replayed
        ));
        assert!(matches!(
            f.check_and_insert(ids(7, "m"), KeyClass::Registered, 5000, 1000),
            Checked::KeyFull
        ));
    }
}
