//! The agent call's audio path to Asterisk (README "The voice agent"): one
//! UDP port per call from `voice_agent.rtp_ports`, the caller's audio in,
//! the agent's audio out paced at 160 bytes every 20 ms.
//!
//! Packets are parsed and built with `rtp-types`. Out: payload type 0,
//! RFC 3550 sequence (+1 a packet), timestamp (+160 a packet, and jumping
//! over silences so it keeps following the clock), one random SSRC, the
//! marker bit on the first packet of each talk spurt. In: only packets
//! from the address Asterisk announced (`UNICASTRTP_LOCAL_ADDRESS:PORT`)
//! are taken, so nobody else can talk into a call.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rtp_types::{RtpPacket, RtpPacketBuilder};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// μ-law bytes in one 20 ms packet.
pub const FRAME: usize = 160;
pub const PTIME: Duration = Duration::from_millis(20);
/// μ-law silence, to pad an item's last packet.
pub const SILENCE: u8 = 0xFF;
/// Payload type 0: PCMU.
const PCMU: u8 = 0;

/// The ports agent calls may bind, each in use by one call at a time.
pub struct PortPool {
    ip: IpAddr,
    range: RangeInclusive<u16>,
    state: Mutex<(u16, HashSet<u16>)>,
}

/// A bound port, given back to the pool when dropped.
pub struct Lease {
    pool: Arc<PortPool>,
    port: u16,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1.remove(&self.port);
    }
}

impl PortPool {
    pub fn new(ip: IpAddr, range: RangeInclusive<u16>) -> Arc<PortPool> {
        let start = *range.start();
        Arc::new(PortPool {
            ip,
            range,
            state: Mutex::new((start, HashSet::new())),
        })
    }

    /// Binds the next free port (round robin, so a port just released is
    /// not reused at once while stray packets may still reach it). Ports
    /// another program holds are skipped.
    pub fn bind(self: &Arc<Self>) -> std::io::Result<(UdpSocket, Lease)> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let size = usize::from(last - first) + 1;
        for _ in 0..size {
            let port = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let port = st.0;
                st.0 = if port >= last { first } else { port + 1 };
                if !st.1.insert(port) {
                    continue;
                }
                port
            };
            let lease = Lease {
                pool: self.clone(),
                port,
            };
            match std::net::UdpSocket::bind((self.ip, port)) {
                Ok(sock) => {
                    sock.set_nonblocking(true)?;
                    return Ok((UdpSocket::from_std(sock)?, lease));
                }
                Err(_) => drop(lease),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "no free UDP port in voice_agent.rtp_ports {first}-{last} on {}",
                self.ip
            ),
        ))
    }
}

/// The caller's audio out of one received datagram, or why it was dropped.
pub fn accept(datagram: &[u8], from: SocketAddr, asterisk: SocketAddr) -> Result<&[u8], Drop_> {
    if from != asterisk {
        return Err(Drop_::Stranger);
    }
    let packet = RtpPacket::parse(datagram).map_err(|_| Drop_::Malformed)?;
    if packet.payload_type() != PCMU {
        return Err(Drop_::NotPcmu(packet.payload_type()));
    }
    let payload =
        &datagram[packet.payload_offset()..packet.payload_offset() + packet.payload_len()];
    Ok(payload)
}

/// Why a received datagram was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop_ {
    /// Not from Asterisk's address.
    Stranger,
    Malformed,
    NotPcmu(u8),
}

/// A response item and the milliseconds of it sent to Asterisk.
pub type Sent = (Arc<str>, u64);

/// A piece of agent audio and the response item it belongs to.
struct Chunk {
    item: Arc<str>,
    data: Vec<u8>,
    at: usize,
}

/// The agent's audio waiting to be sent, and the RTP state of the stream.
pub struct Outbound {
    ssrc: u32,
    seq: u16,
    ts_base: u32,
    /// Timestamp of the last packet sent.
    last_ts: Option<u32>,
    origin: Instant,
    queue: VecDeque<Chunk>,
    queued: usize,
    /// When the next packet is (or was) due.
    next: Option<Instant>,
    /// The next packet starts a talk spurt.
    spurt_start: bool,
    /// The queue ran dry after the last packet (silence, not lateness).
    idle: bool,
    /// A response is still producing audio: a partial packet waits.
    streaming: bool,
    /// The item now being sent and how many of its bytes have gone out
    /// (for `conversation.item.truncate`).
    current: Option<(Arc<str>, usize)>,
    buf: Vec<u8>,
    pub packets_sent: u64,
    /// Packets sent more than one packet time after they were due.
    pub late_packets: u64,
}

