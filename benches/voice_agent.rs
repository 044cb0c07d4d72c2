//! The inbound voice agent under load (BENCHMARKS.md "Voice agent (50
//! concurrent calls)"): 50 agent calls at once against the in-repo ARI
//! simulator and fake OpenAI Realtime server, every figure from one run.
//!
//!     cargo bench --bench voice_agent              # full run, ~1 min
//!     cargo bench --bench voice_agent -- --smoke   # 3 calls, a few seconds (CI)
//!     cargo bench --bench voice_agent -- --dump samples.csv   # and every sample
//!
//! The daemon (`Dialer::connect`) runs in a child process (this binary
//! re-executed with `--daemon-child`); this process hosts the simulator and
//! the fake with their records. So the child's CPU (`/proc/<pid>/stat`,
//! utime + stime) and memory (`VmRSS`, `VmHWM`) are the daemon's alone,
//! read over a steady window with every call live, less the same child
//! idle before the first call.
//!
//! Each caller talks like a person on a phone line: its line always
//! carries audio (quiet "murmur" the fake's VAD takes for silence, as RTP
//! every 20 ms), and it talks over the agent (a loud tone: barge-in) in
//! two turns of three, letting the answer play to the end in the third.
//! Every frame it says carries its call and frame number in a few quiet
//! samples, so each `input_audio_buffer.append` the fake receives is
//! matched with the RTP packet the simulator sent.
//!
//! Timing points (all `std::time::Instant` in this process):
//! - inbound: the simulator's send of a caller's RTP packet
//!   (`Simulator::said`) → the fake taking the `input_audio_buffer.append`
//!   holding it off its socket (`ConnRecord::appends`);
//! - outbound: the fake starting to write a response's first
//!   `response.output_audio.delta` (`ConnRecord::deltas`) → the simulator
//!   receiving the first RTP packet of the talk spurt (`Simulator::heard`);
//! - jitter: gaps between consecutive packets of a talk spurt, less 20 ms:
//!   by the kernel's timestamps of the packets on loopback (`spawn_wire`,
//!   taken in the daemon's `sendto`), and as the simulator receives them;
//! - barge-in: the fake starting to write `speech_started`
//!   (`ConnRecord::speech_started`) → the last packet of the cut spurt the
//!   simulator receives.
//!
//! Each interval also holds loopback and the scheduling of this process's
//! tasks (two cores shared by both processes), so they are upper bounds on
//! what the daemon adds. To tell the two apart, a probe task in each
//! process records how late a 20 ms timer wakes during the window.
//!
//! Only the full run writes BENCHMARKS.md (between its markers); nothing
//! is asserted against the targets, only that the calls really talked.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{drop_db, load_database, server_url};
use overdue_dialer::billing::demo_data::{Client, Data, Invoice};
use overdue_dialer::config::{Config, Secret};
use overdue_dialer::dialer::Dialer;
use overdue_dialer::realtime_sim::{g711, ConnRecord, FakeConfig, FakeRealtime};
use overdue_dialer::sim::{Heard, Said, SimConfig, Simulator};

/// μ-law bytes per 20 ms frame.
const FRAME: usize = 160;
const PTIME: Duration = Duration::from_millis(20);
/// Every agent answer (the fake's `response_audio_ms`).
const ANSWER_MS: u32 = 4000;
/// How long the caller talks over the agent.
const TONE_MS: u32 = 600;
/// After the caller stops: the fake's VAD waits 500 ms of quiet, then the
/// answer starts; the caller lets it play 1.5 s before talking again.
const BARGE_AFTER_MS: u32 = 2000;
/// A turn the caller lets the answer finish: 500 ms + the answer + 500 ms.
const LISTEN_MS: u32 = 500 + ANSWER_MS + 500;
/// First RTP port of the daemon's calls (tests use 42000+ and 47000+).
const FIRST_PORT: u16 = 45_000;

const TARGET_CPU_PCT: f64 = 0.5;
const TARGET_RSS_KB: f64 = 200.0;
const TARGET_JITTER_MS: f64 = 2.0;
const TARGET_LATENCY_MS: f64 = 5.0;
const TARGET_CUTOFF_MS: f64 = 40.0;

/// The caller number and client of call `i` (distinct, all known).
fn number(i: usize) -> String {
    format!("30010{i:05}")
}

fn db_name() -> String {
    format!("overdue_bench_va_{}", std::process::id())
}

async fn database(name: &str, n: usize) -> mysql_async::Opts {
    let mut data = Data::default();
    for i in 0..n {
        let id = 100 + i as i64;
        data.clients.push(Client {
            id,
            nombre: format!("Cliente {id}"),
            telefono: Some(number(i)),
            corte: Some(1),
            outbound_call: true,
            is_sent: false,
            attempts: 0,
            completed_at: None,
        });
        data.invoices.push(Invoice {
            client_id: id,
            saldo: format!("{}.00", 50_000 + 1_000 * i),
            cerrado: false,
        });
    }
    load_database(name, &data).await
}

