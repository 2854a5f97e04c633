//! All wiring: opens the store, loads the server identity, builds the router
//! and binds the listener. `App::run` serves until the shutdown future fires.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::body::Body;
use tokio::{net::TcpListener, sync::Notify};
use tower::util::BoxCloneSyncService;

use crate::{
    api,
    blobs::Blobs,
    clock::Clock,
    config::Config,
    domain::{exchanges, info::StatsCache},
    identity::ServerIdentity,
    jobs,
    metrics::Metrics,
    push::{self, Pusher, guard::EndpointGuard, http::PushClient, message::VapidSigner},
    serve,
    store::Store,
    tls::{self, CertResolver},
};

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub identity: Arc<ServerIdentity>,
    pub clock: Clock,
    pub stats: Arc<StatsCache>,
    pub blobs: Blobs,
    pub metrics: Metrics,
    /// Checks push endpoints (subscription time and send time).
    pub push_guard: Arc<EndpointGuard>,
    /// Wakes the push worker after pushes were queued.
    pub push_wake: Arc<Notify>,
    /// The rate limiters (`api::limits`).
    pub limits: Arc<api::limits::Limiters>,
    /// Replay protection: the nonces of accepted signatures.
    pub nonces: Arc<api::replay::NonceStore>,
}

impl AppState {
    /// How long pushes live, when push is configured.
    pub fn push_ttl(&self) -> Option<crate::clock::Millis> {
        self.config
            .push_vapid_contact
            .as_ref()
            .map(|_| i64::from(self.config.push_ttl_days) * crate::clock::DAY)
    }
}

impl AppState {
    /// Opens the database (creating and migrating it) and loads or creates
    /// the server's keys. Used by `serve` and by operator commands alike.
    pub async fn open(config: Config, clock: Clock) -> anyhow::Result<Self> {
        let target = config.database_target();
        let store = Store::connect(&target, config.database_max_connections)
            .await
            .with_context(|| format!("opening database {target:?}"))?;
        let identity = ServerIdentity::load_or_create(&store)
            .await
            .context("loading the server keys")?;
        let push_guard = Arc::new(
            EndpointGuard::new(&config.push_allowed_insecure_origins)
                .map_err(|e| anyhow::anyhow!("PUSH_ALLOWED_INSECURE_ORIGINS: {e}"))?,
        );
        let blobs = Blobs::from_config(&config)?;
        let metrics = Metrics::with_database_commits(store.commit_counter());
        let limits = api::limits::Limiters::start(&config.rate_limits, &metrics);
        let nonces =
            api::replay::NonceStore::open(store.clone(), config.nonce_budgets, clock.now())
                .await
                .context("loading the nonces of recent signatures")?;
        Ok(AppState {
            config: Arc::new(config),
            store,
            identity: Arc::new(identity),
            clock,
            stats: Arc::default(),
            blobs,
            metrics,
            push_guard,
            push_wake: Arc::default(),
            limits,
            nonces: Arc::new(nonces),
        })
    }
}

pub type HttpService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// The push worker, when push is configured (`PUSH_VAPID_CONTACT`).
fn pusher(state: &AppState) -> anyhow::Result<Option<Pusher>> {
    let Some(subject) = state.config.push_vapid_contact.clone() else {
        return Ok(None);
    };
    if state.push_guard.allows_any() {
        tracing::warn!(
            origins = %state.config.push_allowed_insecure_origins,
            "PUSH_ALLOWED_INSECURE_ORIGINS is set: pushes may go to these plain-HTTP origins; never use this in production"
        );
    }
    let vapid = VapidSigner::new(state.identity.vapid_secret(), subject)
        .map_err(|e| anyhow::anyhow!("loading the VAPID key: {e}"))?;
    let client = PushClient::with_timeouts(
        state.push_guard.clone(),
        push::http::CONNECT_TIMEOUT,
        Duration::from_secs(state.config.push_request_timeout_secs.into()),
    );
    Ok(Some(Pusher::new(
        state.store.clone(),
        state.clock.clone(),
        vapid,
        client,
        state.config.push_ttl_days * 24 * 3600,
        state.config.push_concurrency as usize,
        state.push_wake.clone(),
        state.metrics.clone(),
    )))
}

/// The admin router: Prometheus text at `/metrics`, and `/healthz` in plain
/// HTTP for health checks even when the API port speaks TLS.
fn metrics_router(metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics.render();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
}

