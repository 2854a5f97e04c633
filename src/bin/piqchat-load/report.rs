//! Printing results and merging them into one report.

use anyhow::Context as _;

use crate::attack::{AttackResult, UNDER_ATTACK, attack_markdown, print_attack};
use crate::ceilings::{Ceilings, HELLO_LABEL};
use crate::scenarios::RunResult;
use crate::{ReportArgs, write_json};

/// CPU seconds over a wall-clock span as a percentage of one core.
pub(crate) fn percent(cpu_s: f64, wall_s: f64) -> String {
    format!("{:.0}%", 100.0 * cpu_s / wall_s)
}

impl RunResult {
    /// The server's peak RSS (MiB), cores used and CPU µs per call as
    /// text, when its PID was given.
    pub(crate) fn server_usage(&self) -> Option<(String, String, String)> {
        self.server.as_ref().map(|s| {
            (
                format!("{:.1}", s.peak_rss_kib as f64 / 1024.0),
                self.server_cores
                    .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                self.server_cpu_us_per_call
                    .map_or_else(|| "-".into(), |us| format!("{us:.0}")),
            )
        })
    }

    /// The backend as a table cell ("-" when not given).
    pub(crate) fn backend_name(&self) -> &str {
        self.backend.as_deref().unwrap_or("-")
    }

    /// Errors by status as `<status><kv><count>` joined by `sep`; `None`
    /// when there were none.
    pub(crate) fn errors_text(&self, kv: &str, sep: &str) -> Option<String> {
        (!self.errors_by_status.is_empty()).then(|| {
            self.errors_by_status
                .iter()
                .map(|(k, v)| format!("{k}{kv}{v}"))
                .collect::<Vec<_>>()
                .join(sep)
        })
    }
}

pub(crate) fn print_table(results: &[RunResult]) {
    println!(
        "{:<12} {:<8} {:<10} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}  errors",
        "scenario",
        "protocol",
        "backend",
        "conns",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "MiB/s",
        "peak RSS",
        "srv cores",
        "srv µs/call",
        "gen CPU",
        "other"
    );
    for r in results {
        let (rss, cores, us) = r
            .server_usage()
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        let errors = r.errors_text("=", " ").unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:<8} {:<10} {:>5} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>9} {:>9} {:>9} {:>8} {:>8}  {}",
            r.scenario.name(),
            r.protocol.name(),
            r.backend_name(),
            r.concurrency,
            r.throughput_ops_s,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.received_mib_s,
            rss,
            cores,
            us,
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

pub(crate) fn report(args: ReportArgs) -> anyhow::Result<()> {
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
    // Backends of one scenario side by side, SQLite (the default) first.
    runs.sort_by(|a, b| {
        let key = |r: &RunResult| {
            (
                r.scenario,
                r.protocol,
                r.backend.as_deref().is_some_and(|b| b != "sqlite"),
                r.backend.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    if !runs.is_empty() {
        print_table(&runs);
    }
    let is_hello = |r: &RunResult| r.label.as_deref() == Some(HELLO_LABEL);
    let mut ceilings = Ceilings::default();
    for r in runs.iter().filter(|r| is_hello(r)) {
        ceilings.hello.insert(r.protocol, r.throughput_ops_s);
    }
    for v in &others {
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("verify") => ceilings.verify = v["ceiling_s"].as_f64(),
            Some("fsync") => ceilings.files = v["blob_100k_8_writers_ops_s"].as_f64(),
            _ => {}
        }
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
            Some("verify") => md.push_str(&format!(
                "- Ed25519 verification: **{:.0}/s** on one core ({:.1} µs each), {:.0}/s on {} cores.\n",
                v["per_core_s"].as_f64().unwrap_or(0.0),
                1e6 / v["per_core_s"].as_f64().unwrap_or(f64::INFINITY),
                v["ceiling_s"].as_f64().unwrap_or(0.0),
                v["cores"],
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
        md.push_str("| scenario | protocol | backend | conns | ops/s | p50 ms | p90 ms | p99 ms | max ms | MiB/s | server peak RSS MiB | server cores | server CPU µs/call | generator CPU | other CPU | ceiling ops/s | of ceiling | errors |\n");
        md.push_str(
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &runs {
            let (ceiling, fraction) = match (is_hello(r), ceilings.of(r)) {
                (true, _) | (_, None) => ("-".to_owned(), "-".to_owned()),
                (false, Some((what, rate))) => (
                    format!("{rate:.0} ({what})"),
                    format!("{:.2}", r.throughput_ops_s / rate),
                ),
            };
            let scenario = if is_hello(r) {
                HELLO_LABEL
            } else {
                r.scenario.name()
            };
            let (rss, cores, us) = r
                .server_usage()
                .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
            let errors = r.errors_text(": ", ", ").unwrap_or_else(|| "0".into());
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                scenario,
                r.protocol.name(),
                r.backend_name(),
                r.concurrency,
                r.throughput_ops_s,
                r.latency.p50_ms,
                r.latency.p90_ms,
                r.latency.p99_ms,
                r.latency.max_ms,
                r.received_mib_s,
                rss,
                cores,
                us,
                percent(r.client_cpu_s, r.duration_s),
                percent(r.other_cpu_s, r.duration_s),
                ceiling,
                fraction,
                errors
            ));
        }
        md.push_str(
            "\nServer cores: CPU seconds per second of the timed phase; µs/call: the server's CPU time per call (an accept operation is two calls). Backend: what the server stored in (postgres-2: two instances on one PostgreSQL database, the connections spread over both, their CPU and RSS summed). Generator and other CPU: percent of one core; \"other\" is the rest of the machine (other processes on a shared host). Latency is per operation (accept: create + accept). Ceiling: measured in the same run — `hello` (a minimal hyper server answering each protocol's smallest reply), `verify` (Ed25519 verifications per second on every core, for signed calls), `fsync ×8` (100 KiB files stored durably per second by 8 writers, for sends); per operation, so accept's is half the per-call rate.\n",
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
