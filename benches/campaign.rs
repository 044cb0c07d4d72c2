//! The dialer's performance figures (BENCHMARKS.md), measured against the
//! in-repo simulator and a local MariaDB, written to BENCHMARKS.md.
//!
//!     cargo bench --bench campaign              # full run, ~10 min on 2 cores
//!     cargo bench --bench campaign -- --smoke   # small N, checks nothing rots (CI)
//!     cargo bench --bench campaign -- --refill  # only the N=5000 pass and its refill breakdown
//!     cargo bench --bench campaign -- --scaling [--runs 3]
//!         # only "How cost grows": 100 / 500 / 1,000 / 5,000 calls in flight
//!     cargo bench --bench campaign -- --cost [--runs 3]  # only the cost at 1,000 in flight
//!     cargo bench --bench campaign -- --realistic [--time-scale 0.02]
//!         # only the realistic campaign: N=2,000, C=30, a seeded call mix
//!
//! Every figure is the median of several runs; the baseline (one call at a
//! time, as the seed script dialled) is measured in the same run.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use common::{drop_db, load_database, server_url};
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::{self, Spec};
use overdue_dialer::billing::{schema, Billing};
use overdue_dialer::campaign::pass::{PassOptions, PassSummary};
use overdue_dialer::campaign::probe::{Probe, Stage};
use overdue_dialer::config::{Config, TrunkConfig};
use overdue_dialer::dialer::Dialer;
use overdue_dialer::rules::selection::Policy;
use overdue_dialer::sim::{Callee, SimConfig, Simulator};
use std::sync::Arc;

/// Rows the last eligibility query returned.
static ROWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A fresh database with `n` callable clients; dropped by `drop_db`.
async fn database(name: &str, n: usize, invoices_max: u32, clean: bool) -> mysql_async::Opts {
    let anchor = NaiveDateTime::parse_from_str("2026-03-14 10:00", "%Y-%m-%d %H:%M").unwrap();
    let data = demo_data::generate(&Spec {
        clients: n,
        seed: 7,
        anchor,
        clean,
        invoices_max,
    });
    load_database(name, &data).await
}

fn config(opts: &mysql_async::Opts, ari_url: &str, channels: u32) -> Config {
    let mut c = Config::for_simulator(ari_url, opts, opts.db_name().unwrap_or_default());
    c.mysql.max_connections = 20;
    c.trunks = vec![TrunkConfig {
        name: "t1".into(),
        endpoint: "PJSIP/{number}@t".into(),
        max_channels: channels,
        priority: 1,
        caller_id: None,
        health_endpoint: None,
    }];
    c.campaign.max_concurrent_calls = channels;
    c.campaign.calls_per_second = 100_000.0;
    c.campaign.call_timeout_secs = 600;
    c
}

async fn pass(cfg: Config) -> (PassSummary, Duration, u64) {
    pass_probed(cfg, None).await
}

async fn pass_probed(cfg: Config, probe: Option<Arc<Probe>>) -> (PassSummary, Duration, u64) {
    let dialer = Dialer::connect(cfg, "bench".into()).await.expect("dialer");
    let (_tx, abort) = tokio::sync::watch::channel(false);
    let began = Instant::now();
    let summary = dialer
        .pass(
            PassOptions {
                ignore_window: true,
                drain: None,
                probe,
            },
            abort,
        )
        .await
        .unwrap();
    let wall = began.elapsed();
    let events = dialer
        .events
        .events
        .load(std::sync::atomic::Ordering::Relaxed);
    dialer.shutdown().await;
    (summary, wall, events)
}