impl Outbound {
    pub fn new() -> Outbound {
        let mut rng = rand::thread_rng();
        Outbound {
            ssrc: rng.gen(),
            seq: rng.gen(),
            ts_base: rng.gen(),
            last_ts: None,
            origin: Instant::now(),
            queue: VecDeque::new(),
            queued: 0,
            next: None,
            spurt_start: true,
            idle: true,
            streaming: false,
            current: None,
            buf: Vec::with_capacity(12 + FRAME),
            packets_sent: 0,
            late_packets: 0,
        }
    }

    /// Queues audio of response item `item`.
    pub fn push(&mut self, item: &Arc<str>, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.queued += data.len();
        self.queue.push_back(Chunk {
            item: item.clone(),
            data,
            at: 0,
        });
    }

    /// Whether more audio of the response is expected (a partial last
    /// packet is held until then, and sent padded once it is not).
    pub fn set_streaming(&mut self, streaming: bool) {
        self.streaming = streaming;
    }

    /// Bytes waiting.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Drops everything queued (barge-in). Returns every item that had
    /// audio still waiting, with the milliseconds of it that went out
    /// (0 for an item not started), and, separately, the item being sent
    /// with its milliseconds even when all of it went out (its response
    /// may still be streaming more).
    pub fn clear(&mut self) -> (Vec<Sent>, Option<Sent>) {
        let unplayed = self.unplayed();
        self.queue.clear();
        self.queued = 0;
        self.next = None;
        self.idle = true;
        let current = self
            .current
            .take()
            .map(|(item, bytes)| (item, (bytes / 8) as u64));
        (unplayed, current)
    }

    /// When the next packet is due, if there is audio. Audio that arrives
    /// while the previous packet's slot is still current continues the
    /// talk spurt; after a longer silence a new spurt starts now. A packet
    /// that is merely late (audio was waiting all along) keeps its
    /// deadline and is sent at once.
    pub fn due(&mut self) -> Option<Instant> {
        // Less than a packet while more of the response is on its way:
        // wait for it rather than pad speech with silence.
        if self.queue.is_empty() || (self.streaming && self.queued < FRAME) {
            return None;
        }
        let now = Instant::now();
        match self.next {
            Some(n) if !self.idle || n + PTIME >= now => Some(n),
            _ => {
                self.spurt_start = true;
                self.idle = false;
                self.next = Some(now);
                Some(now)
            }
        }
    }

    /// The next packet to send (call when `due` has passed). It carries
    /// 160 bytes of one item, taken across as many of its deltas as needed
    /// (the service sends deltas of any length); only an item's last
    /// packet is padded with silence. The first packet of a spurt carries
    /// the marker bit.
    pub fn packet(&mut self, now: Instant) -> Option<&[u8]> {
        let due = self.due()?;
        let marker = std::mem::take(&mut self.spurt_start);
        let item = self.queue.front()?.item.clone();
        let mut payload = [SILENCE; FRAME];
        let mut filled = 0;
        while filled < FRAME {
            let Some(chunk) = self.queue.front_mut() else {
                break;
            };
            if !Arc::ptr_eq(&chunk.item, &item) {
                break;
            }
            let take = (FRAME - filled).min(chunk.data.len() - chunk.at);
            payload[filled..filled + take].copy_from_slice(&chunk.data[chunk.at..chunk.at + take]);
            chunk.at += take;
            filled += take;
            if chunk.at >= chunk.data.len() {
                self.queue.pop_front();
            }
        }
        self.queued -= filled;
        match &mut self.current {
            Some((cur, bytes)) if Arc::ptr_eq(cur, &item) => *bytes += filled,
            _ => self.current = Some((item, filled)),
        }
        // The timestamp follows the clock: +160 per 20 ms since the stream
        // began, never less than the previous packet's + 160.
        let elapsed = due.saturating_duration_since(self.origin);
        let ticks = (elapsed.as_micros() / PTIME.as_micros()) as u32;
        let by_clock = self.ts_base.wrapping_add(ticks.wrapping_mul(FRAME as u32));
        let ts = match self.last_ts {
            Some(prev) if (by_clock.wrapping_sub(prev) as i32) < FRAME as i32 => {
                prev.wrapping_add(FRAME as u32)
            }
            _ => by_clock,
        };
        self.last_ts = Some(ts);
        self.seq = self.seq.wrapping_add(1);
        if now.saturating_duration_since(due) > PTIME {
            self.late_packets += 1;
        }
        // Deadlines advance from the previous one (a monotonic schedule),
        // unless we fell far behind: then start afresh rather than burst.
        let next = due + PTIME;
        self.next = Some(if now > next + 3 * PTIME { now } else { next });
        self.idle = self.queue.is_empty();
        self.packets_sent += 1;
        self.buf.clear();
        RtpPacketBuilder::<&[u8], &[u8]>::new()
            .payload_type(PCMU)
            .marker_bit(marker)
            .sequence_number(self.seq)
            .timestamp(ts)
            .ssrc(self.ssrc)
            .payload(&payload[..])
            .write_into_vec(&mut self.buf)
            .ok()?;
        Some(&self.buf)
    }