// ---------------------------------------------------------------- probe

/// How late a task of this process wakes: every 20 ms (the RTP packet
/// time) a timer is set, and how long after its deadline the task runs is
/// recorded while `on` is set. What a runtime's tasks (the daemon's
/// pacing, the simulator's receiving) wait for a core, plus tokio's 1 ms
/// timer granularity.
fn spawn_probe(on: Arc<AtomicBool>) -> Arc<Mutex<Vec<f64>>> {
    let late = Arc::new(Mutex::new(Vec::new()));
    let record = late.clone();
    tokio::spawn(async move {
        let mut due = tokio::time::Instant::now();
        loop {
            due += PTIME;
            tokio::time::sleep_until(due).await;
            let now = tokio::time::Instant::now();
            if on.load(Ordering::Relaxed) {
                let ms = now.duration_since(due).as_secs_f64() * 1000.0;
                record.lock().unwrap().push(ms);
            }
            // Behind by more than a period: start again from now.
            if now > due + PTIME {
                due = now;
            }
        }
    });
    late
}

// ---------------------------------------------------------------- wire

/// The kernel's timestamp of each of the daemon's RTP packets, by (SSRC,
/// sequence number), in ns of `CLOCK_REALTIME`.
type WireTimes = HashMap<(u32, u16), i64>;

/// Records when each RTP packet of the daemon (source port `ports`) went
/// through loopback, by the kernel's clock rather than the simulator's
/// receiving task: a raw UDP socket sees a copy of every UDP datagram,
/// and `SO_TIMESTAMPNS` gives the time loopback took it, which is in the
/// daemon's own `sendto`. So the send jitter is the daemon's alone, not
/// also how late this process's tasks ran (the "as received" row keeps
/// that view). Needs `CAP_NET_RAW`; `None` when the socket cannot be
/// opened. Stops when `stop` is set.
fn spawn_wire(
    ports: std::ops::RangeInclusive<u16>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<WireTimes>> {
    // SAFETY: plain socket calls on a descriptor this function owns; every
    // pointer passed points at a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP);
        if fd < 0 {
            return None;
        }
        let on: libc::c_int = 1;
        let rcvbuf: libc::c_int = 8 << 20;
        let tick = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        let int = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let ok = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            int,
        ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const rcvbuf).cast(),
                int,
            ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tick).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) == 0;
        if !ok {
            libc::close(fd);
            return None;
        }
        // Only the daemon's datagrams wake the thread (the callers' RTP
        // towards it is as many again): a classic BPF filter on the UDP
        // source port, the IP header's length taken from the packet.
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let filter = [
            op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0),
            op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 0, 0, 0),
            op(
                libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
                0,
                2,
                u32::from(*ports.start()),
            ),
            op(
                libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K,
                1,
                0,
                u32::from(*ports.end()),
            ),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // Without it the check below still keeps only the daemon's.
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        );
        Some(std::thread::spawn(move || {
            let mut times = WireTimes::new();
            let mut buf = [0u8; 2048];
            let mut control = [0u64; 16];
            while !stop.load(Ordering::Relaxed) {
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &raw mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control) as _;
                let n = libc::recvmsg(fd, &raw mut msg, 0);
                if n <= 0 {
                    continue;
                }
                let mut at = None;
                let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS
                    {
                        let ts: libc::timespec =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        at = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
                    }
                    c = libc::CMSG_NXTHDR(&raw const msg, c);
                }
                // IPv4 header, UDP header, then the RTP header.
                let d = &buf[..n as usize];
                let ihl = usize::from(d[0] & 15) * 4;
                let (Some(at), Some(udp)) = (at, d.get(ihl..)) else {
                    continue;
                };
                if udp.len() < 8 + 12 || !ports.contains(&u16::from_be_bytes([udp[0], udp[1]])) {
                    continue;
                }
                let rtp = &udp[8..];
                let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
                let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
                times.insert((ssrc, seq), at);
            }
            libc::close(fd);
            times
        }))
    }
}

// ---------------------------------------------------------------- child

