//! `piqchat-load`: a load generator for a running piqchat inbox server, and
//! the small helpers a benchmark run needs (seeding a large database,
//! measuring cold start and the disk's fsync rate, merging results).
//!
//! Requests are signed with the project's own client (`RequestSigner`);
//! signatures for the timed phase are made before it starts, so that the
//! generator's signing does not compete with the server for CPU during the
//! measurement. Every signature has its own nonce and is used once.
//!
//! Only loopback servers are accepted as targets.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::{Buf, BufMut, Bytes};
use clap::{Args, Parser, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderValue, Method, Uri, header};
use piqchat_inbox::{
    client::{self, HttpClient, HttpReply, RequestSigner, SignedChannel, UserKey, grpc_frame},
    clock::{Clock, HOUR},
    config::Config,
    domain::{ExchangeToken, UserId, exchanges},
    pb,
    store::{NewParcel, NewParcels, Store},
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
};

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Load generator for a running piqchat inbox server (loopback only).
///
/// Without a subcommand it runs one scenario against --url over one protocol
/// with a fixed number of connections (each with one request in flight),
/// first a warm-up, then the timed phase, and prints throughput, latency
/// percentiles, errors by status and (with --server-pid) the server's peak
/// RSS and CPU time. Setup (users, sign-up, contacts, parcels) goes through
/// the server's public API; sign-up needs an invite: give --invite with a
/// fresh link (`piqchat-inbox invite` prints one), or --database with the
/// server's database file, from which invites are created directly.
///
/// Scenarios: info (public GetInfo), list (a recipient with 20 waiting
/// parcels lists them), send-100k (100 KiB attachment to one accepting
/// recipient), send-group (one 100 KiB attachment to 10 recipients),
/// exchange (create an invite), accept (create + accept pairs; one operation
/// is both calls), download-1m (a 1 MiB attachment), list-big and info-big
/// (list / info against a database seeded with `piqchat-load seed`),
/// under-attack (legitimate users' lists and sends measured while an
/// attacker floods the server, phase by phase; see the under-attack options).
///
/// Example:
///   piqchat-load --url http://127.0.0.1:8080 --database data/inbox.sqlite \
///     --scenario list --protocol grpc --concurrency 64 --duration 10s \
///     --warmup 2s --server-pid $PID --json list-grpc.json
#[derive(Parser)]
#[command(version, verbatim_doc_comment, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario (the default; the same options as without a subcommand).
    Run(Box<RunArgs>),
    /// Fill a database with parcels of other users, through the project's
    /// Store, in large transactions. Stop the server first (or seed before
    /// its first start).
    Seed(SeedArgs),
    /// Time one retention run over a database (e.g. one made by `seed`): every
    /// parcel in it is treated as expired, as 91 days later. Stop the server
    /// first.
    Retention(RetentionArgs),
    /// Measure cold start: spawn the server, poll GetInfo until it answers,
    /// stop it; repeat and report the median. Also reports idle RSS.
    Coldstart(ColdstartArgs),
    /// Measure the disk's synchronous write rate: 4 KiB write + fdatasync.
    Fsync(FsyncArgs),
    /// Merge result JSON files (from runs, coldstart, fsync) into one JSON
    /// document and a markdown table.
    Report(ReportArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Server base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Which workload to run.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Protocol of the timed requests (setup always uses gRPC).
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// Connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the timed phase, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the timed phase, not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// A sign-up invite link (or accept URL) for the setup's first user.
    #[arg(long)]
    invite: Option<String>,
    /// The server's database: sign-up invites are created in it directly
    /// (SQLite WAL allows this beside the running server).
    #[arg(long)]
    database: Option<PathBuf>,
    /// PID of the server, to sample its RSS and CPU time during the run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Signatures to prepare before the timed phase, over all connections;
    /// default: a per-scenario rate estimate times (warm-up + duration). If a
    /// connection runs out it signs inline and the result says so.
    #[arg(long)]
    presign: Option<usize>,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Free-form label stored in the result (e.g. the git commit).
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    attack: AttackArgs,
}

#[derive(Args)]
struct RetentionArgs {
    /// The database file.
    #[arg(long)]
    database: PathBuf,
    /// The attachments folder of that database (default: a temp folder).
    #[arg(long)]
    attachments: Option<PathBuf>,
}

#[derive(Args)]
struct SeedArgs {
    /// The database file (created if missing).
    #[arg(long)]
    database: PathBuf,
    /// Parcels to insert.
    #[arg(long, default_value_t = 1_000_000)]
    parcels: u64,
    /// Recipients they are spread over (default: one per 100 parcels).
    #[arg(long)]
    users: Option<u64>,
    /// Parcels per transaction.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Write a JSON summary to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ColdstartArgs {
    /// The server binary.
    #[arg(long, default_value = "target/release/piqchat-inbox")]
    server_bin: PathBuf,
    /// Starts on an existing database (the median is reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Additional starts, each on a new, empty database.
    #[arg(long, default_value_t = 5)]
    fresh_runs: usize,
    /// Folder for the databases (default: a new temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How long the last server stays idle before its RSS is read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    idle: Duration,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct FsyncArgs {
    /// Folder on the disk to measure (the database's folder).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// Result files written with --json.
    files: Vec<PathBuf>,
    /// The merged JSON document.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The markdown table.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Protocol {
    Grpc,
    GrpcWeb,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    Info,
    List,
    #[value(name = "send-100k")]
    #[serde(rename = "send-100k")]
    Send100k,
    SendGroup,
    Exchange,
    Accept,
    #[value(name = "download-1m")]
    #[serde(rename = "download-1m")]
    Download1m,
    ListBig,
    InfoBig,
    UnderAttack,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Info => "info",
            Scenario::List => "list",
            Scenario::Send100k => "send-100k",
            Scenario::SendGroup => "send-group",
            Scenario::Exchange => "exchange",
            Scenario::Accept => "accept",
            Scenario::Download1m => "download-1m",
            Scenario::ListBig => "list-big",
            Scenario::InfoBig => "info-big",
            Scenario::UnderAttack => "under-attack",
        }
    }

    /// Signed operations per second to prepare signatures for, per second
    /// of load: well above what this server does today on two cores.
    fn rate_hint(self) -> usize {
        match self {
            // under-attack signs its legitimate calls as it goes and sizes
            // the attacker's signatures from its own options.
            Scenario::Info | Scenario::InfoBig | Scenario::UnderAttack => 0,
            Scenario::List | Scenario::ListBig | Scenario::Exchange => 15_000,
            // Two signed calls per pair.
            Scenario::Accept => 10_000,
            Scenario::Download1m => 4_000,
            Scenario::Send100k => 3_000,
            Scenario::SendGroup => 1_500,
        }
    }
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Json => "json",
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 10s, 500ms or 1m, got {text:?}"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Cmd::Run(args)) => run_main(*args),
        None => run_main(cli.run),
        Some(Cmd::Seed(args)) => runtime(1)?.block_on(seed(args)),
        Some(Cmd::Retention(args)) => runtime(1)?.block_on(retention(args)),
        Some(Cmd::Coldstart(args)) => runtime(1)?.block_on(coldstart(args)),
        Some(Cmd::Fsync(args)) => fsync(args),
        Some(Cmd::Report(args)) => report(args),
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Refuses anything but loopback targets.
fn check_loopback(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url.parse().context("--url is not a URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://… (plain HTTP/2 and HTTP/1.1 on loopback)");
    }
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--url must point at this machine (127.0.0.0/8, ::1 or localhost), not {host:?}");
    }
    Ok(uri)
}

// ---------------------------------------------------------------------------
// gRPC with pre-encoded messages
// ---------------------------------------------------------------------------

/// Passes already-encoded protobuf messages through tonic untouched, so the
/// generator encodes each distinct request once, before the timed phase.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// ---------------------------------------------------------------------------
// Calls: one request in the three protocols
// ---------------------------------------------------------------------------

const INFO_GET: &str = "/piqchat.inbox.v1.InfoService/GetInfo";
const PARCELS_LIST: &str = "/piqchat.inbox.v1.ParcelService/ListParcels";
const PARCELS_SEND: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";
const PARCELS_DOWNLOAD: &str = "/piqchat.inbox.v1.ParcelService/DownloadAttachment";
const EXCHANGES_CREATE: &str = "/piqchat.inbox.v1.ExchangeService/CreateExchange";
const EXCHANGES_ACCEPT: &str = "/piqchat.inbox.v1.ExchangeService/AcceptExchange";

/// One RPC, spelled for each protocol, encoded once.
#[derive(Clone)]
struct Call {
    grpc_path: &'static str,
    proto: Bytes,
    /// `proto` in a gRPC-web frame.
    web_body: Bytes,
    http_method: Method,
    http_path: String,
    json_body: Option<Bytes>,
    streaming: bool,
}

impl Call {
    fn new(
        grpc_path: &'static str,
        message: &impl prost::Message,
        http_method: Method,
        http_path: impl Into<String>,
        json_body: Option<serde_json::Value>,
    ) -> Self {
        let proto = Bytes::from(message.encode_to_vec());
        Call {
            grpc_path,
            web_body: grpc_frame(0, &proto),
            proto,
            http_method,
            http_path: http_path.into(),
            json_body: json_body.map(|v| Bytes::from(serde_json::to_vec(&v).expect("JSON"))),
            streaming: false,
        }
    }

    fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// Method and path a signature for `protocol` covers.
    fn signed_target(&self, protocol: Protocol) -> (Method, &str) {
        match protocol {
            Protocol::Grpc | Protocol::GrpcWeb => (Method::POST, self.grpc_path),
            Protocol::Json => (self.http_method.clone(), &self.http_path),
        }
    }
}

/// What a connection does once per operation.
#[derive(Clone)]
enum Op {
    /// One call; signed by the connection's user when `signed`.
    Single { call: Call, signed: bool },
    /// A signed CreateExchange, then an unsigned AcceptExchange of its token
    /// with `answer`.
    CreateAccept { create: Call, answer: String },
}

impl Op {
    fn signed_call(&self) -> Option<&Call> {
        match self {
            Op::Single { call, signed: true } => Some(call),
            Op::Single { signed: false, .. } => None,
            Op::CreateAccept { create, .. } => Some(create),
        }
    }

    fn calls(&self) -> u32 {
        match self {
            Op::Single { .. } => 1,
            Op::CreateAccept { .. } => 2,
        }
    }
}

/// Signature header pairs, made ahead of time.
type Signature = (HeaderValue, HeaderValue);

fn sign_once(signer: &RequestSigner, method: &Method, uri: &Uri) -> anyhow::Result<Signature> {
    let (input, signature) = signer
        .sign(method, uri, &HeaderMap::new())
        .map_err(|e| anyhow::anyhow!("signing failed: {e}"))?;
    Ok((
        HeaderValue::try_from(input)?,
        HeaderValue::try_from(signature)?,
    ))
}

/// What one connection needs: its op, its signer and its signatures.
struct WorkerPlan {
    op: Op,
    signer: Option<RequestSigner>,
    signatures: Vec<Signature>,
}

/// The outcome of one call: body bytes received, and the response message
/// when the caller needs it.
struct CallOk {
    bytes: u64,
    message: Option<Bytes>,
}

/// A failed call: a status key (`grpc:Unavailable`, `http:503`, …) and
/// the message.
struct CallErr {
    key: String,
    message: String,
}

impl CallErr {
    fn grpc(status: &Status) -> Self {
        CallErr {
            key: format!("grpc:{:?}", status.code()),
            message: status.message().chars().take(200).collect(),
        }
    }
}

#[derive(Clone)]
enum Conn {
    Grpc(tonic::client::Grpc<Channel>),
    Http(Box<HttpClient>),
}

struct Worker {
    protocol: Protocol,
    conn: Conn,
    base: String,
    plan: WorkerPlan,
    /// Signatures made during the timed run because the pool ran out.
    signed_inline: u64,
}

impl Worker {
    fn next_signature(&mut self, call: &Call) -> Result<Signature, CallErr> {
        if let Some(sig) = self.plan.signatures.pop() {
            return Ok(sig);
        }
        let signer = self
            .plan
            .signer
            .as_ref()
            .expect("signed calls have a signer");
        self.signed_inline += 1;
        let (method, path) = call.signed_target(self.protocol);
        let uri: Uri = format!("{}{}", self.base, path).parse().expect("valid URI");
        sign_once(signer, &method, &uri).map_err(|e| CallErr {
            key: "client:sign".into(),
            message: e.to_string(),
        })
    }

    async fn op(&mut self) -> Result<u64, CallErr> {
        match self.plan.op.clone() {
            Op::Single { call, signed } => {
                let sig = if signed {
                    Some(self.next_signature(&call)?)
                } else {
                    None
                };
                Ok(self.call(&call, sig, false).await?.bytes)
            }
            Op::CreateAccept { create, answer } => {
                let sig = self.next_signature(&create)?;
                let created = self.call(&create, Some(sig), true).await?;
                let token = self.token_of(created.message.unwrap_or_default())?;
                let accept = Call::new(
                    EXCHANGES_ACCEPT,
                    &pb::AcceptExchangeRequest {
                        token: token.clone(),
                        answer: Some(answer.clone()),
                        user_id: None,
                    },
                    Method::POST,
                    format!("/v1/exchanges/{token}:accept"),
                    Some(serde_json::json!({ "answer": answer })),
                );
                let accepted = self.call(&accept, None, false).await?;
                Ok(created.bytes + accepted.bytes)
            }
        }
    }

