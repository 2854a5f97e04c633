//! The client that delivers push requests: hyper-util's pooled client over
//! rustls (ring, webpki roots; HTTP/1.1 or HTTP/2 by ALPN), with a connector
//! that only connects to addresses [`EndpointGuard`] vetted.
//!
//! The connector resolves the host itself through the guard and connects to
//! one of the returned addresses, so there is no gap between the check and
//! the connection for DNS rebinding to slip through. TLS is verified against
//! the URL's host name as usual. Plain `http` is only possible for origins
//! the operator allowed.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::guard::{EndpointGuard, GuardError};

/// Time allowed to resolve and connect (TCP only; TLS counts against the
/// request timeout). Push services answer from nearby CDNs in well under a
/// second; 3 s still allows for a lost SYN (resent after 1 s), and an
/// endpoint that does not accept connections holds a slot no longer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for a whole exchange, from connecting to the response body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of a response body is kept.
pub const MAX_RESPONSE_BODY: usize = 8 * 1024;
/// How much more is read and thrown away (so the connection can be reused)
/// before the connection is dropped instead.
const MAX_DISCARD: usize = 64 * 1024;
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What a push service answered.
#[derive(Debug, Clone)]
pub struct PushResponse {
    /// 201 on success; 404/410 gone; 429/5xx retry later.
    pub status: StatusCode,
    /// `Retry-After`, as a delay from now, at most [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
    /// The start of the response body (at most [`MAX_RESPONSE_BODY`] bytes),
    /// for diagnostics; push services explain refusals there.
    pub body: Bytes,
}

/// Why a push could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The guard refused the endpoint (scheme, host or every address it
    /// resolves to). Retrying will not help.
    #[error("push endpoint refused: {0}")]
    Refused(GuardError),
    /// Connecting or the whole exchange took too long.
    #[error("push request timed out")]
    Timeout,
    /// DNS, connection, TLS or HTTP failure.
    #[error("push request failed: {0}")]
    Network(String),
}

impl SendError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SendError::Refused(_))
    }
}

/// Sends push requests; cheap to clone, share one.
#[derive(Clone)]
pub struct PushClient {
    client: Client<HttpsConnector<GuardedConnector>, Full<Bytes>>,
    guard: Arc<EndpointGuard>,
    request_timeout: Duration,
}

impl std::fmt::Debug for PushClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushClient")
            .field("guard", &self.guard)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl PushClient {
    /// A client with the standard timeouts (3 s connect, 15 s per request).
    pub fn new(guard: Arc<EndpointGuard>) -> Self {
        Self::with_timeouts(guard, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
    }

    /// A client with other timeouts (tests).
    pub fn with_timeouts(
        guard: Arc<EndpointGuard>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = GuardedConnector {
            guard: guard.clone(),
            connect_timeout,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            .build(https);
        PushClient {
            client,
            guard,
            request_timeout,
        }
    }

    /// Sends one request (as built by `message::build_request`) and returns
    /// the status and `Retry-After`. Any status is a successful exchange.
    pub async fn send(&self, req: http::Request<Bytes>) -> Result<PushResponse, SendError> {
        // Fail fast, and without touching the pool, on what the syntactic
        // check refuses; the connector checks again (with DNS) on connect.
        self.guard
            .check_uri(req.uri())
            .map_err(SendError::Refused)?;
        let req = req.map(Full::new);
        let exchange = async {
            let response = self.client.request(req).await.map_err(classify)?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = read_capped(response.into_body(), MAX_RESPONSE_BODY, MAX_DISCARD).await;
            Ok(PushResponse {
                status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| SendError::Timeout)?
    }
}

/// Parses `Retry-After` (delta-seconds or an HTTP-date, relative to `now`),
/// capped at [`MAX_RETRY_AFTER`]. A date in the past gives zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is "very long".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let when = httpdate::parse_http_date(value).ok()?;
        when.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Reads at most `keep` bytes of `body`; reads and discards up to `discard`
/// more (keeping the connection reusable), then gives up on it. Errors end
/// the read: the status is what matters.
async fn read_capped<B>(mut body: B, keep: usize, discard: usize) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut kept = BytesMut::new();
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if kept.len() < keep {
            let take = (keep - kept.len()).min(data.len());
            kept.extend_from_slice(&data[..take]);
        }
        if seen > keep.saturating_add(discard) {
            break; // dropping the body closes the connection
        }
    }
    kept.freeze()
}

/// Maps a hyper-util error, finding the connector's own error in the chain.
fn classify(err: hyper_util::client::legacy::Error) -> SendError {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Guard(g) if g.is_policy() => SendError::Refused(g.clone()),
                ConnectError::Timeout => SendError::Timeout,
                other => SendError::Network(other.to_string()),
            };
        }
        source = e.source();
    }
    SendError::Network(error_chain(&err))
}

fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Guard(GuardError),
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(#[source] std::io::Error),
}

/// A `tower::Service<Uri>` that resolves through the guard and connects
/// only to a vetted address.
#[derive(Clone)]
struct GuardedConnector {
    guard: Arc<EndpointGuard>,
    connect_timeout: Duration,
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let guard = self.guard.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let addrs = tokio::time::timeout_at(deadline, guard.resolve_uri(&uri))
                .await
                .map_err(|_| ConnectError::Timeout)?
                .map_err(|e| {
                    tracing::debug!(host = uri.host().unwrap_or_default(), error = %e, "push endpoint refused");
                    ConnectError::Guard(e)
                })?;
            connect_any(&addrs, deadline).await.map(TokioIo::new)
        })
    }
}

/// Tries the addresses in order, each with a fair share of the time left.
async fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, ConnectError> {
    let mut last = ConnectError::Timeout;
    for (i, addr) in addrs.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            return Err(ConnectError::Timeout);
        }
        let share = (deadline - now) / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = ConnectError::Io(e),
            Err(_) => last = ConnectError::Timeout,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    type Handler = Arc<
        dyn Fn(
                http::Request<Incoming>,
            ) -> Pin<Box<dyn Future<Output = http::Response<TestBody>> + Send>>
            + Send
            + Sync,
    >;

    /// Either a fixed body or an endless one counting what it produced.
    enum TestBody {
        Full(Full<Bytes>),
        Endless(Arc<AtomicUsize>),
    }

    impl http_body::Body for TestBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.get_mut() {
                TestBody::Full(b) => Pin::new(b).poll_frame(cx),
                TestBody::Endless(count) => {
                    count.fetch_add(16 * 1024, Ordering::Relaxed);
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))))
                }
            }
        }
    }

    fn reply(status: u16, headers: &[(&str, &str)]) -> http::Response<TestBody> {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(TestBody::Full(Full::new(Bytes::from_static(b"{}"))))
            .unwrap()
    }

    /// A loopback HTTP/1.1 server; returns its address.
    async fn serve(handler: Handler) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn allowing(addr: SocketAddr) -> Arc<EndpointGuard> {
        Arc::new(EndpointGuard::new(&format!("http://{addr}")).unwrap())
    }

    fn post(url: &str) -> http::Request<Bytes> {
        http::Request::post(url)
            .header("ttl", "60")
            .body(Bytes::from_static(b"ciphertext"))
            .unwrap()
    }

    #[tokio::test]
    async fn status_and_retry_after_come_back() {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let addr = serve(Arc::new(move |req: http::Request<Incoming>| {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                assert_eq!(req.method(), http::Method::POST);
                assert_eq!(req.headers()["ttl"], "60");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"ciphertext");
                reply(429, &[("retry-after", "120")])
            })
        }))
        .await;
        let client = PushClient::new(allowing(addr));
        let r = client
            .send(post(&format!("http://{addr}/push/a")))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.retry_after, Some(Duration::from_secs(120)));
        assert_eq!(&r.body[..], b"{}");
        // The pooled connection is reused for the next one.
        let r = client
            .send(post(&format!("http://{addr}/push/b")))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn allowed_localhost_falls_back_over_its_addresses() {
        // The server listens on 127.0.0.1 only; "localhost" may resolve to
        // ::1 first.
        let addr = serve(Arc::new(|_req| Box::pin(async { reply(201, &[]) }))).await;
        let origin = format!("http://localhost:{}", addr.port());
        let client = PushClient::new(Arc::new(EndpointGuard::new(&origin).unwrap()));
        let r = client
            .send(post(&format!("{origin}/push/a")))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.retry_after, None);
    }

    #[tokio::test]
    async fn a_hanging_server_is_cut_off() {
        let addr = serve(Arc::new(|_req| {
            Box::pin(async {
                std::future::pending::<()>().await;
                unreachable!()
            })
        }))
        .await;
        let client = PushClient::with_timeouts(
            allowing(addr),
            Duration::from_millis(500),
            Duration::from_millis(300),
        );
        let started = std::time::Instant::now();
        let err = client
            .send(post(&format!("http://{addr}/push/a")))
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::Timeout), "{err:?}");
        assert!(err.is_retryable());
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_huge_body_is_not_read_beyond_the_cap() {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let addr = serve(Arc::new(move |_req| {
            let counter = counter.clone();
            Box::pin(async move {
                http::Response::builder()
                    .status(500)
                    .header("retry-after", "5")
                    .body(TestBody::Endless(counter))
                    .unwrap()
            })
        }))
        .await;
        let client = PushClient::with_timeouts(
            allowing(addr),
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        let started = std::time::Instant::now();
        let r = client
            .send(post(&format!("http://{addr}/push/a")))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.retry_after, Some(Duration::from_secs(5)));
        assert_eq!(r.body.len(), MAX_RESPONSE_BODY);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The server stops producing once the client hung up: what it wrote
        // is bounded by socket buffers, not by the (endless) body.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = produced.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(produced.load(Ordering::Relaxed), before, "still streaming");
        assert!(before < 64 * 1024 * 1024, "{before}");
    }

    #[tokio::test]
    async fn internal_endpoints_are_refused_unless_allowed() {
        let addr = serve(Arc::new(|_req| Box::pin(async { reply(201, &[]) }))).await;
        let port = addr.port();
        let client = PushClient::new(Arc::new(EndpointGuard::strict()));
        for url in [
            format!("http://127.0.0.1:{port}/push/a"),
            format!("https://127.0.0.1:{port}/push/a"),
            format!("https://localhost:{port}/push/a"),
            format!("http://localhost:{port}/push/a"),
            format!("https://[::ffff:127.0.0.1]:{port}/push/a"),
            format!("https://127.1:{port}/push/a"),
        ] {
            let err = client.send(post(&url)).await.unwrap_err();
            assert!(matches!(err, SendError::Refused(_)), "{url}: {err:?}");
            assert!(!err.is_retryable());
        }
        // Allowing one origin does not open another on the same host.
        let client = PushClient::new(Arc::new(
            EndpointGuard::new(&format!("http://127.0.0.1:{}", port.wrapping_add(1))).unwrap(),
        ));
        let err = client
            .send(post(&format!("http://127.0.0.1:{port}/push/a")))
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::Refused(_)), "{err:?}");
    }

    #[tokio::test]
    async fn the_connector_refuses_what_resolves_internally() {
        // A name that passes the syntactic check but resolves to internal
        // addresses only: this machine's own host name usually does
        // (/etc/hosts). Skipped where it does not resolve that way.
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = name.trim().to_ascii_lowercase();
        let uri: Uri = match format!("https://{name}/").parse() {
            Ok(uri) if !name.is_empty() && EndpointGuard::strict().check_uri(&uri).is_ok() => uri,
            _ => return eprintln!("skipped: host name {name:?} is not a plain dns name"),
        };
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((name.as_str(), 443)).await {
            Ok(addrs) => addrs.collect(),
            Err(_) => Vec::new(),
        };
        if resolved.is_empty()
            || resolved
                .iter()
                .any(|a| super::super::guard::is_global(a.ip()))
        {
            return eprintln!("skipped: {name} resolves to {resolved:?}");
        }
        let mut connector = GuardedConnector {
            guard: Arc::new(EndpointGuard::strict()),
            connect_timeout: Duration::from_secs(2),
        };
        let err = tower::Service::call(&mut connector, uri).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::Guard(GuardError::NotPublic)),
            "{err:?}"
        );
        let client = PushClient::new(Arc::new(EndpointGuard::strict()));
        let err = client
            .send(post(&format!("https://{name}/push/a")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SendError::Refused(GuardError::NotPublic)),
            "{err:?}"
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("86401", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&in_90s, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(10 * 86400));
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