/// Child mode: the daemon, as `overdue-dialer run` starts it (a
/// multi-threaded runtime, no campaign pass), until stdin closes; then
/// prints its voice agent counters and what the probe saw between the
/// `start` and `stop` lines on stdin (the steady window).
fn daemon_child(args: &[String]) {
    let [sim_url, fake_url, db, n] = args else {
        panic!("--daemon-child SIM_URL FAKE_URL DATABASE CALLS");
    };
    let n: u16 = n.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(
            mysql_async::Opts::from_url(&server_url()).unwrap(),
        )
        .db_name(Some(db.clone()))
        .into();
        let mut config = Config::for_simulator(sim_url, &opts, db);
        let va = &mut config.voice_agent;
        va.url = fake_url.clone();
        va.api_key = Secret::new("sk-fake-realtime");
        va.max_concurrent = u32::from(n);
        va.rtp_ports = format!("{FIRST_PORT}-{}", FIRST_PORT + n + 20);
        let dialer = Dialer::connect(config, "bench".into())
            .await
            .expect("the daemon connects");
        let on = Arc::new(AtomicBool::new(false));
        let late = spawn_probe(on.clone());
        println!("ready");
        std::io::stdout().flush().unwrap();
        let _ = tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref() {
                    Ok("start") => on.store(true, Ordering::Relaxed),
                    Ok("stop") => on.store(false, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
        let late = Dist(late.lock().unwrap().clone());
        println!(
            "probe {} {} {} {} {}",
            late.p(0.5),
            late.p(0.9),
            late.p(0.99),
            late.p(1.0),
            late.0.len()
        );
        let s = &dialer.voice_agent.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        println!(
            "stats {} {} {} {}",
            get(&s.calls),
            get(&s.agent_calls),
            get(&s.late_rtp),
            get(&s.dropped_rtp)
        );
        std::io::stdout().flush().unwrap();
        dialer.shutdown().await;
    });
}

// ---------------------------------------------------------------- /proc

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / clock_ticks()
}

/// A `kB` line of `/proc/<pid>/status`.
fn status_kb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// (busy, total) jiffies of the whole machine, from `/proc/stat`.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = f.iter().sum();
    // idle and iowait
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

fn self_cpu_secs() -> f64 {
    cpu_secs(std::process::id())
}

/// One reading of everything the window needs.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    daemon_cpu: f64,
    own_cpu: f64,
    machine: (f64, f64),
}

fn reading(pid: u32) -> Reading {
    Reading {
        at: Instant::now(),
        daemon_cpu: cpu_secs(pid),
        own_cpu: self_cpu_secs(),
        machine: machine_jiffies(),
    }
}

// ---------------------------------------------------------------- callers

/// Quiet audio the fake's VAD takes for silence: a line with nobody
/// talking (as in `tests/voice_agent.rs`).
fn murmur(ms: u32) -> Vec<u8> {
    (0..ms as usize * 8)
        .map(|i| [0xF1u8, 0xF7, 0xFB, 0x75, 0x7A, 0xF3][i % 6] ^ ((i / 6 % 2) as u8))
        .collect()
}

/// What caller `call` says for `total_ms`: murmur for `lead_ms` (the
/// greeting plays), then turns of talking over the agent, twice talking
/// over it mid-answer and once letting it finish. Every frame is stamped.
fn script(call: usize, lead_ms: u32, total_ms: u32) -> Vec<u8> {
    let mut audio = murmur(lead_ms);
    let mut turn = 0;
    while audio.len() < total_ms as usize * 8 {
        audio.extend(g711::tone_ulaw(TONE_MS, 440, 8000.0));
        audio.extend(murmur(if turn % 3 == 2 {
            LISTEN_MS
        } else {
            BARGE_AFTER_MS
        }));
        turn += 1;
    }
    audio.truncate(total_ms as usize * 8 / FRAME * FRAME);
    for (k, frame) in audio.chunks_mut(FRAME).enumerate() {
        stamp(frame, call, k);
    }
    audio
}

/// Call and frame number in five near-silent samples (μ-law 0xF0–0xFF),
/// which leave the VAD's verdict on the frame as it was.
fn stamp(frame: &mut [u8], call: usize, k: usize) {
    assert!(call < 256 && k < 4096, "stamp overflow");
    let nibbles = [
        k & 15,
        (k >> 4) & 15,
        (k >> 8) & 15,
        call & 15,
        (call >> 4) & 15,
    ];
    for (b, n) in frame.iter_mut().zip(nibbles) {
        *b = 0xF0 | n as u8;
    }
}

fn unstamp(frame: &[u8]) -> Option<(usize, usize)> {
    if frame.len() != FRAME || frame[..5].iter().any(|b| b & 0xF0 != 0xF0) {
        return None;
    }
    let n = |i: usize| usize::from(frame[i] & 15);
    Some((n(3) | (n(4) << 4), n(0) | (n(1) << 4) | (n(2) << 8)))
}

// ---------------------------------------------------------------- figures

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default)]
struct Dist(Vec<f64>);

impl Dist {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    fn p(&self, q: f64) -> f64 {
        pct(&self.sorted(), q)
    }

    fn line(&self) -> String {
        let s = self.sorted();
        format!(
            "p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms (n={})",
            pct(&s, 0.5),
            pct(&s, 0.9),
            pct(&s, 0.99),
            s.last().copied().unwrap_or(f64::NAN),
            s.len()
        )
    }
}

fn ms(d: f64) -> f64 {
    d * 1000.0
}

/// Signed seconds from `a` to `b`.
fn secs(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64()
    } else {
        -(a - b).as_secs_f64()
    }
}

