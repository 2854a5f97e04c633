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
//!
//! Code map: this file holds the command line; [`protocols`] makes one call
//! over gRPC, gRPC-web or JSON; [`pools`] sets users up through the public API
//! and builds each scenario's requests; [`scenarios`] runs the timed phase;
//! [`attack`] is the under-attack scenario; [`probes`] samples the server's
//! CPU and memory and measures cold start and the disk; [`seed`] fills a large
//! database; [`report`] prints and merges results.

mod attack;
mod ceilings;
mod pools;
mod probes;
mod protocols;
mod report;
mod scenarios;
mod seed;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Uri;
use serde::{Deserialize, Serialize};

use attack::AttackArgs;
use probes::{coldstart, fsync};
use scenarios::run_main;
use seed::retention;

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
/// send-one (100 KiB attachments from every connection into ONE recipient;
/// run it with a high MAX_WAITING_PARCELS_PER_RECIPIENT, and with --rounds 2
/// to see whether the second run keeps the first's rate), backlog (send-one
/// into the recipient made by `piqchat-load seed-backlog`, --recipient-key),
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
///
/// Two instances on one PostgreSQL database, connections spread over both:
///   piqchat-load --url http://127.0.0.1:8080 --also-url http://127.0.0.1:8081 \
///     --database postgres://postgres@127.0.0.1:5432/inbox --scenario list \
///     --server-pid $PID1 --server-pid $PID2 --backend postgres-2
#[derive(Parser)]
#[command(version, verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Run one scenario (the default; the same options as without a subcommand).
    Run(Box<RunArgs>),
    /// Fill a database with parcels of other users, through the project's
    /// Store, in large transactions. Stop the server first (or seed before
    /// its first start).
    Seed(SeedArgs),
    /// Make one recipient with a backlog of waiting parcels, each with an
    /// attachment of its own, through the project's Store, and write the
    /// recipient's key for `--scenario backlog --recipient-key`. Stop the
    /// server first (or seed before its first start).
    SeedBacklog(SeedBacklogArgs),
    /// Time one retention run over a database (e.g. one made by `seed`): every
    /// parcel in it is treated as expired, as 91 days later. Stop the server
    /// first.
    Retention(RetentionArgs),
    /// Measure cold start: spawn the server, poll GetInfo until it answers,
    /// stop it; repeat and report the median. Also reports idle RSS.
    Coldstart(ColdstartArgs),
    /// Measure the disk's synchronous write rate: 4 KiB write + fdatasync.
    Fsync(FsyncArgs),
    /// Serve every request with the smallest answer of its protocol (a
    /// minimal hyper server): the ceiling the scenarios are compared with.
    Hello(HelloArgs),
    /// Measure Ed25519 verification per second (one core, and times the
    /// cores): the ceiling of any signed call.
    Verify(VerifyArgs),
    /// Merge result JSON files (from runs, coldstart, fsync) into one JSON
    /// document and a markdown table.
    Report(ReportArgs),
}

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Server base URL (loopback only); setup goes through it.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// Another server of the same cluster (one database), repeatable: the
    /// timed connections are spread over --url and these, connection i on
    /// URL i mod n.
    #[arg(long = "also-url", value_name = "URL")]
    pub(crate) also_url: Vec<String>,
    /// Which workload to run.
    #[arg(long, value_enum)]
    pub(crate) scenario: Option<Scenario>,
    /// Protocol of the timed requests (setup always uses gRPC).
    #[arg(long, value_enum, default_value = "grpc")]
    pub(crate) protocol: Protocol,
    /// Connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Length of the timed phase, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Load before the timed phase, not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// A sign-up invite link (or accept URL) for the setup's first user.
    #[arg(long)]
    pub(crate) invite: Option<String>,
    /// The server's database, in which sign-up invites are created
    /// directly: its SQLite file (WAL allows this beside the running
    /// server) or its postgres:// URL (loopback only).
    #[arg(long, value_name = "FILE|URL")]
    pub(crate) database: Option<String>,
    /// PID of the server, to sample its RSS and CPU time during the run;
    /// repeat it for every instance of a cluster (their CPU times and RSS
    /// are summed).
    #[arg(long = "server-pid", value_name = "PID")]
    pub(crate) server_pid: Vec<u32>,
    /// What the server stores in (e.g. sqlite, postgres, postgres-2): kept
    /// in the result and shown in the report.
    #[arg(long)]
    pub(crate) backend: Option<String>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Signatures to prepare before the timed phase, over all connections;
    /// default: a per-scenario rate estimate times (warm-up + duration). If a
    /// connection runs out it signs inline and the result says so.
    #[arg(long)]
    pub(crate) presign: Option<usize>,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Free-form label stored in the result (e.g. the git commit).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Timed phases (each with its warm-up) run one after the other after
    /// one setup, on the same users and the same server: with send-one, a
    /// second round shows what the first left waiting costs. Each round is
    /// a result of its own.
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: u32,
    /// The key file `piqchat-load seed-backlog` wrote: the backlog
    /// scenario sends into that recipient.
    #[arg(long, value_name = "FILE")]
    pub(crate) recipient_key: Option<PathBuf>,
    /// --url is the original Node server (piqchat-inbox-server), not this
    /// one: its routes and answers. Only `info` (its unsigned GET
    /// <prefix>/info) is implemented, over JSON.
    #[arg(long)]
    pub(crate) peer: bool,
    /// Where the peer mounts its API routes (its `src/main.js`).
    #[arg(long, default_value = "/api")]
    pub(crate) peer_prefix: String,
    #[command(flatten)]
    pub(crate) attack: AttackArgs,
}

