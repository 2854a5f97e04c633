//! Replay protection: each `(keyid, nonce)` pair is accepted once while its
//! signature could still be valid.
//!
//! Memory is bounded: at most `max_entries` pairs are remembered. An entry is
//! forgotten once its signature's `created` has left the allowed window (after
//! that the signature is rejected as stale anyway). When the cache is full of
//! live entries, new signed requests are refused with UNAVAILABLE (fail closed,
//! never forget a live nonce early) until entries age out.

use std::{collections::HashMap, sync::Mutex};

use sha2::{Digest, Sha256};

use crate::clock::{Millis, SECOND};

const SHARDS: usize = 16;
/// Expired entries are swept at most this often per shard (or when it fills).
const SWEEP_EVERY: Millis = 10 * SECOND;

pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    max_per_shard: usize,
}

#[derive(Default)]
struct Shard {
    /// 64 bits of a digest of (key, nonce) -> when it may be forgotten. A
    /// collision (about 1 in 10^7 at two million entries) refuses one
    /// honest request as replayed; the client retries with a new nonce.
    seen: HashMap<u64, Millis>,
    next_sweep: Millis,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// First use: accepted and remembered.
    Fresh,
    /// Seen before within the window.
    Replayed,
    /// The cache is full of live entries; try again later.
    Full,
}

impl ReplayCache {
    pub fn new(max_entries: usize) -> Self {
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    /// Records `(key, nonce)` unless it was seen before; `forget_after` is when
    /// the signature stops being acceptable for other reasons.
    pub fn check_and_insert(
        &self,
        key: &[u8; 32],
        nonce: &str,
        forget_after: Millis,
        now: Millis,
    ) -> Replay {
        let mut hasher = Sha256::new();
        hasher.update(key);
        hasher.update(nonce.as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        let id = u64::from_le_bytes(digest[..8].try_into().expect("8 of 32 bytes"));
        let mut shard = self.shards[(id >> 60) as usize % SHARDS]
            .lock()
            .expect("replay cache poisoned");
        if let Some(&until) = shard.seen.get(&id)
            && until >= now
        {
            return Replay::Replayed;
        }
        if now >= shard.next_sweep || shard.seen.len() >= self.max_per_shard {
            shard.seen.retain(|_, until| *until >= now);
            shard.next_sweep = now + SWEEP_EVERY;
        }
        if shard.seen.len() >= self.max_per_shard {
            return Replay::Full;
        }
        shard.seen.insert(id, forget_after);
        Replay::Fresh
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("replay cache poisoned").seen.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_until_it_expires() {
        let cache = ReplayCache::new(1000);
        let key = [1; 32];
        assert_eq!(cache.check_and_insert(&key, "n1", 100, 0), Replay::Fresh);
        assert_eq!(
            cache.check_and_insert(&key, "n1", 100, 50),
            Replay::Replayed
        );
        assert_eq!(
            cache.check_and_insert(&[2; 32], "n1", 100, 50),
            Replay::Fresh
        );
        // After its window the entry may go (the signature is stale by then).
        assert_eq!(cache.check_and_insert(&key, "n1", 500, 101), Replay::Fresh);
    }

    #[test]
    fn full_cache_fails_closed_then_recovers() {
        let cache = ReplayCache::new(16); // one entry per shard
        let mut full = 0;
        for i in 0..200 {
            if cache.check_and_insert(&[0; 32], &format!("n{i}"), 1000, 0) == Replay::Full {
                full += 1;
            }
        }
        assert!(full > 0);
        assert!(cache.len() <= 16);
        // Once the live entries have aged out, new ones are accepted again.
        let fresh = (0..200)
            .filter(|i| {
                cache.check_and_insert(&[0; 32], &format!("m{i}"), 5000, 2000) == Replay::Fresh
            })
            .count();
        assert!(fresh > 0);
    }
}
