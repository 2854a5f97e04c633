//! HTTP rules every request meets before anything else reads it, and the
//! care an early answer needs on HTTP/1.1.
//!
//! - An HTTP/1.1 request needs exactly one `Host` header (RFC 9112 §3.2):
//!   400 otherwise.
//! - The request head may be at most [`MAX_HEADER_BYTES`] on every request
//!   of a connection, not only the first: 431 otherwise.
//! - An answer given before the request body was read (a bad signature, a
//!   message over a limit) is useless if the client cannot read it: over
//!   HTTP/1.1 the unread rest of the body is drained, up to a bound, before
//!   the answer goes out, so the client reads it and keeps its connection;
//!   past the bound the answer says `Connection: close`, and the connection
//!   closes lingering (`serve::ConnIo`).
//! - `HEAD` is answered like `GET` without the body (RFC 9110 §9.3.2).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tonic::Status;
use tower::{Layer, Service, ServiceExt as _, util::BoxCloneSyncService};

use super::Protocol;
use crate::{app::HttpService, config::Connections, serve::MAX_HEADER_BYTES};

/// How much of an unread body is drained after an early answer.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    pub bytes: u64,
    pub time: Duration,
}

impl Drain {
    pub fn new(c: &Connections) -> Self {
        Drain {
            bytes: c.drain_bytes,
            time: Duration::from_secs(c.drain_secs.into()),
        }
    }
}

#[derive(Clone)]
pub struct EdgeLayer {
    drain: Drain,
}

impl EdgeLayer {
    pub fn new(drain: Drain) -> Self {
        EdgeLayer { drain }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            drain: self.drain,
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    drain: Drain,
}

impl<S> Service<Request<Body>> for Edge<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let drain = self.drain;
        let http1 = req.version() <= Version::HTTP_11;
        let expects_continue = req.headers().contains_key(header::EXPECT);
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let refusal = check(&req);
        let slot = Arc::new(Slot::default());
        let req = req.map(|body| {
            Body::new(Tracked {
                body: Some(body),
                slot: slot.clone(),
            })
        });
        let call = match refusal {
            Some(res) => {
                // Dropped unread, the body waits in its slot for the drain.
                drop(req);
                Either::Left(std::future::ready(Ok(res)))
            }
            None => Either::Right(inner.call(req)),
        };
        Box::pin(async move {
            let mut res = call.await?;
            if http1 && let Some(body) = slot.unread() {
                // Waiting for the body of a client that asked first
                // (`Expect: 100-continue`) would only make it send it.
                let keep = !expects_continue
                    && announced.is_none_or(|n| n <= drain.bytes)
                    && drained(body, drain).await;
                if !keep {
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
            Ok(res)
        })
    }
}

/// The answer to a request that breaks the rules above, if it does.
fn check<B>(req: &Request<B>) -> Option<Response<Body>> {
    let protocol = Protocol::of(req);
    if req.version() == Version::HTTP_11 && req.headers().get_all(header::HOST).iter().count() != 1
    {
        let status = Status::invalid_argument("an HTTP/1.1 request needs exactly one Host header");
        return Some(protocol.error_response(status, StatusCode::BAD_REQUEST));
    }
    let head = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > MAX_HEADER_BYTES {
        let status = Status::invalid_argument(format!(
            "the request headers are larger than the limit of {MAX_HEADER_BYTES} bytes"
        ));
        let mut res = protocol.error_response(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    None
}

/// Reads and discards `body` within `drain`; whether it ended.
async fn drained(mut body: Body, drain: Drain) -> bool {
    let read = async {
        let mut left = drain.bytes;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                let Some(rest) = left.checked_sub(data.len() as u64) else {
                    return false;
                };
                left = rest;
            }
        }
        true
    };
    tokio::time::timeout(drain.time, read)
        .await
        .unwrap_or(false)
}

/// Where a request body goes back to when the service drops it unread.
#[derive(Default)]
struct Slot {
    body: Mutex<Option<Body>>,
    ended: AtomicBool,
}

impl Slot {
    /// The rest of the body, if the service dropped it before its end.
    fn unread(&self) -> Option<Body> {
        if self.ended.load(Ordering::Acquire) {
            return None;
        }
        let body = self.body.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        (!body.is_end_stream()).then_some(body)
    }
}

/// A request body that notes when it has been read to the end and, dropped
/// before that, leaves itself in its [`Slot`].
struct Tracked {
    body: Option<Body>,
    slot: Arc<Slot>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            self.slot.ended.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(body) = self.body.take()
            && !self.slot.ended.load(Ordering::Acquire)
        {
            *self.slot.body.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
        }
    }
}

/// `HEAD` on the plain HTTP routes: served as `GET`, answered without the
/// body but with its length. Sits behind authentication, so a signed `HEAD`
/// is verified as sent.
pub fn answer_head(inner: HttpService) -> HttpService {
    BoxCloneSyncService::new(tower::service_fn(move |mut req: Request<Body>| {
        let head = req.method() == Method::HEAD && Protocol::of(&req) == Protocol::Http;
        if head {
            *req.method_mut() = Method::GET;
        }
        let call = inner.clone().oneshot(req);
        async move {
            let res = call.await?;
            if !head {
                return Ok(res);
            }
            let (mut parts, body) = res.into_parts();
            if let Some(len) = body.size_hint().exact()
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
            {
                parts.headers.insert(header::CONTENT_LENGTH, len.into());
            }
            Ok(Response::from_parts(parts, Body::empty()))
        }
    }))
}
