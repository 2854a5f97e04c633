//! Web Push delivery (SPEC §6): message encryption and VAPID ([`message`]),
//! the endpoint guard against server-side request forgery ([`guard`]), the
//! rustls HTTP client that only connects to vetted addresses ([`http`]), and
//! the outbox worker below.
//!
//! A push is a row in `push_outbox`, written in the same transaction as its
//! parcel, so a restart loses none. One worker sends what is due, a bounded
//! number at a time: 2xx is done; 404/410 means the subscription is gone
//! (forgotten with its pending pushes); 429, 5xx and network errors are
//! retried with exponential back-off that honours `Retry-After`, until the
//! push's TTL has passed; any other answer drops the push with a warning.

pub mod guard;
pub mod http;
pub mod message;

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt as _, stream};
use tokio::sync::{Notify, watch};

use crate::{
    clock::{Clock, HOUR, Millis, SECOND},
    metrics::Metrics,
    store::{DuePush, Store},
};

/// Pushes fetched per round.
const BATCH: i64 = 64;
/// The first retry waits this long; each further one twice as long.
const FIRST_RETRY: Millis = 5 * SECOND;
const MAX_RETRY: Millis = HOUR;
/// Even with nothing due the worker looks again this often (cheap), so a
/// moved clock or a missed wake-up delays a push by at most this much.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Everything the worker needs; cheap to clone.
#[derive(Clone)]
pub struct Pusher {
    store: Store,
    clock: Clock,
    vapid: Arc<message::VapidSigner>,
    client: http::PushClient,
    ttl_secs: u32,
    concurrency: usize,
    wake: Arc<Notify>,
    metrics: Metrics,
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    Gone,
    Retry(Millis),
    Dropped,
}

impl Pusher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        clock: Clock,
        vapid: message::VapidSigner,
        client: http::PushClient,
        ttl_secs: u32,
        concurrency: usize,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> Self {
        Pusher {
            store,
            clock,
            vapid: Arc::new(vapid),
            client,
            ttl_secs,
            concurrency: concurrency.max(1),
            wake,
            metrics,
        }
    }

    /// Sends due pushes until `shutdown` turns true; pushes in flight then
    /// finish (bounded by the client's request timeout).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_depth = u64::MAX;
        loop {
            let sent = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "push round failed");
                    0
                }
            };
            if let Ok(depth) = self.store.outbox_depth().await {
                self.metrics.push_outbox_depth.set(depth as i64);
                if depth != last_depth && (depth > 0 || last_depth != u64::MAX) {
                    tracing::info!(depth, "push outbox");
                }
                last_depth = depth;
            }
            if sent > 0 {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Sends the pushes due now; returns how many were attempted.
    pub async fn round(&self) -> crate::error::Result<usize> {
        let now = self.clock.now();
        let due = self.store.due_pushes(now, BATCH).await?;
        let n = due.len();
        let results: Vec<_> = stream::iter(due)
            .map(|push| async move {
                let outcome = self.attempt(&push, now).await;
                (push, outcome)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (push, outcome) in results {
            self.settle(&push, outcome, now).await?;
        }
        Ok(n)
    }

    async fn attempt(&self, push: &DuePush, now: Millis) -> Outcome {
        let user = push.user_id;
        let sub = &push.subscription;
        let Some(encoding) = message::Encoding::parse(&sub.content_encoding) else {
            tracing::warn!(
                user,
                "push subscription has an unknown encoding; dropping the push"
            );
            return Outcome::Dropped;
        };
        let subscription = message::Subscription {
            endpoint: sub.endpoint.clone(),
            p256dh: sub.p256dh.clone(),
            auth: sub.auth.clone(),
            encoding,
        };
        let request = match message::build_request(
            &subscription,
            push.payload.as_bytes(),
            self.ttl_secs,
            &self.vapid,
            now,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(user, error = %e, "could not build a push; dropping it");
                return Outcome::Dropped;
            }
        };
        let backoff = (FIRST_RETRY << push.attempts.clamp(0, 20)).min(MAX_RETRY);
        match self.client.send(request).await {
            Ok(res) if res.status.is_success() => Outcome::Sent,
            Ok(res) if matches!(res.status.as_u16(), 404 | 410) => Outcome::Gone,
            Ok(res) if res.status.as_u16() == 429 || res.status.is_server_error() => {
                let asked = res.retry_after.map_or(0, |d| d.as_millis() as Millis);
                tracing::info!(
                    user,
                    status = res.status.as_u16(),
                    "push service asked to retry"
                );
                Outcome::Retry(backoff.max(asked))
            }
            Ok(res) => {
                tracing::warn!(
                    user,
                    status = res.status.as_u16(),
                    "push service refused the push; dropping it"
                );
                Outcome::Dropped
            }
            Err(e) if e.is_retryable() => {
                tracing::info!(user, error = %e, "push failed; will retry");
                Outcome::Retry(backoff)
            }
            Err(e) => {
                tracing::warn!(user, error = %e, "push endpoint refused; dropping the push");
                Outcome::Dropped
            }
        }
    }

    async fn settle(
        &self,
        push: &DuePush,
        outcome: Outcome,
        now: Millis,
    ) -> crate::error::Result<()> {
        match outcome {
            Outcome::Sent => {
                self.metrics.push("sent");
                self.store.delete_push(push.id).await
            }
            Outcome::Gone => {
                self.metrics.push("gone");
                tracing::info!(
                    user = push.user_id,
                    "push subscription is gone; forgetting it"
                );
                self.store.delete_push_subscription(push.user_id).await
            }
            Outcome::Retry(delay) if now + delay < push.expires_at => {
                self.metrics.push("retried");
                self.store
                    .reschedule_push(push.id, push.attempts + 1, now + delay)
                    .await
            }
            Outcome::Retry(_) => {
                self.metrics.push("expired");
                tracing::info!(
                    user = push.user_id,
                    "push TTL passed before delivery; dropping it"
                );
                self.store.delete_push(push.id).await
            }
            Outcome::Dropped => {
                self.metrics.push("dropped");
                self.store.delete_push(push.id).await
            }
        }
    }
}
