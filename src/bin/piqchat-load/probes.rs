//! Measurements beside the load: the server's CPU and memory from `/proc`,
//! cold start, and the disk's fsync rate.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use piqchat_inbox::{
    client::{self},
    clock::Clock,
    pb,
};
use serde::{Deserialize, Serialize};

use crate::pools::attachment;
use crate::scenarios::ServerSample;
use crate::{ColdstartArgs, FsyncArgs, write_json};

/// A `kB` field of `/proc/<pid>/status`.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of `/proc/<who>/stat` (`self` or a pid).
pub(crate) fn proc_cpu_s(who: &str) -> Option<f64> {
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
pub(crate) fn machine_cpu_s() -> Option<f64> {
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

pub(crate) fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// What the sampler saw during the timed phase.
pub(crate) struct CpuSample {
    pub(crate) server: Option<ServerSample>,
    pub(crate) client_cpu_s: f64,
    pub(crate) machine_cpu_s: f64,
    pub(crate) loadavg_start: f64,
    pub(crate) loadavg_end: f64,
}

#[derive(Clone, Copy, Default)]
pub(crate) struct CpuMark {
    pub(crate) client: f64,
    pub(crate) machine: f64,
    pub(crate) server: f64,
}

impl CpuMark {
    /// CPU times now; `server` sums those of every PID in `pids`.
    pub(crate) fn now(pids: &[u32]) -> Self {
        CpuMark {
            client: proc_cpu_s("self").unwrap_or(0.0),
            machine: machine_cpu_s().unwrap_or(0.0),
            server: pids.iter().filter_map(|p| proc_cpu_s(&p.to_string())).sum(),
        }
    }
}

/// `field` of /proc/PID/status summed over `pids` (KiB); `None` when no
/// process could be read.
pub(crate) fn status_sum_kib(pids: &[u32], field: &str) -> Option<u64> {
    pids.iter()
        .filter_map(|&p| proc_status_kib(p, field))
        .reduce(|a, b| a + b)
}

/// Samples the servers' RSS every 100 ms from now to `end`, and CPU times
/// exactly at the start and end of the timed phase. Several PIDs (the
/// instances of one cluster) are measured as one server: CPU times and RSS
/// are summed.
pub(crate) fn spawn_sampler(
    pids: Vec<u32>,
    measure_from: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<CpuSample> {
    tokio::spawn(async move {
        let mut server = pids.first().map(|&pid| ServerSample {
            pid,
            pids: if pids.len() > 1 {
                pids.clone()
            } else {
                Vec::new()
            },
            ..ServerSample::default()
        });
        let mut start_mark: Option<(CpuMark, f64)> = None;
        let mut next_rss = Instant::now();
        loop {
            let now = Instant::now();
            if start_mark.is_none() && now >= measure_from {
                start_mark = Some((CpuMark::now(&pids), loadavg()));
                if let Some(s) = server.as_mut() {
                    s.start_rss_kib = status_sum_kib(&pids, "VmRSS").unwrap_or(0);
                }
            }
            if now >= next_rss {
                if let Some(s) = server.as_mut()
                    && let Some(rss) = status_sum_kib(&pids, "VmRSS")
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
        let stop = CpuMark::now(&pids);
        let (start, loadavg_start) = start_mark.unwrap_or((stop, 0.0));
        if let Some(s) = server.as_mut() {
            s.cpu_s = stop.server - start.server;
            s.vm_hwm_kib = status_sum_kib(&pids, "VmHWM").unwrap_or(0);
            if let Some(rss) = status_sum_kib(&pids, "VmRSS") {
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

#[derive(Serialize, Deserialize)]
pub(crate) struct ColdstartResult {
    pub(crate) kind: String,
    /// Spawn → first answered GetInfo, on an existing database.
    pub(crate) median_ms: f64,
    pub(crate) min_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) runs_ms: Vec<f64>,
    /// The same on a new, empty database (migrations and key generation).
    pub(crate) fresh_median_ms: f64,
    pub(crate) fresh_runs_ms: Vec<f64>,
    /// VmRSS of an idle server after start-up.
    pub(crate) idle_rss_kib: u64,
    /// Of which anonymous memory: what the server allocated (heap, stacks).
    pub(crate) idle_rss_anon_kib: u64,
    /// Of which file pages: the binary's and libraries' code and data mapped
    /// from the page cache (shared, and dropped first under memory pressure).
    pub(crate) idle_rss_file_kib: u64,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) struct Spawned {
    pub(crate) child: std::process::Child,
    pub(crate) url: String,
}

pub(crate) fn spawn_server(bin: &Path, dir: &Path) -> anyhow::Result<Spawned> {
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

pub(crate) async fn wait_ready(url: &str, deadline: Duration) -> anyhow::Result<()> {
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

pub(crate) fn stop_server(mut s: Spawned) -> anyhow::Result<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status();
    s.child.wait()?;
    Ok(())
}

pub(crate) async fn start_once(bin: &Path, dir: &Path) -> anyhow::Result<(f64, Spawned)> {
    let t = Instant::now();
    let spawned = spawn_server(bin, dir)?;
    wait_ready(&spawned.url, Duration::from_secs(30)).await?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, spawned))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) async fn coldstart(args: ColdstartArgs) -> anyhow::Result<()> {
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
    let (mut idle_rss_kib, mut idle_rss_anon_kib, mut idle_rss_file_kib) = (0, 0, 0);
    for i in 0..args.runs.max(1) {
        let (ms, s) = start_once(&bin, &existing).await?;
        runs.push(ms);
        if i + 1 == args.runs.max(1) {
            tokio::time::sleep(args.idle).await;
            let pid = s.child.id();
            idle_rss_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
            idle_rss_anon_kib = proc_status_kib(pid, "RssAnon").unwrap_or(0);
            idle_rss_file_kib = proc_status_kib(pid, "RssFile").unwrap_or(0);
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
        idle_rss_anon_kib,
        idle_rss_file_kib,
    };
    println!(
        "cold start (spawn → first GetInfo): median {:.1} ms (min {:.1}, max {:.1}, {} runs); new database: median {:.1} ms ({} runs); idle RSS {:.1} MiB ({:.1} anonymous, {:.1} file pages)",
        result.median_ms,
        result.min_ms,
        result.max_ms,
        result.runs_ms.len(),
        result.fresh_median_ms,
        result.fresh_runs_ms.len(),
        result.idle_rss_kib as f64 / 1024.0,
        result.idle_rss_anon_kib as f64 / 1024.0,
        result.idle_rss_file_kib as f64 / 1024.0,
    );
    if let Some(path) = &args.json {
        write_json(path, &result)?;
    }
    Ok(())
}

pub(crate) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "piqchat-load-{}-{}",
        std::process::id(),
        Clock::system().now()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[derive(Serialize, Deserialize)]
pub(crate) struct FsyncResult {
    pub(crate) kind: String,
    pub(crate) dir: String,
    /// 4 KiB overwrite in place + fdatasync.
    pub(crate) overwrite_ops_s: f64,
    /// 4 KiB append + fdatasync (how a WAL grows).
    pub(crate) append_ops_s: f64,
    /// What storing one attachment costs the disk (as `blobs.rs` does it):
    /// create a 100 KiB file, fsync it, rename it into place, fsync the
    /// folder. One writer, then 8 at once (the default upload limit).
    #[serde(default)]
    pub(crate) blob_100k_ops_s: f64,
    #[serde(default)]
    pub(crate) blob_100k_8_writers_ops_s: f64,
}

/// Attachment-style durable file writes per second with `writers` threads.
pub(crate) fn blob_loop(dir: &Path, duration: Duration, writers: usize) -> anyhow::Result<f64> {
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

pub(crate) fn fsync_loop(path: &Path, duration: Duration, append: bool) -> anyhow::Result<f64> {
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

pub(crate) fn fsync(args: FsyncArgs) -> anyhow::Result<()> {
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