/// The talk spurts heard (split at marker bits).
fn spurts(heard: &[Heard]) -> Vec<&[Heard]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=heard.len() {
        if i == heard.len() || heard[i].marker {
            if i > start {
                out.push(&heard[start..i]);
            }
            start = i;
        }
    }
    out
}

#[derive(Default)]
struct Figures {
    inbound: Dist,
    outbound: Dist,
    jitter: Dist,
    /// The same gaps by the kernel's timestamps (`spawn_wire`), when it
    /// could capture.
    jitter_wire: Dist,
    cutoff: Dist,
    /// Packets of a cut spurt heard after `speech_started` was sent.
    after_cut: Vec<usize>,
    /// Inbound packets the simulator sent that never reached the fake.
    lost_in: usize,
    sent_in: usize,
    /// Outbound sequence gaps inside spurts.
    lost_out: usize,
    packets_out: usize,
    /// Responses whose first packet was not the fake's audio.
    misheard: usize,
    truncations: usize,
    /// `speech_started` while the agent was silent (no barge-in).
    quiet_turns: usize,
    /// `kind,call,ms since the window began,value ms` of every sample.
    dump: Vec<String>,
}

/// Everything of one call: (caller channel, what it said, heard), and the
/// fake's record of its session.
struct CallData {
    said: Vec<Said>,
    heard: Vec<Heard>,
    conn: ConnRecord,
}

fn measure(calls: &[CallData], window: (Instant, Instant), wire: &WireTimes, f: &mut Figures) {
    let inside = |t: Instant| t >= window.0 && t <= window.1;
    let first = g711::pattern_ulaw(FRAME);
    for (i, c) in calls.iter().enumerate() {
        let conn = &c.conn;
        // Inbound: each append is one RTP packet, found by its stamp.
        let mut got = vec![false; c.said.len()];
        for a in &conn.appends {
            let bytes = &conn.audio_in[a.audio.clone()];
            let Some((call, k)) = unstamp(bytes) else {
                continue;
            };
            assert_eq!(call, i, "an append of another call's audio");
            let Some(sent) = c.said.get(k) else { continue };
            got[k] = true;
            if inside(sent.at) {
                let v = ms(secs(sent.at, a.at));
                f.inbound.0.push(v);
                f.dump
                    .push(format!("in,{i},{:.3},{v:.3}", ms(secs(window.0, sent.at))));
            }
        }
        // Packets sent in the window that never arrived (the call was
        // still up, so none are lost to a hang-up).
        for (k, s) in c.said.iter().enumerate() {
            if inside(s.at) {
                f.sent_in += 1;
                if !got[k] {
                    f.lost_in += 1;
                }
            }
        }

        let spurts = spurts(&c.heard);
        // Outbound: a response's first delta → the first packet of the
        // spurt that starts after it.
        let mut firsts: Vec<(Instant, &str)> = Vec::new();
        for d in &conn.deltas {
            if !firsts.iter().any(|(_, item)| *item == d.item_id) {
                firsts.push((d.at, &d.item_id));
            }
        }
        for (at, _) in &firsts {
            let Some(sp) = spurts.iter().find(|s| s[0].at >= *at) else {
                continue;
            };
            if !inside(*at) {
                continue;
            }
            if sp[0].payload != first {
                f.misheard += 1;
                continue;
            }
            let v = ms(secs(*at, sp[0].at));
            f.outbound.0.push(v);
            f.dump
                .push(format!("out,{i},{:.3},{v:.3}", ms(secs(window.0, *at))));
        }
        // Jitter: gaps inside spurts.
        for sp in &spurts {
            for w in sp.windows(2) {
                if !inside(w[1].at) {
                    continue;
                }
                f.packets_out += 1;
                let gap = (w[1].at - w[0].at).as_secs_f64();
                let v = ms((gap - PTIME.as_secs_f64()).abs());
                f.jitter.0.push(v);
                f.dump.push(format!(
                    "jitter,{i},{:.3},{v:.3}",
                    ms(secs(window.0, w[1].at))
                ));
                f.lost_out += usize::from(w[1].seq.wrapping_sub(w[0].seq)).saturating_sub(1);
                if let (Some(a), Some(b)) = (
                    wire.get(&(w[0].ssrc, w[0].seq)),
                    wire.get(&(w[1].ssrc, w[1].seq)),
                ) {
                    let v = ((b - a) as f64 / 1e6 - ms(PTIME.as_secs_f64())).abs();
                    f.jitter_wire.0.push(v);
                    f.dump.push(format!(
                        "jitter_wire,{i},{:.3},{v:.3}",
                        ms(secs(window.0, w[1].at))
                    ));
                }
            }
        }
        // Barge-in: speech_started while a spurt was playing → its last
        // packet. A spurt is playing if it has a packet within two packet
        // times before the event and is shorter than a whole answer.
        let whole = ANSWER_MS as usize / 20;
        for &s in &conn.speech_started {
            if !inside(s) {
                continue;
            }
            let live = spurts.iter().find(|sp| {
                sp[0].at <= s
                    && sp.last().is_some_and(|l| l.at + 2 * PTIME >= s)
                    && sp.len() < whole
            });
            match live {
                Some(sp) => {
                    let last = sp.last().map(|l| l.at).unwrap_or(s);
                    let v = ms(secs(s, last));
                    f.cutoff.0.push(v);
                    f.dump
                        .push(format!("cutoff,{i},{:.3},{v:.3}", ms(secs(window.0, s))));
                    f.after_cut.push(sp.iter().filter(|h| h.at > s).count());
                }
                None => f.quiet_turns += 1,
            }
        }
        f.truncations += conn.truncations.len();
    }
}

