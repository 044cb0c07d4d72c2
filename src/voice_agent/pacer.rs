//! The agent's RTP leaves on its 20 ms schedule (SPEC §14: send jitter
//! p99 ≤ 2 ms): one thread paces the packets of every agent call.
//!
//! Why a thread of its own: paced from each call's task with tokio's
//! `sleep_until`, a packet left when tokio's timer wheel (1 ms ticks, its
//! driver woken by whichever worker parks next) and the call's select loop
//! (OpenAI frames, caller RTP, silence fill) got round to it. The benchmark
//! with a loopback capture (kernel timestamps) measured that as 0.6 ms
//! median and 1.3 ms p90 lateness against each spurt's own schedule, most
//! of the send jitter. This thread sleeps on the OS's high-resolution
//! timer (`recv_timeout`: a futex wait, tens of µs of slack), keeps one
//! deadline-ordered heap of every call's next packet, and sends each with
//! a plain `sendto`, so a packet waits for nothing but a core.
//!
//! Each call's `Outbound` (queue and RTP state) sits in its `Line` behind a
//! mutex that the call's task and this thread hold for microseconds: the
//! task to queue audio or clear it at barge-in, this thread to take one
//! packet and hand it to the kernel. The send happens under the lock, so
//! once `clear` returns no packet of the dropped audio can still leave,
//! and what counts as played (for the truncation) is exactly what was
//! sent.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::rtp::{Outbound, Sent};

/// A packet due this soon goes out with the ones due now: one wake-up
/// serves calls whose deadlines fall close together, at a cost in jitter
/// far below the target.
const EARLY: Duration = Duration::from_micros(200);

/// One call's outbound audio, shared by its task and the pacer thread.
pub struct Line {
    state: Mutex<State>,
    sock: UdpSocket,
    to: SocketAddr,
    /// Told when the queue runs dry (a call ending waits for its last
    /// words to be played).
    drained: tokio::sync::Notify,
}

struct State {
    out: Outbound,
    /// The pacer holds an entry for this line (with `epoch`); entries of
    /// an older epoch are stale and dropped.
    scheduled: bool,
    epoch: u64,
    /// The call is over: nothing more is sent.
    closed: bool,
}