    fn token_of(&self, message: Bytes) -> Result<String, CallErr> {
        let bad = |what: &str| CallErr {
            key: "client:bad-reply".into(),
            message: format!("CreateExchange reply: {what}"),
        };
        let token = match self.protocol {
            Protocol::Json => serde_json::from_slice::<serde_json::Value>(&message)
                .ok()
                .and_then(|v| v.get("token")?.as_str().map(str::to_owned)),
            Protocol::Grpc | Protocol::GrpcWeb => pb::CreateExchangeResponse::decode(message)
                .ok()
                .map(|r| r.token),
        };
        token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no token"))
    }

    async fn call(
        &mut self,
        call: &Call,
        sig: Option<Signature>,
        want_message: bool,
    ) -> Result<CallOk, CallErr> {
        call_on(&mut self.conn, self.protocol, call, sig, want_message).await
    }
}

/// One call over `conn` in `protocol`.
async fn call_on(
    conn: &mut Conn,
    protocol: Protocol,
    call: &Call,
    sig: Option<Signature>,
    want_message: bool,
) -> Result<CallOk, CallErr> {
    match conn {
        Conn::Grpc(grpc) => grpc_call(grpc, call, sig, want_message).await,
        Conn::Http(http) => match protocol {
            Protocol::GrpcWeb => grpc_web_call(http, call, sig).await,
            _ => json_call(http, call, sig).await,
        },
    }
}

async fn grpc_call(
    grpc: &mut tonic::client::Grpc<Channel>,
    call: &Call,
    sig: Option<Signature>,
    want_message: bool,
) -> Result<CallOk, CallErr> {
    let mut headers = HeaderMap::new();
    if let Some((input, signature)) = sig {
        headers.insert("signature-input", input);
        headers.insert("signature", signature);
    }
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(headers),
        tonic::Extensions::default(),
        call.proto.clone(),
    );
    grpc.ready().await.map_err(|e| CallErr {
        key: "transport".into(),
        message: e.to_string(),
    })?;
    let path = http::uri::PathAndQuery::from_static(call.grpc_path);
    if call.streaming {
        let mut stream = grpc
            .server_streaming(request, path, RawCodec)
            .await
            .map_err(|s| CallErr::grpc(&s))?
            .into_inner();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.message().await.map_err(|s| CallErr::grpc(&s))? {
            bytes += chunk.len() as u64;
        }
        Ok(CallOk {
            bytes,
            message: None,
        })
    } else {
        let reply = grpc
            .unary(request, path, RawCodec)
            .await
            .map_err(|s| CallErr::grpc(&s))?
            .into_inner();
        Ok(CallOk {
            bytes: reply.len() as u64,
            message: want_message.then_some(reply),
        })
    }
}

fn http_headers(sig: Option<Signature>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some((input, signature)) = sig {
        headers.insert("signature-input", input);
        headers.insert("signature", signature);
    }
    headers
}

async fn grpc_web_call(
    http: &HttpClient,
    call: &Call,
    sig: Option<Signature>,
) -> Result<CallOk, CallErr> {
    let mut headers = http_headers(sig);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc-web+proto"),
    );
    headers.insert("x-grpc-web", HeaderValue::from_static("1"));
    let reply = http
        .send(http.request(Method::POST, call.grpc_path, headers, call.web_body.clone()))
        .await
        .map_err(|s| CallErr {
            key: "transport".into(),
            message: s.message().to_owned(),
        })?;
    decode_grpc_web(reply)
}

/// Splits a gRPC-web response into messages and its status.
fn decode_grpc_web(reply: HttpReply) -> Result<CallOk, CallErr> {
    if reply.status != http::StatusCode::OK {
        return Err(CallErr {
            key: format!("http:{}", reply.status.as_u16()),
            message: String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect(),
        });
    }
    let mut status = reply
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let mut message = reply
        .headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = reply.body;
    let mut first = None;
    let mut bytes = 0u64;
    let truncated = || CallErr {
        key: "client:bad-reply".into(),
        message: "truncated gRPC-web frame".into(),
    };
    while body.has_remaining() {
        if body.len() < 5 {
            return Err(truncated());
        }
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        if body.len() < len {
            return Err(truncated());
        }
        let payload = body.split_to(len);
        if flags & 0x80 != 0 {
            for line in String::from_utf8_lossy(&payload).split("\r\n") {
                match line.split_once(':') {
                    Some((name, value)) if name.eq_ignore_ascii_case("grpc-status") => {
                        status = value.trim().parse().ok();
                    }
                    Some((name, value)) if name.eq_ignore_ascii_case("grpc-message") => {
                        message = Some(value.trim().to_owned());
                    }
                    _ => {}
                }
            }
        } else {
            bytes += payload.len() as u64;
            first.get_or_insert(payload);
        }
    }
    match status {
        Some(0) => Ok(CallOk {
            bytes,
            message: first,
        }),
        Some(code) => Err(CallErr {
            key: format!("grpc:{:?}", Code::from_i32(code)),
            message: message
                .map(|m| {
                    percent_encoding::percent_decode_str(&m)
                        .decode_utf8_lossy()
                        .chars()
                        .take(200)
                        .collect()
                })
                .unwrap_or_default(),
        }),
        None => Err(CallErr {
            key: "client:bad-reply".into(),
            message: "gRPC-web response without grpc-status".into(),
        }),
    }
}

async fn json_call(
    http: &HttpClient,
    call: &Call,
    sig: Option<Signature>,
) -> Result<CallOk, CallErr> {
    let mut headers = http_headers(sig);
    let body = match &call.json_body {
        Some(body) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            body.clone()
        }
        None => Bytes::new(),
    };
    let reply = http
        .send(http.request(call.http_method.clone(), &call.http_path, headers, body))
        .await
        .map_err(|s| CallErr {
            key: "transport".into(),
            message: s.message().to_owned(),
        })?;
    if !reply.status.is_success() {
        return Err(CallErr {
            key: format!("http:{}", reply.status.as_u16()),
            message: String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect(),
        });
    }
    Ok(CallOk {
        bytes: reply.body.len() as u64,
        message: Some(reply.body),
    })
}

// ---------------------------------------------------------------------------
// Setup through the public API
// ---------------------------------------------------------------------------

/// The server under test and a registered user who invites the others.
struct Server {
    url: String,
    tag: String,
    inviter: Option<Inviter>,
}

struct Inviter {
    exchanges: pb::exchange_service_client::ExchangeServiceClient<SignedChannel>,
}

/// The exchange token inside an invite link or accept URL.
fn token_of_link(link: &str) -> anyhow::Result<ExchangeToken> {
    let decoded = percent_encoding::percent_decode_str(link).decode_utf8_lossy();
    let at = decoded
        .find("/v1/exchanges/")
        .context("the invite has no accept URL (/v1/exchanges/<token>)")?
        + "/v1/exchanges/".len();
    let token = decoded
        .get(at..at + 36)
        .context("the invite's token is cut short")?;
    ExchangeToken::parse(token).map_err(|e| anyhow::anyhow!("invite token: {e}"))
}

impl Server {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let channel = client::connect_anonymous(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let info = pb::info_service_client::InfoServiceClient::new(channel)
            .get_info(pb::GetInfoRequest {})
            .await
            .context("GetInfo")?
            .into_inner();
        Ok(Server {
            url: url.to_owned(),
            tag: info.server_public_key,
            inviter: None,
        })
    }

    fn signer(&self, key: &UserKey) -> RequestSigner {
        RequestSigner::new(key.clone(), self.tag.clone())
    }

    async fn channel(&self, key: &UserKey) -> anyhow::Result<SignedChannel> {
        Ok(client::connect(&self.url, self.signer(key)).await?)
    }

    async fn accept_sign_up(&self, token: &str, user: &UserKey) -> anyhow::Result<()> {
        let channel = client::connect_anonymous(&self.url).await?;
        let reply = pb::exchange_service_client::ExchangeServiceClient::new(channel)
            .accept_exchange(pb::AcceptExchangeRequest {
                token: token.to_owned(),
                answer: None,
                user_id: Some(user.user_id().to_string()),
            })
            .await
            .context("accepting a sign-up invite")?
            .into_inner();
        if reply.sign_up() != pb::SignUpResult::Created {
            bail!("sign-up did not create an account: {:?}", reply.sign_up());
        }
        Ok(())
    }

    /// Signs up the inviter with the given invite or one made in the database.
    async fn bootstrap(&mut self, args: &RunArgs) -> anyhow::Result<()> {
        let token = match (&args.invite, &args.database) {
            (Some(link), _) => token_of_link(link)?,
            (None, Some(db)) => {
                let store = Store::open(db)
                    .await
                    .with_context(|| format!("opening {}", db.display()))?;
                let dir = db.parent().unwrap_or(Path::new("."));
                let link = exchanges::create_sign_up_invite(
                    &store,
                    &Config::for_dir(dir),
                    Clock::system().now(),
                )
                .await?;
                store.close().await;
                token_of_link(&link)?
            }
            (None, None) => bail!(
                "this scenario registers users: give --invite <link> (from `piqchat-inbox invite`) or --database <the server's database>"
            ),
        };
        let key = UserKey::generate();
        self.accept_sign_up(&token.to_string(), &key)
            .await
            .context("signing up the setup's first user (is the invite fresh?)")?;
        self.inviter = Some(Inviter {
            exchanges: pb::exchange_service_client::ExchangeServiceClient::new(
                self.channel(&key).await?,
            ),
        });
        Ok(())
    }

    /// A new registered user: the inviter creates an exchange, the new user
    /// accepts it with its user id, as the app does.
    async fn register(&mut self) -> anyhow::Result<UserKey> {
        let inviter = self.inviter.as_mut().context("no inviter")?;
        let created = inviter
            .exchanges
            .create_exchange(pb::CreateExchangeRequest {
                offer: card("inviter"),
            })
            .await
            .context("creating an invite")?
            .into_inner();
        let key = UserKey::generate();
        self.accept_sign_up(&created.token, &key).await?;
        Ok(key)
    }

    async fn set_contacts(&self, user: &UserKey, contacts: &[UserId]) -> anyhow::Result<()> {
        pb::account_service_client::AccountServiceClient::new(self.channel(user).await?)
            .set_contacts(pb::SetContactsRequest {
                contact_ids: contacts.iter().map(ToString::to_string).collect(),
            })
            .await
            .context("setting contacts")?;
        Ok(())
    }

