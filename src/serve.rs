//! Connections: how many may be open, for how long, and how they close.
//!
//! Every accepted connection takes a [`Slot`] from the [`ConnTracker`]
//! (bounded in total and per client address) or is refused with a short
//! HTTP 503. A watchdog closes a connection that has had no request in
//! progress for the idle timeout (the header timeout before its first
//! request), for HTTP/1.1 and HTTP/2 alike; request bodies that stop arriving
//! are cut by [`TimeoutBody`]. A connection the server closes while the peer
//! may still be sending closes lingering ([`ConnIo`]), so that the answer it
//! already wrote is not destroyed by a TCP reset.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    sync::{Notify, Semaphore, watch},
    time::{Instant, Sleep},
};

use crate::{
    api::{self, IpKey},
    app::HttpService,
    config::Connections,
    metrics::Metrics,
};

/// The largest request head (request line and headers) accepted, on every
/// request of a connection: hyper's read buffer for HTTP/1.1, the header
/// list for HTTP/2, and the edge layer's check of each request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// File descriptors kept back from connections: the database, attachment
/// files being written and read, push connections, logs.
const RESERVED_FDS: u64 = 256;
/// The most connections sized from the descriptor limit alone: far more than
/// a server for a community needs, and a bound on memory (tens of KiB each).
const AUTO_MAX_CONNECTIONS: u64 = 16_384;
/// Refusals being written at once; beyond that, refused connections are
/// closed without a word.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refusal may take to write and close.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// After the server asked an idle connection to close, how long it may take
/// before it is dropped (when still no request is in progress).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Raises the soft limit on open files to the hard limit (as Go's runtime
/// does at start) and returns the soft limit in effect.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one for open files on
    // Linux (the kernel caps it at fs.nr_open); 2^20 is the usual cap.
    let target = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|current| current < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The total connection cap when `MAX_CONNECTIONS` is unset: what the
/// descriptor limit leaves after the server's own files, at most
/// [`AUTO_MAX_CONNECTIONS`].
pub fn max_connections(config: &Connections, nofile: Option<u64>) -> usize {
    if let Some(max) = config.max_total {
        return max as usize;
    }
    let fds = nofile.unwrap_or(AUTO_MAX_CONNECTIONS + RESERVED_FDS);
    fds.saturating_sub(RESERVED_FDS)
        .clamp(16, AUTO_MAX_CONNECTIONS) as usize
}

/// Open connections, in total and per client address.
pub struct ConnTracker {
    max_total: usize,
    max_per_ip: u32,
    counts: Mutex<Counts>,
    all_closed: Notify,
    metrics: Metrics,
}

#[derive(Default)]
struct Counts {
    total: usize,
    // An entry lives only while its address has a connection open, so the
    // map never holds more than `max_total` entries.
    per_ip: HashMap<IpKey, u32>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    PerIp,
    Total,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::PerIp => {
                "too many connections from your address; close some or reuse one, then retry"
            }
            Refusal::Total => "the server has too many connections open; retry shortly",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip_limit",
            Refusal::Total => "total_limit",
        }
    }
}

impl ConnTracker {
    pub fn new(max_total: usize, max_per_ip: u32, metrics: Metrics) -> Arc<Self> {
        Arc::new(ConnTracker {
            max_total,
            max_per_ip,
            counts: Mutex::default(),
            all_closed: Notify::new(),
            metrics,
        })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// A slot for one connection from `ip`, held until it closes.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = IpKey::of(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let n = counts.per_ip.entry(key).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        counts.total += 1;
        self.metrics.connections_open.inc();
        Ok(Slot {
            tracker: self.clone(),
            key,
        })
    }

    pub fn open_count(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Completes when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open_count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection's place in the count.
pub struct Slot {
    tracker: Arc<ConnTracker>,
    key: IpKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .tracker
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.key);
            }
        }
        counts.total -= 1;
        self.tracker.metrics.connections_open.dec();
        if counts.total == 0 {
            self.tracker.all_closed.notify_waiters();
        }
    }
}

/// The timeouts and limits every connection is served with.
#[derive(Clone)]
pub struct ConnConfig {
    pub idle: Duration,
    pub first_request: Duration,
    pub body: Duration,
    pub linger: Duration,
    pub refusals: Arc<Semaphore>,
}

impl ConnConfig {
    pub fn new(c: &Connections) -> Self {
        ConnConfig {
            idle: Duration::from_secs(c.idle_timeout_secs.into()),
            first_request: Duration::from_secs(c.header_timeout_secs.into()),
            body: Duration::from_secs(c.body_timeout_secs.into()),
            linger: Duration::from_secs(c.drain_secs.into()),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
        }
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder with the configured limits.
pub fn builder(c: &Connections) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_HEADER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(c.header_timeout_secs.into()));
    builder
        .http2()
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(c.http2_max_streams)
        // Streams a client opens and resets before they are accepted: h2's
        // default, stated so it is visibly bounded.
        .max_pending_accept_reset_streams(20)
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(60));
    builder
}

