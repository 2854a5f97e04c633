//! The timed run of one scenario: pre-signed pools, workers, latency.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::bail;
use http::Uri;
use piqchat_inbox::{
    client::{self, HttpClient, RequestSigner},
    pb,
};
use serde::{Deserialize, Serialize};

use crate::attack::under_attack_main;
use crate::pools::{Server, setup};
use crate::probes::spawn_sampler;
use crate::protocols::{CallErr, Conn, Op, Worker, WorkerPlan, sign_once};
use crate::report::print_table;
use crate::{Protocol, RunArgs, Scenario, runtime, write_json};

#[derive(Serialize, Deserialize, Default, Clone)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub(crate) struct ServerSample {
    /// The (first) server's PID; with several instances `pids` lists them
    /// all, and RSS and CPU below are their sums (VmHWM: the sum of each
    /// one's lifetime peak).
    pub(crate) pid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pids: Vec<u32>,
    /// Highest VmRSS sampled during warm-up and timed phase (KiB).
    pub(crate) peak_rss_kib: u64,
    /// VmRSS at the start of the timed phase (KiB).
    pub(crate) start_rss_kib: u64,
    /// VmHWM at the end: the process's lifetime peak (KiB).
    pub(crate) vm_hwm_kib: u64,
    /// Server CPU time (user + system) during the timed phase.
    pub(crate) cpu_s: f64,
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct RunResult {
    pub(crate) kind: String,
    pub(crate) scenario: Scenario,
    pub(crate) protocol: Protocol,
    pub(crate) label: Option<String>,
    /// What the server stored in (--backend), e.g. sqlite, postgres,
    /// postgres-2.
    #[serde(default)]
    pub(crate) backend: Option<String>,
    /// The setup's server (--url).
    pub(crate) url: String,
    /// Every server the timed connections were spread over (--url, then
    /// each --also-url), when more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) urls: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    /// RPCs per operation (accept: create + accept).
    pub(crate) calls_per_op: u32,
    pub(crate) ops: u64,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) throughput_ops_s: f64,
    /// Response body bytes received per second (download).
    pub(crate) received_mib_s: f64,
    pub(crate) latency: Latency,
    pub(crate) errors_by_status: BTreeMap<String, u64>,
    pub(crate) error_samples: BTreeMap<String, String>,
    pub(crate) warmup_ops: u64,
    pub(crate) setup_s: f64,
    pub(crate) presigned: usize,
    pub(crate) presign_s: f64,
    /// Signatures made inside the timed phase (the pool ran out): non-zero
    /// means the generator competed with the server for CPU.
    pub(crate) signed_inline: u64,
    /// Generator CPU time during the timed phase.
    pub(crate) client_cpu_s: f64,
    pub(crate) server: Option<ServerSample>,
    /// CPU time of the whole machine during the timed phase, and the part
    /// of it that was neither the server nor the generator: other work on
    /// a shared machine that the numbers compete with.
    #[serde(default)]
    pub(crate) machine_cpu_s: f64,
    #[serde(default)]
    pub(crate) other_cpu_s: f64,
    /// /proc/loadavg (1 min) at the start and end of the timed phase.
    #[serde(default)]
    pub(crate) loadavg_start: f64,
    #[serde(default)]
    pub(crate) loadavg_end: f64,
    /// GetInfo's media_parcels_waiting at the start (the database's size).
    pub(crate) db_media_parcels_waiting: u32,
    /// The server's CPU time per call (µs; accept counts its two calls) and
    /// the cores it used during the timed phase, when its PID was given:
    /// the cost of a call independent of how busy the machine was.
    #[serde(default)]
    pub(crate) server_cpu_us_per_call: Option<f64>,
    #[serde(default)]
    pub(crate) server_cores: Option<f64>,
    /// Which timed phase this was (1, 2, …) when --rounds ran several after
    /// one setup on the same server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) round: Option<u32>,
    /// backlog: the parcels `seed-backlog` left waiting for the recipient
    /// before the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) backlog_parcels: Option<u64>,
    /// The server measured: absent for this one, `peer` for the original
    /// Node server (--peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
}

#[derive(Default)]
pub(crate) struct WorkerStats {
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) samples: BTreeMap<String, String>,
    pub(crate) bytes: u64,
    pub(crate) warmup_ops: u64,
    pub(crate) signed_inline: u64,
}