    async fn parcels(
        &self,
        user: &UserKey,
    ) -> anyhow::Result<pb::parcel_service_client::ParcelServiceClient<SignedChannel>> {
        Ok(
            pb::parcel_service_client::ParcelServiceClient::new(self.channel(user).await?)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
    }

    /// Sends `count` small parcels from `sender` to each of `recipients`
    /// (up to 100 recipients per send).
    async fn fill_inboxes(
        &self,
        sender: &UserKey,
        recipients: &[UserKey],
        count: usize,
    ) -> anyhow::Result<()> {
        let mut parcels = self.parcels(sender).await?;
        for _ in 0..count {
            for group in recipients.chunks(100) {
                parcels
                    .send_parcel(pb::SendParcelRequest {
                        r#type: "MEDIA".into(),
                        recipients: group
                            .iter()
                            .map(|r| pb::ParcelRecipient {
                                user_id: r.user_id().to_string(),
                                content: card("key"),
                            })
                            .collect(),
                        attachment: None,
                    })
                    .await
                    .context("sending the parcels to list")?;
            }
        }
        Ok(())
    }

    /// Registers `n` users who all accept `sender`.
    async fn recipients(&mut self, n: usize, sender: &UserKey) -> anyhow::Result<Vec<UserKey>> {
        let mut users = Vec::with_capacity(n);
        for _ in 0..n {
            let user = self.register().await?;
            self.set_contacts(&user, &[sender.user_id()]).await?;
            users.push(user);
        }
        Ok(users)
    }
}

/// An opaque stand-in for an encrypted card or key material.
fn card(seed: &str) -> String {
    let random = piqchat_inbox::identity::random_bytes::<96>();
    format!(
        "{seed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

fn attachment(len: usize) -> Vec<u8> {
    // Ciphertext does not compress; neither does this.
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        data.extend_from_slice(&piqchat_inbox::identity::random_bytes::<32>());
    }
    data.truncate(len);
    data
}

fn send_call(recipients: &[UserKey], data: &[u8]) -> Call {
    let recipients: Vec<pb::ParcelRecipient> = recipients
        .iter()
        .map(|r| pb::ParcelRecipient {
            user_id: r.user_id().to_string(),
            content: card("key"),
        })
        .collect();
    let json = serde_json::json!({
        "type": "MEDIA",
        "recipients": recipients
            .iter()
            .map(|r| serde_json::json!({ "userId": r.user_id, "content": r.content }))
            .collect::<Vec<_>>(),
        "attachment": STANDARD.encode(data),
    });
    Call::new(
        PARCELS_SEND,
        &pb::SendParcelRequest {
            r#type: "MEDIA".into(),
            recipients,
            attachment: Some(data.to_vec()),
        },
        Method::POST,
        "/v1/parcels",
        Some(json),
    )
}

fn list_call() -> Call {
    Call::new(
        PARCELS_LIST,
        &pb::ListParcelsRequest::default(),
        Method::GET,
        "/v1/parcels",
        None,
    )
}

fn info_call() -> Call {
    Call::new(
        INFO_GET,
        &pb::GetInfoRequest {},
        Method::GET,
        "/v1/info",
        None,
    )
}

fn create_call(offer: &str) -> Call {
    Call::new(
        EXCHANGES_CREATE,
        &pb::CreateExchangeRequest {
            offer: offer.to_owned(),
        },
        Method::POST,
        "/v1/exchanges",
        Some(serde_json::json!({ "offer": offer })),
    )
}

/// Per-connection (op, signer) pairs, after the scenario's setup.
async fn setup(
    server: &mut Server,
    args: &RunArgs,
    scenario: Scenario,
) -> anyhow::Result<Vec<(Op, Option<RequestSigner>)>> {
    let c = args.concurrency;
    let unsigned = |call: Call| {
        (
            Op::Single {
                call,
                signed: false,
            },
            None,
        )
    };
    match scenario {
        Scenario::Info | Scenario::InfoBig => Ok((0..c).map(|_| unsigned(info_call())).collect()),
        Scenario::List | Scenario::ListBig => {
            // One recipient per connection, each with 20 waiting parcels
            // from one sender (sent 20 times to up to 100 recipients at once).
            server.bootstrap(args).await?;
            let sender = UserKey::generate();
            let recipients = server.recipients(c, &sender).await?;
            server.fill_inboxes(&sender, &recipients, 20).await?;
            Ok(recipients
                .iter()
                .map(|r| {
                    (
                        Op::Single {
                            call: list_call(),
                            signed: true,
                        },
                        Some(server.signer(r)),
                    )
                })
                .collect())
        }
        Scenario::Send100k | Scenario::SendGroup => {
            // One sender; each connection sends to its own recipient (or
            // group of 10), so the per-recipient quota lasts the run.
            server.bootstrap(args).await?;
            let per = if scenario == Scenario::SendGroup {
                10
            } else {
                1
            };
            let sender = UserKey::generate();
            let recipients = server.recipients(c * per, &sender).await?;
            let data = attachment(100 * 1024);
            Ok(recipients
                .chunks(per)
                .map(|group| {
                    (
                        Op::Single {
                            call: send_call(group, &data),
                            signed: true,
                        },
                        Some(server.signer(&sender)),
                    )
                })
                .collect())
        }
        Scenario::Exchange | Scenario::Accept => {
            server.bootstrap(args).await?;
            let mut ops = Vec::with_capacity(c);
            for _ in 0..c {
                let creator = server.register().await?;
                let create = create_call(&card("offer"));
                let op = if scenario == Scenario::Exchange {
                    Op::Single {
                        call: create,
                        signed: true,
                    }
                } else {
                    Op::CreateAccept {
                        create,
                        answer: card("answer"),
                    }
                };
                ops.push((op, Some(server.signer(&creator))));
            }
            Ok(ops)
        }
        Scenario::Download1m => {
            // One 1 MiB attachment sent once to every connection's recipient
            // (stored once); each downloads its own parcel's copy.
            server.bootstrap(args).await?;
            let sender = UserKey::generate();
            let recipients = server.recipients(c, &sender).await?;
            let data = attachment(1024 * 1024);
            let mut parcels = server.parcels(&sender).await?;
            for group in recipients.chunks(100) {
                parcels
                    .send_parcel(pb::SendParcelRequest {
                        r#type: "MEDIA".into(),
                        recipients: group
                            .iter()
                            .map(|r| pb::ParcelRecipient {
                                user_id: r.user_id().to_string(),
                                content: card("key"),
                            })
                            .collect(),
                        attachment: Some(data.clone()),
                    })
                    .await
                    .context("sending the attachment to download")?;
            }
            let mut ops = Vec::with_capacity(c);
            for r in &recipients {
                let listed = server
                    .parcels(r)
                    .await?
                    .list_parcels(pb::ListParcelsRequest::default())
                    .await?
                    .into_inner();
                let id = listed
                    .parcels
                    .first()
                    .context("the recipient has no parcel")?
                    .id
                    .clone();
                let call = Call::new(
                    PARCELS_DOWNLOAD,
                    &pb::DownloadAttachmentRequest {
                        parcel_id: id.clone(),
                    },
                    Method::GET,
                    format!("/v1/parcels/{id}/attachment"),
                    None,
                )
                .streaming();
                ops.push((Op::Single { call, signed: true }, Some(server.signer(r))));
            }
            Ok(ops)
        }
        Scenario::UnderAttack => bail!("under-attack has a setup of its own"),
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Default, Clone)]
struct Latency {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct ServerSample {
    pid: u32,
    /// Highest VmRSS sampled during warm-up and timed phase (KiB).
    peak_rss_kib: u64,
    /// VmRSS at the start of the timed phase (KiB).
    start_rss_kib: u64,
    /// VmHWM at the end: the process's lifetime peak (KiB).
    vm_hwm_kib: u64,
    /// Server CPU time (user + system) during the timed phase.
    cpu_s: f64,
}

#[derive(Serialize, Deserialize, Clone)]
struct RunResult {
    kind: String,
    scenario: Scenario,
    protocol: Protocol,
    label: Option<String>,
    url: String,
    concurrency: usize,
    duration_s: f64,
    warmup_s: f64,
    /// RPCs per operation (accept: create + accept).
    calls_per_op: u32,
    ops: u64,
    ok: u64,
    errors: u64,
    throughput_ops_s: f64,
    /// Response body bytes received per second (download).
    received_mib_s: f64,
    latency: Latency,
    errors_by_status: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    warmup_ops: u64,
    setup_s: f64,
    presigned: usize,
    presign_s: f64,
    /// Signatures made inside the timed phase (the pool ran out): non-zero
    /// means the generator competed with the server for CPU.
    signed_inline: u64,
    /// Generator CPU time during the timed phase.
    client_cpu_s: f64,
    server: Option<ServerSample>,
    /// CPU time of the whole machine during the timed phase, and the part
    /// of it that was neither the server nor the generator: other work on
    /// a shared machine that the numbers compete with.
    #[serde(default)]
    machine_cpu_s: f64,
    #[serde(default)]
    other_cpu_s: f64,
    /// /proc/loadavg (1 min) at the start and end of the timed phase.
    #[serde(default)]
    loadavg_start: f64,
    #[serde(default)]
    loadavg_end: f64,
    /// GetInfo's media_parcels_waiting at the start (the database's size).
    db_media_parcels_waiting: u32,
}

#[derive(Default)]
struct WorkerStats {
    latencies_us: Vec<u32>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
    bytes: u64,
    warmup_ops: u64,
    signed_inline: u64,
}

fn run_main(args: RunArgs) -> anyhow::Result<()> {
    let Some(scenario) = args.scenario else {
        bail!("--scenario is required (see --help)");
    };
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if scenario == Scenario::UnderAttack {
        return under_attack_main(args);
    }
    check_loopback(&args.url)?;
    let result = runtime(args.threads)?.block_on(run(args.clone(), scenario))?;
    print_table(std::slice::from_ref(&result));
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

async fn run(args: RunArgs, scenario: Scenario) -> anyhow::Result<RunResult> {
    let base = args.url.trim_end_matches('/').to_owned();
    let setup_start = Instant::now();
    let mut server = Server::connect(&base).await?;
    let ops = setup(&mut server, &args, scenario).await?;
    let setup_s = setup_start.elapsed().as_secs_f64();

    let waiting = client::connect_anonymous(&base)
        .await
        .ok()
        .map(pb::info_service_client::InfoServiceClient::new);
    let db_media_parcels_waiting = match waiting {
        Some(mut c) => c
            .get_info(pb::GetInfoRequest {})
            .await
            .ok()
            .and_then(|r| r.into_inner().statistics)
            .map_or(0, |s| s.media_parcels_waiting),
        None => 0,
    };

    // Signatures for the whole run, made now on every core.
    let total = args.warmup + args.duration;
    if total > Duration::from_secs(240) {
        bail!(
            "warm-up + duration must stay under 240 s: signatures are made before the run and must stay within the server's ±300 s window"
        );
    }
    let per_worker =
        match args.presign {
            Some(n) => n.div_ceil(args.concurrency),
            None => (scenario.rate_hint() as f64 * total.as_secs_f64() / args.concurrency as f64)
                .ceil() as usize,
        };
    let presign_start = Instant::now();
    let plans = presign(&base, args.protocol, ops, per_worker)?;
    let presign_s = presign_start.elapsed().as_secs_f64();
    let presigned: usize = plans.iter().map(|p| p.signatures.len()).sum();

    // Connections, one per worker, opened before the clock starts.
    let mut workers = Vec::with_capacity(plans.len());
    for plan in plans {
        let conn = match args.protocol {
            Protocol::Grpc => Conn::Grpc(
                tonic::client::Grpc::new(client::connect_anonymous(&base).await?)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            ),
            Protocol::GrpcWeb | Protocol::Json => {
                Conn::Http(Box::new(HttpClient::new(&base, None)))
            }
        };
        workers.push(Worker {
            protocol: args.protocol,
            conn,
            base: base.clone(),
            plan,
            signed_inline: 0,
        });
    }
    let calls_per_op = workers.first().map_or(1, |w| w.plan.op.calls());

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let sampler = spawn_sampler(args.server_pid, measure_from, end);

    let mut tasks = Vec::with_capacity(workers.len());
    for worker in workers {
        tasks.push(tokio::spawn(drive(worker, measure_from, end, args.timeout)));
    }
    let mut stats = WorkerStats::default();
    for task in tasks {
        // A worker stuck past the end (a hung request) is left behind.
        let grace = end + Duration::from_secs(5);
        let remaining = grace.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining + Duration::from_millis(10), task).await {
            Ok(Ok(s)) => merge(&mut stats, s),
            Ok(Err(e)) => bail!("a worker failed: {e}"),
            Err(_) => *stats.errors.entry("client:hung".into()).or_default() += 1,
        }
    }
    let cpu = sampler.await?;

    let errors: u64 = stats.errors.values().sum();
    let duration_s = args.duration.as_secs_f64();
    let mut lat = stats.latencies_us;
    lat.sort_unstable();
    Ok(RunResult {
        kind: "run".into(),
        scenario,
        protocol: args.protocol,
        label: args.label.clone(),
        url: base,
        concurrency: args.concurrency,
        duration_s,
        warmup_s: args.warmup.as_secs_f64(),
        calls_per_op,
        ops: stats.ok + errors,
        ok: stats.ok,
        errors,
        throughput_ops_s: stats.ok as f64 / duration_s,
        received_mib_s: stats.bytes as f64 / duration_s / (1024.0 * 1024.0),
        latency: latency(&lat),
        errors_by_status: stats.errors,
        error_samples: stats.samples,
        warmup_ops: stats.warmup_ops,
        setup_s,
        presigned,
        presign_s,
        signed_inline: stats.signed_inline,
        client_cpu_s: cpu.client_cpu_s,
        other_cpu_s: (cpu.machine_cpu_s
            - cpu.client_cpu_s
            - cpu.server.as_ref().map_or(0.0, |s| s.cpu_s))
        .max(0.0),
        machine_cpu_s: cpu.machine_cpu_s,
        server: cpu.server,
        loadavg_start: cpu.loadavg_start,
        loadavg_end: cpu.loadavg_end,
        db_media_parcels_waiting,
    })
}

/// Makes each worker's signatures, on all cores.
fn presign(
    base: &str,
    protocol: Protocol,
    ops: Vec<(Op, Option<RequestSigner>)>,
    per_worker: usize,
) -> anyhow::Result<Vec<WorkerPlan>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut plans: Vec<WorkerPlan> = ops
        .into_iter()
        .map(|(op, signer)| WorkerPlan {
            op,
            signer,
            signatures: Vec::new(),
        })
        .collect();
    let chunk = plans.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = plans
            .chunks_mut(chunk)
            .map(|plans| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for plan in plans {
                        let (Some(call), Some(signer)) = (plan.op.signed_call(), &plan.signer)
                        else {
                            continue;
                        };
                        let (method, path) = call.signed_target(protocol);
                        let uri: Uri = format!("{base}{path}").parse()?;
                        plan.signatures = (0..per_worker)
                            .map(|_| sign_once(signer, &method, &uri))
                            .collect::<anyhow::Result<_>>()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("signing thread")?;
        }
        Ok(())
    })?;
    Ok(plans)
}

async fn drive(
    mut worker: Worker,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let outcome = match tokio::time::timeout(timeout, worker.op()).await {
            Ok(r) => r,
            Err(_) => Err(CallErr {
                key: "client:timeout".into(),
                message: format!("no answer within {timeout:?}"),
            }),
        };
        let t1 = Instant::now();
        if t0 < measure_from {
            stats.warmup_ops += 1;
            continue;
        }
        if t1 > end {
            break;
        }
        match outcome {
            Ok(bytes) => {
                stats.ok += 1;
                stats.bytes += bytes;
                let us = (t1 - t0).as_micros().min(u128::from(u32::MAX)) as u32;
                stats.latencies_us.push(us);
            }
            Err(e) => {
                *stats.errors.entry(e.key.clone()).or_default() += 1;
                stats.samples.entry(e.key).or_insert(e.message);
            }
        }
    }
    stats.signed_inline = worker.signed_inline;
    stats
}

