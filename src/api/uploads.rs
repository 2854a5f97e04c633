//! Bounds memory for large requests: parcel sends (up to the attachment limit
//! each, buffered whole because browsers cannot stream over gRPC-web) and
//! requests whose body is read to check a `Content-Digest` draw every body
//! byte they receive from one budget (`MAX_CONCURRENT_UPLOADS` times the
//! largest message) and hold it until the response is ready. A body whose
//! next bytes find the budget spent waits for it.
//!
//! The budget is counted in bytes received, not in uploads, so slow or
//! stalled uploads hold only what they sent: however many there are, they
//! cannot keep a fast upload from its turn. The gate sits behind signature
//! verification (an unsigned upload is refused here), one client address
//! has only a few uploads at once (more wait for their own turn), and an
//! upload slower than the minimum rate is cut.

use std::{
    collections::HashMap,
    future::Future as _,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::Status;
use tower::{Layer, Service};

use super::{ClientIp, IpKey, Protocol, auth::CoveredDigests};
use crate::domain::Caller;

/// The gRPC path of the one RPC that takes large messages.
pub const SEND_PARCEL_PATH: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";
/// Its JSON gateway route (checked against the route table by a test).
pub const SEND_PARCEL_ROUTE: (Method, &str) = (Method::POST, "/v1/parcels");

fn is_send<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    path == SEND_PARCEL_PATH || (req.method() == SEND_PARCEL_ROUTE.0 && path == SEND_PARCEL_ROUTE.1)
}

/// How long an upload may wait for a permit, how long it may then take, and
/// how slow it may be.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    pub queue: Duration,
    pub complete: Duration,
    /// Uploads of one client address at once (IPv6 by /64).
    pub per_client: usize,
    /// Least average rate in bytes per second, checked after `grace`; 0: none.
    pub min_rate: u64,
    pub grace: Duration,
}

#[derive(Clone)]
pub struct UploadGateLayer {
    /// Body bytes that uploads in progress may hold, one permit a byte.
    budget: Arc<Semaphore>,
    clients: Arc<Clients>,
    limits: UploadLimits,
}

impl UploadGateLayer {
    /// `budget_bytes`: what bodies being received may hold in total.
    pub fn new(budget_bytes: usize, limits: UploadLimits) -> Self {
        UploadGateLayer {
            budget: Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS))),
            clients: Arc::default(),
            limits,
        }
    }
}

impl<S> Layer<S> for UploadGateLayer {
    type Service = UploadGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UploadGate {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct UploadGate<S> {
    inner: S,
    layer: UploadGateLayer,
}

impl<S> Service<Request<Body>> for UploadGate<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Parcel sends, and requests whose body the digest check reads whole.
        let send = is_send(&req);
        if !send && req.extensions().get::<CoveredDigests>().is_none() {
            return Box::pin(inner.call(req));
        }
        let protocol = Protocol::of(&req);
        if send && req.extensions().get::<Caller>().is_none() {
            // Refused before its body is read: it would be refused after.
            let status = Status::unauthenticated(
                "sending a parcel needs a signed request (see docs/AUTH.md)",
            );
            return Box::pin(async move {
                Ok(protocol.error_response(status, StatusCode::UNAUTHORIZED))
            });
        }
        let layer = self.layer.clone();
        // Turns per address are for sends, the uploads that can be large; a
        // small call that covers its digest (a web client may cover every
        // body) only draws its bytes from the budget, so people behind one
        // address never queue their small calls behind each other's sends.
        let client = send
            .then(|| req.extensions().get::<ClientIp>().map(|ip| ip.key()))
            .flatten();
        Box::pin(async move {
            let limits = layer.limits;
            let busy = || {
                let status = Status::unavailable("too many uploads in progress; retry shortly");
                protocol.error_response(status, StatusCode::SERVICE_UNAVAILABLE)
            };
            let deadline = Instant::now() + limits.queue;
            // A turn among this client's uploads; then every byte received
            // draws from the budget.
            let _turn = match client {
                Some(key) => match layer.clients.turn(key, limits.per_client, deadline).await {
                    Some(turn) => Some(turn),
                    None => return Ok(busy()),
                },
                None => None,
            };
            let cut = Arc::new(AtomicBool::new(false));
            let held = Arc::new(Mutex::new(None));
            let req = req.map(|body| {
                Body::new(Metered {
                    inner: body,
                    received: 0,
                    started: Instant::now(),
                    limits,
                    timer: None,
                    cut: cut.clone(),
                    budget: layer.budget.clone(),
                    held: held.clone(),
                    waiting: None,
                })
            });
            // A slow upload must not hold its permit (and memory) for ever.
            let result = tokio::time::timeout(limits.complete, inner.call(req)).await;
            // The body's bytes go back to the budget with the answer.
            drop(held.lock().expect("upload budget poisoned").take());
            if cut.load(Ordering::Relaxed) {
                let status = Status::deadline_exceeded(format!(
                    "the upload was slower than {} KiB/s; send it over a faster connection or smaller",
                    limits.min_rate / 1024
                ));
                return Ok(protocol.error_response(status, StatusCode::REQUEST_TIMEOUT));
            }
            match result {
                Ok(result) => result,
                Err(_) => {
                    let status = Status::deadline_exceeded(
                        "the upload took too long; send it faster or smaller",
                    );
                    Ok(protocol.error_response(status, StatusCode::REQUEST_TIMEOUT))
                }
            }
        })
    }
}