#[derive(Args)]
pub(crate) struct RetentionArgs {
    /// The database file.
    #[arg(long)]
    pub(crate) database: PathBuf,
    /// The attachments folder of that database (default: a temp folder).
    #[arg(long)]
    pub(crate) attachments: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct SeedArgs {
    /// The database file (created if missing).
    #[arg(long)]
    pub(crate) database: PathBuf,
    /// Parcels to insert.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) parcels: u64,
    /// Recipients they are spread over (default: one per 100 parcels).
    #[arg(long)]
    pub(crate) users: Option<u64>,
    /// Parcels per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) batch: usize,
    /// Write a JSON summary to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct SeedBacklogArgs {
    /// The database file (created if missing).
    #[arg(long)]
    pub(crate) database: PathBuf,
    /// The server's attachments folder (PARCEL_ATTACHMENTS_UPLOAD_PATH).
    #[arg(long)]
    pub(crate) attachments: PathBuf,
    /// Waiting parcels for the one recipient.
    #[arg(long)]
    pub(crate) parcels: u64,
    /// Each parcel's attachment size, as stored in its row (the quota sums
    /// it); the file is sparse: it has that length but no data blocks.
    #[arg(long, default_value_t = 100 * 1024)]
    pub(crate) attachment_bytes: u64,
    /// Where the recipient's key goes (JSON; a secret, for benchmarks only).
    #[arg(long, value_name = "FILE")]
    pub(crate) key_out: PathBuf,
}

#[derive(Args)]
pub(crate) struct ColdstartArgs {
    /// The server binary.
    #[arg(long, default_value = "target/release/piqchat-inbox")]
    pub(crate) server_bin: PathBuf,
    /// Starts on an existing database (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub(crate) runs: usize,
    /// Additional starts, each on a new, empty database.
    #[arg(long, default_value_t = 5)]
    pub(crate) fresh_runs: usize,
    /// Folder for the databases (default: a new temp folder).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// How long the last server stays idle before its RSS is read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) idle: Duration,
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct FsyncArgs {
    /// Folder on the disk to measure (the database's folder).
    #[arg(long, default_value = ".")]
    pub(crate) dir: PathBuf,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct HelloArgs {
    /// Address to listen on (loopback only); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) bind: std::net::SocketAddr,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// Result files written with --json.
    pub(crate) files: Vec<PathBuf>,
    /// The merged JSON document.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// The markdown table.
    #[arg(long)]
    pub(crate) markdown: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Protocol {
    Grpc,
    GrpcWeb,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    Info,
    List,
    #[value(name = "send-100k")]
    #[serde(rename = "send-100k")]
    Send100k,
    SendGroup,
    SendOne,
    Backlog,
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
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Info => "info",
            Scenario::List => "list",
            Scenario::Send100k => "send-100k",
            Scenario::SendGroup => "send-group",
            Scenario::SendOne => "send-one",
            Scenario::Backlog => "backlog",
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
    pub(crate) fn rate_hint(self) -> usize {
        match self {
            // under-attack signs its legitimate calls as it goes and sizes
            // the attacker's signatures from its own options.
            Scenario::Info | Scenario::InfoBig | Scenario::UnderAttack => 0,
            Scenario::List | Scenario::ListBig | Scenario::Exchange => 15_000,
            // Two signed calls per pair.
            Scenario::Accept => 10_000,
            Scenario::Download1m => 4_000,
            Scenario::Send100k | Scenario::SendOne | Scenario::Backlog => 3_000,
            Scenario::SendGroup => 1_500,
        }
    }
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Json => "json",
        }
    }
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
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

pub(crate) fn main() -> anyhow::Result<()> {
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
        Some(Cmd::Seed(args)) => runtime(1)?.block_on(seed::seed(args)),
        Some(Cmd::SeedBacklog(args)) => runtime(1)?.block_on(seed::seed_backlog(args)),
        Some(Cmd::Retention(args)) => runtime(1)?.block_on(retention(args)),
        Some(Cmd::Coldstart(args)) => runtime(1)?.block_on(coldstart(args)),
        Some(Cmd::Fsync(args)) => fsync(args),
        Some(Cmd::Hello(args)) => ceilings::hello(args),
        Some(Cmd::Verify(args)) => ceilings::verify(args),
        Some(Cmd::Report(args)) => report::report(args),
    }
}

pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

impl RunArgs {
    /// Every server URL, --url first, each checked to be loopback and
    /// without a trailing slash.
    pub(crate) fn urls(&self) -> anyhow::Result<Vec<String>> {
        std::iter::once(&self.url)
            .chain(&self.also_url)
            .map(|url| {
                check_loopback(url)?;
                Ok(url.trim_end_matches('/').to_owned())
            })
            .collect()
    }
}

/// Whether `host` names this machine (a Unix socket folder counts).
pub(crate) fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.starts_with('/')
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses anything but loopback targets.
pub(crate) fn check_loopback(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url.parse().context("--url is not a URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://… (plain HTTP/2 and HTTP/1.1 on loopback)");
    }
    let host = uri.host().unwrap_or("");
    if host.starts_with('/') || !is_local_host(host) {
        bail!("--url must point at this machine (127.0.0.0/8, ::1 or localhost), not {host:?}");
    }
    Ok(uri)
}