fn merge(into: &mut WorkerStats, from: WorkerStats) {
    into.latencies_us.extend(from.latencies_us);
    into.ok += from.ok;
    into.bytes += from.bytes;
    into.warmup_ops += from.warmup_ops;
    into.signed_inline += from.signed_inline;
    for (k, v) in from.errors {
        *into.errors.entry(k).or_default() += v;
    }
    for (k, v) in from.samples {
        into.samples.entry(k).or_insert(v);
    }
}

fn latency(sorted_us: &[u32]) -> Latency {
    if sorted_us.is_empty() {
        return Latency::default();
    }
    let pick = |q: f64| {
        let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
        f64::from(sorted_us[rank - 1]) / 1000.0
    };
    let sum: u64 = sorted_us.iter().map(|&v| u64::from(v)).sum();
    Latency {
        p50_ms: pick(0.50),
        p90_ms: pick(0.90),
        p99_ms: pick(0.99),
        max_ms: f64::from(*sorted_us.last().expect("non-empty")) / 1000.0,
        mean_ms: sum as f64 / sorted_us.len() as f64 / 1000.0,
    }
}

// ---------------------------------------------------------------------------
// /proc sampling
// ---------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of `/proc/<who>/stat` (`self` or a pid).
fn proc_cpu_s(who: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 here; the
    // kernel reports them in USER_HZ, which is 100 on Linux.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Busy CPU seconds of the whole machine (all of /proc/stat's `cpu` line but
/// idle and iowait).
fn machine_cpu_s() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy as f64 / 100.0)
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// What the sampler saw during the timed phase.
struct CpuSample {
    server: Option<ServerSample>,
    client_cpu_s: f64,
    machine_cpu_s: f64,
    loadavg_start: f64,
    loadavg_end: f64,
}

#[derive(Clone, Copy, Default)]
struct CpuMark {
    client: f64,
    machine: f64,
    server: f64,
}

impl CpuMark {
    fn now(pid: Option<u32>) -> Self {
        CpuMark {
            client: proc_cpu_s("self").unwrap_or(0.0),
            machine: machine_cpu_s().unwrap_or(0.0),
            server: pid.and_then(|p| proc_cpu_s(&p.to_string())).unwrap_or(0.0),
        }
    }
}

/// Samples the server's RSS every 100 ms from now to `end`, and CPU times
/// exactly at the start and end of the timed phase.
fn spawn_sampler(
    pid: Option<u32>,
    measure_from: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<CpuSample> {
    tokio::spawn(async move {
        let mut server = pid.map(|pid| ServerSample {
            pid,
            ..ServerSample::default()
        });
        let mut start_mark: Option<(CpuMark, f64)> = None;
        let mut next_rss = Instant::now();
        loop {
            let now = Instant::now();
            if start_mark.is_none() && now >= measure_from {
                start_mark = Some((CpuMark::now(pid), loadavg()));
                if let Some(s) = server.as_mut() {
                    s.start_rss_kib = proc_status_kib(s.pid, "VmRSS").unwrap_or(0);
                }
            }
            if now >= next_rss {
                if let Some(s) = server.as_mut()
                    && let Some(rss) = proc_status_kib(s.pid, "VmRSS")
                {
                    s.peak_rss_kib = s.peak_rss_kib.max(rss);
                }
                next_rss += Duration::from_millis(100);
            }
            if now >= end {
                break;
            }
            let mut wake = next_rss.min(end);
            if start_mark.is_none() {
                wake = wake.min(measure_from);
            }
            tokio::time::sleep_until(wake.into()).await;
        }
        let stop = CpuMark::now(pid);
        let (start, loadavg_start) = start_mark.unwrap_or((stop, 0.0));
        if let Some(s) = server.as_mut() {
            s.cpu_s = stop.server - start.server;
            s.vm_hwm_kib = proc_status_kib(s.pid, "VmHWM").unwrap_or(0);
            if let Some(rss) = proc_status_kib(s.pid, "VmRSS") {
                s.peak_rss_kib = s.peak_rss_kib.max(rss);
            }
        }
        CpuSample {
            server,
            client_cpu_s: stop.client - start.client,
            machine_cpu_s: stop.machine - start.machine,
            loadavg_start,
            loadavg_end: loadavg(),
        }
    })
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// CPU seconds over a wall-clock span as a percentage of one core.
fn percent(cpu_s: f64, wall_s: f64) -> String {
    format!("{:.0}%", 100.0 * cpu_s / wall_s)
}

impl RunResult {
    /// The server's peak RSS in MiB and its CPU (percent of one core), when
    /// its PID was given.
    fn server_usage(&self) -> Option<(f64, String)> {
        self.server.as_ref().map(|s| {
            (
                s.peak_rss_kib as f64 / 1024.0,
                format!("{:.0}%", 100.0 * s.cpu_s / self.duration_s),
            )
        })
    }

    /// Errors by status as `<status><kv><count>` joined by `sep`; `None`
    /// when there were none.
    fn errors_text(&self, kv: &str, sep: &str) -> Option<String> {
        (!self.errors_by_status.is_empty()).then(|| {
            self.errors_by_status
                .iter()
                .map(|(k, v)| format!("{k}{kv}{v}"))
                .collect::<Vec<_>>()
                .join(sep)
        })
    }
}

fn print_table(results: &[RunResult]) {
    println!(
        "{:<12} {:<8} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8}  errors",
        "scenario",
        "protocol",
        "conns",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "MiB/s",
        "peak RSS",
        "srv CPU",
        "gen CPU",
        "other"
    );
    for r in results {
        let (rss, cpu) = r
            .server_usage()
            .map_or(("-".into(), "-".into()), |(mib, cpu)| {
                (format!("{mib:.1}M"), cpu)
            });
        let errors = r.errors_text("=", " ").unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:<8} {:>5} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>9} {:>8} {:>8} {:>8}  {}",
            r.scenario.name(),
            r.protocol.name(),
            r.concurrency,
            r.throughput_ops_s,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.received_mib_s,
            rss,
            cpu,
            percent(r.client_cpu_s, r.duration_s),
            percent(r.other_cpu_s, r.duration_s),
            errors
        );
        for (k, m) in &r.error_samples {
            println!("    {k}: {m}");
        }
        if r.signed_inline > 0 {
            println!(
                "    warning: {} signatures were made during the run (pool of {} ran out); raise --presign",
                r.signed_inline, r.presigned
            );
        }
    }
}

// ---------------------------------------------------------------------------
// under-attack: legitimate users measured while an attacker floods
// ---------------------------------------------------------------------------

const UNDER_ATTACK: &str = "under-attack";
/// Declared length of a slow upload's body: far more than it sends.
const SLOW_BODY_BYTES: usize = 1024 * 1024;
/// Longest wait for one flood request; the flood goes on with the next.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a closed attack connection is opened again: keeps the
/// pressure up without a reconnect storm against a server that refuses.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Legitimate requests in flight at once per stream; more are counted as
/// `client:backlog` instead of piling up.
const LEGIT_MAX_IN_FLIGHT: usize = 512;
/// Keys whose invalid signatures are varied in (c).
const INVALID_KEYS: usize = 256;

#[derive(Args, Clone)]
#[command(next_help_heading = "under-attack scenario")]
struct AttackArgs {
    /// Phases, in order: baseline (no attack), a (valid signatures from
    /// throwaway keys), b (slow uploads and idle connections), c (invalid
    /// signatures), all (a, b and c at once). (a) goes after (b) and (c) by
    /// default because a server may remember its nonces for minutes.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "baseline,b,c,a,all"
    )]
    phases: Vec<Phase>,
    /// Source addresses of the attacker (127.0.0.0/8; the legitimate users
    /// connect from the address of --url). Several spread the attack.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2")]
    attack_from: Vec<Ipv4Addr>,
    /// HTTP/2 connections of each flood, per source address; the flood's
    /// requests in flight (--concurrency) are spread over them.
    #[arg(long, default_value_t = 8)]
    attack_connections: usize,
    /// Worker threads of the attacker's runtime (apart from the legitimate
    /// users' runtime, so that one does not delay the other's timers).
    #[arg(long, default_value_t = 1)]
    attack_threads: usize,
    /// Signed floods per second to prepare signatures of (a) for; once they
    /// run out the attacker signs as it goes (reported as signed_inline).
    #[arg(long, default_value_t = 10_000)]
    attack_presign_rate: usize,
    /// Upper bound on flood requests per second of a phase (the flood stops
    /// when it has made this many times the phase's length).
    #[arg(long, default_value_t = 100_000)]
    attack_max_rate: u64,
    /// Signatures per throwaway key in (a); 1 is a fresh key per request.
    #[arg(long, default_value_t = 1)]
    attack_nonces_per_key: usize,
    /// Slow uploads in (b): SendParcel over HTTP/1.1, JSON and gRPC-web,
    /// unsigned and signed by throwaway keys; headers sent, body trickled.
    #[arg(long, default_value_t = 500)]
    slow_uploads: usize,
    /// Body bytes each slow upload sends per second.
    #[arg(long, default_value_t = 4)]
    slow_upload_bytes_per_s: usize,
    /// Idle connections in (b): TCP connect, then nothing.
    #[arg(long, default_value_t = 2000)]
    idle_connections: usize,
    /// Of the idle connections, how many first make one HTTP/1.1 keep-alive
    /// request (GET /v1/info) and then stay idle.
    #[arg(long, default_value_t = 200)]
    idle_after_request: usize,
    /// Legitimate ListParcels per second, over all listers (open loop: the
    /// next request does not wait for the previous one).
    #[arg(long, default_value_t = 20.0)]
    legit_list_rate: f64,
    /// Legitimate registered users who list their inbox of 20 parcels.
    #[arg(long, default_value_t = 8)]
    legit_listers: usize,
    /// Legitimate sends per second (100 KiB attachment each), over all senders.
    #[arg(long, default_value_t = 2.0)]
    legit_send_rate: f64,
    /// Legitimate registered senders, each to its own recipient who accepts it.
    #[arg(long, default_value_t = 4)]
    legit_senders: usize,
    /// Pause between phases.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    phase_pause: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    Baseline,
    A,
    B,
    C,
    All,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::A => "a",
            Phase::B => "b",
            Phase::C => "c",
            Phase::All => "all",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Phase::Baseline => "no attack",
            Phase::A => "valid signatures, throwaway keys",
            Phase::B => "slow uploads + idle connections",
            Phase::C => "invalid signatures",
            Phase::All => "a + b + c",
        }
    }

    fn valid_flood(self) -> bool {
        matches!(self, Phase::A | Phase::All)
    }

    fn invalid_flood(self) -> bool {
        matches!(self, Phase::C | Phase::All)
    }

    fn holds(self) -> bool {
        matches!(self, Phase::B | Phase::All)
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct AttackResult {
    kind: String,
    label: Option<String>,
    url: String,
    /// Protocol of the legitimate calls; the floods use gRPC, the slow
    /// uploads and idle connections HTTP/1.1.
    protocol: Protocol,
    attack_from: Vec<String>,
    legit_list_rate: f64,
    legit_listers: usize,
    legit_send_rate: f64,
    legit_senders: usize,
    /// Attack's in-flight requests per flood, and its connections.
    concurrency: usize,
    attack_connections: usize,
    slow_uploads: usize,
    idle_connections: usize,
    setup_s: f64,
    /// The whole run, setup included.
    total_s: f64,
    phases: Vec<PhaseResult>,
}

#[derive(Serialize, Deserialize, Clone)]
struct PhaseResult {
    phase: Phase,
    /// The attack runs for warmup_s before the legitimate calls are
    /// measured for duration_s, and on until they have all been answered.
    warmup_s: f64,
    duration_s: f64,
    /// Preparing the attacker's signatures, before the phase's clock.
    prepare_s: f64,
    list: LegitResult,
    send: LegitResult,
    valid_flood: Option<FloodResult>,
    invalid_flood: Option<FloodResult>,
    slow_uploads: Option<HoldResult>,
    idle_connections: Option<HoldResult>,
    server: Option<ServerSample>,
    client_cpu_s: f64,
    machine_cpu_s: f64,
    other_cpu_s: f64,
    loadavg_start: f64,
    loadavg_end: f64,
}

/// The legitimate calls of one kind in one phase.
#[derive(Serialize, Deserialize, Clone, Default)]
struct LegitResult {
    /// Requests due in the measured window (rate × duration).
    scheduled: u64,
    ok: u64,
    errors: u64,
    /// Of the successful calls.
    latency: Latency,
    errors_by_status: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
}

/// One flood of signed GetInfo calls.
#[derive(Serialize, Deserialize, Clone, Default)]
struct FloodResult {
    /// Requests answered (or failed) per second over the attack's whole run.
    rate_per_s: f64,
    requests: u64,
    /// By outcome: `ok`, `grpc:<Code>`, `transport`, `client:timeout`.
    by_status: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
    /// Signatures of (a) prepared beforehand, and made during the phase
    /// because those ran out.
    presigned: usize,
    signed_inline: u64,
    connect_errors: u64,
    seconds: f64,
}

/// Connections the attacker holds open (slow uploads or idle).
#[derive(Serialize, Deserialize, Clone, Default)]
struct HoldResult {
    target: usize,
    /// Connections opened, counting reopenings after the server closed one.
    opened: u64,
    connect_errors: u64,
    /// Closed by the server without an answer.
    closed: u64,
    /// Answered by the server (then closed by the attacker), by status.
    answered: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
    /// Still open when the attack stopped.
    open_at_end: u64,
    body_bytes_sent: u64,
}

fn under_attack_main(args: RunArgs) -> anyhow::Result<()> {
    let a = &args.attack;
    if a.phases.is_empty() {
        bail!("--phases needs at least one phase");
    }
    if args.warmup + args.duration > Duration::from_secs(240) {
        bail!(
            "warm-up + duration must stay under 240 s: the attacker's signatures are made before each phase and must stay within the server's ±300 s window"
        );
    }
    if a.legit_listers == 0 || a.legit_senders == 0 {
        bail!("--legit-listers and --legit-senders must be at least 1");
    }
    if !(a.legit_list_rate > 0.0 && a.legit_send_rate > 0.0) {
        bail!("--legit-list-rate and --legit-send-rate must be above 0");
    }
    if args.concurrency == 0 || a.attack_connections == 0 || a.attack_nonces_per_key == 0 {
        bail!("--concurrency, --attack-connections and --attack-nonces-per-key must be at least 1");
    }
    let uri = check_loopback(&args.url)?;
    let target = ipv4_target(&uri)?;
    if a.attack_from.is_empty() {
        bail!("--attack-from needs at least one address");
    }
    for source in &a.attack_from {
        if !source.is_loopback() {
            bail!("--attack-from must be loopback addresses (127.0.0.0/8), not {source}");
        }
        if *source == *target.ip() {
            eprintln!(
                "under-attack: warning: the attacker shares {source} with the legitimate users; per-address limits of the server then hit both"
            );
        }
    }
    let fds = a.idle_connections
        + a.slow_uploads
        + a.attack_connections * a.attack_from.len() * 2
        + a.legit_listers
        + a.legit_senders
        + 256;
    check_open_files(fds)?;
    let attack_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.attack_threads.max(1))
        .thread_name("attacker")
        .enable_all()
        .build()?;
    let result = runtime(args.threads)?.block_on(under_attack(
        args.clone(),
        target,
        attack_rt.handle().clone(),
    ))?;
    drop(attack_rt);
    print_attack(&result);
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

/// The server's address for raw connections: the attacker binds its own
/// 127.0.0.0/8 source address, so the target must be IPv4 loopback too.
fn ipv4_target(uri: &Uri) -> anyhow::Result<SocketAddrV4> {
    let host = uri.host().unwrap_or("");
    let ip = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse::<Ipv4Addr>().map_err(|_| {
            anyhow::anyhow!(
                "under-attack needs an IPv4 loopback --url (e.g. http://127.0.0.1:8080): the attacker connects from other 127.0.0.0/8 addresses"
            )
        })?
    };
    Ok(SocketAddrV4::new(ip, uri.port_u16().unwrap_or(80)))
}