/// Every callee answers and listens to a prompt of `prompt` to the end.
async fn sim(prompt: Duration) -> Simulator {
    let sim = Simulator::start(
        SimConfig {
            every_callee: Some(Callee::Answers {
                hangs_up_after: Duration::from_secs(3600),
            }),
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    sim.configure(|c| {
        if let Some(s) = c.sounds.get_mut("morosos_natalia") {
            s.duration = prompt;
        }
    });
    sim
}

struct Throughput {
    wall: f64,
    limit: f64,
    utilisation: f64,
    refill: String,
}

/// p50 / p90 / p99 / mean of `v`, in ms.
fn pcts(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "{:.2} | {:.2} | {:.2} | {:.2}",
        at(0.5),
        at(0.9),
        at(0.99),
        mean
    )
}

/// The refill breakdown (BENCHMARKS.md "Where the last percent goes"):
/// each slot grant after the first C is paired with the release that made
/// it possible (C permits: the k-th grant after the first C can only follow
/// the k-th release), and the gap from the freeing call's
/// end to the next originate is split into its parts. A markdown table.
fn refill(probe: &Probe, c: usize) -> String {
    let calls = probe.calls();
    let ms = |a: tokio::time::Instant, b: tokio::time::Instant| {
        b.saturating_duration_since(a).as_secs_f64() * 1e3
    };
    let mut grants: Vec<_> = calls
        .values()
        .filter_map(|m| m.get(&Stage::Granted).map(|g| (*g, m)))
        .collect();
    grants.sort_by_key(|g| g.0);
    let mut releases: Vec<_> = calls
        .values()
        .filter_map(|m| m.get(&Stage::Released).map(|r| (*r, m)))
        .collect();
    releases.sort_by_key(|r| r.0);
    let pages = probe.pages();
    let names = [
        "freed channel → next originate (total)",
        "call ended → slot released",
        "slot released → slot granted (waiting for a claimed client)",
        "… of which a page read (hopper empty)",
        "pacing wait",
        "checks and trunk acquire",
        "trunk → originate sent",
        "claim (made ahead, off this path when ready in time)",
    ];
    let mut parts: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut ready = 0usize;
    for (j, (granted, m)) in grants.iter().enumerate().skip(c) {
        let Some((released, prev)) = releases.get(j - c) else {
            break;
        };
        let (Some(ended), Some(ticket), Some(claimed), Some(paced), Some(trunk), Some(orig)) = (
            prev.get(&Stage::Ended),
            m.get(&Stage::Ticket),
            m.get(&Stage::Claimed),
            m.get(&Stage::Paced),
            m.get(&Stage::Trunk),
            m.get(&Stage::Originate),
        ) else {
            continue;
        };
        if claimed <= released {
            ready += 1;
        }
        let paging: f64 = pages
            .iter()
            .map(|(a, b)| ms((*a).max(*released), (*b).min(*granted)))
            .sum();
        for (i, v) in [
            ms(*ended, *orig),
            ms(*ended, *released),
            ms(*released, *granted),
            paging,
            ms(*granted, *paced),
            ms(*paced, *trunk),
            ms(*trunk, *orig),
            ms(*ticket, *claimed),
        ]
        .into_iter()
        .enumerate()
        {
            parts[i].push(v);
        }
    }
    let mut out = format!(
        "| part ({} refills) | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|\n",
        parts[0].len()
    );
    let refills = parts[0].len();
    for (name, v) in names.iter().zip(parts) {
        out.push_str(&format!("| {name} | {} |\n", pcts(v)));
    }
    out.push_str(&format!(
        "| a claimed client was waiting when the channel freed | {:.1} % of refills | | | |\n",
        100.0 * ready as f64 / refills.max(1) as f64
    ));
    let originates: Vec<_> = calls
        .values()
        .filter_map(|m| m.get(&Stage::Originate).copied())
        .collect();
    if let (Some((began, Some(ended))), Some(first), Some(last)) = (
        probe.pass(),
        originates.iter().min(),
        originates.iter().max(),
    ) {
        let first_page = pages.first().map_or(0.0, |(a, b)| ms(*a, *b));
        out.push_str(&format!(
            "| pass: start → first originate (first page read {first_page:.1} ms) | {:.1} | | | |\n\
| pass: last originate → pass end (one call, its outcome write) | {:.1} | | | |\n\
| pass: page reads | {} reads, {:.1} ms in all | | | |\n",
            ms(began, *first),
            ms(*last, ended),
            pages.len(),
            pages.iter().map(|(a, b)| ms(*a, *b)).sum::<f64>(),
        ));
    }
    out
}

/// One call's life beyond its prompt (BENCHMARKS.md "Where the last
/// percent goes"): a channel is busy for the prompt plus these parts, each
/// the simulator's (Asterisk's) or the daemon's, from the simulator's record
/// of requests, Stasis entries and playbacks and the probe's call ends.
fn call_life(sim: &Simulator, probe: &Probe, prompt: Duration) -> String {
    use std::collections::HashMap;
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    let requests = sim.requests();
    let mut originate = HashMap::new();
    let mut play = HashMap::new();
    let mut hangup = HashMap::new();
    for r in &requests {
        if r.method == "POST" && r.path == "/ari/channels" {
            if let Some(id) = r
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("channelId="))
            {
                originate.insert(id.to_owned(), r.at);
            }
        } else if let Some(id) = r
            .path
            .strip_prefix("/ari/channels/")
            .and_then(|p| p.strip_suffix("/play"))
        {
            play.entry(id.to_owned()).or_insert(r.at);
        } else if r.method == "DELETE" {
            if let Some(id) = r.path.strip_prefix("/ari/channels/") {
                hangup.entry(id.to_owned()).or_insert(r.at);
            }
        }
    }
    let ended: HashMap<i64, Instant> = probe
        .calls()
        .into_iter()
        .filter_map(|(id, m)| m.get(&Stage::Ended).map(|e| (id, e.into_std())))
        .collect();
    let names = [
        "originate → call ended, beyond the prompt (total)",
        "originate sent → StasisStart (simulator: dial, answer)",
        "StasisStart → play request (daemon)",
        "play request → playback started (simulator)",
        "playback length − prompt (simulator)",
        "playback ended → hang-up request (daemon: PlaybackFinished)",
        "hang-up request → call over in the daemon (StasisEnd/ChannelDestroyed)",
    ];
    let mut parts: Vec<Vec<f64>> = vec![vec![]; names.len()];
    for (id, stasis) in sim.stasis_starts() {
        let client: Option<i64> = id
            .strip_prefix("overdue-")
            .and_then(|r| r.split('-').next())
            .and_then(|c| c.parse().ok());
        let played = sim.played(&id);
        let (Some(o), Some(p), Some(h), Some(e), Some(pb)) = (
            originate.get(&id),
            play.get(&id),
            hangup.get(&id),
            client.and_then(|c| ended.get(&c)),
            played.first(),
        ) else {
            continue;
        };
        let Some(pb_end) = pb.ended else { continue };
        let t = prompt.as_secs_f64() * 1e3;
        for (i, v) in [
            ms(*o, *e) - t,
            ms(*o, stasis),
            ms(stasis, *p),
            ms(*p, pb.started),
            ms(pb.started, pb_end) - t,
            ms(pb_end, *h),
            ms(*h, *e),
        ]
        .into_iter()
        .enumerate()
        {
            parts[i].push(v);
        }
    }
    let mut out = format!(
        "| part ({} calls) | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|\n",
        parts[0].len()
    );
    for (name, v) in names.iter().zip(parts) {
        out.push_str(&format!("| {name} | {} |\n", pcts(v)));
    }
    out
}