/// Answers a refused connection with a plain HTTP/1.1 503 and closes it, in
/// a task of its own; at most [`MAX_REFUSALS_IN_FLIGHT`] at once. On a TLS
/// port (`plain` false) it is closed without an answer: a handshake per
/// refusal would hand the CPU to whoever opens the most connections.
pub fn refuse(
    mut stream: TcpStream,
    refusal: Refusal,
    plain: bool,
    config: &ConnConfig,
    metrics: &Metrics,
) {
    metrics.connection_closed(refusal.reason());
    if !plain {
        return;
    }
    let Ok(permit) = config.refusals.clone().try_acquire_owned() else {
        return;
    };
    let message = refusal.message();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nretry-after: 10\r\nconnection: close\r\n\r\n{message}\n",
        message.len() + 1
    );
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            if stream.write_all(response.as_bytes()).await.is_ok() {
                discard_until_eof(&mut stream).await;
            }
        })
        .await;
    });
}

/// Shuts the write side, then reads and discards until the peer closes.
async fn discard_until_eof(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// The TCP stream of a connection, holding its [`Slot`]. Dropped before the
/// peer has closed its side, it closes lingering: shut the write side, read
/// and discard for up to `linger`, then close. Closing with unread input
/// would send a reset, which can destroy an answer the peer has not yet
/// read.
pub struct ConnIo {
    stream: Option<TcpStream>,
    slot: Option<Slot>,
    peer_closed: bool,
    linger: Duration,
}

impl ConnIo {
    pub fn new(stream: TcpStream, slot: Slot, linger: Duration) -> Self {
        ConnIo {
            stream: Some(stream),
            slot: Some(slot),
            peer_closed: false,
            linger,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        let (Some(mut stream), slot) = (self.stream.take(), self.slot.take()) else {
            return;
        };
        if self.peer_closed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let linger = self.linger;
        runtime.spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(linger, discard_until_eof(&mut stream)).await;
        });
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        match &result {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.peer_closed = true;
            }
            Poll::Ready(Err(_)) => self.peer_closed = true,
            _ => {}
        }
        result
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Requests in progress on one connection, and since when it has had none.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the last request ended.
    idle_since: AtomicU64,
    any_request: AtomicBool,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            any_request: AtomicBool::new(false),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.any_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// When the connection counts as idle for too long, if it has no
    /// request in progress.
    fn idle_deadline(&self, config: &ConnConfig) -> Option<Instant> {
        if self.busy() {
            return None;
        }
        let since = self.started + Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(if self.any_request.load(Ordering::Relaxed) {
            since + config.idle
        } else {
            since + config.first_request
        })
    }
}

/// A request in progress: from its head to the end of its response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.started.elapsed().as_millis() as u64;
        a.idle_since.store(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One accepted connection, ready to be served.
pub struct Connection {
    pub builder: auto::Builder<TokioExecutor>,
    pub service: HttpService,
    pub peer: SocketAddr,
    pub config: ConnConfig,
    pub metrics: Metrics,
    /// Turns true when the server stops.
    pub stop: watch::Receiver<bool>,
}

impl Connection {
    /// Serves `io` until the connection ends, the server stops, or it has
    /// been idle for too long.
    pub async fn serve<I>(self, io: I, https: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            builder,
            service,
            peer,
            config,
            metrics,
            mut stop,
        } = self;
        let activity = Activity::new();
        let svc = {
            let activity = activity.clone();
            let body_timeout = config.body;
            TowerToHyperService::new(tower::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let in_flight = activity.begin();
                    let mut req = req.map(|b| Body::new(TimeoutBody::new(b, body_timeout)));
                    req.extensions_mut().insert(api::PeerAddr(peer));
                    // Until a trusted proxy says otherwise, the client is the peer.
                    req.extensions_mut().insert(api::ClientIp(peer.ip()));
                    if https {
                        req.extensions_mut().insert(api::Https);
                    }
                    let call = tower::ServiceExt::oneshot(service.clone(), req);
                    async move {
                        let res = call.await?;
                        // The request stays in progress until its response body
                        // has been sent (or dropped).
                        Ok::<_, std::convert::Infallible>(res.map(|body| {
                            Body::new(WithGuard {
                                body,
                                _guard: in_flight,
                            })
                        }))
                    }
                },
            ))
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        tokio::pin!(conn);
        let mut closing = false;
        let result = loop {
            let wake = match activity.idle_deadline(&config) {
                Some(deadline) if !closing => deadline,
                _ if closing => Instant::now() + CLOSE_GRACE,
                // Busy: look again after a full idle period at the earliest.
                _ => Instant::now() + config.idle,
            };
            tokio::select! {
                result = conn.as_mut() => break result,
                changed = stop.changed(), if !closing => {
                    if changed.is_err() || *stop.borrow() {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if closing {
                        if !activity.busy() {
                            // A connection that never sent a complete request
                            // ignores a graceful close; nothing is lost here.
                            break Ok(());
                        }
                    } else if activity.idle_deadline(&config).is_some_and(|d| d <= Instant::now()) {
                        metrics.connection_closed("idle");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// A response body that keeps its request counted as in progress.
struct WithGuard {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for WithGuard {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails with `DEADLINE_EXCEEDED` when nothing arrives
/// for `timeout` while it is being read. The clock runs only while someone
/// waits for the body, so time the server itself spends elsewhere (waiting
/// for an upload turn, say) is not held against the client.
pub struct TimeoutBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<B> TimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        TimeoutBody {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }
}

impl<B> http_body::Body for TimeoutBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = Instant::now() + this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !this.armed {
            sleep.as_mut().reset(deadline);
            this.armed = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(
                format!(
                    "the request body stopped arriving: nothing for {} s; send it without pausing",
                    this.timeout.as_secs()
                ),
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
