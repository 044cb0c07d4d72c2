//! The dialer's performance figures (BENCHMARKS.md), measured against the
//! in-repo simulator and a local MariaDB, written to BENCHMARKS.md.
//!
//!     cargo bench --bench campaign              # full run, ~5 min on 2 cores
//!     cargo bench --bench campaign -- --smoke   # small N, checks nothing rots (CI)
//!     cargo bench --bench campaign -- --refill  # only the N=5000 pass and its refill breakdown
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
        "claim transaction (made ahead, off this path when ready in time)",
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
    sim.shutdown().await;
    drop_db("overdue_bench_tp").await;
    let limit = (n as f64 / c as f64).ceil() * prompt.as_secs_f64();
    Throughput {
        wall: wall.as_secs_f64(),
        limit,
        utilisation,
        refill: refill(&probe, c as usize),
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
/// `ari-sim` process (so the simulator's work is not counted); prints
/// "cpu_ms_per_call peak_rss_kb".
async fn cost_child(n: usize) {
    let opts = database("overdue_bench_cost", n, 2, true).await;
    let mut sim = Command::new(env!("CARGO_BIN_EXE_ari-sim"))
        .args(["--port", "0", "--all-answer", "--prompt-ms", "4000"])
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
    let (summary, _, _) = pass(config(&opts, &url, n as u32)).await;
    let after = rusage();
    let _ = sim.kill();
    let _ = sim.wait();
    drop_db("overdue_bench_cost").await;
    assert_eq!(summary.calls.len(), n);
    let cpu = (after.0 - before.0) * 1000.0 / n as f64;
    println!("{cpu:.3} {}", after.1);
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

fn cost(n: usize) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--cost-child", &n.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    let mut it = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    (
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN) / 1024.0,
    )
}

/// Events digested per second, and StasisStart → play delays (p50, p99) in ms.
async fn events(n: usize) -> (f64, f64, f64) {
    let opts = database("overdue_bench_ev", n, 2, true).await;
    let sim = sim(Duration::from_secs(3)).await;
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
    sim.shutdown().await;
    drop_db("overdue_bench_ev").await;
    (events as f64 / wall.as_secs_f64(), p(0.5), p(0.99))
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
const END: &str = "<!-- end of figures -->";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Some(i) = args.iter().position(|a| a == "--cost-child") {
        let n = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(1000);
        rt.block_on(cost_child(n));
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
        let costs: Vec<(f64, f64)> = (0..runs).map(|_| cost(cost_n)).collect();
        let cpu = median(costs.iter().map(|c| c.0).collect());
        let rss = median(costs.iter().map(|c| c.1).collect());
        println!("  {cpu:.3} ms CPU per call, peak RSS {rss:.1} MB");
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
}