/// Refuses to start when this process may not open `needed` files: the
/// attack's connections would fail on the generator's side, not the server's.
fn check_open_files(needed: usize) -> anyhow::Result<()> {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => bail!(
            "this scenario holds about {needed} connections but the open-file limit is {soft}: raise it first (ulimit -n {needed}; `ulimit -Hn` shows the most allowed), or lower --idle-connections / --slow-uploads"
        ),
        _ => Ok(()),
    }
}

/// A legitimate call: who makes it, what it is.
struct LegitOp {
    signer: RequestSigner,
    call: Call,
}

async fn under_attack(
    args: RunArgs,
    target: SocketAddrV4,
    attack_rt: tokio::runtime::Handle,
) -> anyhow::Result<AttackResult> {
    let a = &args.attack;
    let base = args.url.trim_end_matches('/').to_owned();
    let setup_start = Instant::now();
    let mut server = Server::connect(&base).await?;
    server.bootstrap(&args).await?;
    // Listers: registered users with 20 parcels waiting from a registered
    // friend they accept. Senders: registered users, each sending to a
    // recipient of its own who accepts it, so no recipient's quota runs
    // out and the lists do not grow from phase to phase.
    let friend = server.register().await?;
    let listers = server.recipients(a.legit_listers, &friend).await?;
    server.fill_inboxes(&friend, &listers, 20).await?;
    let data = attachment(100 * 1024);
    let mut sends = Vec::with_capacity(a.legit_senders);
    for _ in 0..a.legit_senders {
        let sender = server.register().await?;
        let recipient = server.recipients(1, &sender).await?;
        sends.push(LegitOp {
            signer: server.signer(&sender),
            call: send_call(&recipient, &data),
        });
    }
    let lists: Vec<LegitOp> = listers
        .iter()
        .map(|l| LegitOp {
            signer: server.signer(l),
            call: list_call(),
        })
        .collect();
    let setup_s = setup_start.elapsed().as_secs_f64();

    let mut phases = Vec::with_capacity(a.phases.len());
    for (i, &phase) in a.phases.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(a.phase_pause).await;
        }
        eprintln!(
            "under-attack: phase {} ({})",
            phase.name(),
            phase.describe()
        );
        phases.push(
            run_phase(
                phase,
                &args,
                &base,
                &server.tag,
                target,
                &lists,
                &sends,
                &attack_rt,
            )
            .await?,
        );
    }
    Ok(AttackResult {
        kind: UNDER_ATTACK.into(),
        label: args.label.clone(),
        url: base,
        protocol: args.protocol,
        attack_from: a.attack_from.iter().map(ToString::to_string).collect(),
        legit_list_rate: a.legit_list_rate,
        legit_listers: a.legit_listers,
        legit_send_rate: a.legit_send_rate,
        legit_senders: a.legit_senders,
        concurrency: args.concurrency,
        attack_connections: a.attack_connections,
        slow_uploads: a.slow_uploads,
        idle_connections: a.idle_connections,
        setup_s,
        total_s: setup_start.elapsed().as_secs_f64(),
        phases,
    })
}

