//! Ceilings measured in the same run as the scenarios, so a result can be
//! read as a fraction of what this machine allows that day: a minimal hyper
//! server (`hello`) and the rate of Ed25519 verification (`verify`). The
//! disk's ceiling is the fsync probe in [`crate::probes`].

use std::{collections::BTreeMap, convert::Infallible, time::Instant};

use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};

use crate::scenarios::RunResult;
use crate::{HelloArgs, Protocol, Scenario, VerifyArgs, runtime, write_json};

/// Serves every request with the smallest answer of its protocol: an empty
/// message for gRPC and gRPC-web (an empty `GetInfoResponse` decodes), `{}`
/// for JSON. The same scenarios then run against it unchanged.
pub(crate) fn hello(args: HelloArgs) -> anyhow::Result<()> {
    if !args.bind.ip().is_loopback() {
        anyhow::bail!("--bind must be a loopback address");
    }
    // One worker per core by default, as the server's runtime has.
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    runtime(threads)?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.bind).await?;
        // The same line the server prints, so scripts find the port alike.
        println!("listening addr={}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let kind = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // Read the request to its end, as a real handler would.
    let _ = req.into_body().collect().await;
    // An empty message: flag 0, length 0.
    let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let response = if kind.starts_with("application/grpc-web") {
        let trailer = b"grpc-status:0\r\n";
        let mut body = vec![0x80, 0, 0, 0, trailer.len() as u8];
        body.extend_from_slice(trailer);
        let mut all = empty.to_vec();
        all.extend_from_slice(&body);
        Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc-web+proto")
            .body(Full::new(Bytes::from(all)).boxed())
    } else if kind.starts_with("application/grpc") {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = futures_util::stream::iter([
            Ok::<_, Infallible>(Frame::data(empty)),
            Ok(Frame::trailers(trailers)),
        ]);
        Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(StreamBody::new(frames).boxed())
    } else {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{}")).boxed())
    };
    Ok(response.expect("a response from constant parts"))
}

#[derive(Serialize, Deserialize)]
pub(crate) struct VerifyResult {
    pub(crate) kind: String,
    /// Verifications per second on one core.
    pub(crate) per_core_s: f64,
    pub(crate) cores: usize,
    /// `cores × per_core_s`: the rate no signed call can beat.
    pub(crate) ceiling_s: f64,
}

/// Times Ed25519 verification of a signature base the size of a typical
/// request's, on one thread.
pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let base = vec![b'a'; 400];
    let signature = key.sign(&base);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < args.duration {
        for _ in 0..100 {
            public.verify(std::hint::black_box(&base), &signature)?;
        }
        n += 100;
    }
    let per_core_s = n as f64 / start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let result = VerifyResult {
        kind: "verify".into(),
        per_core_s,
        cores,
        ceiling_s: per_core_s * cores as f64,
    };
    println!(
        "Ed25519 verify: {:.0}/s on one core ({:.1} µs each); {} cores: {:.0}/s",
        per_core_s,
        1e6 / per_core_s,
        cores,
        result.ceiling_s
    );
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

/// The ceilings of one run, read from the result files beside it.
#[derive(Default)]
pub(crate) struct Ceilings {
    /// Operations per second of `hello` per protocol (runs labelled
    /// [`HELLO_LABEL`]).
    pub(crate) hello: BTreeMap<Protocol, f64>,
    /// Signature verifications per second on every core.
    pub(crate) verify: Option<f64>,
    /// 100 KiB files stored durably per second with 8 writers.
    pub(crate) files: Option<f64>,
}

/// The label that marks a run against `hello`.
pub(crate) const HELLO_LABEL: &str = "hello-world";

impl Ceilings {
    /// The rate this machine allows for `run`'s operations, and what limits
    /// it: a call costs at least a bare HTTP exchange, a signed call at
    /// least a verification, a send at least one durable file.
    pub(crate) fn of(&self, run: &RunResult) -> Option<(&'static str, f64)> {
        let hello = self.hello.get(&run.protocol).copied();
        let per_op = |rate: f64| rate / f64::from(run.calls_per_op.max(1));
        match run.scenario {
            Scenario::Info | Scenario::InfoBig | Scenario::Download1m => {
                hello.map(|h| ("hello", h))
            }
            Scenario::List | Scenario::ListBig | Scenario::Exchange | Scenario::Accept => {
                match (hello, self.verify) {
                    (Some(h), Some(v)) if v < h => Some(("verify", per_op(v))),
                    (Some(h), _) => Some(("hello", per_op(h))),
                    (None, Some(v)) => Some(("verify", per_op(v))),
                    (None, None) => None,
                }
            }
            Scenario::Send100k | Scenario::SendGroup | Scenario::SendOne | Scenario::Backlog => {
                self.files.map(|f| ("fsync ×8", f))
            }
            Scenario::UnderAttack => None,
        }
    }
}