// ---------------------------------------------------------------- the run

struct Plan {
    calls: usize,
    baseline: Duration,
    settle: Duration,
    steady: Duration,
    ramp: Duration,
}

struct Outcome {
    plan_calls: usize,
    steady_secs: f64,
    idle_cpu_pct: f64,
    live_cpu_pct: f64,
    idle_rss_kb: f64,
    live_rss_kb: f64,
    hwm_kb: f64,
    own_cpu_pct: f64,
    machine_pct: f64,
    loadavg: String,
    figures: Figures,
    setup_ms: Dist,
    child_stats: String,
    /// The daemon process's probe: p50, p90, p99, max (ms), samples.
    daemon_late: Vec<f64>,
    /// This process's probe.
    own_late: Dist,
}

fn spawn_child(sim: &Simulator, fake: &FakeRealtime, db: &str, n: usize) -> (Child, u32) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--daemon-child",
            &sim.url(),
            &fake.url(),
            db,
            &n.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the daemon child");
    let pid = child.id();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the daemon child did not start");
    // The rest is read after stdin closes.
    child.stdout = Some(out.into_inner());
    (child, pid)
}

async fn run(plan: &Plan) -> Outcome {
    let n = plan.calls;
    let db = db_name();
    database(&db, n).await;
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    let fake = FakeRealtime::start(FakeConfig {
        response_audio_ms: ANSWER_MS,
        // Like the real service: audio faster than real time, in 20 ms
        // deltas. Pacing it is the daemon's job.
        chunk_interval: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let (mut child, pid) = spawn_child(&sim, &fake, &db, n);
    println!("  daemon: pid {pid}");
    let probing = Arc::new(AtomicBool::new(false));
    let own_late = spawn_probe(probing.clone());
    let wire_stop = Arc::new(AtomicBool::new(false));
    let wire = spawn_wire(FIRST_PORT..=FIRST_PORT + n as u16 + 20, wire_stop.clone());
    if wire.is_none() {
        println!("  no raw socket (needs CAP_NET_RAW): jitter only as the simulator receives it");
    }
    let mut to_child = child.stdin.take().unwrap();

    // The daemon idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle0 = reading(pid);
    tokio::time::sleep(plan.baseline).await;
    let idle1 = reading(pid);
    let idle_rss_kb = status_kb(pid, "VmRSS:");
    let idle_rate = (idle1.daemon_cpu - idle0.daemon_cpu) / secs(idle0.at, idle1.at);

    // The calls, spread over the ramp; each caller's whole talk queued.
    // Long enough for slow set-ups; what is left at the hang-up is lost.
    let total_ms =
        (plan.ramp + plan.settle + plan.steady + Duration::from_secs(25)).as_millis() as u32;
    let mut ids = Vec::new();
    let mut placed = Vec::new();
    for i in 0..n {
        let id = sim
            .inbound_call(&number(i))
            .expect("the inbound app is registered");
        // Stagger the turns: the first barge-in 1.5–2.5 s into the greeting.
        let lead = 1500 + (i as u32 * 370) % 1000;
        sim.caller_says(&id, script(i, lead, total_ms));
        placed.push(Instant::now());
        ids.push(id);
        tokio::time::sleep(plan.ramp / n as u32).await;
    }
    // Greeted: the first packet heard.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut setup_ms = Dist::default();
    for (id, at) in ids.iter().zip(&placed) {
        let first = loop {
            if let Some(h) = sim.heard(id).first() {
                break h.at;
            }
            assert!(Instant::now() < deadline, "call {id} not greeted in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        setup_ms.0.push(ms(secs(*at, first)));
    }
    assert_eq!(fake.connections(), n, "one OpenAI session per call");
    tokio::time::sleep(plan.settle).await;

    // The steady window.
    assert_eq!(fake.open_connections(), n, "every call live at the start");
    println!(
        "  all {n} calls live: steady window of {} s",
        plan.steady.as_secs()
    );
    writeln!(to_child, "start").unwrap();
    probing.store(true, Ordering::Relaxed);
    let live0 = reading(pid);
    let until = live0.at + plan.steady;
    let mut live_rss_kb: f64 = 0.0;
    while Instant::now() < until {
        live_rss_kb = live_rss_kb.max(status_kb(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(250).min(until - Instant::now())).await;
    }
    let live1 = reading(pid);
    probing.store(false, Ordering::Relaxed);
    wire_stop.store(true, Ordering::Relaxed);
    writeln!(to_child, "stop").unwrap();
    live_rss_kb = live_rss_kb.max(status_kb(pid, "VmRSS:"));
    let hwm_kb = status_kb(pid, "VmHWM:");
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // The 1, 5 and 15 minute averages.
    let loadavg = loadavg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(fake.open_connections(), n, "every call live at the end");
    assert_eq!(sim.live_bridges(), n, "every call bridged at the end");

    // Hang up, let the daemon finish the calls, stop it.
    for id in &ids {
        sim.hang_up_caller(id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while (fake.open_connections() > 0 || sim.live_channels() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(to_child);
    let mut rest = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut rest);
    }
    let _ = child.wait();
    let child_stats = rest
        .lines()
        .find_map(|l| l.strip_prefix("stats "))
        .unwrap_or("")
        .to_owned();
    let daemon_late: Vec<f64> = rest
        .lines()
        .find_map(|l| l.strip_prefix("probe "))
        .unwrap_or("")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    let own_late = Dist(own_late.lock().unwrap().clone());

    // The records, one call each (the session found by the stamp of its
    // first append).
    let conns = fake.conns();
    let mut by_call: HashMap<usize, ConnRecord> = HashMap::new();
    for c in conns {
        let call = c
            .appends
            .first()
            .and_then(|a| unstamp(&c.audio_in[a.audio.clone()]))
            .map(|(call, _)| call)
            .expect("a session that heard no caller");
        assert!(
            by_call.insert(call, c).is_none(),
            "two sessions for call {call}"
        );
    }
    let calls: Vec<CallData> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| CallData {
            said: sim.said(id),
            heard: sim.heard(id),
            conn: by_call.remove(&i).expect("every call had a session"),
        })
        .collect();
    let mut figures = Figures::default();
    let wire = match wire {
        Some(h) => tokio::task::spawn_blocking(move || h.join())
            .await
            .unwrap()
            .expect("the wire thread"),
        None => WireTimes::new(),
    };
    measure(&calls, (live0.at, live1.at), &wire, &mut figures);
    fake.shutdown().await;
    sim.shutdown().await;
    drop_db(&db).await;

    let wall = secs(live0.at, live1.at);
    let rate = (live1.daemon_cpu - live0.daemon_cpu) / wall;
    let own = (live1.own_cpu - live0.own_cpu) / wall;
    let machine =
        (live1.machine.0 - live0.machine.0) / (live1.machine.1 - live0.machine.1).max(1.0);
    Outcome {
        plan_calls: n,
        steady_secs: wall,
        idle_cpu_pct: idle_rate * 100.0,
        live_cpu_pct: rate * 100.0,
        idle_rss_kb,
        live_rss_kb,
        hwm_kb,
        own_cpu_pct: own * 100.0,
        machine_pct: machine * 100.0,
        loadavg,
        figures,
        setup_ms,
        child_stats,
        daemon_late,
        own_late,
    }
}

// ---------------------------------------------------------------- report

const BEGIN: &str = "<!-- voice agent figures: written by cargo bench --bench voice_agent -->";
const END: &str = "<!-- end of voice agent figures -->";
const HEADING: &str = "## Voice agent (50 concurrent calls)";

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--daemon-child") {
        daemon_child(&args[i + 1..]);
        return;
    }
    // `cargo test --all-targets` runs bench targets too, without `--bench`.
    if !args.iter().any(|a| a == "--bench") {
        println!("benchmark skipped outside `cargo bench` (run: cargo bench --bench voice_agent)");
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    // `--dump FILE`: every sample as CSV, for a closer look.
    let dump = args
        .iter()
        .position(|a| a == "--dump")
        .and_then(|i| args.get(i + 1).cloned());
    let plan = if smoke {
        Plan {
            calls: 3,
            baseline: Duration::from_secs(1),
            settle: Duration::from_millis(500),
            steady: Duration::from_secs(4),
            ramp: Duration::from_millis(300),
        }
    } else {
        Plan {
            calls: 50,
            baseline: Duration::from_secs(5),
            settle: Duration::from_secs(3),
            steady: Duration::from_secs(30),
            ramp: Duration::from_secs(2),
        }
    };
    println!(
        "voice agent: {} concurrent calls, {} s steady window…",
        plan.calls,
        plan.steady.as_secs()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // No usable server at the configured address: a private one for this
    // run (billing::private_server); child processes inherit its URL.
    let mariadb = rt
        .block_on(overdue_dialer::billing::private_server::reachable_or_private(&server_url()))
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(why) = &mariadb.why {
        println!("{why}: using a private MariaDB for this run");
    }
    std::env::set_var("OVERDUE_TEST_MYSQL_URL", &mariadb.url);
    let o = rt.block_on(run(&plan));
    let f = &o.figures;
    if let Some(path) = &dump {
        let mut csv = String::from("kind,call,t_ms,value_ms\n");
        for line in &f.dump {
            csv.push_str(line);
            csv.push('\n');
        }
        std::fs::write(path, csv).unwrap();
        println!("  samples written to {path}");
    }
    let n = o.plan_calls as f64;
    let cpu_per_call = (o.live_cpu_pct - o.idle_cpu_pct) / n;
    let rss_per_call = (o.live_rss_kb - o.idle_rss_kb) / n;
    let barge_ins = f.cutoff.0.len();
    let max_after = f.after_cut.iter().copied().max().unwrap_or(0);
    println!(
        "  daemon CPU: idle {:.2} % of a core, {} calls live {:.2} % → {cpu_per_call:.3} % of a core per call",
        o.idle_cpu_pct, o.plan_calls, o.live_cpu_pct
    );
    println!(
        "  daemon RSS: idle {:.0} kB, live (max VmRSS) {:.0} kB → {rss_per_call:.1} kB per call; VmHWM {:.0} kB",
        o.idle_rss_kb, o.live_rss_kb, o.hwm_kb
    );
    println!(
        "  window {:.1} s; simulator+fake process {:.1} % of a core; the machine's cores {:.1} % busy; loadavg {}",
        o.steady_secs, o.own_cpu_pct, o.machine_pct, o.loadavg
    );
    println!(
        "  inbound  sim send → fake append:      {}",
        f.inbound.line()
    );
    println!(
        "  outbound fake delta → sim first RTP:  {}",
        f.outbound.line()
    );
    println!(
        "  jitter   |gap − 20 ms| in spurts, as sent (kernel timestamps): {}",
        f.jitter_wire.line()
    );
    println!(
        "  jitter   |gap − 20 ms| in spurts, as the simulator receives:   {}",
        f.jitter.line()
    );
    println!(
        "  barge-in speech_started → last RTP:   {} ({} barge-ins, ≤ {max_after} packets after the event; {} turns with the agent quiet; {} truncations)",
        f.cutoff.line(),
        barge_ins,
        f.quiet_turns,
        f.truncations
    );
    println!(
        "  packets: inbound {} sent, {} lost; outbound {} gaps measured, {} sequence gaps; {} responses not starting with the fake's audio",
        f.sent_in, f.lost_in, f.packets_out, f.lost_out, f.misheard
    );
    let dl = |i: usize| o.daemon_late.get(i).copied().unwrap_or(f64::NAN);
    let daemon_late = format!(
        "p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms (n={})",
        dl(0),
        dl(1),
        dl(2),
        dl(3),
        dl(4)
    );
    println!("  a 20 ms timer's lateness, daemon process:          {daemon_late}");
    println!(
        "  a 20 ms timer's lateness, simulator+fake process:  {}",
        o.own_late.line()
    );
    println!(
        "  call setup (inbound_call → first RTP heard): {}",
        o.setup_ms.line()
    );
    println!(
        "  daemon counters (calls agent_calls late_rtp dropped_rtp): {}",
        o.child_stats
    );
    assert!(
        !f.inbound.0.is_empty() && !f.outbound.0.is_empty() && !f.jitter.0.is_empty(),
        "no samples: the calls did not talk"
    );
    assert_eq!(
        f.misheard, 0,
        "a response did not start with the fake's audio"
    );

    if smoke {
        assert!(barge_ins > 0, "no barge-in in the smoke run");
        println!("smoke run: BENCHMARKS.md not written");
        return;
    }
    let cpu_model = common::cpu_model();
    // Without a capture (no CAP_NET_RAW) the received gaps are all there is.
    let wired = !f.jitter_wire.0.is_empty();
    let plain = |what: &str, d: &Dist, why: &str| {
        format!(
            "| {what} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {why} |\n",
            d.p(0.5),
            d.p(0.9),
            d.p(0.99),
            d.p(1.0),
            d.0.len(),
        )
    };
    let row = |what: &str, d: &Dist, target: f64| {
        format!(
            "| {what} | {:.2} | {:.2} | **{:.2}** | {:.2} | {} | ≤ {target} ms: {} |\n",
            d.p(0.5),
            d.p(0.9),
            d.p(0.99),
            d.p(1.0),
            d.0.len(),
            verdict(d.p(0.99) <= target)
        )
    };
    let md = format!(
        "{BEGIN}\n\
Produced by `cargo bench --bench voice_agent` on {date} ({cores} cores, {cpu_model}; MariaDB on loopback). \
{calls} agent calls live at once for a {window:.1} s window; during it the simulator and fake used {own:.1} % of a core, \
the machine's {cores} cores were {machine:.0} % busy in all (load average {load}).\n\n\
| figure | measured | target | |\n|---|---|---|---|\n\
| daemon CPU per live call (utime+stime of the daemon's process with {calls} calls live, less the same process idle, ÷ {calls}) | **{cpu:.3} % of a core** ({live:.2} % live, {idle:.2} % idle) | ≤ {TARGET_CPU_PCT} % | {cpu_ok} |\n\
| daemon RSS per live call (largest VmRSS with {calls} calls live, less VmRSS idle, ÷ {calls}) | **{rss:.0} kB** ({live_rss:.0} kB live, {idle_rss:.0} kB idle; VmHWM {hwm:.0} kB) | ≤ {TARGET_RSS_KB:.0} kB | {rss_ok} |\n\n\
| interval (ms) | p50 | p90 | p99 | max | samples | target (p99) |\n|---|---|---|---|---|---|---|\n\
{inbound}{outbound}{jitter_wire}{jitter}{cutoff}\
| for comparison: how late a 20 ms timer of the daemon's runtime wakes (a probe task in the daemon's process; waiting for a core, plus tokio's 1 ms timer grain) | {dl50:.2} | {dl90:.2} | {dl99:.2} | {dlmax:.2} | {dln:.0} | — |\n\
| the same in the simulator+fake process (the receiving end of every interval above) | {ol50:.2} | {ol90:.2} | {ol99:.2} | {olmax:.2} | {oln} | — |\n\n\
Barge-ins: {barge_ins} (at most {max_after} packet(s) of the cut spurt heard after `speech_started` was sent; {truncations} truncations sent). \
Packets: {sent_in} caller packets sent in the window, {lost_in} never reached the fake; {gaps} agent packet gaps measured, {lost_out} sequence gaps. \
Daemon counters at the end (calls, agent calls, late RTP, dropped RTP): {stats}. \
Call setup, `inbound_call` → first agent packet heard (ramp of {calls} calls in {ramp:.0} s): {setup}.\n",
        date = chrono::Local::now().format("%Y-%m-%d"),
        cores = std::thread::available_parallelism().map_or(0, |c| c.get()),
        calls = o.plan_calls,
        window = o.steady_secs,
        own = o.own_cpu_pct,
        machine = o.machine_pct,
        load = o.loadavg,
        cpu = cpu_per_call,
        live = o.live_cpu_pct,
        idle = o.idle_cpu_pct,
        cpu_ok = verdict(cpu_per_call <= TARGET_CPU_PCT),
        rss = rss_per_call,
        live_rss = o.live_rss_kb,
        idle_rss = o.idle_rss_kb,
        hwm = o.hwm_kb,
        rss_ok = verdict(rss_per_call <= TARGET_RSS_KB),
        inbound = row(
            "daemon-added latency in: simulator sends the caller's RTP → fake takes the `append` off its socket",
            &f.inbound,
            TARGET_LATENCY_MS
        ),
        outbound = row(
            "daemon-added latency out: fake writes a response's first audio delta → simulator receives the spurt's first RTP",
            &f.outbound,
            TARGET_LATENCY_MS
        ),
        jitter_wire = if wired {
            row(
                "RTP send jitter: \\|gap − 20 ms\\| between packets of a talk spurt, as sent (the kernel's timestamps on loopback, taken in the daemon's `sendto`)",
                &f.jitter_wire,
                TARGET_JITTER_MS,
            )
        } else {
            String::new()
        },
        jitter = if wired {
            plain(
                "the same gaps as the simulator's task receives them (adds how late this process's tasks run)",
                &f.jitter,
                "— (for comparison)",
            )
        } else {
            row(
                "RTP send jitter: \\|gap − 20 ms\\| between packets of a talk spurt, as the simulator receives them (no raw socket for kernel timestamps)",
                &f.jitter,
                TARGET_JITTER_MS,
            )
        },
        cutoff = row(
            "barge-in cut-off: fake writes `speech_started` → simulator receives the cut spurt's last RTP",
            &f.cutoff,
            TARGET_CUTOFF_MS
        ),
        truncations = f.truncations,
        sent_in = f.sent_in,
        lost_in = f.lost_in,
        gaps = f.packets_out,
        lost_out = f.lost_out,
        stats = o.child_stats,
        ramp = plan.ramp.as_secs_f64(),
        setup = o.setup_ms.line(),
        dl50 = dl(0),
        dl90 = dl(1),
        dl99 = dl(2),
        dlmax = dl(3),
        dln = dl(4),
        ol50 = o.own_late.p(0.5),
        ol90 = o.own_late.p(0.9),
        ol99 = o.own_late.p(0.99),
        olmax = o.own_late.p(1.0),
        oln = o.own_late.0.len(),
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let out = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{md}{}", &old[..b], &old[e..]),
        _ => format!("{}\n\n{HEADING}\n\n{md}{END}\n", old.trim_end()),
    };
    std::fs::write(path, out).unwrap();
    println!("wrote BENCHMARKS.md");
}