pub(crate) fn run_main(args: RunArgs) -> anyhow::Result<()> {
    let Some(scenario) = args.scenario else {
        bail!("--scenario is required (see --help)");
    };
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if scenario == Scenario::UnderAttack {
        return under_attack_main(args);
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    args.urls()?;
    let results = runtime(args.threads)?.block_on(run(args.clone(), scenario))?;
    print_table(&results);
    if let Some(path) = &args.json {
        // One round: the result alone, as it always was; several: a list.
        match results.as_slice() {
            [one] => write_json(path, one)?,
            all => write_json(path, &all)?,
        }
    }
    Ok(())
}

/// One setup, then `--rounds` timed phases on it, one result each.
pub(crate) async fn run(args: RunArgs, scenario: Scenario) -> anyhow::Result<Vec<RunResult>> {
    let urls = args.urls()?;
    let base = urls[0].clone();
    let setup_start = Instant::now();
    let (ops, backlog_parcels) = if args.peer {
        (crate::pools::peer_setup(&args, scenario)?, None)
    } else {
        let mut server = Server::connect(&base).await?;
        let backlog = match (&args.recipient_key, scenario) {
            (Some(path), Scenario::Backlog) => Some(crate::seed::BacklogKey::read(path)?),
            (None, Scenario::Backlog) => {
                bail!(
                    "the backlog scenario needs --recipient-key (a file from `piqchat-load seed-backlog`)"
                )
            }
            _ => None,
        };
        let parcels = backlog.as_ref().map(|(k, _)| k.parcels);
        let ops = setup(&mut server, &args, scenario, backlog.map(|(_, key)| key)).await?;
        (ops, parcels)
    };
    let setup_s = setup_start.elapsed().as_secs_f64();
    let mut results = Vec::new();
    for round in 1..=args.rounds {
        let mut result = timed(&args, scenario, &urls, ops.clone(), setup_s).await?;
        result.round = (args.rounds > 1).then_some(round);
        result.backlog_parcels = backlog_parcels;
        result.target = args.peer.then(|| "peer".to_owned());
        results.push(result);
    }
    Ok(results)
}

/// GetInfo's count of waiting media parcels (0 when it cannot be read, as
/// from the peer).
async fn media_parcels_waiting(base: &str) -> u32 {
    let Ok(channel) = client::connect_anonymous(base).await else {
        return 0;
    };
    pb::info_service_client::InfoServiceClient::new(channel)
        .get_info(pb::GetInfoRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().statistics)
        .map_or(0, |s| s.media_parcels_waiting)
}

/// One warm-up and timed phase over `ops` (signed afresh).
async fn timed(
    args: &RunArgs,
    scenario: Scenario,
    urls: &[String],
    ops: Vec<(Op, Option<RequestSigner>)>,
    setup_s: f64,
) -> anyhow::Result<RunResult> {
    let base = urls[0].clone();
    let db_media_parcels_waiting = if args.peer {
        0
    } else {
        media_parcels_waiting(&base).await
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
    let plans = presign(urls, args.protocol, ops, per_worker)?;
    let presign_s = presign_start.elapsed().as_secs_f64();
    let presigned: usize = plans.iter().map(|p| p.signatures.len()).sum();

    // Connections, one per worker, opened before the clock starts.
    // Connection i goes to server i mod n.
    let mut workers = Vec::with_capacity(plans.len());
    for (i, plan) in plans.into_iter().enumerate() {
        let url = &urls[i % urls.len()];
        let conn = match args.protocol {
            Protocol::Grpc => Conn::Grpc(
                tonic::client::Grpc::new(client::connect_anonymous(url).await?)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            ),
            Protocol::GrpcWeb | Protocol::Json => Conn::Http(Box::new(HttpClient::new(url, None))),
        };
        workers.push(Worker {
            protocol: args.protocol,
            conn,
            base: url.clone(),
            plan,
            signed_inline: 0,
        });
    }
    let calls_per_op = workers.first().map_or(1, |w| w.plan.op.calls());

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let sampler = spawn_sampler(args.server_pid.clone(), measure_from, end);

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
    let calls = (stats.ok + errors) * u64::from(calls_per_op);
    let server_cpu_s = cpu.server.as_ref().map(|s| s.cpu_s);
    Ok(RunResult {
        kind: "run".into(),
        scenario,
        protocol: args.protocol,
        label: args.label.clone(),
        backend: args.backend.clone(),
        url: base,
        urls: if urls.len() > 1 {
            urls.to_vec()
        } else {
            Vec::new()
        },
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
        server_cpu_us_per_call: server_cpu_s
            .filter(|_| calls > 0)
            .map(|cpu_s| cpu_s * 1e6 / calls as f64),
        server_cores: server_cpu_s.map(|cpu_s| cpu_s / duration_s),
        round: None,
        backlog_parcels: None,
        target: None,
    })
}

/// Makes each worker's signatures, on all cores; worker i's are for
/// server `bases[i % n]`.
pub(crate) fn presign(
    bases: &[String],
    protocol: Protocol,
    ops: Vec<(Op, Option<RequestSigner>)>,
    per_worker: usize,
) -> anyhow::Result<Vec<WorkerPlan>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut plans: Vec<(&str, WorkerPlan)> = ops
        .into_iter()
        .enumerate()
        .map(|(i, (op, signer))| {
            let plan = WorkerPlan {
                op,
                signer,
                signatures: Vec::new(),
            };
            (bases[i % bases.len()].as_str(), plan)
        })
        .collect();
    let chunk = plans.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = plans
            .chunks_mut(chunk)
            .map(|plans| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for (base, plan) in plans {
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
    Ok(plans.into_iter().map(|(_, plan)| plan).collect())
}

pub(crate) async fn drive(
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

pub(crate) fn merge(into: &mut WorkerStats, from: WorkerStats) {
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

pub(crate) fn latency(sorted_us: &[u32]) -> Latency {
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