    /// Items with audio still queued, and the one being sent, each with
    /// the milliseconds of it that went out (for barge-in).
    fn unplayed(&self) -> Vec<Sent> {
        let mut out: Vec<Sent> = Vec::new();
        for c in &self.queue {
            if !out.iter().any(|(i, _)| Arc::ptr_eq(i, &c.item)) {
                let sent = match &self.current {
                    Some((cur, bytes)) if Arc::ptr_eq(cur, &c.item) => (*bytes / 8) as u64,
                    _ => 0,
                };
                out.push((c.item.clone(), sent));
            }
        }
        out
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &[u8]) -> (bool, u16, u32, u32, Vec<u8>) {
        let r = RtpPacket::parse(p).unwrap();
        (
            r.marker_bit(),
            r.sequence_number(),
            r.timestamp(),
            r.ssrc(),
            r.payload().to_vec(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn packets_follow_rfc3550_and_mark_each_spurt() {
        let mut out = Outbound::new();
        let item: Arc<str> = Arc::from("item_1");
        out.push(&item, vec![1; 400]);
        let mut got = Vec::new();
        while let Some(due) = out.due() {
            tokio::time::sleep_until(due).await;
            let now = Instant::now();
            got.push(parse(out.packet(now).unwrap()));
        }
        assert_eq!(got.len(), 3);
        assert!(got[0].0 && !got[1].0 && !got[2].0);
        assert_eq!(got[1].1, got[0].1.wrapping_add(1));
        assert_eq!(got[1].2, got[0].2.wrapping_add(160));
        assert!(got.iter().all(|g| g.3 == got[0].3 && g.4.len() == FRAME));
        // The last 80 bytes are padded with silence.
        assert_eq!(&got[2].4[..80], &[1; 80][..]);
        assert_eq!(&got[2].4[80..], &[SILENCE; 80][..]);

        // A second spurt a second later: marker again, timestamp jumped by
        // the silence (about 8000 samples), sequence still +1.
        tokio::time::sleep(Duration::from_secs(1)).await;
        out.push(&item, vec![2; 160]);
        let due = out.due().unwrap();
        tokio::time::sleep_until(due).await;
        let p = parse(out.packet(Instant::now()).unwrap());
        assert!(p.0);
        assert_eq!(p.1, got[2].1.wrapping_add(1));
        let jump = p.2.wrapping_sub(got[2].2);
        assert!((7_900..=8_400).contains(&jump), "{jump}");
        assert_eq!(jump % 160, 0);
    }

    /// Deltas of any length make whole packets: silence only pads the end
    /// of an item, and a late wake-up is neither a new spurt nor a gap.
    #[tokio::test(start_paused = true)]
    async fn odd_sized_deltas_make_whole_packets() {
        let mut out = Outbound::new();
        let item: Arc<str> = Arc::from("item_2");
        let audio: Vec<u8> = (0..1000u32).map(|i| (i % 200) as u8).collect();
        for piece in audio.chunks(200) {
            out.push(&item, piece.to_vec());
        }
        let mut got = Vec::new();
        let mut first = true;
        while let Some(due) = out.due() {
            // Wake 30 ms late once: the packet is late, not a new spurt.
            let wake = if first {
                due + Duration::from_millis(30)
            } else {
                due
            };
            first = false;
            tokio::time::sleep_until(wake).await;
            got.push(parse(out.packet(Instant::now()).unwrap()));
        }
        let sent: Vec<u8> = got.iter().flat_map(|g| g.4.clone()).collect();
        assert_eq!(&sent[..1000], &audio[..]);
        assert!(sent[1000..].iter().all(|&b| b == SILENCE));
        assert_eq!(got.len(), 7);
        assert!(got[0].0 && got[1..].iter().all(|g| !g.0));
        assert_eq!(out.late_packets, 1);
    }

    /// A delta that leaves less than a packet while the response streams
    /// on waits for the next one instead of going out padded.
    #[tokio::test(start_paused = true)]
    async fn a_partial_packet_waits_for_the_rest_of_the_response() {
        let mut out = Outbound::new();
        let item: Arc<str> = Arc::from("item_3");
        out.set_streaming(true);
        out.push(&item, vec![5; 200]);
        let due = out.due().unwrap();
        tokio::time::sleep_until(due).await;
        out.packet(Instant::now()).unwrap();
        assert!(
            out.due().is_none(),
            "40 bytes wait while the response streams"
        );
        out.push(&item, vec![6; 200]);
        let due = out.due().unwrap();
        tokio::time::sleep_until(due).await;
        let p = parse(out.packet(Instant::now()).unwrap());
        assert_eq!(&p.4[..40], &[5; 40][..]);
        assert_eq!(&p.4[40..], &[6; 120][..]);
        out.set_streaming(false);
        let due = out.due().unwrap();
        tokio::time::sleep_until(due).await;
        let last = parse(out.packet(Instant::now()).unwrap());
        assert_eq!(&last.4[..80], &[6; 80][..]);
        assert!(last.4[80..].iter().all(|&b| b == SILENCE));
    }

    #[tokio::test(start_paused = true)]
    async fn clearing_reports_what_of_the_item_went_out() {
        let mut out = Outbound::new();
        let item: Arc<str> = Arc::from("item_7");
        out.push(&item, vec![1; 8000]);
        for _ in 0..5 {
            let due = out.due().unwrap();
            tokio::time::sleep_until(due).await;
            out.packet(Instant::now()).unwrap();
        }
        let next: Arc<str> = Arc::from("item_8");
        out.push(&next, vec![2; 800]);
        let (unplayed, current) = out.clear();
        let (cut, ms) = current.unwrap();
        assert_eq!(&*cut, "item_7");
        assert_eq!(ms, 100);
        let unplayed: Vec<(String, u64)> = unplayed
            .iter()
            .map(|(i, ms)| (i.to_string(), *ms))
            .collect();
        assert_eq!(unplayed, [("item_7".into(), 100), ("item_8".into(), 0)]);
        assert_eq!(out.queued(), 0);
        assert!(out.due().is_none());
    }

    #[test]
    fn only_asterisk_may_talk() {
        let asterisk: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let stranger: SocketAddr = "127.0.0.1:10001".parse().unwrap();
        let mut buf = Vec::new();
        RtpPacketBuilder::<&[u8], &[u8]>::new()
            .payload_type(0)
            .sequence_number(1)
            .timestamp(160)
            .ssrc(9)
            .payload(&[7u8; 160][..])
            .write_into_vec(&mut buf)
            .unwrap();
        assert_eq!(accept(&buf, asterisk, asterisk), Ok(&[7u8; 160][..]));
        assert_eq!(accept(&buf, stranger, asterisk), Err(Drop_::Stranger));
        assert_eq!(accept(&buf[..5], asterisk, asterisk), Err(Drop_::Malformed));
        let mut pt8 = Vec::new();
        RtpPacketBuilder::<&[u8], &[u8]>::new()
            .payload_type(8)
            .payload(&[7u8; 160][..])
            .write_into_vec(&mut pt8)
            .unwrap();
        assert_eq!(accept(&pt8, asterisk, asterisk), Err(Drop_::NotPcmu(8)));
    }

    #[tokio::test]
    async fn ports_are_leased_one_call_each() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 47000..=47001);
        let (a, la) = pool.bind().unwrap();
        let (b, _lb) = pool.bind().unwrap();
        assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
        assert!(pool.bind().is_err());
        drop((a, la));
        assert!(pool.bind().is_ok());
    }
}