/// A connection of a legitimate user, opened before the phase's clock.
async fn legit_conn(base: &str, protocol: Protocol) -> anyhow::Result<Conn> {
    Ok(match protocol {
        Protocol::Grpc => Conn::Grpc(
            tonic::client::Grpc::new(client::connect_anonymous(base).await?)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        ),
        Protocol::GrpcWeb | Protocol::Json => Conn::Http(Box::new(HttpClient::new(base, None))),
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    phase: Phase,
    args: &RunArgs,
    base: &str,
    tag: &str,
    target: SocketAddrV4,
    lists: &[LegitOp],
    sends: &[LegitOp],
    attack_rt: &tokio::runtime::Handle,
) -> anyhow::Result<PhaseResult> {
    let a = &args.attack;
    let span = args.warmup + args.duration;
    let info_uri: Uri = format!("{base}{INFO_GET}").parse()?;

    // The attacker's material, made before the clock starts.
    let prepare_start = Instant::now();
    let valid = if phase.valid_flood() {
        let n = (a.attack_presign_rate as f64 * span.as_secs_f64()).ceil() as usize;
        Some(throwaway_signatures(
            &info_uri,
            tag,
            n,
            a.attack_nonces_per_key,
        )?)
    } else {
        None
    };
    let invalid = if phase.invalid_flood() {
        Some(Arc::new(invalid_templates(&info_uri, tag)?))
    } else {
        None
    };
    let prepare_s = prepare_start.elapsed().as_secs_f64();

    let mut list_conns = Vec::with_capacity(lists.len());
    for _ in lists {
        list_conns.push(legit_conn(base, args.protocol).await?);
    }
    let mut send_conns = Vec::with_capacity(sends.len());
    for _ in sends {
        send_conns.push(legit_conn(base, args.protocol).await?);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    // However the legitimate calls fare, the attack ends by itself.
    let deadline = end + args.timeout + Duration::from_secs(5);
    let floods = usize::from(valid.is_some()) + usize::from(invalid.is_some());
    let plan = AttackPlan {
        authority: info_uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        base: base.to_owned(),
        tag: tag.to_owned(),
        target,
        sources: a.attack_from.clone(),
        connections: a.attack_connections,
        concurrency: args.concurrency.div_ceil(floods.max(1)),
        info_uri,
        valid,
        invalid,
        nonces_per_key: a.attack_nonces_per_key,
        slow_uploads: if phase.holds() { a.slow_uploads } else { 0 },
        idle: if phase.holds() { a.idle_connections } else { 0 },
        idle_after_request: a.idle_after_request,
        bytes_per_s: a.slow_upload_bytes_per_s.max(1),
        max_requests: (a.attack_max_rate as f64 * (span + args.timeout).as_secs_f64()) as u64,
        ramp: args.warmup / 2,
        deadline,
    };
    let attack = attack_rt.spawn(run_attack(plan, stop_rx));
    let sampler = spawn_sampler(args.server_pid, measure_from, end);

    let window = (measure_from, end);
    let (list, send) = tokio::join!(
        legit_stream(
            lists,
            list_conns,
            a.legit_list_rate,
            args.protocol,
            base,
            window,
            args.timeout
        ),
        legit_stream(
            sends,
            send_conns,
            a.legit_send_rate,
            args.protocol,
            base,
            window,
            args.timeout
        ),
    );
    // The attack goes on until the last legitimate call is answered, so a
    // call held up by it is not released by the attack's end.
    let _ = stop_tx.send(true);
    let tally = match tokio::time::timeout(FLOOD_TIMEOUT + Duration::from_secs(5), attack).await {
        Ok(joined) => joined?,
        Err(_) => bail!("the attack did not stop within {FLOOD_TIMEOUT:?} of its end"),
    };
    let cpu = sampler.await?;
    Ok(PhaseResult {
        phase,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        prepare_s,
        list,
        send,
        valid_flood: tally.valid,
        invalid_flood: tally.invalid,
        slow_uploads: tally.slow,
        idle_connections: tally.idle,
        other_cpu_s: (cpu.machine_cpu_s
            - cpu.client_cpu_s
            - cpu.server.as_ref().map_or(0.0, |s| s.cpu_s))
        .max(0.0),
        server: cpu.server,
        client_cpu_s: cpu.client_cpu_s,
        machine_cpu_s: cpu.machine_cpu_s,
        loadavg_start: cpu.loadavg_start,
        loadavg_end: cpu.loadavg_end,
    })
}

/// Legitimate calls at a fixed rate in `window` (open loop: each on its own
/// task, so a slow answer does not hide the calls behind it), round-robin
/// over `ops`, each signed just before it is sent; then waits for all of
/// them, at most `timeout` after the window.
async fn legit_stream(
    ops: &[LegitOp],
    conns: Vec<Conn>,
    rate: f64,
    protocol: Protocol,
    base: &str,
    (from, end): (Instant, Instant),
    timeout: Duration,
) -> LegitResult {
    let mut result = LegitResult::default();
    let mut latencies_us = Vec::new();
    let mut record = |outcome: Result<Duration, CallErr>, result: &mut LegitResult| match outcome {
        Ok(took) => {
            result.ok += 1;
            latencies_us.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
        }
        Err(e) => {
            result.errors += 1;
            *result.errors_by_status.entry(e.key.clone()).or_default() += 1;
            result.error_samples.entry(e.key).or_insert(e.message);
        }
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = 0usize;
    loop {
        let at = from + interval.mul_f64(k as f64);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        result.scheduled += 1;
        while let Some(done) = tasks.try_join_next() {
            record(done.unwrap_or_else(|e| Err(join_error(&e))), &mut result);
        }
        if tasks.len() >= LEGIT_MAX_IN_FLIGHT {
            record(
                Err(CallErr {
                    key: "client:backlog".into(),
                    message: format!("{LEGIT_MAX_IN_FLIGHT} calls already waiting; not sent"),
                }),
                &mut result,
            );
            k += 1;
            continue;
        }
        let op = &ops[k % ops.len()];
        let mut conn = conns[k % conns.len()].clone();
        let call = op.call.clone();
        let signer = op.signer.clone();
        let base = base.to_owned();
        tasks.spawn(async move {
            let (method, path) = call.signed_target(protocol);
            let uri: Uri = format!("{base}{path}").parse().expect("valid URI");
            let sig = sign_once(&signer, &method, &uri).map_err(|e| CallErr {
                key: "client:sign".into(),
                message: e.to_string(),
            })?;
            let t0 = Instant::now();
            match tokio::time::timeout(
                timeout,
                call_on(&mut conn, protocol, &call, Some(sig), false),
            )
            .await
            {
                Ok(Ok(_)) => Ok(t0.elapsed()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(CallErr {
                    key: "client:timeout".into(),
                    message: format!("no answer within {timeout:?}"),
                }),
            }
        });
        k += 1;
    }
    let last = tokio::time::Instant::from_std(end + timeout + Duration::from_secs(1));
    while let Ok(Some(done)) = tokio::time::timeout_at(last, tasks.join_next()).await {
        record(done.unwrap_or_else(|e| Err(join_error(&e))), &mut result);
    }
    for _ in 0..tasks.len() {
        record(
            Err(CallErr {
                key: "client:hung".into(),
                message: "still waiting after the timeout".into(),
            }),
            &mut result,
        );
    }
    tasks.abort_all();
    latencies_us.sort_unstable();
    result.latency = latency(&latencies_us);
    result
}

fn join_error(e: &tokio::task::JoinError) -> CallErr {
    CallErr {
        key: "client:panic".into(),
        message: e.to_string(),
    }
}

/// What one phase's attack does; see [`run_attack`].
struct AttackPlan {
    base: String,
    authority: String,
    tag: String,
    target: SocketAddrV4,
    sources: Vec<Ipv4Addr>,
    connections: usize,
    /// Requests in flight per flood.
    concurrency: usize,
    info_uri: Uri,
    /// (a): presigned valid signatures of throwaway keys.
    valid: Option<Vec<Signature>>,
    /// (c): Signature-Input templates to put fresh nonces in.
    invalid: Option<Arc<Vec<InvalidTemplate>>>,
    nonces_per_key: usize,
    slow_uploads: usize,
    idle: usize,
    idle_after_request: usize,
    bytes_per_s: usize,
    /// Requests per flood, at most.
    max_requests: u64,
    /// The held connections are opened spread over this time.
    ramp: Duration,
    deadline: Instant,
}

#[derive(Default)]
struct AttackTally {
    valid: Option<FloodResult>,
    invalid: Option<FloodResult>,
    slow: Option<HoldResult>,
    idle: Option<HoldResult>,
}

/// Runs the phase's attack until `stop` turns true or the plan's deadline.
async fn run_attack(mut plan: AttackPlan, stop: tokio::sync::watch::Receiver<bool>) -> AttackTally {
    let plan_valid = plan.valid.take();
    let plan_invalid = plan.invalid.take();
    let plan = Arc::new(plan);
    let valid = plan_valid.map(|pool| {
        let presigned = pool.len();
        let forges = split_pool(pool, plan.concurrency)
            .into_iter()
            .map(|pool| Forge::Valid {
                pool,
                signer: None,
                used: 0,
            })
            .collect();
        tokio::spawn(flood(plan.clone(), forges, presigned, stop.clone()))
    });
    let invalid = plan_invalid.map(|templates| {
        let forges = (0..plan.concurrency)
            .map(|_| Forge::Invalid {
                templates: templates.clone(),
            })
            .collect();
        tokio::spawn(flood(plan.clone(), forges, 0, stop.clone()))
    });
    let slow = (plan.slow_uploads > 0).then(|| {
        let kinds = (0..plan.slow_uploads)
            .map(|i| HoldKind::Upload {
                grpc_web: i % 2 == 1,
                signed: i % 4 >= 2,
            })
            .collect();
        tokio::spawn(hold_all(plan.clone(), kinds, stop.clone()))
    });
    let idle = (plan.idle > 0).then(|| {
        let kinds = (0..plan.idle)
            .map(|i| {
                if i < plan.idle_after_request {
                    HoldKind::KeepAlive
                } else {
                    HoldKind::Idle
                }
            })
            .collect();
        tokio::spawn(hold_all(plan.clone(), kinds, stop.clone()))
    });
    let mut tally = AttackTally::default();
    if let Some(h) = valid {
        tally.valid = h.await.ok();
    }
    if let Some(h) = invalid {
        tally.invalid = h.await.ok();
    }
    if let Some(h) = slow {
        tally.slow = h.await.ok();
    }
    if let Some(h) = idle {
        tally.idle = h.await.ok();
    }
    tally
}

fn split_pool(mut pool: Vec<Signature>, parts: usize) -> Vec<Vec<Signature>> {
    let each = pool.len().div_ceil(parts.max(1));
    let mut out = Vec::with_capacity(parts);
    for _ in 0..parts {
        let rest = pool.split_off(pool.len().saturating_sub(each));
        out.push(rest);
    }
    out
}

/// Valid signatures for `uri` (POST, the gRPC path), from throwaway keys
/// that no account has, `per_key` each; made on every core.
fn throwaway_signatures(
    uri: &Uri,
    tag: &str,
    n: usize,
    per_key: usize,
) -> anyhow::Result<Vec<Signature>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let each = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || -> anyhow::Result<Vec<Signature>> {
                    let mut out = Vec::with_capacity(each);
                    while out.len() < each {
                        let signer = RequestSigner::new(UserKey::generate(), tag);
                        for _ in 0..per_key.min(each - out.len()) {
                            out.push(sign_once(&signer, &Method::POST, uri)?);
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(h.join().expect("signing thread")?);
        }
        Ok(all)
    })
}

/// A real Signature-Input split around its nonce, and the label.
struct InvalidTemplate {
    before_nonce: String,
    after_nonce: String,
    label: String,
}

/// Signature-Inputs of real keys (so the server gets as far as verifying),
/// to be sent with fresh nonces and random signature bytes.
fn invalid_templates(uri: &Uri, tag: &str) -> anyhow::Result<Vec<InvalidTemplate>> {
    (0..INVALID_KEYS)
        .map(|_| {
            let signer = RequestSigner::new(UserKey::generate(), tag);
            let (input, signature) = sign_once(&signer, &Method::POST, uri)?;
            let input = input.to_str()?;
            let at = input
                .find("nonce=\"")
                .context("no nonce in Signature-Input")?
                + 7;
            let close = at + input[at..].find('"').context("unterminated nonce")?;
            let label = signature
                .to_str()?
                .split_once('=')
                .context("no label in Signature")?
                .0
                .to_owned();
            Ok(InvalidTemplate {
                before_nonce: input[..at].to_owned(),
                after_nonce: input[close..].to_owned(),
                label,
            })
        })
        .collect()
}

/// Where a flood worker's signatures come from.
enum Forge {
    Valid {
        pool: Vec<Signature>,
        /// The throwaway key signing once the pool is empty.
        signer: Option<RequestSigner>,
        used: usize,
    },
    Invalid {
        templates: Arc<Vec<InvalidTemplate>>,
    },
}

impl Forge {
    fn next(&mut self, plan: &AttackPlan, inline: &mut u64) -> anyhow::Result<Signature> {
        match self {
            Forge::Valid { pool, signer, used } => {
                if let Some(sig) = pool.pop() {
                    return Ok(sig);
                }
                if *used >= plan.nonces_per_key {
                    *signer = None;
                }
                let signer = signer.get_or_insert_with(|| {
                    *used = 0;
                    RequestSigner::new(UserKey::generate(), plan.tag.clone())
                });
                *used += 1;
                *inline += 1;
                sign_once(signer, &Method::POST, &plan.info_uri)
            }
            Forge::Invalid { templates } => {
                let pick =
                    usize::from(piqchat_inbox::identity::random_bytes::<2>()[0]) % templates.len();
                let t = &templates[pick];
                let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(piqchat_inbox::identity::random_bytes::<16>());
                let bytes = piqchat_inbox::identity::random_bytes::<64>();
                Ok((
                    HeaderValue::try_from(format!("{}{nonce}{}", t.before_nonce, t.after_nonce))?,
                    HeaderValue::try_from(format!("{}=:{}:", t.label, STANDARD.encode(bytes)))?,
                ))
            }
        }
    }
}

/// HTTP/2 connections from the attacker's addresses.
async fn attack_channels(plan: &AttackPlan) -> (Vec<Channel>, u64, Option<String>) {
    let mut channels = Vec::new();
    let mut errors = 0;
    let mut sample = None;
    for source in &plan.sources {
        for _ in 0..plan.connections {
            let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
            connector.set_local_address(Some(IpAddr::V4(*source)));
            connector.set_nodelay(true);
            let endpoint = Channel::from_shared(plan.base.clone())
                .expect("a valid URL")
                .connect_timeout(Duration::from_secs(5));
            match endpoint.connect_with_connector(connector).await {
                Ok(c) => channels.push(c),
                Err(e) => {
                    errors += 1;
                    sample.get_or_insert_with(|| format!("{e:?}"));
                }
            }
        }
    }
    (channels, errors, sample)
}

/// Signed GetInfo calls as fast as the workers get answers.
async fn flood(
    plan: Arc<AttackPlan>,
    forges: Vec<Forge>,
    presigned: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> FloodResult {
    let started = Instant::now();
    let (channels, connect_errors, connect_sample) = attack_channels(&plan).await;
    let mut result = FloodResult {
        presigned,
        connect_errors,
        ..FloodResult::default()
    };
    if let Some(sample) = connect_sample {
        result.samples.insert("connect".into(), sample);
    }
    if channels.is_empty() {
        result.seconds = started.elapsed().as_secs_f64();
        return result;
    }
    let per_worker = plan.max_requests.div_ceil(forges.len() as u64);
    let mut workers = tokio::task::JoinSet::new();
    for (i, mut forge) in forges.into_iter().enumerate() {
        let mut grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
        let stop = stop.clone();
        let plan = plan.clone();
        workers.spawn(async move {
            let call = info_call();
            let mut out = FloodResult::default();
            while !*stop.borrow() && out.requests < per_worker && Instant::now() < plan.deadline {
                let key = match forge.next(&plan, &mut out.signed_inline) {
                    Err(e) => {
                        out.samples
                            .entry("client:sign".into())
                            .or_insert(e.to_string());
                        break;
                    }
                    Ok(sig) => {
                        match tokio::time::timeout(
                            FLOOD_TIMEOUT,
                            grpc_call(&mut grpc, &call, Some(sig), false),
                        )
                        .await
                        {
                            Ok(Ok(_)) => "ok".to_owned(),
                            Ok(Err(e)) => {
                                out.samples.entry(e.key.clone()).or_insert(e.message);
                                e.key
                            }
                            Err(_) => "client:timeout".to_owned(),
                        }
                    }
                };
                out.requests += 1;
                *out.by_status.entry(key).or_default() += 1;
            }
            out
        });
    }
    while let Some(done) = workers.join_next().await {
        let Ok(w) = done else { continue };
        result.requests += w.requests;
        result.signed_inline += w.signed_inline;
        for (k, v) in w.by_status {
            *result.by_status.entry(k).or_default() += v;
        }
        for (k, v) in w.samples {
            result.samples.entry(k).or_insert(v);
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.rate_per_s = result.requests as f64 / result.seconds.max(1e-9);
    result
}

#[derive(Clone, Copy)]
enum HoldKind {
    /// Connect, send nothing.
    Idle,
    /// One GET /v1/info on a keep-alive connection, then nothing.
    KeepAlive,
    /// SendParcel headers, then the body a few bytes per second.
    Upload { grpc_web: bool, signed: bool },
}

/// How one held connection ended.
enum Held {
    /// Still open when the attack stopped.
    Open,
    /// The server closed it without a word.
    Closed(String),
    /// The server answered with this status line's code.
    Answered(String, String),
}

/// Holds one connection per kind open (reopening what the server closes)
/// until the attack stops.
async fn hold_all(
    plan: Arc<AttackPlan>,
    kinds: Vec<HoldKind>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> HoldResult {
    let mut result = HoldResult {
        target: kinds.len(),
        ..HoldResult::default()
    };
    let gap = plan.ramp.div_f64(kinds.len().max(1) as f64);
    let mut slots = tokio::task::JoinSet::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let plan = plan.clone();
        let source = plan.sources[i % plan.sources.len()];
        let mut stop = stop.clone();
        let delay = gap.mul_f64(i as f64);
        slots.spawn(async move {
            let mut out = HoldResult::default();
            if stopped_within(&mut stop, delay).await {
                return out;
            }
            while !*stop.borrow() && Instant::now() < plan.deadline {
                let socket = tokio::net::TcpSocket::new_v4().and_then(|s| {
                    s.bind(SocketAddr::from((source, 0)))?;
                    Ok(s)
                });
                let connected = match socket {
                    Ok(s) => {
                        tokio::time::timeout(Duration::from_secs(5), s.connect(plan.target.into()))
                            .await
                            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                    }
                    Err(e) => Err(e),
                };
                match connected {
                    Err(e) => {
                        out.connect_errors += 1;
                        out.samples.entry("connect".into()).or_insert(e.to_string());
                    }
                    Ok(stream) => {
                        out.opened += 1;
                        match hold_one(&plan, kind, stream, &mut stop, &mut out).await {
                            Held::Open => {
                                out.open_at_end += 1;
                                break;
                            }
                            Held::Closed(why) => {
                                out.closed += 1;
                                out.samples.entry("closed".into()).or_insert(why);
                            }
                            Held::Answered(code, line) => {
                                out.samples.entry(code.clone()).or_insert(line);
                                *out.answered.entry(code).or_default() += 1;
                            }
                        }
                    }
                }
                if stopped_within(&mut stop, REOPEN_AFTER).await {
                    break;
                }
            }
            out
        });
    }
    while let Some(done) = slots.join_next().await {
        let Ok(s) = done else { continue };
        result.opened += s.opened;
        result.connect_errors += s.connect_errors;
        result.closed += s.closed;
        result.open_at_end += s.open_at_end;
        result.body_bytes_sent += s.body_bytes_sent;
        for (k, v) in s.answered {
            *result.answered.entry(k).or_default() += v;
        }
        for (k, v) in s.samples {
            result.samples.entry(k).or_insert(v);
        }
    }
    result
}

/// Waits `delay`; true if the attack stopped meanwhile.
async fn stopped_within(stop: &mut tokio::sync::watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        () = stopped(stop) => {}
        () = tokio::time::sleep(delay) => {}
    }
    *stop.borrow()
}

/// Resolves when the attack stops (or its controller is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = stop.wait_for(|&s| s).await.map(|_| ());
}

/// Drives one held connection until the server ends it or the attack stops.
async fn hold_one(
    plan: &AttackPlan,
    kind: HoldKind,
    stream: tokio::net::TcpStream,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    out: &mut HoldResult,
) -> Held {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    let mut body: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    match kind {
        HoldKind::Idle => {}
        HoldKind::KeepAlive => {
            let head = format!("GET /v1/info HTTP/1.1\r\nHost: {}\r\n\r\n", plan.authority);
            if let Err(e) = writer.write_all(head.as_bytes()).await {
                return Held::Closed(e.to_string());
            }
            // One whole response, then the connection stays idle.
            match read_response(&mut reader, &mut buf).await {
                Ok(code) if code == "http:200" => {}
                Ok(code) => return Held::Answered(code, "keep-alive request refused".into()),
                Err(e) => return Held::Closed(e),
            }
        }
        HoldKind::Upload { grpc_web, signed } => {
            let (path, content_type, extra, prefix) = if grpc_web {
                let mut frame = vec![0u8];
                frame.extend_from_slice(&((SLOW_BODY_BYTES - 5) as u32).to_be_bytes());
                (
                    PARCELS_SEND,
                    "application/grpc-web+proto",
                    "x-grpc-web: 1\r\n",
                    frame,
                )
            } else {
                (
                    "/v1/parcels",
                    "application/json",
                    "",
                    br#"{"type":"MEDIA","recipients":[],"attachment":""#.to_vec(),
                )
            };
            let mut head = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {SLOW_BODY_BYTES}\r\n{extra}",
                plan.authority
            );
            if signed {
                let signer = RequestSigner::new(UserKey::generate(), plan.tag.clone());
                let uri: Uri = format!("{}{path}", plan.base).parse().expect("valid URI");
                if let Ok((input, signature)) = sign_once(&signer, &Method::POST, &uri) {
                    head.push_str(&format!(
                        "Signature-Input: {}\r\nSignature: {}\r\n",
                        input.to_str().unwrap_or_default(),
                        signature.to_str().unwrap_or_default()
                    ));
                }
            }
            head.push_str("\r\n");
            if let Err(e) = writer.write_all(head.as_bytes()).await {
                return Held::Closed(e.to_string());
            }
            body = prefix;
            body.resize(SLOW_BODY_BYTES, b'A');
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stopped(stop) => return Held::Open,
            read = reader.read(&mut buf) => match read {
                Ok(0) => return Held::Closed("closed by the server".into()),
                Ok(n) => return answered(&buf[..n]),
                Err(e) => return Held::Closed(e.to_string()),
            },
            _ = tick.tick(), if !body.is_empty() => {
                // Never the last byte: the upload must not complete.
                let n = plan.bytes_per_s.min(body.len() - 1 - sent);
                if n > 0 {
                    if let Err(e) = writer.write_all(&body[sent..sent + n]).await {
                        return Held::Closed(e.to_string());
                    }
                    sent += n;
                    out.body_bytes_sent += n as u64;
                }
            }
        }
    }
}

/// The status of an HTTP/1.1 answer (`http:401`), with its status line.
fn answered(bytes: &[u8]) -> Held {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next().unwrap_or("").to_owned();
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .map_or_else(|| "http:unparsed".to_owned(), |c| format!("http:{c}"));
    Held::Answered(code, line.chars().take(200).collect())
}

/// Reads one HTTP/1.1 response with a Content-Length body; its status.
async fn read_response(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut [u8],
) -> Result<String, String> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let read = async {
        loop {
            let n = reader.read(buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed by the server".to_owned());
            }
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Ok(match answered(&got) {
                    Held::Answered(code, _) => code,
                    _ => "http:unparsed".to_owned(),
                });
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

fn by_status_text(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn flood_cell(f: Option<&FloodResult>) -> String {
    f.map_or_else(
        || "-".into(),
        |f| format!("{:.0}/s {}", f.rate_per_s, by_status_text(&f.by_status)),
    )
}

fn hold_cell(h: Option<&HoldResult>) -> String {
    h.map_or_else(
        || "-".into(),
        |h| {
            format!(
                "{}/{} open at end, {} opened, {} closed{}{}",
                h.open_at_end,
                h.target,
                h.opened,
                h.closed,
                if h.answered.is_empty() {
                    String::new()
                } else {
                    format!(", answered {}", by_status_text(&h.answered))
                },
                if h.connect_errors > 0 {
                    format!(", {} connect errors", h.connect_errors)
                } else {
                    String::new()
                }
            )
        },
    )
}

fn send_cell(s: &LegitResult) -> String {
    let total = s.ok + s.errors;
    if total == 0 {
        return "-".into();
    }
    format!(
        "{}/{} ({:.0}%)",
        s.ok,
        total,
        100.0 * s.ok as f64 / total as f64
    )
}

fn print_attack(r: &AttackResult) {
    println!(
        "under-attack over {}: {} lists/s over {} users, {} sends/s (100 KiB) over {} senders; attacker from {}",
        r.protocol.name(),
        r.legit_list_rate,
        r.legit_listers,
        r.legit_send_rate,
        r.legit_senders,
        r.attack_from.join(",")
    );
    println!("setup {:.1} s, whole run {:.1} s", r.setup_s, r.total_s);
    println!(
        "{:<9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>15} {:>10} {:>9} {:>8}  legitimate errors",
        "phase",
        "lists",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "sends ok",
        "send p99",
        "peak RSS",
        "srv CPU"
    );
    for p in &r.phases {
        let (rss, cpu) = p.server.as_ref().map_or(("-".into(), "-".into()), |s| {
            (
                format!("{:.1}M", s.peak_rss_kib as f64 / 1024.0),
                percent(s.cpu_s, p.duration_s),
            )
        });
        let mut errors = p.list.errors_by_status.clone();
        for (k, v) in &p.send.errors_by_status {
            *errors.entry(format!("send {k}")).or_default() += v;
        }
        let errors = if errors.is_empty() {
            "-".to_owned()
        } else {
            errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:<9} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>15} {:>10.1} {:>9} {:>8}  {}",
            p.phase.name(),
            p.list.ok,
            p.list.latency.p50_ms,
            p.list.latency.p90_ms,
            p.list.latency.p99_ms,
            p.list.latency.max_ms,
            send_cell(&p.send),
            p.send.latency.p99_ms,
            rss,
            cpu,
            errors
        );
        for (k, m) in p.list.error_samples.iter().chain(&p.send.error_samples) {
            println!("    {k}: {m}");
        }
    }
    println!("attacker:");
    for p in &r.phases {
        if p.phase == Phase::Baseline {
            continue;
        }
        println!("  {:<9} {}", p.phase.name(), p.phase.describe());
        if let Some(f) = &p.valid_flood {
            println!("    valid signatures:   {}", flood_cell(Some(f)));
            if f.signed_inline > 0 {
                println!(
                    "      {} signed during the phase after {} presigned ran out (raise --attack-presign-rate)",
                    f.signed_inline, f.presigned
                );
            }
        }
        if let Some(f) = &p.invalid_flood {
            println!("    invalid signatures: {}", flood_cell(Some(f)));
        }
        for f in [&p.valid_flood, &p.invalid_flood].into_iter().flatten() {
            for (k, m) in &f.samples {
                if k != "ok" {
                    println!("      {k}: {m}");
                }
            }
        }
        if let Some(h) = &p.slow_uploads {
            println!("    slow uploads:       {}", hold_cell(Some(h)));
        }
        if let Some(h) = &p.idle_connections {
            println!("    idle connections:   {}", hold_cell(Some(h)));
        }
        for h in [&p.slow_uploads, &p.idle_connections].into_iter().flatten() {
            for (k, m) in &h.samples {
                println!("      {k}: {m}");
            }
        }
    }
}

fn attack_markdown(r: &AttackResult) -> String {
    let mut md = format!(
        "under-attack over {}: {} lists/s over {} users, {} sends/s (100 KiB) over {} senders; attacker from {}.\n\n",
        r.protocol.name(),
        r.legit_list_rate,
        r.legit_listers,
        r.legit_send_rate,
        r.legit_senders,
        r.attack_from.join(", ")
    );
    md.push_str("| phase | lists | list p50 ms | p90 ms | p99 ms | max ms | sends ok | send p99 ms | legitimate errors | valid-signature flood | invalid-signature flood | slow uploads | idle connections | server peak RSS MiB | server CPU |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|---:|---:|\n");
    for p in &r.phases {
        let (rss, cpu) = p.server.as_ref().map_or(("-".into(), "-".into()), |s| {
            (
                format!("{:.1}", s.peak_rss_kib as f64 / 1024.0),
                percent(s.cpu_s, p.duration_s),
            )
        });
        let mut errors = p.list.errors_by_status.clone();
        for (k, v) in &p.send.errors_by_status {
            *errors.entry(format!("send {k}")).or_default() += v;
        }
        md.push_str(&format!(
            "| {} ({}) | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
            p.phase.name(),
            p.phase.describe(),
            p.list.ok,
            p.list.latency.p50_ms,
            p.list.latency.p90_ms,
            p.list.latency.p99_ms,
            p.list.latency.max_ms,
            send_cell(&p.send),
            p.send.latency.p99_ms,
            if errors.is_empty() { "0".into() } else { by_status_text(&errors) },
            flood_cell(p.valid_flood.as_ref()),
            flood_cell(p.invalid_flood.as_ref()),
            hold_cell(p.slow_uploads.as_ref()),
            hold_cell(p.idle_connections.as_ref()),
            rss,
            cpu
        ));
    }
    md
}

// ---------------------------------------------------------------------------
// seed
// ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct SeedResult {
    kind: String,
    database: String,
    users: u64,
    parcels: u64,
    users_s: f64,
    parcels_s: f64,
    parcels_per_s: f64,
    database_mib: f64,
}

async fn retention(args: RetentionArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.database)
        .await
        .with_context(|| format!("opening {}", args.database.display()))?;
    let temp = tempfile_dir()?;
    let folder = args.attachments.clone().unwrap_or_else(|| temp.clone());
    let blobs = piqchat_inbox::blobs::Blobs::open(&folder)?;
    let later = Clock::system().now() + 91 * 24 * HOUR;
    let t = Instant::now();
    let (parcels, files) =
        piqchat_inbox::jobs::expire_parcels_once(&store, &blobs, later, 90).await?;
    let took = t.elapsed().as_secs_f64();
    store.close().await;
    let _ = std::fs::remove_dir_all(&temp);
    println!(
        "retention: {parcels} expired parcels and {files} attachment files deleted in {took:.2} s ({:.0} parcels/s, batches of {})",
        parcels as f64 / took.max(1e-9),
        piqchat_inbox::store::RETENTION_BATCH
    );
    Ok(())
}

async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    let users_n = args.users.unwrap_or((args.parcels / 100).max(1));
    let store = Store::open(&args.database)
        .await
        .with_context(|| format!("opening {}", args.database.display()))?;
    let clock = Clock::system();

    // Users sign up the way the server does it: an invite, accepted with a
    // user id (two small transactions each).
    let t = Instant::now();
    let mut entries = Vec::with_capacity(users_n as usize);
    for i in 0..users_n {
        let now = clock.now();
        let token = ExchangeToken::random();
        store
            .insert_exchange(&token, None, "", now, now + HOUR)
            .await?;
        let user = UserKey::generate().user_id();
        store
            .accept_exchange(&token, None, Some(&user), now)
            .await?;
        let row = store
            .user_by_key(&user)
            .await?
            .context("the seeded user exists")?;
        entries.push(row.entry_id);
        if (i + 1).is_multiple_of(2000) {
            eprintln!("seed: {} users", i + 1);
        }
    }
    let users_s = t.elapsed().as_secs_f64();

    // Parcels: `batch` per transaction, user after user (so only the random
    // parcel id lands at random places in the indexes), from a few senders.
    let t = Instant::now();
    let senders: Vec<UserId> = (0..16).map(|_| UserKey::generate().user_id()).collect();
    let contents: Vec<String> = (0..256).map(|_| card("key")).collect();
    let mut inserted = 0u64;
    let mut batch_no = 0usize;
    while inserted < args.parcels {
        let n = (args.parcels - inserted).min(args.batch as u64);
        let parcels: Vec<NewParcel> = (0..n)
            .map(|k| {
                let i = inserted + k;
                NewParcel {
                    id: piqchat_inbox::domain::ParcelId::random(),
                    recipient: entries[((i * users_n) / args.parcels) as usize],
                    content: contents[(i % 256) as usize].clone(),
                }
            })
            .collect();
        let new = NewParcels {
            sender: senders[batch_no % senders.len()],
            kind: "MEDIA".into(),
            attachment: None,
            parcels,
            now: clock.now(),
            max_waiting_parcels: u32::MAX,
            max_waiting_attachment_bytes: u64::MAX,
            push: None,
        };
        store
            .insert_parcels(new)
            .await?
            .map_err(|q| anyhow::anyhow!("quota refused the seed: {q:?}"))?;
        inserted += n;
        batch_no += 1;
        if batch_no.is_multiple_of(10) {
            eprintln!("seed: {inserted} parcels");
        }
    }
    let parcels_s = t.elapsed().as_secs_f64();
    store.close().await;

    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", args.database.display())).ok())
        .map(|m| m.len())
        .sum();
    let result = SeedResult {
        kind: "seed".into(),
        database: args.database.display().to_string(),
        users: users_n,
        parcels: args.parcels,
        users_s,
        parcels_s,
        parcels_per_s: args.parcels as f64 / parcels_s,
        database_mib: size as f64 / (1024.0 * 1024.0),
    };
    println!(
        "seeded {} users in {:.1} s and {} parcels in {:.1} s ({:.0} parcels/s); database {:.0} MiB",
        result.users,
        result.users_s,
        result.parcels,
        result.parcels_s,
        result.parcels_per_s,
        result.database_mib
    );
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// coldstart
// ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct ColdstartResult {
    kind: String,
    /// Spawn → first answered GetInfo, on an existing database.
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    runs_ms: Vec<f64>,
    /// The same on a new, empty database (migrations and key generation).
    fresh_median_ms: f64,
    fresh_runs_ms: Vec<f64>,
    /// VmRSS of an idle server after start-up.
    idle_rss_kib: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Spawned {
    child: std::process::Child,
    url: String,
}

fn spawn_server(bin: &Path, dir: &Path) -> anyhow::Result<Spawned> {
    let port = free_port()?;
    let child = Command::new(bin)
        .current_dir(dir)
        .env("DATABASE_PATH", dir.join("inbox.sqlite"))
        .env("PARCEL_ATTACHMENTS_UPLOAD_PATH", dir.join("attachments"))
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Spawned {
        child,
        url: format!("http://{}", SocketAddr::from(([127, 0, 0, 1], port))),
    })
}

async fn wait_ready(url: &str, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(channel) = client::connect_anonymous(url).await
            && pb::info_service_client::InfoServiceClient::new(channel)
                .get_info(pb::GetInfoRequest {})
                .await
                .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the server did not answer GetInfo within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn stop_server(mut s: Spawned) -> anyhow::Result<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status();
    s.child.wait()?;
    Ok(())
}

async fn start_once(bin: &Path, dir: &Path) -> anyhow::Result<(f64, Spawned)> {
    let t = Instant::now();
    let spawned = spawn_server(bin, dir)?;
    wait_ready(&spawned.url, Duration::from_secs(30)).await?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, spawned))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn coldstart(args: ColdstartArgs) -> anyhow::Result<()> {
    let bin = std::fs::canonicalize(&args.server_bin)
        .with_context(|| format!("no server binary at {}", args.server_bin.display()))?;
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile_dir()?;
            temp.clone()
        }
    };
    let mut fresh = Vec::new();
    for i in 0..args.fresh_runs {
        let d = dir.join(format!("fresh-{i}"));
        std::fs::create_dir_all(&d)?;
        let (ms, s) = start_once(&bin, &d).await?;
        stop_server(s)?;
        fresh.push(ms);
        let _ = std::fs::remove_dir_all(&d);
    }
    let existing = dir.join("existing");
    std::fs::create_dir_all(&existing)?;
    // The first start creates the database; it is not counted.
    let (_, s) = start_once(&bin, &existing).await?;
    stop_server(s)?;
    let mut runs = Vec::new();
    let mut idle_rss_kib = 0;
    for i in 0..args.runs.max(1) {
        let (ms, s) = start_once(&bin, &existing).await?;
        runs.push(ms);
        if i + 1 == args.runs.max(1) {
            tokio::time::sleep(args.idle).await;
            idle_rss_kib = proc_status_kib(s.child.id(), "VmRSS").unwrap_or(0);
        }
        stop_server(s)?;
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let result = ColdstartResult {
        kind: "coldstart".into(),
        median_ms: median(&runs),
        min_ms: runs.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: runs.iter().copied().fold(0.0, f64::max),
        runs_ms: runs,
        fresh_median_ms: median(&fresh),
        fresh_runs_ms: fresh,
        idle_rss_kib,
    };
    println!(
        "cold start (spawn → first GetInfo): median {:.1} ms (min {:.1}, max {:.1}, {} runs); new database: median {:.1} ms ({} runs); idle RSS {:.1} MiB",
        result.median_ms,
        result.min_ms,
        result.max_ms,
        result.runs_ms.len(),
        result.fresh_median_ms,
        result.fresh_runs_ms.len(),
        result.idle_rss_kib as f64 / 1024.0
    );
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "piqchat-load-{}-{}",
        std::process::id(),
        Clock::system().now()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------------------
// fsync
// ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct FsyncResult {
    kind: String,
    dir: String,
    /// 4 KiB overwrite in place + fdatasync.
    overwrite_ops_s: f64,
    /// 4 KiB append + fdatasync (how a WAL grows).
    append_ops_s: f64,
    /// What storing one attachment costs the disk (as `blobs.rs` does it):
    /// create a 100 KiB file, fsync it, rename it into place, fsync the
    /// folder. One writer, then 8 at once (the default upload limit).
    #[serde(default)]
    blob_100k_ops_s: f64,
    #[serde(default)]
    blob_100k_8_writers_ops_s: f64,
}

