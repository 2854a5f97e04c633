//! Checks the gRPC framing of request bodies before tonic reads them, so that
//! a broken frame is the caller's error with a message that says what is
//! wrong, and a message over the limit names the configured limit.
//!
//! tonic answers both with `INTERNAL` ("Unexpected EOF decoding stream.") or
//! `OUT_OF_RANGE` with its internal byte count. The check wraps the body:
//! tonic keeps a `Status` that a request body yields as its error, so the
//! call is answered with ours. gRPC-web arrives here already turned into
//! gRPC by `GrpcWebLayer`; its own decoding errors are mapped the same way.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::body::Body;
use bytes::{Buf as _, Bytes};
use http::Request;
use http_body::{Body as HttpBody, Frame};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// The gRPC message prefix: a flag byte and a 4-byte big-endian length.
const HEADER: usize = 5;

/// Per service (`package.Service`): the largest message, and the sentence
/// that tells a caller what that limit is in configured terms.
#[derive(Clone, Debug)]
pub struct FrameLimits {
    services: Arc<HashMap<&'static str, (usize, String)>>,
    default: usize,
}

impl FrameLimits {
    pub fn new(services: HashMap<&'static str, (usize, String)>, default: usize) -> Self {
        FrameLimits {
            services: Arc::new(services),
            default,
        }
    }

    fn of(&self, path: &str) -> (usize, Option<String>) {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        match self.services.get(service) {
            Some((max, text)) => (*max, Some(text.clone())),
            None => (self.default, None),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FramingLayer(FrameLimits);

impl FramingLayer {
    pub fn new(limits: FrameLimits) -> Self {
        FramingLayer(limits)
    }
}

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Framing {
            inner,
            limits: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Framing<S> {
    inner: S,
    limits: FrameLimits,
}

impl<S> Service<Request<Body>> for Framing<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (max, limit_text) = self.limits.of(req.uri().path());
        let compressed_ok = req.headers().contains_key("grpc-encoding");
        let req = req.map(|inner| {
            Body::new(CheckedBody {
                inner,
                pending: Vec::new(),
                remaining: None,
                max,
                limit_text,
                compressed_ok,
                messages: 0,
                failed: false,
            })
        });
        self.inner.call(req)
    }
}

struct CheckedBody {
    inner: Body,
    /// Bytes of a message prefix not yet complete.
    pending: Vec<u8>,
    /// Body bytes of the current message still to come; `None` between
    /// messages.
    remaining: Option<(usize, usize)>,
    max: usize,
    limit_text: Option<String>,
    compressed_ok: bool,
    messages: usize,
    failed: bool,
}

impl CheckedBody {
    /// Follows the framing through `data`; the first mistake found.
    fn check(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if let Some((len, left)) = self.remaining {
                let take = left.min(data.len());
                data = &data[take..];
                self.remaining = (left > take).then_some((len, left - take));
                continue;
            }
            let need = HEADER - self.pending.len();
            let take = need.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < HEADER {
                break;
            }
            let mut header = self.pending.as_slice();
            let flag = header.get_u8();
            let len = header.get_u32() as usize;
            self.pending.clear();
            match flag {
                0 => {}
                1 if self.compressed_ok => {}
                1 => {
                    return Err(Status::invalid_argument(
                        "a message is marked compressed, but the request has no grpc-encoding header",
                    ));
                }
                f => {
                    return Err(Status::invalid_argument(format!(
                        "broken gRPC framing: a message starts with flag byte {f}; only 0 (uncompressed) and 1 (compressed) are valid"
                    )));
                }
            }
            if len > self.max {
                return Err(Status::resource_exhausted(match &self.limit_text {
                    Some(text) => format!("the message is {len} bytes, larger than {text}"),
                    None => format!(
                        "the message is {len} bytes; this service accepts at most {} bytes",
                        self.max
                    ),
                }));
            }
            self.messages += 1;
            self.remaining = (len > 0).then_some((len, len));
        }
        Ok(())
    }

    /// At the end of the body: a message cut short is an error.
    fn check_end(&self) -> Result<(), Status> {
        if let Some((len, left)) = self.remaining {
            return Err(Status::invalid_argument(format!(
                "the request ends inside a message: its prefix announced {len} bytes, {} arrived",
                len - left
            )));
        }
        if !self.pending.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the request ends inside a gRPC message prefix ({} of its {HEADER} bytes)",
                self.pending.len()
            )));
        }
        // Every RPC of the API takes one request message (streams of them
        // are only reflection's).
        if self.messages == 0 && self.limit_text.is_some() {
            return Err(Status::invalid_argument(
                "the request has no message; send one gRPC-framed request message",
            ));
        }
        Ok(())
    }
}

/// A body error from the layers below (tonic-web's decoding of gRPC-web)
/// is about the bytes the caller sent; anything else (the connection) is
/// passed on as it is.
fn caller_error(e: axum::Error) -> axum::Error {
    let inner = e.into_inner();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*inner);
    while let Some(err) = source {
        if let Some(status) = err.downcast_ref::<Status>() {
            if matches!(status.code(), Code::Internal | Code::DataLoss) {
                return axum::Error::new(Status::invalid_argument(format!(
                    "the request body is malformed: {}",
                    status.message()
                )));
            }
            break;
        }
        source = err.source();
    }
    axum::Error::new(inner)
}

impl HttpBody for CheckedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let checked = match &polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => self.check(data),
                None => Ok(()),
            },
            Some(Err(_)) => Ok(()),
            None => self.check_end(),
        };
        if let Err(status) = checked {
            self.failed = true;
            return Poll::Ready(Some(Err(axum::Error::new(status))));
        }
        Poll::Ready(polled.map(|r| r.map_err(caller_error)))
    }

    fn is_end_stream(&self) -> bool {
        // The end must be polled, so that a message cut short is noticed.
        false
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