impl Line {
    /// A line sending from the call's own socket (a duplicate of its
    /// descriptor, so the source port is the one Asterisk was given) to
    /// Asterisk's address.
    pub fn open(sock: &tokio::net::UdpSocket, to: SocketAddr) -> std::io::Result<Arc<Line>> {
        let sock = UdpSocket::from(sock.as_fd().try_clone_to_owned()?);
        Ok(Arc::new(Line {
            state: Mutex::new(State {
                out: Outbound::new(),
                scheduled: false,
                epoch: 0,
                closed: false,
            }),
            sock,
            to,
            drained: tokio::sync::Notify::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues audio of response item `item`.
    pub fn push(self: &Arc<Self>, item: &Arc<str>, data: Vec<u8>) {
        let mut st = self.lock();
        st.out.push(item, data);
        self.schedule(&mut st);
    }

    /// See `Outbound::set_streaming`; once the response is done, a partial
    /// last packet becomes due.
    pub fn set_streaming(self: &Arc<Self>, streaming: bool) {
        let mut st = self.lock();
        st.out.set_streaming(streaming);
        self.schedule(&mut st);
    }

    /// Bytes waiting.
    pub fn queued(&self) -> usize {
        self.lock().out.queued()
    }

    /// Drops everything queued (barge-in); see `Outbound::clear`. The
    /// pacer's entry for the line goes stale.
    pub fn clear(&self) -> (Vec<Sent>, Option<Sent>) {
        let mut st = self.lock();
        st.scheduled = false;
        st.out.clear()
    }

    /// Resolves once the queue has run dry (possibly already).
    pub async fn drained(&self) {
        self.drained.notified().await;
    }

    /// Ends the line: nothing more is sent. Returns the packets sent more
    /// than a packet time late.
    pub fn close(&self) -> u64 {
        let mut st = self.lock();
        st.closed = true;
        st.scheduled = false;
        st.out.late_packets
    }

    /// Hands the pacer an entry for the line's next packet, unless it
    /// holds one or nothing is due.
    fn schedule(self: &Arc<Self>, st: &mut State) {
        if st.scheduled || st.closed {
            return;
        }
        let Some(due) = st.out.due() else {
            return;
        };
        st.epoch += 1;
        st.scheduled = true;
        pacer().send(Entry {
            at: due.into_std(),
            epoch: st.epoch,
            line: self.clone(),
        });
    }

    /// The pacer's turn for entry `epoch`: sends the packet if it is due
    /// and returns when the next one is, or `None` once the line needs no
    /// entry (queue dry, stale entry, call over).
    fn turn(&self, epoch: u64) -> Option<Instant> {
        let mut st = self.lock();
        if st.closed || !st.scheduled || st.epoch != epoch {
            return None;
        }
        let now = tokio::time::Instant::now();
        let Some(due) = st.out.due() else {
            st.scheduled = false;
            return None;
        };
        if due > now + EARLY {
            return Some(due.into_std());
        }
        if let Some(packet) = st.out.packet(now) {
            if let Err(e) = self.sock.send_to(packet, self.to) {
                // As a datagram lost on the way: the stream goes on.
                tracing::debug!(to = %self.to, error = %e, "RTP send failed");
            }
        }
        if st.out.queued() == 0 {
            self.drained.notify_one();
        }
        match st.out.due() {
            Some(next) => Some(next.into_std()),
            None => {
                st.scheduled = false;
                None
            }
        }
    }
}

/// A line's next packet, ordered by deadline (earliest first in the heap).
struct Entry {
    at: Instant,
    epoch: u64,
    line: Arc<Line>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest deadline is
    /// wanted on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

/// The handle to the pacer thread, started on first use and living as long
/// as the process (it sleeps while no call has audio to send).
struct Pacer {
    tx: Sender<Entry>,
}

impl Pacer {
    fn send(&self, entry: Entry) {
        if self.tx.send(entry).is_err() {
            tracing::error!("the RTP pacer thread is gone: agent audio is not sent");
        }
    }
}

fn pacer() -> &'static Pacer {
    static PACER: OnceLock<Pacer> = OnceLock::new();
    PACER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        if let Err(e) = std::thread::Builder::new()
            .name("rtp-pacer".into())
            .spawn(move || run(rx))
        {
            // The receiver is dropped with the closure: every send fails
            // and says so.
            tracing::error!(error = %e, "cannot start the RTP pacer thread");
        }
        Pacer { tx }
    })
}

/// The pacer thread: sleeps until the earliest deadline or a new entry,
/// then serves every entry due (within `EARLY`).
fn run(rx: Receiver<Entry>) {
    let mut heap: BinaryHeap<Entry> = BinaryHeap::new();
    loop {
        let got = match heap.peek() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(next) => {
                let wait = next.at.saturating_duration_since(Instant::now());
                if wait > EARLY {
                    rx.recv_timeout(wait)
                } else {
                    Err(RecvTimeoutError::Timeout)
                }
            }
        };
        match got {
            Ok(entry) => {
                heap.push(entry);
                heap.extend(rx.try_iter());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while heap.peek().is_some_and(|e| e.at <= Instant::now() + EARLY) {
            let Some(mut entry) = heap.pop() else { break };
            if let Some(next) = entry.line.turn(entry.epoch) {
                entry.at = next;
                heap.push(entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtp_types::RtpPacket;

    /// The pacer sends a call's queued audio from the call's own socket as
    /// one RTP stream, says when the queue has run dry, and a cleared
    /// line keeps nothing queued.
    #[tokio::test]
    async fn the_pacer_sends_the_queue_from_the_calls_socket() {
        let asterisk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let call = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let line = Line::open(&call, asterisk.local_addr().unwrap()).unwrap();
        let item: Arc<str> = Arc::from("item_1");
        line.push(&item, vec![3; 400]);
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        for _ in 0..3 {
            let (n, from) = asterisk.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, call.local_addr().unwrap());
            let p = RtpPacket::parse(&buf[..n]).unwrap();
            got.push((p.marker_bit(), p.sequence_number(), p.ssrc()));
        }
        line.drained().await;
        assert_eq!(line.queued(), 0);
        assert!(got[0].0 && !got[1].0 && !got[2].0);
        assert_eq!(got[1].1, got[0].1.wrapping_add(1));
        assert_eq!(got[2].1, got[1].1.wrapping_add(1));
        assert!(got.iter().all(|g| g.2 == got[0].2));

        line.push(&item, vec![4; 8000]);
        let (_, current) = line.clear();
        assert_eq!(current.map(|(i, _)| i.to_string()), Some("item_1".into()));
        assert_eq!(line.queued(), 0);
        line.close();
    }
}