/// Attachment-style durable file writes per second with `writers` threads.
fn blob_loop(dir: &Path, duration: Duration, writers: usize) -> anyhow::Result<f64> {
    let root = dir.join(format!(".piqchat-blobs-{}", std::process::id()));
    std::fs::create_dir_all(root.join("tmp"))?;
    let data = attachment(100 * 1024);
    let start = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (root, data) = (&root, &data);
                scope.spawn(move || -> anyhow::Result<u64> {
                    use std::io::Write;
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        let name = format!("{w}-{n}");
                        let tmp = root.join("tmp").join(&name);
                        let mut file = std::fs::File::create(&tmp)?;
                        file.write_all(data)?;
                        file.sync_all()?;
                        drop(file);
                        std::fs::rename(&tmp, root.join(&name))?;
                        std::fs::File::open(root)?.sync_all()?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .sum::<anyhow::Result<u64>>()
    })?;
    let rate = total as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&root)?;
    Ok(rate)
}

fn fsync_loop(path: &Path, duration: Duration, append: bool) -> anyhow::Result<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let block = attachment(4096);
    if !append {
        for _ in 0..256 {
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        if !append {
            file.seek(SeekFrom::Start((n % 256) * 4096))?;
        }
        file.write_all(&block)?;
        file.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(rate)
}

fn fsync(args: FsyncArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let path = args
        .dir
        .join(format!(".piqchat-fsync-{}", std::process::id()));
    let overwrite = fsync_loop(&path, args.duration, false)?;
    let append = fsync_loop(&path, args.duration, true)?;
    let blob = blob_loop(&args.dir, args.duration, 1)?;
    let blob_8 = blob_loop(&args.dir, args.duration, 8)?;
    let result = FsyncResult {
        kind: "fsync".into(),
        dir: args.dir.display().to_string(),
        overwrite_ops_s: overwrite,
        append_ops_s: append,
        blob_100k_ops_s: blob,
        blob_100k_8_writers_ops_s: blob_8,
    };
    println!(
        "fsync rate in {}: 4 KiB overwrite + fdatasync {:.0} ops/s; 4 KiB append + fdatasync {:.0} ops/s; 100 KiB attachment file (write, fsync, rename, fsync folder) {:.0} files/s, with 8 writers {:.0} files/s",
        result.dir, result.overwrite_ops_s, result.append_ops_s, blob, blob_8
    );
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    let mut attacks = Vec::new();
    let mut others = Vec::new();
    for path in &args.files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let kind = value.get("kind").and_then(|k| k.as_str());
        if kind == Some("run") {
            runs.push(serde_json::from_value::<RunResult>(value)?);
        } else if kind == Some(UNDER_ATTACK) {
            attacks.push(serde_json::from_value::<AttackResult>(value)?);
        } else {
            others.push(value);
        }
    }
    runs.sort_by_key(|r| (r.scenario, r.protocol));
    if !runs.is_empty() {
        print_table(&runs);
    }
    let mut md = String::new();
    for v in &others {
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("coldstart") => md.push_str(&format!(
                "- Cold start (spawn → first served GetInfo): median **{:.1} ms** over {} runs on an existing database (min {:.1}, max {:.1}); {:.1} ms on a new database. Idle RSS **{:.1} MiB**.\n",
                v["median_ms"].as_f64().unwrap_or(0.0),
                v["runs_ms"].as_array().map_or(0, Vec::len),
                v["min_ms"].as_f64().unwrap_or(0.0),
                v["max_ms"].as_f64().unwrap_or(0.0),
                v["fresh_median_ms"].as_f64().unwrap_or(0.0),
                v["idle_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            )),
            Some("fsync") => md.push_str(&format!(
                "- Disk: 4 KiB overwrite + fdatasync **{:.0}/s**, 4 KiB append + fdatasync **{:.0}/s**; a 100 KiB attachment file stored durably (write, fsync, rename, fsync folder) **{:.0}/s**, {:.0}/s with 8 writers.\n",
                v["overwrite_ops_s"].as_f64().unwrap_or(0.0),
                v["append_ops_s"].as_f64().unwrap_or(0.0),
                v["blob_100k_ops_s"].as_f64().unwrap_or(0.0),
                v["blob_100k_8_writers_ops_s"].as_f64().unwrap_or(0.0),
            )),
            Some("seed") => md.push_str(&format!(
                "- Seed: {} parcels for {} users in {:.1} s ({:.0} parcels/s), database {:.0} MiB.\n",
                v["parcels"], v["users"],
                v["parcels_s"].as_f64().unwrap_or(0.0) + v["users_s"].as_f64().unwrap_or(0.0),
                v["parcels_per_s"].as_f64().unwrap_or(0.0),
                v["database_mib"].as_f64().unwrap_or(0.0),
            )),
            _ => {}
        }
    }
    if !md.is_empty() {
        md.push('\n');
    }
    if !runs.is_empty() {
        md.push_str("| scenario | protocol | conns | ops/s | p50 ms | p90 ms | p99 ms | max ms | MiB/s | server peak RSS MiB | server CPU | generator CPU | other CPU | errors |\n");
        md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &runs {
            let (rss, cpu) = r
                .server_usage()
                .map_or(("-".into(), "-".into()), |(mib, cpu)| {
                    (format!("{mib:.1}"), cpu)
                });
            let errors = r.errors_text(": ", ", ").unwrap_or_else(|| "0".into());
            md.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {} |\n",
                r.scenario.name(),
                r.protocol.name(),
                r.concurrency,
                r.throughput_ops_s,
                r.latency.p50_ms,
                r.latency.p90_ms,
                r.latency.p99_ms,
                r.latency.max_ms,
                r.received_mib_s,
                rss,
                cpu,
                percent(r.client_cpu_s, r.duration_s),
                percent(r.other_cpu_s, r.duration_s),
                errors
            ));
        }
        md.push_str(
            "\nCPU columns: percent of one core during the timed phase; \"other\" is the rest of the machine (other processes on a shared host). Latency is per operation (accept: create + accept).\n",
        );
    }
    for a in &attacks {
        print_attack(a);
        md.push('\n');
        md.push_str(&attack_markdown(a));
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let merged = serde_json::json!({ "runs": runs, "under_attack": attacks, "other": others });
        write_json(path, &merged)?;
    }
    Ok(())
}