/// N clients through C channels, each call `prompt` long.
async fn throughput(n: usize, c: u32, prompt: Duration) -> Throughput {
    let opts = database("overdue_bench_tp", n, 2, true).await;
    let sim = sim(prompt).await;
    let probe = Arc::new(Probe::default());
    let (summary, wall, _) = pass_probed(config(&opts, &sim.url(), c), Some(probe.clone())).await;
    assert_eq!(
        summary.calls.len(),
        n,
        "every client called: {:?}",
        summary.outcomes
    );
    // Time-weighted mean of live calls while clients remained (until the last originate).
    let last = sim
        .requests()
        .iter()
        .filter(|r| r.path == "/ari/channels" && r.method == "POST")
        .map(|r| r.at)
        .max()
        .unwrap();
    let log = sim.live_log();
    let first = log[0].0;
    let mut area = 0.0;
    for w in log.windows(2) {
        let (t0, n0) = w[0];
        let t1 = w[1].0.min(last);
        if t0 >= last {
            break;
        }
        area += n0 as f64 * (t1 - t0).as_secs_f64();
    }
    let span = (last - first).as_secs_f64().max(1e-9);
    let utilisation = area / span / c as f64;
    let life = call_life(&sim, &probe, prompt);
    sim.shutdown().await;
    drop_db("overdue_bench_tp").await;
    let limit = (n as f64 / c as f64).ceil() * prompt.as_secs_f64();
    Throughput {
        wall: wall.as_secs_f64(),
        limit,
        utilisation,
        refill: format!("{}\n{life}", refill(&probe, c as usize)),
    }
}

/// The seed script's way: one call at a time. Seconds per call.
async fn sequential(n: usize, prompt: Duration) -> f64 {
    let opts = database("overdue_bench_seq", n, 2, true).await;
    let sim = sim(prompt).await;
    let (summary, wall, _) = pass(config(&opts, &sim.url(), 1)).await;
    assert_eq!(summary.calls.len(), n);
    sim.shutdown().await;
    drop_db("overdue_bench_seq").await;
    wall.as_secs_f64() / n as f64
}

/// Child mode: one pass of `n` calls all in flight at once, against an
/// `ari-sim` process (so the simulator's work is not counted), on the
/// database `db` its parent loaded (so generating and loading the clients
/// is not counted in the peak RSS either); prints
/// "cpu_ms_per_call peak_rss_kb peak_calls_in_flight".
async fn cost_child(n: usize, db: &str, prompt_ms: u64) {
    raise_nofile();
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(
        mysql_async::Opts::from_url(&server_url()).expect("bad OVERDUE_TEST_MYSQL_URL"),
    )
    .db_name(Some(db))
    .into();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_ari-sim"))
        .args(["--port", "0", "--all-answer", "--prompt-ms"])
        .arg(prompt_ms.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ari-sim");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sim.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("sim url")
        .to_owned();
    let before = rusage();
    let dialer = Dialer::connect(config(&opts, &url, n as u32), "bench".into())
        .await
        .expect("dialer");
    // Calls in flight = trunk channels in use, read every 10 ms (a lock
    // and a one-element Vec: nothing next to the calls' own work).
    let trunks = dialer.campaign.trunks.clone();
    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    // At the most calls seen in flight, also how the resident memory
    // splits (heap and stacks / pages of the program's files).
    let peak = tokio::spawn(async move {
        let mut peak = (0u32, (-1, -1));
        loop {
            let now: u32 = trunks.view().iter().map(|t| t.in_use).sum();
            if now > peak.0 {
                peak = (now, rss_split());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = done.changed() => return peak,
            }
        }
    });
    let (_tx, abort) = tokio::sync::watch::channel(false);
    let summary = dialer
        .pass(
            PassOptions {
                ignore_window: true,
                drain: None,
                probe: None,
            },
            abort,
        )
        .await
        .unwrap();
    let _ = done_tx.send(true);
    let peak = peak.await.unwrap();
    dialer.shutdown().await;
    let after = rusage();
    let _ = sim.kill();
    let _ = sim.wait();
    assert_eq!(summary.calls.len(), n);
    let cpu = (after.0 - before.0) * 1000.0 / n as f64;
    let (calls, (anon, file)) = peak;
    println!("{cpu:.3} {} {calls} {anon} {file}", after.1);
}

/// (RssAnon, RssFile) of this process now, in kB: memory it allocated
/// (heap, stacks) and pages of its program and libraries it has touched.
fn rss_split() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(-1)
    };
    (field("RssAnon:"), field("RssFile:"))
}

/// Raises this process's soft limit on open files to its hard limit (and
/// so the `ari-sim` it starts, which inherits it): n calls in flight hold
/// up to n HTTP connections on each side, beyond a default soft limit of
/// 1,024.
fn raise_nofile() {
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// (user + sys seconds, peak RSS in kB) of this process.
///
/// Peak RSS is `VmHWM`, not getrusage's `ru_maxrss`: Linux carries
/// `ru_maxrss` across fork and exec, so a child started by a big parent
/// reports the parent's size (this benchmark's own simulator and 5,000-client
/// runs) instead of its own.
fn rusage() -> (f64, i64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1);
    (secs(u.ru_utime) + secs(u.ru_stime), hwm)
}

/// What the cost child measured (see `cost`).
struct Cost {
    /// Daemon CPU (user + sys) per call, ms.
    cpu: f64,
    /// Peak RSS (VmHWM), MB.
    rss: f64,
    /// The most calls seen in flight.
    peak: f64,
    /// At that moment: RssAnon and RssFile, MB.
    anon: f64,
    file: f64,
}

