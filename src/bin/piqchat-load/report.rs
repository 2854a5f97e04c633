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

    /// The scenario as a table cell: with its round, backlog or the peer.
    pub(crate) fn scenario_label(&self) -> String {
        let mut name = self.scenario.name().to_owned();
        if let Some(n) = self.backlog_parcels {
            name.push_str(&format!(" N={n}"));
        }
        if let Some(round) = self.round {
            name.push_str(&format!(" #{round}"));
        }
        if let Some(target) = &self.target {
            name.push_str(&format!(" ({target})"));
        }
        name
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
            r.scenario_label(),
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
        if let serde_json::Value::Array(rounds) = value {
            // Several rounds of one run (--rounds).
            for round in rounds {
                runs.push(
                    serde_json::from_value::<RunResult>(round)
                        .with_context(|| format!("a round in {}", path.display()))?,
                );
            }
        } else if kind == Some("run") {
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
                r.backlog_parcels,
                r.target.clone(),
                r.backend.as_deref().is_some_and(|b| b != "sqlite"),
                r.backend.clone(),
                r.round,
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
                "- Cold start (spawn → first served GetInfo): median **{:.1} ms** over {} runs on an existing database (min {:.1}, max {:.1}); {:.1} ms on a new database. Idle RSS **{:.1} MiB** (goal ≤ {IDLE_RSS_GOAL_MIB:.0} MiB: {}){}.\n",
                v["median_ms"].as_f64().unwrap_or(0.0),
                v["runs_ms"].as_array().map_or(0, Vec::len),
                v["min_ms"].as_f64().unwrap_or(0.0),
                v["max_ms"].as_f64().unwrap_or(0.0),
                v["fresh_median_ms"].as_f64().unwrap_or(0.0),
                v["idle_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                goal_text(v["idle_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0 <= IDLE_RSS_GOAL_MIB),
                rss_split(v),
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
                HELLO_LABEL.to_owned()
            } else {
                r.scenario_label()
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
    let measured: Vec<RunResult> = runs.iter().filter(|r| !is_hello(r)).cloned().collect();
    md.push_str(&sends_markdown(&measured, ceilings.files));
    md.push_str(&backlog_markdown(&measured, ceilings.files));
    md.push_str(&peer_markdown(&measured));
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

/// What the idle RSS is made of, when the run recorded it (older results
/// hold only the total).
fn rss_split(v: &serde_json::Value) -> String {
    match (
        v["idle_rss_anon_kib"].as_f64(),
        v["idle_rss_file_kib"].as_f64(),
    ) {
        (Some(anon), Some(file)) => format!(
            ": {:.1} MiB anonymous (what the server allocated), {:.1} MiB file pages (code and data of the binary and its libraries, mapped from the page cache)",
            anon / 1024.0,
            file / 1024.0
        ),
        _ => String::new(),
    }
}

/// The idle RSS the server should stay under (MiB).
pub(crate) const IDLE_RSS_GOAL_MIB: f64 = 12.0;

fn goal_text(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// `a / b` with two decimals, or "-" when either is missing or `b` is 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn us_text(r: &RunResult) -> String {
    r.server_cpu_us_per_call
        .map_or_else(|| "-".into(), |us| format!("{us:.0}"))
}

/// Our runs of `scenario` over `protocol` on SQLite (the default backend),
/// neither the peer nor a backlog run.
fn ours(
    runs: &[RunResult],
    scenario: crate::Scenario,
    protocol: crate::Protocol,
) -> impl Iterator<Item = &RunResult> {
    runs.iter().filter(move |r| {
        r.scenario == scenario
            && r.protocol == protocol
            && r.target.is_none()
            && r.backlog_parcels.is_none()
            && r.backend.as_deref().is_none_or(|b| b == "sqlite")
    })
}

/// Sends per protocol as fractions of the durable-file ceiling (8 writers),
/// the second send-one round against the first, and send-group against
/// send-100k.
pub(crate) fn sends_markdown(runs: &[RunResult], files: Option<f64>) -> String {
    use crate::{Protocol, Scenario};
    let rate = |r: Option<&RunResult>| r.map(|r| r.throughput_ops_s);
    let cell = |r: Option<&RunResult>| {
        r.map_or_else(
            || "-".to_owned(),
            |r| {
                format!(
                    "{:.1} ({})",
                    r.throughput_ops_s,
                    ratio(Some(r.throughput_ops_s), files)
                )
            },
        )
    };
    let mut rows = String::new();
    for protocol in [Protocol::Grpc, Protocol::GrpcWeb, Protocol::Json] {
        let one: Vec<&RunResult> = ours(runs, Scenario::SendOne, protocol).collect();
        let first = one.iter().find(|r| r.round.is_none_or(|n| n == 1)).copied();
        let second = one.iter().find(|r| r.round == Some(2)).copied();
        let k100 = ours(runs, Scenario::Send100k, protocol).next();
        let group = ours(runs, Scenario::SendGroup, protocol).next();
        if [first, second, k100, group].iter().all(Option::is_none) {
            continue;
        }
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            protocol.name(),
            cell(k100),
            cell(first),
            cell(second),
            ratio(rate(second), rate(first)),
            cell(group),
            ratio(rate(group), rate(k100)),
        ));
    }
    if rows.is_empty() {
        return String::new();
    }
    let ceiling = files.map_or_else(|| "not measured".into(), |f| format!("{f:.0} files/s"));
    format!(
        "\n### Sends against the disk\n\nops/s (fraction of the durable-file ceiling with 8 writers, `fsync ×8`: {ceiling}). send-one: every connection into one recipient, two timed phases back to back on the same server and database (#1, #2); goals: send-one ≥ 0.50 of the ceiling, #2 ÷ #1 ≥ 0.90, send-group ÷ send-100k ≥ 0.50.\n\n| protocol | send-100k | send-one #1 | send-one #2 | #2 ÷ #1 | send-group | send-group ÷ send-100k |\n|---|---:|---:|---:|---:|---:|---:|\n{rows}"
    )
}

