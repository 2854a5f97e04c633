//! Prometheus metrics, rendered as text at `/metrics` on the admin address.
//! Labels never carry ids, tokens or content: only RPC names, codes and
//! small fixed sets of reasons.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub protocol: &'static str,
    pub rpc: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub protocol: &'static str,
    pub rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

/// Every metric the server exports; cheap to clone: one reference count,
/// because layers clone it for every request.
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

pub struct MetricSet {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RpcLabels, Histogram>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub parcels_stored: Family<KindLabels, Counter>,
    pub attachment_bytes_stored: Counter,
    pub parcels_deleted: Family<ReasonLabels, Counter>,
    pub pushes: Family<ReasonLabels, Counter>,
    pub push_outbox_depth: Gauge,
    pub retention_runs: Counter,
    pub retention_deleted: Family<KindLabels, Counter>,
    pub database_commits: Counter,
    pub connections_open: Gauge,
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Rate limits (`api::limits`), by limit name.
    pub rate_limited: Family<LimitLabels, Counter>,
    pub rate_limit_keys: Family<LimitLabels, Gauge>,
    pub rate_limit_untracked: Family<LimitLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_database_commits(Counter::default())
    }

    /// With the store's own commit counter (`Store::commit_counter`).
    pub fn with_database_commits(database_commits: Counter) -> Self {
        let mut registry = Registry::with_prefix("piqchat");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by protocol, RPC and gRPC status code",
            requests.clone(),
        );
        // 0.25 ms .. ~8 s
        let request_duration = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00025, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response body",
            request_duration.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused by signature verification, by reason",
            auth_failures.clone(),
        );
        let parcels_stored = Family::<KindLabels, Counter>::default();
        registry.register(
            "parcels_stored",
            "Parcels stored (one per recipient), MEDIA or other",
            parcels_stored.clone(),
        );
        let attachment_bytes_stored = Counter::default();
        registry.register(
            "attachment_bytes_stored",
            "Attachment bytes written to disk",
            attachment_bytes_stored.clone(),
        );
        let parcels_deleted = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "parcels_deleted",
            "Parcels deleted, by cause (recipient, account, retention)",
            parcels_deleted.clone(),
        );
        let pushes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "pushes",
            "Web Push attempts by result (sent, retried, gone, dropped, expired)",
            pushes.clone(),
        );
        let push_outbox_depth = Gauge::default();
        registry.register(
            "push_outbox_depth",
            "Pushes waiting in the outbox",
            push_outbox_depth.clone(),
        );
        let retention_runs = Counter::default();
        registry.register(
            "retention_runs",
            "Completed retention runs",
            retention_runs.clone(),
        );
        registry.register(
            "database_commits",
            "Database transactions committed; writes that arrive together share one",
            database_commits.clone(),
        );
        let retention_deleted = Family::<KindLabels, Counter>::default();
        registry.register(
            "retention_deleted",
            "Rows and files deleted by retention, by kind",
            retention_deleted.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open on the API port",
            connections_open.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the server refused or closed, by reason (per_ip_limit, total_limit, idle)",
            connections_closed.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            rate_limited.clone(),
        );
        let rate_limit_keys = Family::<LimitLabels, Gauge>::default();
        registry.register(
            "rate_limit_keys",
            "Keys (addresses, signing keys, pairs) a rate limit tracks, by limit",
            rate_limit_keys.clone(),
        );
        let rate_limit_untracked = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limit_untracked",
            "Requests let through untracked because their limit held RATE_LIMIT_MAX_KEYS keys",
            rate_limit_untracked.clone(),
        );
        Metrics(Arc::new(MetricSet {
            registry,
            requests,
            request_duration,
            auth_failures,
            parcels_stored,
            attachment_bytes_stored,
            parcels_deleted,
            pushes,
            push_outbox_depth,
            retention_runs,
            retention_deleted,
            database_commits,
            connections_open,
            connections_closed,
            rate_limited,
            rate_limit_keys,
            rate_limit_untracked,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn parcel_deleted(&self, reason: &'static str, n: u64) {
        self.parcels_deleted
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn push(&self, reason: &'static str) {
        self.pushes.get_or_create(&ReasonLabels { reason }).inc();
    }
}
