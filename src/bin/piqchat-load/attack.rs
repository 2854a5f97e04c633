//! The under-attack scenario: legitimate users measured while an attacker
//! floods the server, phase by phase.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use clap::{Args, ValueEnum};
use http::{HeaderValue, Method, Uri};
use piqchat_inbox::client::{self, HttpClient, RequestSigner, UserKey};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::pools::{Server, attachment, info_call, list_call, send_call};
use crate::probes::spawn_sampler;
use crate::protocols::{
    Call, CallErr, Conn, INFO_GET, PARCELS_SEND, Signature, call_on, grpc_call, sign_once,
};
use crate::report::percent;
use crate::scenarios::{Latency, ServerSample, latency};
use crate::{Protocol, RunArgs, check_loopback, parse_duration, runtime, write_json};

pub(crate) const UNDER_ATTACK: &str = "under-attack";
/// Declared length of a slow upload's body: far more than it sends.
pub(crate) const SLOW_BODY_BYTES: usize = 1024 * 1024;
/// Longest wait for one flood request; the flood goes on with the next.
pub(crate) const FLOOD_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a closed attack connection is opened again: keeps the
/// pressure up without a reconnect storm against a server that refuses.
pub(crate) const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Legitimate requests in flight at once per stream; more are counted as
/// `client:backlog` instead of piling up.
pub(crate) const LEGIT_MAX_IN_FLIGHT: usize = 512;
/// Keys whose invalid signatures are varied in (c).
pub(crate) const INVALID_KEYS: usize = 256;