/// Uploads in progress per client address. An entry lives while an upload
/// of that client holds or waits for a turn, so the map is bounded by the
/// uploads in flight.
#[derive(Default)]
struct Clients(Mutex<HashMap<IpKey, Arc<Semaphore>>>);

/// One upload's turn among its client's uploads.
struct Turn {
    clients: Arc<Clients>,
    key: IpKey,
    permit: Option<OwnedSemaphorePermit>,
}

impl Clients {
    async fn turn(
        self: &Arc<Self>,
        key: IpKey,
        per_client: usize,
        deadline: Instant,
    ) -> Option<Turn> {
        let semaphore = self
            .0
            .lock()
            .expect("upload clients poisoned")
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(per_client)))
            .clone();
        // The turn is built first so that a timed-out wait also tidies up.
        let mut turn = Turn {
            clients: self.clone(),
            key,
            permit: None,
        };
        let acquired = tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await;
        turn.permit = Some(acquired.ok()?.ok()?);
        Some(turn)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut map = self.clients.0.lock().expect("upload clients poisoned");
        // Only the map holds it: nobody of this client uploads or waits.
        if map
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// A request body that draws each byte it yields from the budget (waiting
/// when it is spent) and fails once its average rate since the start falls
/// below the minimum, after the grace period.
struct Metered {
    inner: Body,
    received: u64,
    started: Instant,
    limits: UploadLimits,
    timer: Option<Pin<Box<Sleep>>>,
    cut: Arc<AtomicBool>,
    budget: Arc<Semaphore>,
    /// What the body holds of the budget; the gate releases it with the
    /// answer, since the bytes stay in memory until then.
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// A frame that waits for its bytes of the budget.
    waiting: Option<(Frame<Bytes>, BudgetWait)>,
}

type BudgetWait =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

impl Metered {
    fn hold(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.held.lock().expect("upload budget poisoned");
        match held.as_mut() {
            Some(all) => all.merge(permit),
            None => *held = Some(permit),
        }
    }
}

impl Metered {
    /// When the average falls below the minimum if nothing more arrives.
    fn deadline(&self) -> Instant {
        let needed = Duration::from_secs_f64(self.received as f64 / self.limits.min_rate as f64);
        self.started + needed.max(self.limits.grace)
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some((_, wait)) = &mut this.waiting {
            // Waiting for the budget is the server's doing, not a slow client.
            let permit = ready!(wait.as_mut().poll(cx))
                .map_err(|_| axum::Error::new("the upload gate is closed"))?;
            this.hold(permit);
            let (frame, _) = this.waiting.take().expect("a waiting frame");
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(Ok(frame)) = frame {
                let Some(len) = frame.data_ref().map(|d| d.len()) else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                this.received += len as u64;
                // A trickle is cut as well as a stall.
                if this.limits.min_rate > 0 && Instant::now() > this.deadline() {
                    this.cut.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new("the upload is too slow"))));
                }
                let bytes = u32::try_from(len).unwrap_or(u32::MAX);
                match this.budget.clone().try_acquire_many_owned(bytes) {
                    Ok(permit) => {
                        this.hold(permit);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Err(_) => {
                        let wait = Box::pin(this.budget.clone().acquire_many_owned(bytes));
                        this.waiting = Some((frame, wait));
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
            return Poll::Ready(frame);
        }
        if this.limits.min_rate == 0 {
            return Poll::Pending;
        }
        let deadline = this.deadline();
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        this.cut.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(axum::Error::new("the upload is too slow"))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
