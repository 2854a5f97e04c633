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

/// A finished attempt: the push, what became of it, and the `now` it was
/// started at.
type Done = (DuePush, Outcome, Millis);

/// Which slots a push may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    First,
    Retry,
}

impl Lane {
    fn of(push: &DuePush) -> Self {
        if push.attempts == 0 {
            Lane::First
        } else {
            Lane::Retry
        }
    }
}

/// The lowercase `host:port` of an endpoint, the unit of the per-host share.
fn endpoint_host(endpoint: &str) -> String {
    endpoint
        .parse::<::http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().to_ascii_lowercase()))
        .unwrap_or_default()
}

/// The pushes in flight and the slots they hold.
struct Flights {
    tasks: tokio::task::JoinSet<Done>,
    /// Per task: its push's row id, lane and host, to release its slots
    /// however it ends.
    held: std::collections::HashMap<tokio::task::Id, (i64, Lane, String)>,
    ids: std::collections::HashSet<i64>,
    per_host: std::collections::HashMap<String, usize>,
    first: usize,
    retry: usize,
    first_slots: usize,
    retry_slots: usize,
    host_slots: usize,
}

impl Flights {
    fn new(concurrency: usize) -> Self {
        let half = (concurrency / 2).max(1);
        Flights {
            tasks: tokio::task::JoinSet::new(),
            held: Default::default(),
            ids: Default::default(),
            per_host: Default::default(),
            first: 0,
            retry: 0,
            first_slots: concurrency,
            retry_slots: half,
            host_slots: half,
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn full(&self) -> bool {
        self.first >= self.first_slots && self.retry >= self.retry_slots
    }

    fn has_room(&self, lane: Lane, host: &str) -> bool {
        let lane_room = match lane {
            Lane::First => self.first < self.first_slots,
            Lane::Retry => self.retry < self.retry_slots,
        };
        lane_room && self.per_host.get(host).copied().unwrap_or(0) < self.host_slots
    }

    fn lane_count(&mut self, lane: Lane) -> &mut usize {
        match lane {
            Lane::First => &mut self.first,
            Lane::Retry => &mut self.retry,
        }
    }

    fn start(
        &mut self,
        lane: Lane,
        host: String,
        id: i64,
        attempt: impl Future<Output = Done> + Send + 'static,
    ) {
        self.ids.insert(id);
        *self.per_host.entry(host.clone()).or_default() += 1;
        *self.lane_count(lane) += 1;
        let task = self.tasks.spawn(attempt);
        self.held.insert(task.id(), (id, lane, host));
    }

    /// The next finished attempt, its slots released; `None` when none is in
    /// flight.
    async fn next(&mut self) -> Option<Result<Done, tokio::task::JoinError>> {
        let joined = self.tasks.join_next_with_id().await?;
        let task = match &joined {
            Ok((task, _)) => *task,
            Err(e) => e.id(),
        };
        if let Some((id, lane, host)) = self.held.remove(&task) {
            self.ids.remove(&id);
            *self.lane_count(lane) -= 1;
            if let Some(n) = self.per_host.get_mut(&host) {
                *n -= 1;
                if *n == 0 {
                    self.per_host.remove(&host);
                }
            }
        }
        Some(joined.map(|(_, done)| done))
    }
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
    ///
    /// Pushes are not sent in rounds that wait for their slowest member: each
    /// is settled when it ends and its slot refilled at once. Of the slots,
    /// first attempts have `concurrency`, and no endpoint host more than
    /// half of them; retries (the endpoint failed or timed out before) have
    /// a lane of their own with half as many. So push services that never
    /// answer hold at most their share of slots for one request timeout, and
    /// other users' pushes go out meanwhile.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut flights = Flights::new(self.concurrency);
        let mut last_depth = u64::MAX;
        let mut depth_checked = tokio::time::Instant::now() - IDLE_POLL;
        loop {
            if let Err(e) = self.dispatch(&mut flights).await {
                tracing::error!(error = %e, "fetching due pushes failed");
            }
            if depth_checked.elapsed() >= IDLE_POLL || flights.is_empty() {
                depth_checked = tokio::time::Instant::now();
                self.record_depth(&mut last_depth).await;
            }
            tokio::select! {
                Some(done) = flights.next(), if !flights.is_empty() => self.finish(done).await,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                while let Some(done) = flights.next().await {
                    self.finish(done).await;
                }
                return;
            }
        }
    }

    async fn record_depth(&self, last_depth: &mut u64) {
        if let Ok(depth) = self.store.outbox_depth().await {
            self.metrics.push_outbox_depth.set(depth as i64);
            if depth != *last_depth && (depth > 0 || *last_depth != u64::MAX) {
                tracing::info!(depth, "push outbox");
            }
            *last_depth = depth;
        }
    }

    /// Starts the due pushes that have a free slot in their lane.
    async fn dispatch(&self, flights: &mut Flights) -> crate::error::Result<()> {
        if flights.full() {
            return Ok(());
        }
        let now = self.clock.now();
        let limit = BATCH + flights.ids.len() as i64;
        // Claimed for this worker (on a shared database); what gets no slot
        // now is released for the next round or another worker.
        let mut unstarted = Vec::new();
        for push in self.store.due_pushes(now, limit).await? {
            let host = endpoint_host(&push.subscription.endpoint);
            let lane = Lane::of(&push);
            if flights.ids.contains(&push.id) {
                continue;
            }
            if flights.full() || !flights.has_room(lane, &host) {
                unstarted.push(push.id);
                continue;
            }
            let pusher = self.clone();
            let id = push.id;
            flights.start(lane, host, id, async move {
                let outcome = pusher.attempt(&push, now).await;
                (push, outcome, now)
            });
        }
        self.store.release_pushes(&unstarted).await
    }

    async fn finish(&self, done: Result<Done, tokio::task::JoinError>) {
        match done {
            Ok((push, outcome, now)) => {
                if let Err(e) = self.settle(&push, outcome, now).await {
                    tracing::error!(error = %e, "recording a push outcome failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "a push task failed"),
        }
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