#[derive(Args, Clone)]
#[command(next_help_heading = "under-attack scenario")]
pub(crate) struct AttackArgs {
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
    pub(crate) phases: Vec<Phase>,
    /// Source addresses of the attacker (127.0.0.0/8; the legitimate users
    /// connect from the address of --url). Several spread the attack.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2")]
    pub(crate) attack_from: Vec<Ipv4Addr>,
    /// HTTP/2 connections of each flood, per source address; the flood's
    /// requests in flight (--concurrency) are spread over them.
    #[arg(long, default_value_t = 8)]
    pub(crate) attack_connections: usize,
    /// Worker threads of the attacker's runtime (apart from the legitimate
    /// users' runtime, so that one does not delay the other's timers).
    #[arg(long, default_value_t = 1)]
    pub(crate) attack_threads: usize,
    /// Signed floods per second to prepare signatures of (a) for; once they
    /// run out the attacker signs as it goes (reported as signed_inline).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) attack_presign_rate: usize,
    /// Upper bound on flood requests per second of a phase (the flood stops
    /// when it has made this many times the phase's length).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) attack_max_rate: u64,
    /// Signatures per throwaway key in (a); 1 is a fresh key per request.
    #[arg(long, default_value_t = 1)]
    pub(crate) attack_nonces_per_key: usize,
    /// Slow uploads in (b): SendParcel over HTTP/1.1, JSON and gRPC-web,
    /// unsigned and signed by throwaway keys; headers sent, body trickled.
    #[arg(long, default_value_t = 500)]
    pub(crate) slow_uploads: usize,
    /// Body bytes each slow upload sends per second.
    #[arg(long, default_value_t = 4)]
    pub(crate) slow_upload_bytes_per_s: usize,
    /// Idle connections in (b): TCP connect, then nothing.
    #[arg(long, default_value_t = 2000)]
    pub(crate) idle_connections: usize,
    /// Of the idle connections, how many first make one HTTP/1.1 keep-alive
    /// request (GET /v1/info) and then stay idle.
    #[arg(long, default_value_t = 200)]
    pub(crate) idle_after_request: usize,
    /// Legitimate ListParcels per second, over all listers (open loop: the
    /// next request does not wait for the previous one).
    #[arg(long, default_value_t = 20.0)]
    pub(crate) legit_list_rate: f64,
    /// Legitimate registered users who list their inbox of 20 parcels.
    #[arg(long, default_value_t = 8)]
    pub(crate) legit_listers: usize,
    /// Legitimate sends per second (100 KiB attachment each), over all senders.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) legit_send_rate: f64,
    /// Legitimate registered senders, each to its own recipient who accepts it.
    #[arg(long, default_value_t = 4)]
    pub(crate) legit_senders: usize,
    /// Pause between phases.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) phase_pause: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    Baseline,
    A,
    B,
    C,
    All,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::A => "a",
            Phase::B => "b",
            Phase::C => "c",
            Phase::All => "all",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Phase::Baseline => "no attack",
            Phase::A => "valid signatures, throwaway keys",
            Phase::B => "slow uploads + idle connections",
            Phase::C => "invalid signatures",
            Phase::All => "a + b + c",
        }
    }

    pub(crate) fn valid_flood(self) -> bool {
        matches!(self, Phase::A | Phase::All)
    }

    pub(crate) fn invalid_flood(self) -> bool {
        matches!(self, Phase::C | Phase::All)
    }

    pub(crate) fn holds(self) -> bool {
        matches!(self, Phase::B | Phase::All)
    }
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct AttackResult {
    pub(crate) kind: String,
    pub(crate) label: Option<String>,
    /// What the server stored in (--backend).
    #[serde(default)]
    pub(crate) backend: Option<String>,
    pub(crate) url: String,
    /// Protocol of the legitimate calls; the floods use gRPC, the slow
    /// uploads and idle connections HTTP/1.1.
    pub(crate) protocol: Protocol,
    pub(crate) attack_from: Vec<String>,
    pub(crate) legit_list_rate: f64,
    pub(crate) legit_listers: usize,
    pub(crate) legit_send_rate: f64,
    pub(crate) legit_senders: usize,
    /// Attack's in-flight requests per flood, and its connections.
    pub(crate) concurrency: usize,
    pub(crate) attack_connections: usize,
    pub(crate) slow_uploads: usize,
    pub(crate) idle_connections: usize,
    pub(crate) setup_s: f64,
    /// The whole run, setup included.
    pub(crate) total_s: f64,
    pub(crate) phases: Vec<PhaseResult>,
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct PhaseResult {
    pub(crate) phase: Phase,
    /// The attack runs for warmup_s before the legitimate calls are
    /// measured for duration_s, and on until they have all been answered.
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    /// Preparing the attacker's signatures, before the phase's clock.
    pub(crate) prepare_s: f64,
    pub(crate) list: LegitResult,
    pub(crate) send: LegitResult,
    pub(crate) valid_flood: Option<FloodResult>,
    pub(crate) invalid_flood: Option<FloodResult>,
    pub(crate) slow_uploads: Option<HoldResult>,
    pub(crate) idle_connections: Option<HoldResult>,
    pub(crate) server: Option<ServerSample>,
    pub(crate) client_cpu_s: f64,
    pub(crate) machine_cpu_s: f64,
    pub(crate) other_cpu_s: f64,
    pub(crate) loadavg_start: f64,
    pub(crate) loadavg_end: f64,
}

/// The legitimate calls of one kind in one phase.
#[derive(Serialize, Deserialize, Clone, Default)]
pub(crate) struct LegitResult {
    /// Requests due in the measured window (rate × duration).
    pub(crate) scheduled: u64,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    /// Of the successful calls.
    pub(crate) latency: Latency,
    pub(crate) errors_by_status: BTreeMap<String, u64>,
    pub(crate) error_samples: BTreeMap<String, String>,
}

/// One flood of signed GetInfo calls.
#[derive(Serialize, Deserialize, Clone, Default)]
pub(crate) struct FloodResult {
    /// Requests answered (or failed) per second over the attack's whole run.
    pub(crate) rate_per_s: f64,
    pub(crate) requests: u64,
    /// By outcome: `ok`, `grpc:<Code>`, `transport`, `client:timeout`.
    pub(crate) by_status: BTreeMap<String, u64>,
    pub(crate) samples: BTreeMap<String, String>,
    /// Signatures of (a) prepared beforehand, and made during the phase
    /// because those ran out.
    pub(crate) presigned: usize,
    pub(crate) signed_inline: u64,
    pub(crate) connect_errors: u64,
    pub(crate) seconds: f64,
}

/// Connections the attacker holds open (slow uploads or idle).
#[derive(Serialize, Deserialize, Clone, Default)]
pub(crate) struct HoldResult {
    pub(crate) target: usize,
    /// Connections opened, counting reopenings after the server closed one.
    pub(crate) opened: u64,
    pub(crate) connect_errors: u64,
    /// Closed by the server without an answer.
    pub(crate) closed: u64,
    /// Answered by the server (then closed by the attacker), by status.
    pub(crate) answered: BTreeMap<String, u64>,
    pub(crate) samples: BTreeMap<String, String>,
    /// Still open when the attack stopped.
    pub(crate) open_at_end: u64,
    pub(crate) body_bytes_sent: u64,
}

pub(crate) fn under_attack_main(args: RunArgs) -> anyhow::Result<()> {
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
    if !args.also_url.is_empty() {
        bail!("under-attack drives one server: drop --also-url");
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
pub(crate) fn ipv4_target(uri: &Uri) -> anyhow::Result<SocketAddrV4> {
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
pub(crate) fn check_open_files(needed: usize) -> anyhow::Result<()> {
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
pub(crate) struct LegitOp {
    pub(crate) signer: RequestSigner,
    pub(crate) call: Call,
}

pub(crate) async fn under_attack(
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
        backend: args.backend.clone(),
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
pub(crate) async fn legit_conn(base: &str, protocol: Protocol) -> anyhow::Result<Conn> {
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
pub(crate) async fn run_phase(
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
    let sampler = spawn_sampler(args.server_pid.clone(), measure_from, end);

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
pub(crate) async fn legit_stream(
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

pub(crate) fn join_error(e: &tokio::task::JoinError) -> CallErr {
    CallErr {
        key: "client:panic".into(),
        message: e.to_string(),
    }
}

/// What one phase's attack does; see [`run_attack`].
pub(crate) struct AttackPlan {
    pub(crate) base: String,
    pub(crate) authority: String,
    pub(crate) tag: String,
    pub(crate) target: SocketAddrV4,
    pub(crate) sources: Vec<Ipv4Addr>,
    pub(crate) connections: usize,
    /// Requests in flight per flood.
    pub(crate) concurrency: usize,
    pub(crate) info_uri: Uri,
    /// (a): presigned valid signatures of throwaway keys.
    pub(crate) valid: Option<Vec<Signature>>,
    /// (c): Signature-Input templates to put fresh nonces in.
    pub(crate) invalid: Option<Arc<Vec<InvalidTemplate>>>,
    pub(crate) nonces_per_key: usize,
    pub(crate) slow_uploads: usize,
    pub(crate) idle: usize,
    pub(crate) idle_after_request: usize,
    pub(crate) bytes_per_s: usize,
    /// Requests per flood, at most.
    pub(crate) max_requests: u64,
    /// The held connections are opened spread over this time.
    pub(crate) ramp: Duration,
    pub(crate) deadline: Instant,
}

#[derive(Default)]
pub(crate) struct AttackTally {
    pub(crate) valid: Option<FloodResult>,
    pub(crate) invalid: Option<FloodResult>,
    pub(crate) slow: Option<HoldResult>,
    pub(crate) idle: Option<HoldResult>,
}

/// Runs the phase's attack until `stop` turns true or the plan's deadline.
pub(crate) async fn run_attack(
    mut plan: AttackPlan,
    stop: tokio::sync::watch::Receiver<bool>,
) -> AttackTally {
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

pub(crate) fn split_pool(mut pool: Vec<Signature>, parts: usize) -> Vec<Vec<Signature>> {
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
pub(crate) fn throwaway_signatures(
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
pub(crate) struct InvalidTemplate {
    pub(crate) before_nonce: String,
    pub(crate) after_nonce: String,
    pub(crate) label: String,
}

/// Signature-Inputs of real keys (so the server gets as far as verifying),
/// to be sent with fresh nonces and random signature bytes.
pub(crate) fn invalid_templates(uri: &Uri, tag: &str) -> anyhow::Result<Vec<InvalidTemplate>> {
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
pub(crate) enum Forge {
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
    pub(crate) fn next(
        &mut self,
        plan: &AttackPlan,
        inline: &mut u64,
    ) -> anyhow::Result<Signature> {
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
pub(crate) async fn attack_channels(plan: &AttackPlan) -> (Vec<Channel>, u64, Option<String>) {
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
pub(crate) async fn flood(
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
pub(crate) enum HoldKind {
    /// Connect, send nothing.
    Idle,
    /// One GET /v1/info on a keep-alive connection, then nothing.
    KeepAlive,
    /// SendParcel headers, then the body a few bytes per second.
    Upload { grpc_web: bool, signed: bool },
}

/// How one held connection ended.
pub(crate) enum Held {
    /// Still open when the attack stopped.
    Open,
    /// The server closed it without a word.
    Closed(String),
    /// The server answered with this status line's code.
    Answered(String, String),
}

/// Holds one connection per kind open (reopening what the server closes)
/// until the attack stops.
pub(crate) async fn hold_all(
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
pub(crate) async fn stopped_within(
    stop: &mut tokio::sync::watch::Receiver<bool>,
    delay: Duration,
) -> bool {
    tokio::select! {
        () = stopped(stop) => {}
        () = tokio::time::sleep(delay) => {}
    }
    *stop.borrow()
}

/// Resolves when the attack stops (or its controller is gone).
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = stop.wait_for(|&s| s).await.map(|_| ());
}

/// Drives one held connection until the server ends it or the attack stops.
pub(crate) async fn hold_one(
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
pub(crate) fn answered(bytes: &[u8]) -> Held {
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
pub(crate) async fn read_response(
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

pub(crate) fn by_status_text(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn flood_cell(f: Option<&FloodResult>) -> String {
    f.map_or_else(
        || "-".into(),
        |f| format!("{:.0}/s {}", f.rate_per_s, by_status_text(&f.by_status)),
    )
}

pub(crate) fn hold_cell(h: Option<&HoldResult>) -> String {
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

pub(crate) fn send_cell(s: &LegitResult) -> String {
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

pub(crate) fn print_attack(r: &AttackResult) {
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

pub(crate) fn attack_markdown(r: &AttackResult) -> String {
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