/// Daemon cost with `n` calls in flight, each call `prompt_ms` long, from
/// a child process.
fn cost(rt: &tokio::runtime::Runtime, n: usize, prompt_ms: u64) -> Cost {
    const DB: &str = "overdue_bench_cost";
    rt.block_on(database(DB, n, 2, true));
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--cost-child", &n.to_string(), "--db", DB, "--prompt-ms"])
        .arg(prompt_ms.to_string())
        .output()
        .unwrap();
    rt.block_on(drop_db(DB));
    if !out.status.success() {
        eprintln!(
            "cost child for n={n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    let mut it = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    let mut next = || it.next().unwrap_or(f64::NAN);
    Cost {
        cpu: next(),
        rss: next() / 1024.0,
        peak: next(),
        anon: next() / 1024.0,
        file: next() / 1024.0,
    }
}

/// Events digested per second, and StasisStart → play delays (p50, p99) in ms.
async fn events(n: usize) -> (f64, f64, f64) {
    let e = events_with(n, Duration::from_secs(3)).await;
    (e.0, e.1, e.2)
}

/// As `events`, each call `prompt` long; also the most calls the
/// simulator had live at once.
async fn events_with(n: usize, prompt: Duration) -> (f64, f64, f64, usize) {
    let opts = database("overdue_bench_ev", n, 2, true).await;
    let sim = sim(prompt).await;
    let (summary, wall, events) = pass(config(&opts, &sim.url(), n as u32)).await;
    assert_eq!(summary.calls.len(), n);
    let starts: std::collections::HashMap<String, Instant> =
        sim.stasis_starts().into_iter().collect();
    let mut delays: Vec<f64> = sim
        .requests()
        .iter()
        .filter_map(|r| {
            let id = r
                .path
                .strip_prefix("/ari/channels/")?
                .strip_suffix("/play")?;
            starts.get(id).map(|s| (r.at - *s).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| delays[((delays.len() as f64 - 1.0) * q) as usize];
    let peak = sim.peak_calls();
    sim.shutdown().await;
    drop_db("overdue_bench_ev").await;
    (events as f64 / wall.as_secs_f64(), p(0.5), p(0.99), peak)
}

/// How the daemon's cost grows with the calls in flight (BENCHMARKS.md
/// "How cost grows"): for each n, CPU per call, peak RSS and calls in
/// flight from the cost child (simulator in its own process), and
/// StasisStart → play latency from `events_with` (simulator in process).
/// Each call lasts `prompt_ms`: long enough that all n are in flight
/// before the first ends. A markdown table, plus the CPU and RSS per call
/// above the smallest size.
fn scaling(
    rt: &tokio::runtime::Runtime,
    sizes: &[usize],
    runs: usize,
    min_prompt_ms: u64,
) -> String {
    struct Row {
        n: usize,
        cpu: f64,
        rss: f64,
        peak: f64,
        lat_peak: f64,
        p50: f64,
        p99: f64,
    }
    let mut rows = Vec::new();
    for &n in sizes {
        let prompt_ms = scaling_prompt_ms(n, min_prompt_ms);
        println!(
            "scaling: {n} calls in flight, {:.1} s calls, {runs} run(s)…",
            prompt_ms as f64 / 1e3
        );
        let costs: Vec<Cost> = (0..runs).map(|_| cost(rt, n, prompt_ms)).collect();
        let evs: Vec<(f64, f64, f64, usize)> = (0..runs)
            .map(|_| rt.block_on(events_with(n, Duration::from_millis(prompt_ms))))
            .collect();
        let row = Row {
            n,
            cpu: median(costs.iter().map(|c| c.cpu).collect()),
            rss: median(costs.iter().map(|c| c.rss).collect()),
            peak: median(costs.iter().map(|c| c.peak).collect()),
            lat_peak: median(evs.iter().map(|e| e.3 as f64).collect()),
            p50: median(evs.iter().map(|e| e.1).collect()),
            p99: median(evs.iter().map(|e| e.2).collect()),
        };
        println!(
            "  {:.3} ms CPU per call, peak RSS {:.1} MB, {:.0} in flight at peak; StasisStart → play p50 {:.2} ms, p99 {:.2} ms ({:.0} in flight)",
            row.cpu, row.rss, row.peak, row.p50, row.p99, row.lat_peak
        );
        rows.push(row);
    }
    let base = &rows[0];
    let mut md = format!(
        "| calls in flight | peak seen (cost run / latency run) | daemon CPU per call | CPU per call above {b} | daemon peak RSS | RSS per call above {b} | StasisStart → play p50 | p99 |\n|---|---|---|---|---|---|---|---|\n",
        b = base.n
    );
    for r in &rows {
        // Above the base: what each further call adds, the fixed part
        // (connecting, the runtime, the pool) taken out.
        let (rss_call, cpu_call) = if r.n > base.n {
            let more = (r.n - base.n) as f64;
            (
                format!("{:.1} kB", (r.rss - base.rss) * 1024.0 / more),
                format!(
                    "{:.3} ms",
                    (r.cpu * r.n as f64 - base.cpu * base.n as f64) / more
                ),
            )
        } else {
            ("(base)".into(), "(base)".into())
        };
        md.push_str(&format!(
            "| {} | {:.0} / {:.0} | {:.3} ms | {cpu_call} | {:.1} MB | {rss_call} | {:.2} ms | {:.2} ms |\n",
            r.n, r.peak, r.lat_peak, r.cpu, r.rss, r.p50, r.p99
        ));
    }
    md
}

/// Call length for the scaling runs: long enough that every call is
/// originated before the first one ends (about 1 ms of originating per
/// call on 2 cores, doubled), never under `min_ms` (the cost rows' 4 s;
/// less in a smoke run).
fn scaling_prompt_ms(n: usize, min_ms: u64) -> u64 {
    (2 * n as u64).max(min_ms)
}

/// What a callee of the realistic campaign does (BENCHMARKS.md "A
/// realistic campaign" states the mix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Rings 5–25 s, answers, hears the 20 s prompt to the end.
    Listens,
    /// Rings 5–25 s, answers, hangs up 3–15 s into the prompt.
    HangsUpEarly,
    /// Rings until the ring timeout (30 s).
    NoAnswer,
    Busy,
    Congestion,
    /// Unallocated number (cause 1).
    Unreachable,
    /// Rings 5–25 s, answers, hangs up after 2–6 s.
    Short,
}

/// One callee drawn from the mix: its behaviour and how long it rings
/// before answering (unscaled).
fn draw(rng: &mut rand_chacha::ChaCha8Rng) -> (Kind, Callee, Duration) {
    use rand::Rng;
    let secs = |rng: &mut rand_chacha::ChaCha8Rng, lo: f64, hi: f64| {
        Duration::from_secs_f64(rng.gen_range(lo..hi))
    };
    let answers = |d: Duration| Callee::Answers { hangs_up_after: d };
    let u: f64 = rng.gen();
    if u < 0.45 {
        let ring = secs(rng, 5.0, 25.0);
        if rng.gen::<f64>() < 0.8 {
            (Kind::Listens, answers(Duration::from_secs(3600)), ring)
        } else {
            (Kind::HangsUpEarly, answers(secs(rng, 3.0, 15.0)), ring)
        }
    } else if u < 0.65 {
        (Kind::NoAnswer, Callee::NeverAnswers, Duration::ZERO)
    } else if u < 0.80 {
        (Kind::Busy, Callee::Busy, Duration::ZERO)
    } else if u < 0.85 {
        (Kind::Congestion, Callee::Congestion, Duration::ZERO)
    } else if u < 0.90 {
        (Kind::Unreachable, Callee::Unallocated, Duration::ZERO)
    } else {
        let ring = secs(rng, 5.0, 25.0);
        (Kind::Short, answers(secs(rng, 2.0, 6.0)), ring)
    }
}

/// The seed of the realistic campaign's call mix.
const MIX_SEED: u64 = 2026;
/// The reminder's length in the realistic campaign (unscaled).
const REAL_PROMPT: Duration = Duration::from_secs(20);

/// `key`'s value in a raw query string, percent-decoded.
fn query_param(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// N clients on C channels, each callee drawn from the mix, the simulator
/// running `scale` times real time (its ring timeout, ringing, prompt
/// and hang-ups all scaled). Every time reported is scaled back.
async fn realistic(n: usize, c: u32, scale: f64) -> String {
    use rand::SeedableRng;
    const DB: &str = "overdue_bench_real";
    let anchor = NaiveDateTime::parse_from_str("2026-03-14 10:00", "%Y-%m-%d %H:%M").unwrap();
    let data = demo_data::generate(&Spec {
        clients: n,
        seed: 7,
        anchor,
        clean: true,
        invoices_max: 2,
    });
    let opts = load_database(DB, &data).await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(MIX_SEED);
    let mut simcfg = SimConfig {
        time_scale: scale,
        ..SimConfig::default()
    };
    if let Some(s) = simcfg.sounds.get_mut("morosos_natalia") {
        s.duration = REAL_PROMPT;
    }
    // Client → dialled number (what the daemon puts in the endpoint);
    // number → its callee's kind.
    let mut number_of = std::collections::HashMap::new();
    let mut kind_of = std::collections::HashMap::new();
    for client in &data.clients {
        let Some(mobile) = client
            .telefono
            .as_deref()
            .and_then(|raw| overdue_dialer::rules::phone::normalize(raw).ok())
        else {
            continue;
        };
        let number = mobile.national().to_owned();
        number_of.insert(client.id, number.clone());
        if kind_of.contains_key(&number) {
            continue;
        }
        let (kind, callee, ring) = draw(&mut rng);
        simcfg.callees.insert(number.clone(), callee);
        if !ring.is_zero() {
            simcfg.answer_delays.insert(number.clone(), ring);
        }
        kind_of.insert(number, kind);
    }
    let sim = Simulator::start(simcfg, 0).await.unwrap();
    let mut cfg = config(&opts, &sim.url(), c);
    // The default pacing (5 originates a second) on the scaled clock; the
    // ring timeout goes to the simulator as the originate timeout and is
    // scaled there. The daemon's own call timeout (real time) stays far
    // above the longest scaled call.
    cfg.campaign.calls_per_second =
        overdue_dialer::config::CampaignConfig::default().calls_per_second / scale;
    cfg.campaign.ring_timeout_secs = 30;
    let min_heard = cfg.campaign.min_heard_secs;
    let (summary, wall, _) = pass(cfg).await;
    assert_eq!(summary.calls.len(), n, "{:?}", summary.outcomes);
    // Σ channel-seconds: the simulator's count of live calls (originate
    // to channel destroyed), integrated over the run.
    let log = sim.live_log();
    let chan_secs: f64 = log
        .windows(2)
        .map(|w| w[0].1 as f64 * (w[1].0 - w[0].0).as_secs_f64())
        .sum::<f64>()
        / scale;
    // What each number heard of the prompt (the daemon's heard time runs
    // on the real clock, so it is measured here on the simulator's).
    let mut heard = std::collections::HashMap::new();
    for r in sim.requests() {
        if r.method != "POST" || r.path != "/ari/channels" {
            continue;
        }
        let (Some(id), Some(endpoint)) = (
            query_param(&r.query, "channelId"),
            query_param(&r.query, "endpoint"),
        ) else {
            continue;
        };
        let number = endpoint
            .strip_prefix("PJSIP/")
            .and_then(|e| e.split('@').next())
            .unwrap_or_default()
            .to_owned();
        let secs: f64 = sim
            .played(&id)
            .iter()
            .filter_map(|p| p.ended.map(|e| (e - p.started).as_secs_f64()))
            .sum::<f64>()
            / scale;
        heard.insert(number, secs);
    }
    sim.shutdown().await;
    drop_db(DB).await;
    let delivered = summary
        .calls
        .iter()
        .filter(|call| {
            let h = number_of
                .get(&call.client_id)
                .and_then(|n| heard.get(n))
                .map(|s| *s as u32);
            overdue_dialer::rules::outcome::is_delivered(call.outcome, h, min_heard, false)
        })
        .count();
    let mut mix = std::collections::BTreeMap::new();
    for call in &summary.calls {
        if let Some(k) = number_of.get(&call.client_id).and_then(|n| kind_of.get(n)) {
            *mix.entry(*k).or_insert(0usize) += 1;
        }
    }
    let mix = mix
        .iter()
        .map(|(k, v)| format!("{k:?} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let outcomes = summary
        .outcomes
        .iter()
        .map(|(o, v)| format!("{o} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let wall_s = wall.as_secs_f64() / scale;
    let limit = chan_secs / c as f64;
    let ratio = wall_s / limit;
    let md = format!(
        "| figure | measured |\n|---|---|\n\
| clients N / channels C / time scale | {n} / {c} / {scale} (every time below scaled back to real seconds) |\n\
| callees drawn (seed {MIX_SEED}) | {mix} |\n\
| outcomes written | {outcomes} |\n\
| Σ channel time (originate → channel gone) | {chan_secs:.0} s, {mean:.1} s per call |\n\
| physical limit Σ ÷ C | {limit:.0} s ({limit_min:.1} min) |\n\
| wall time | {wall_s:.0} s ({wall_min:.1} min) |\n\
| ratio wall ÷ limit | **{ratio:.3}** |\n\
| delivered reminders (whole prompt, or ≥ {min_heard} s heard) | {delivered} ({pct:.1} % of N) |\n\
| deliveries per channel-hour held | **{per_held:.1}** |\n\
| deliveries per channel-hour available (C × wall) | {per_avail:.1} |\n",
        mean = chan_secs / n as f64,
        limit_min = limit / 60.0,
        wall_min = wall_s / 60.0,
        pct = 100.0 * delivered as f64 / n as f64,
        per_held = delivered as f64 / (chan_secs / 3600.0),
        per_avail = delivered as f64 / (c as f64 * wall_s / 3600.0),
    );
    md
}

/// Eligibility on a big database, as a pass reads it: pages of 4 × C
/// clients (C = the throughput run's channels). Median ms of the first page
/// (what the first call waits for) and of reading every page in turn.
struct Selection {
    invoices: u64,
    rows: usize,
    /// (first page, all pages) without and with the recommended indexes.
    without: (f64, f64),
    with: (f64, f64),
}

async fn selection(clients: usize, invoices_max: u32, page: usize, runs: usize) -> Selection {
    let opts = database("overdue_bench_sel", clients, invoices_max, false).await;
    let billing = Billing::new(opts.clone());
    let mut conn = billing.conn().await.unwrap();
    let invoices: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM factura")
        .await
        .unwrap();
    // "Without" keeps the generator's index on factura(`id-afiliado`), as a
    // billing system's foreign key would; the recommended ones come on top.
    let at = NaiveDateTime::parse_from_str("2026-03-20 10:00", "%Y-%m-%d %H:%M").unwrap();
    let policy = Policy {
        max_attempts: 3,
        min_days_between_contacts: 7,
        retry: Default::default(),
    };
    let time = |billing: Billing, policy: Policy| async move {
        let (mut first, mut all) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            let (mut after, mut rows) = (0, 0);
            loop {
                let (got, next) = billing
                    .eligible_page(at, &policy, after, page)
                    .await
                    .unwrap();
                if after == 0 {
                    first.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                rows += got.len();
                match next {
                    Some(id) => after = id,
                    None => break,
                }
            }
            all.push(t.elapsed().as_secs_f64() * 1000.0);
            ROWS.store(rows, std::sync::atomic::Ordering::Relaxed);
        }
        (median(first), median(all))
    };
    let without = time(billing.clone(), policy.clone()).await;
    for (_, _, ddl) in schema::RECOMMENDED_INDEXES {
        conn.query_drop(*ddl).await.unwrap();
    }
    let with = time(billing.clone(), policy).await;
    drop(conn);
    billing.close().await.unwrap();
    drop_db("overdue_bench_sel").await;
    Selection {
        invoices: invoices.unwrap_or(0),
        rows: ROWS.load(std::sync::atomic::Ordering::Relaxed),
        without,
        with,
    }
}

const BEGIN: &str = "<!-- figures: written by cargo bench --bench campaign -->";
const SCALING_BEGIN: &str = "<!-- scaling: written by cargo bench --bench campaign -->";
const SCALING_END: &str = "<!-- end of scaling -->";
const REAL_BEGIN: &str = "<!-- realistic: written by cargo bench --bench campaign -->";
const REAL_END: &str = "<!-- end of realistic -->";
/// Calls in flight of "How cost grows".
const SCALING_SIZES: [usize; 4] = [100, 500, 1000, 5000];
/// The realistic campaign: clients, channels; and its time scale.
const REAL_SIZE: (usize, u32) = (2000, 30);
const REAL_SCALE: f64 = 0.02;

/// `text` with what lies between the lines `begin` and `end` replaced by
/// `body`; `None` unless both markers are there, in that order (the file
/// is then left alone: the sections around are written by hand).
fn replace_between(text: &str, begin: &str, end: &str, body: &str) -> Option<String> {
    let b = text.find(begin)?;
    let e = text[b..].find(end)? + b;
    let body = body.trim_end();
    Some(format!("{}{begin}\n{body}\n{}", &text[..b], &text[e..]))
}
const END: &str = "<!-- end of figures -->";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--cost-child") {
        // The daemon's own process setup (src/main.rs), before any thread.
        overdue_dialer::daemon::one_malloc_arena();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(n) = value("--cost-child") {
        let n = n.parse().unwrap_or(1000);
        let db = value("--db").unwrap_or_else(|| "overdue_bench_cost".into());
        let prompt_ms = value("--prompt-ms")
            .and_then(|p| p.parse().ok())
            .unwrap_or(4000);
        rt.block_on(cost_child(n, &db, prompt_ms));
        return;
    }
    // `cargo test --all-targets` runs bench targets too, without `--bench`:
    // a benchmark in a debug build would only measure the debug build.
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmark skipped outside `cargo bench` (run: cargo bench --bench campaign)");
        return;
    }
    // No usable server at the configured address: a private one for this
    // run (billing::private_server); child processes inherit its URL.
    let mariadb = rt
        .block_on(overdue_dialer::billing::private_server::reachable_or_private(&server_url()))
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(why) = &mariadb.why {
        println!("{why}: using a private MariaDB for this run");
    }
    std::env::set_var("OVERDUE_TEST_MYSQL_URL", &mariadb.url);
    let smoke = args.iter().any(|a| a == "--smoke");
    // n calls in flight hold n connections on each side, in this process
    // when the simulator runs in it (`events_with`).
    raise_nofile();
    let runs_flag = value("--runs").and_then(|r| r.parse::<usize>().ok());
    let scale = value("--time-scale")
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(REAL_SCALE);
    // Only the daemon's cost at 1,000 calls in flight: printed.
    if args.iter().any(|a| a == "--cost") {
        for _ in 0..runs_flag.unwrap_or(1) {
            let c = cost(&rt, 1000, 4000);
            println!(
                "1000 in flight: {:.3} ms CPU per call, peak RSS {:.1} MB ({:.0} calls in flight at most; then {:.1} MB heap and stacks, {:.1} MB program pages)",
                c.cpu, c.rss, c.peak, c.anon, c.file
            );
        }
        return;
    }
    // Only "How cost grows" or only the realistic campaign (or both):
    // printed, nothing written.
    let scaling_only = args.iter().any(|a| a == "--scaling");
    let realistic_only = args.iter().any(|a| a == "--realistic");
    if scaling_only || realistic_only {
        if scaling_only {
            println!(
                "{}",
                scaling(&rt, &SCALING_SIZES, runs_flag.unwrap_or(1), 4000)
            );
        }
        if realistic_only {
            let (n, c) = REAL_SIZE;
            println!("realistic campaign: N={n} C={c}, time scale {scale}…");
            println!("{}", rt.block_on(realistic(n, c, scale)));
        }
        return;
    }
    // Only the throughput pass at full size, with its refill breakdown
    // (BENCHMARKS.md "Where the last percent goes"); nothing written.
    let refill_only = args.iter().any(|a| a == "--refill");
    let (n, c, prompt, runs) = if smoke {
        (200, 50, Duration::from_millis(500), 1)
    } else {
        (
            5000,
            300,
            Duration::from_secs(2),
            if refill_only { 1 } else { 3 },
        )
    };
    // Cost at the target's 500 calls in flight (BENCHMARKS.md) and at 1,000.
    let (seq_n, cost_ns, ev_n, sel_clients, sel_inv, sel_runs) = if smoke {
        (5, [100, 200], 200, 2000, 4, 1)
    } else {
        (20, [500, 1000], 1000, 200_000, 19, 5)
    };

    println!(
        "campaign throughput: N={n} C={c} call={:.1}s, {runs} run(s)…",
        prompt.as_secs_f64()
    );
    let tps: Vec<Throughput> = (0..runs)
        .map(|_| rt.block_on(throughput(n, c, prompt)))
        .collect();
    let wall = median(tps.iter().map(|t| t.wall).collect());
    let limit = tps[0].limit;
    let util = median(tps.iter().map(|t| t.utilisation).collect());
    println!(
        "  wall {wall:.2}s, limit {limit:.2}s, ratio {:.3}, utilisation {:.1}%",
        wall / limit,
        util * 100.0
    );
    for (i, t) in tps.iter().enumerate() {
        println!(
            "  run {}: wall {:.2}s, utilisation {:.1}%; where the refill time goes:\n{}",
            i + 1,
            t.wall,
            t.utilisation * 100.0,
            t.refill
        );
    }
    if refill_only {
        return;
    }

    println!("baseline: one call at a time, N={seq_n}…");
    let per_call = median(
        (0..runs)
            .map(|_| rt.block_on(sequential(seq_n, prompt)))
            .collect(),
    );
    let seed_wall = per_call * n as f64;
    println!(
        "  {per_call:.3}s per call → {seed_wall:.0}s for N={n}; speed-up {:.1}×",
        seed_wall / wall
    );

    let mut cost_rows = String::new();
    for cost_n in cost_ns {
        println!("daemon cost: {cost_n} calls in flight (simulator in its own process)…");
        let costs: Vec<Cost> = (0..runs).map(|_| cost(&rt, cost_n, 4000)).collect();
        let cpu = median(costs.iter().map(|c| c.cpu).collect());
        let rss = median(costs.iter().map(|c| c.rss).collect());
        let anon = median(costs.iter().map(|c| c.anon).collect());
        let file = median(costs.iter().map(|c| c.file).collect());
        println!(
            "  {cpu:.3} ms CPU per call, peak RSS {rss:.1} MB (at the most calls in flight: {anon:.1} MB heap and stacks, {file:.1} MB program pages)"
        );
        cost_rows.push_str(&format!(
            "| daemon CPU per call (user+sys, getrusage, simulator in its own process), {cost_n} calls in flight | **{cpu:.3} ms** | ≤ 0.5 ms |\n\
| daemon peak RSS (VmHWM) with {cost_n} calls in flight | **{rss:.1} MB** | {rss_target} |\n",
            rss_target = if cost_n == 1000 { "≤ 20 MB" } else { "—" },
        ));
    }

    println!("event throughput: {ev_n} calls in flight…");
    let evs: Vec<(f64, f64, f64)> = (0..runs).map(|_| rt.block_on(events(ev_n))).collect();
    let eps = median(evs.iter().map(|e| e.0).collect());
    let p50 = median(evs.iter().map(|e| e.1).collect());
    let p99 = median(evs.iter().map(|e| e.2).collect());
    println!("  {eps:.0} events/s; StasisStart → play p50 {p50:.2} ms, p99 {p99:.2} ms");

    println!("selection: {sel_clients} clients…");
    let page = 4 * c as usize;
    let sel = rt.block_on(selection(sel_clients, sel_inv, page, sel_runs));
    let (invoices, rows) = (sel.invoices, sel.rows);
    println!(
        "  {invoices} invoices, {rows} eligible, pages of {page}: first page {:.1} ms / all pages {:.0} ms without indexes; {:.1} ms / {:.0} ms with",
        sel.without.0, sel.without.1, sel.with.0, sel.with.1
    );

    // How cost grows, and a realistic campaign (BENCHMARKS.md sections
    // of their own); small in a smoke run.
    let scaling_md = if smoke {
        scaling(&rt, &[20, 50], 1, 500)
    } else {
        scaling(&rt, &SCALING_SIZES, runs_flag.unwrap_or(runs), 4000)
    };
    println!("{scaling_md}");
    let (real_n, real_c) = if smoke { (100, 10) } else { REAL_SIZE };
    println!("realistic campaign: N={real_n} C={real_c}, time scale {scale}…");
    let real = rt.block_on(realistic(real_n, real_c, scale));
    println!("{real}");

    if smoke {
        println!("smoke run: BENCHMARKS.md not written");
        return;
    }
    let cpu_model = common::cpu_model();
    let md = format!(
        "{BEGIN}\n\
Produced by `cargo bench --bench campaign` on {date} ({cores} cores, {cpu_model}; MariaDB on loopback; the in-repo ARI simulator). \
Medians of {runs} runs (selection: {sel_runs}). Nothing here is asserted by the tests; a smoke run (`-- --smoke`) is part of `.ci/run`.\n\n\
| figure | measured | target (BENCHMARKS.md) |\n|---|---|---|\n\
| campaign wall time, N={n}, C={c}, {call:.0} s calls | {wall:.2} s vs physical limit ⌈N/C⌉×T = {limit:.0} s: ratio **{ratio:.3}** | ≤ 1.02 |\n\
| channel utilisation while clients remain | **{util:.1} %** | ≥ 99 % |\n\
| baseline: one call at a time (the seed script), same calls | {per_call:.3} s per call → {seed_wall:.0} s for N={n} | — |\n\
| speed-up over the baseline | **{speedup:.1}×** | — |\n\
{cost_rows}\
| events digested, {ev_n} calls in flight | {eps:.0} events/s | — |\n\
| StasisStart → play request | p50 **{p50:.2} ms**, p99 **{p99:.2} ms** | — |\n\
| selection, {sel_clients} clients / {invoices} invoices, only the foreign-key index on factura: first page of {page} clients (what a pass waits for before its first call) | {w0:.1} ms | — |\n\
| the same, with the indexes `check` recommends | **{i0:.1} ms** | ≤ 250 ms |\n\
| reading all {rows} eligible clients page after page (spread over the pass), without / with the indexes | {w1:.0} ms / {i1:.0} ms | — |\n",
        w0 = sel.without.0,
        i0 = sel.with.0,
        w1 = sel.without.1,
        i1 = sel.with.1,
        date = chrono::Local::now().format("%Y-%m-%d"),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        call = prompt.as_secs_f64(),
        ratio = wall / limit,
        util = util * 100.0,
        speedup = seed_wall / wall,
    );
    // Only the figures between the markers are replaced: the notes around
    // them (what was profiled and changed) are written by hand.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let out = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{md}{}", &old[..b], &old[e..]),
        _ => format!("# Benchmarks\n\n{md}{END}\n"),
    };
    std::fs::write(path, out).unwrap();
    println!("wrote BENCHMARKS.md");
    let stamp = format!(
        "Produced by `cargo bench --bench campaign` on {} ({} cores, {cpu_model}; MariaDB on loopback).",
        chrono::Local::now().format("%Y-%m-%d"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for (name, begin, end, body) in [
        (
            "scaling",
            SCALING_BEGIN,
            SCALING_END,
            format!(
                "{stamp} Medians of {} runs per size; the simulator is a separate `ari-sim` process for CPU and RSS, in process for the latency.\n\n{scaling_md}",
                runs_flag.unwrap_or(runs)
            ),
        ),
        (
            "realistic",
            REAL_BEGIN,
            REAL_END,
            format!("{stamp} One pass, the simulator in process.\n\n{real}"),
        ),
    ] {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        match replace_between(&old, begin, end, &body) {
            Some(new) => {
                std::fs::write(path, new).unwrap();
                println!("wrote the {name} section of BENCHMARKS.md");
            }
            None => println!("BENCHMARKS.md has no {name} markers: that section not written"),
        }
    }
}