/// A bound, ready-to-run server.
pub struct App {
    listener: TcpListener,
    tls: Option<(Arc<CertResolver>, Arc<rustls::ServerConfig>)>,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    service: HttpService,
    sign_up_invite: Option<String>,
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

impl App {
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(config.bind_address, config.port);
        let state = AppState::open(config, clock).await?;
        // A wrong bucket, endpoint or key stops the start, not the first send.
        state.blobs.ping().await.with_context(|| {
            format!("reaching the attachment store, {}", state.blobs.describe())
        })?;
        tracing::info!(store = %state.blobs.describe(), "attachments");
        state
            .blobs
            .remove_leftover_temp_files()
            .context("cleaning the attachments' temp folder")?;
        // Files of rows deleted just before a crash.
        crate::jobs::remove_deleted_files_once(&state.store, &state.blobs)
            .await
            .context("removing the files of deleted attachments")?;
        let service = api::service(&state).context("building the API")?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let metrics_listener = match state.config.metrics_address {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("binding the metrics address {addr} (METRICS_ADDRESS)")
            })?),
            None => None,
        };
        let tls = match (&state.config.tls_cert_path, &state.config.tls_key_path) {
            (Some(cert), Some(key)) => {
                let resolver = CertResolver::open(cert, key)?;
                let config = tls::server_config(resolver.clone())?;
                Some((resolver, config))
            }
            _ => None,
        };
        let sign_up_invite = exchanges::ensure_sign_up_invite(
            &state.store,
            &state.config,
            state.config.create_sign_up_invite,
            state.clock.now(),
        )
        .await
        .context("creating the sign-up invite")?;
        Ok(App {
            listener,
            tls,
            metrics_listener,
            state,
            service,
            sign_up_invite,
        })
    }

    /// The link of the sign-up invite created at start, if one was: when
    /// nobody is registered yet, or when `CREATE_SIGN_UP_INVITE` is set.
    pub fn sign_up_invite(&self) -> Option<&str> {
        self.sign_up_invite.as_deref()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on the one
    /// port until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let App {
            listener,
            tls,
            metrics_listener,
            state,
            service,
            ..
        } = self;
        let nofile = serve::raise_nofile_limit();
        let connections = &state.config.connections;
        let tracker = serve::ConnTracker::new(
            serve::max_connections(connections, nofile),
            connections.max_per_ip,
            state.metrics.clone(),
        );
        tracing::info!(
            max_connections = tracker.max_total(),
            open_file_limit = nofile,
            "accepting connections"
        );
        let builder = serve::builder(connections);
        let conn_config = serve::ConnConfig::new(connections);
        let (stop_conns, conns_stopped) = tokio::sync::watch::channel(false);
        let (stop_jobs, jobs_stopped) = tokio::sync::watch::channel(false);
        let tls = tls.map(|(resolver, config)| {
            let poll = Duration::from_secs(state.config.tls_reload_interval_secs.into());
            tokio::spawn(resolver.watch(poll, jobs_stopped.clone()));
            tokio_rustls::TlsAcceptor::from(config)
        });
        let jobs = tokio::spawn(jobs::scheduler(state.clone(), jobs_stopped.clone()));
        let pusher = pusher(&state)?.map(|p| tokio::spawn(p.run(jobs_stopped.clone())));
        let metrics = metrics_listener.map(|listener| {
            let mut stopped = jobs_stopped;
            let router = metrics_router(state.metrics.clone());
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.changed().await;
                    })
                    .await
            })
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Out of file descriptors and the like: back off
                            // rather than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let slot = match tracker.open(peer.ip()) {
                        Ok(slot) => slot,
                        Err(refusal) => {
                            serve::refuse(stream, refusal, tls.is_none(), &conn_config, &state.metrics);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let io = serve::ConnIo::new(stream, slot, conn_config.linger);
                    let conn = serve::Connection {
                        builder: builder.clone(),
                        service: service.clone(),
                        peer,
                        config: conn_config.clone(),
                        metrics: state.metrics.clone(),
                        stop: conns_stopped.clone(),
                    };
                    match tls.clone() {
                        None => {
                            tokio::spawn(conn.serve(io, false));
                        }
                        Some(acceptor) => {
                            tokio::spawn(async move {
                                match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(io)).await {
                                    Ok(Ok(stream)) => conn.serve(stream, true).await,
                                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::debug!("TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: waiting for in-flight requests");
        let grace = Duration::from_secs(state.config.shutdown_grace_secs.into());
        let _ = stop_conns.send(true);
        if tokio::time::timeout(grace, tracker.all_closed())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
        let _ = stop_jobs.send(true);
        if let Some(pusher) = pusher
            && let Err(e) = pusher.await
        {
            tracing::error!(error = %e, "the push worker failed");
        }
        if let Err(e) = jobs.await {
            tracing::error!(error = %e, "the retention scheduler failed");
        }
        if let Some(metrics) = metrics
            && let Ok(Err(e)) = metrics.await
        {
            tracing::error!(error = %e, "the metrics listener failed");
        }
        state.store.close().await;
        Ok(())
    }
}