/// Sends into one recipient with N parcels already waiting.
pub(crate) fn backlog_markdown(runs: &[RunResult], files: Option<f64>) -> String {
    let mut backlog: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.scenario == crate::Scenario::Backlog && r.target.is_none())
        .collect();
    if backlog.is_empty() {
        return String::new();
    }
    backlog.sort_by_key(|r| (r.protocol, r.backlog_parcels, r.round));
    let mut md = String::from(
        "\n### Sends into a backlog\n\nsend-one into a recipient with N parcels already waiting (seeded through the store before the server started, one send per parcel, 100 KiB in each attachment row; the files themselves are sparse, since only the rows take part in a send).\n\n| N waiting | protocol | sends/s | server CPU µs/call | of the fsync ×8 ceiling | p99 ms | errors |\n|---:|---|---:|---:|---:|---:|---|\n",
    );
    for r in backlog {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {:.2} | {} |\n",
            r.backlog_parcels.unwrap_or(0),
            r.protocol.name(),
            r.throughput_ops_s,
            us_text(r),
            ratio(Some(r.throughput_ops_s), files),
            r.latency.p99_ms,
            r.errors_text(": ", ", ").unwrap_or_else(|| "0".into()),
        ));
    }
    md
}

/// Our JSON runs beside the Node peer's runs of the same scenario.
pub(crate) fn peer_markdown(runs: &[RunResult]) -> String {
    let peers: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.target.as_deref() == Some("peer"))
        .collect();
    if peers.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### Against the Node peer\n\nThe original Node server (piqchat-inbox-server) over its JSON API, run right after ours in the same run; ratio: ours ÷ peer.\n\n| scenario | protocol | ours ops/s | peer ops/s | ratio | ours µs/call | peer µs/call | ours p99 ms | peer p99 ms |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in peers {
        let mine = ours(runs, p.scenario, p.protocol).next();
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {:.2} |\n",
            p.scenario.name(),
            p.protocol.name(),
            mine.map_or_else(|| "-".into(), |m| format!("{:.1}", m.throughput_ops_s)),
            p.throughput_ops_s,
            ratio(mine.map(|m| m.throughput_ops_s), Some(p.throughput_ops_s)),
            mine.map_or_else(|| "-".into(), us_text),
            us_text(p),
            mine.map_or_else(|| "-".into(), |m| format!("{:.2}", m.latency.p99_ms)),
            p.latency.p99_ms,
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protocol, Scenario};

    fn result(scenario: Scenario, protocol: Protocol, rate: f64) -> RunResult {
        let mut r: RunResult = serde_json::from_value(serde_json::json!({
            "kind": "run", "scenario": scenario, "protocol": protocol, "label": null,
            "url": "http://127.0.0.1:1", "concurrency": 64, "duration_s": 10.0,
            "warmup_s": 2.0, "calls_per_op": 1, "ops": 0, "ok": 0, "errors": 0,
            "throughput_ops_s": rate, "received_mib_s": 0.0, "latency": {
                "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0, "mean_ms": 1.0 },
            "errors_by_status": {}, "error_samples": {}, "warmup_ops": 0, "setup_s": 0.0,
            "presigned": 0, "presign_s": 0.0, "signed_inline": 0, "client_cpu_s": 0.0,
            "server": null, "db_media_parcels_waiting": 0
        }))
        .unwrap();
        r.server_cpu_us_per_call = Some(rate);
        r
    }

    #[test]
    fn sends_read_against_the_disk_and_each_other() {
        let mut second = result(Scenario::SendOne, Protocol::Grpc, 450.0);
        second.round = Some(2);
        let mut first = result(Scenario::SendOne, Protocol::Grpc, 500.0);
        first.round = Some(1);
        let runs = vec![
            result(Scenario::Send100k, Protocol::Grpc, 600.0),
            second,
            first,
            result(Scenario::SendGroup, Protocol::Grpc, 150.0),
        ];
        let md = sends_markdown(&runs, Some(1000.0));
        assert!(
            md.contains(
                "| grpc | 600.0 (0.60) | 500.0 (0.50) | 450.0 (0.45) | 0.90 | 150.0 (0.15) | 0.25 |"
            ),
            "{md}"
        );
        assert!(md.contains("1000 files/s"), "{md}");
        assert_eq!(sends_markdown(&runs[..0], Some(1000.0)), "");
    }

    #[test]
    fn backlog_rows_are_ordered_by_waiting_parcels() {
        let runs: Vec<RunResult> = [10_000, 0, 1_000]
            .into_iter()
            .map(|n| {
                let mut r = result(Scenario::Backlog, Protocol::Grpc, 1e6 / (n as f64 + 1000.0));
                r.backlog_parcels = Some(n);
                r
            })
            .collect();
        let md = backlog_markdown(&runs, Some(1000.0));
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| N"))
            .collect();
        assert_eq!(rows.len(), 3, "{md}");
        assert!(
            rows[0].starts_with("| 0 | grpc | 1000.0 | 1000 | 1.00 |"),
            "{md}"
        );
        assert!(rows[1].starts_with("| 1000 | grpc | 500.0 |"), "{md}");
        assert!(rows[2].starts_with("| 10000 | grpc | 90.9 |"), "{md}");
        assert!(md.contains("sparse"), "{md}");
    }

    #[test]
    fn the_peer_is_set_beside_our_json_run() {
        let mut peer = result(Scenario::Info, Protocol::Json, 2000.0);
        peer.target = Some("peer".into());
        let runs = vec![
            result(Scenario::Info, Protocol::Grpc, 30_000.0),
            result(Scenario::Info, Protocol::Json, 20_000.0),
            peer,
        ];
        let md = peer_markdown(&runs);
        assert!(
            md.contains("| info | json | 20000.0 | 2000.0 | 10.00 |"),
            "{md}"
        );
        assert_eq!(peer_markdown(&runs[..2]), "");
    }

    #[test]
    fn rounds_files_merge_into_one_report() {
        let dir = crate::probes::tempfile_dir().unwrap();
        let mut a = result(Scenario::SendOne, Protocol::Json, 400.0);
        a.round = Some(1);
        let mut b = a.clone();
        b.round = Some(2);
        b.throughput_ops_s = 380.0;
        let rounds = dir.join("run-send-one-json.json");
        crate::write_json(&rounds, &vec![a, b]).unwrap();
        let fsync = dir.join("fsync.json");
        crate::write_json(
            &fsync,
            &serde_json::json!({ "kind": "fsync", "blob_100k_8_writers_ops_s": 800.0 }),
        )
        .unwrap();
        let coldstart = dir.join("coldstart.json");
        crate::write_json(
            &coldstart,
            &serde_json::json!({
                "kind": "coldstart",
                "idle_rss_kib": 14336,
                "idle_rss_anon_kib": 4096,
                "idle_rss_file_kib": 10240
            }),
        )
        .unwrap();
        let markdown = dir.join("table.md");
        report(ReportArgs {
            files: vec![rounds, fsync, coldstart],
            json: None,
            markdown: Some(markdown.clone()),
        })
        .unwrap();
        let md = std::fs::read_to_string(&markdown).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(md.contains("| send-one #1 | json |"), "{md}");
        assert!(
            md.contains("| json | - | 400.0 (0.50) | 380.0 (0.47) | 0.95 |"),
            "{md}"
        );
        assert!(
            md.contains("Idle RSS **14.0 MiB** (goal ≤ 12 MiB: missed): 4.0 MiB anonymous"),
            "{md}"
        );
    }
}
