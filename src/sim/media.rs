//! The audio of externalMedia channels (facts 12 and 20): each UnicastRTP
//! channel owns a real UDP socket on loopback, so a daemon under test
//! exchanges real RTP with the simulator as it would with `chan_rtp`.
//!
//! Towards the daemon, a caller's speech (queued with
//! `Simulator::caller_says`) leaves the socket of every externalMedia
//! channel bridged with that caller: 172-byte packets (payload type 0, 160
//! bytes of μ-law), one every 20 ms, timestamps from 160 up, as Asterisk
//! sent them. Silence sends nothing, as in the lab. One clock paces every
//! stream, so a caller's speech advances once per frame however many
//! externalMedia channels listen to it.
//!
//! From the daemon, every datagram reaching a UnicastRTP socket is what the
//! callers bridged with that channel hear (`Simulator::heard`); the record
//! outlives the caller so a test can read it after the hang-up.
//!
//! Not modelled: mixing several callers speaking at once (the first in the
//! bridge with speech is sent), and the timestamp jump with a marker bit
//! Asterisk would make after a pause (the recording holds one talk spurt).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtp_types::{RtpPacket, RtpPacketBuilder};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::state::Inner;
use super::Shared;

/// One packet's worth of μ-law at 8 kHz.
pub const FRAME_BYTES: usize = 160;
const FRAME_TIME: Duration = Duration::from_millis(20);
/// μ-law silence, which pads the last frame of speech.
const SILENCE: u8 = 0xFF;

/// A datagram the daemon sent to a UnicastRTP channel, as the caller
/// bridged with it heard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub at: std::time::Instant,
    pub from: SocketAddr,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Vec<u8>,
}

/// A packet of a caller's speech sent to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Said {
    /// Just before it was handed to the socket.
    pub at: std::time::Instant,
    pub seq: u16,
    pub ts: u32,
}

/// The RTP side of one externalMedia channel. Dropping it (the channel is
/// gone) ends its receiving task, which closes the socket.
pub struct Stream {
    socket: Arc<UdpSocket>,
    pub local: SocketAddr,
    remote: SocketAddr,
    ssrc: u32,
    seq: u16,
    ts: u32,
    receiver: Option<JoinHandle<()>>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(task) = self.receiver.take() {
            task.abort();
        }
    }
}

/// Binds the socket of a new externalMedia channel on loopback, sending to `remote`.
pub async fn bind(remote: SocketAddr) -> std::io::Result<Stream> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let local = socket.local_addr()?;
    Ok(Stream {
        socket: Arc::new(socket),
        local,
        remote,
        // Random as Asterisk's: a receiver must not expect either.
        ssrc: rand::random(),
        seq: rand::random(),
        ts: 0,
        receiver: None,
    })
}

/// Registers the stream of `channel` and starts hearing what arrives on it;
/// starts the clock if it is not running.
pub fn attach(sim: &Arc<Shared>, inner: &mut Inner, channel: &str, mut stream: Stream) {
    stream.receiver = Some(tokio::spawn(receive(
        sim.clone(),
        channel.to_owned(),
        stream.socket.clone(),
    )));
    inner.media.insert(channel.to_owned(), stream);
    if !inner.media_clock {
        inner.media_clock = true;
        tokio::spawn(clock(sim.clone()));
    }
}

/// Queues `ulaw` behind what `channel` still has to say, padded with
/// silence to whole frames.
pub fn say(inner: &mut Inner, channel: &str, mut ulaw: Vec<u8>) {
    if ulaw.is_empty() || !inner.channels.contains_key(channel) {
        return;
    }
    let whole = ulaw.len().div_ceil(FRAME_BYTES) * FRAME_BYTES;
    ulaw.resize(whole, SILENCE);
    inner
        .speech
        .entry(channel.to_owned())
        .or_default()
        .extend(ulaw);
}

/// The channels bridged with externalMedia channel `rtp` that are not
/// externalMedia channels themselves: the callers who hear it and speak to it.
fn callers_of(inner: &Inner, rtp: &str) -> Vec<String> {
    let mut callers = Vec::new();
    for bridge in inner.bridges.values() {
        if !bridge.channels.iter().any(|c| c == rtp) {
            continue;
        }
        for c in &bridge.channels {
            if !inner.media.contains_key(c) && !callers.contains(c) {
                callers.push(c.clone());
            }
        }
    }
    callers
}

/// Paces every stream from one monotonic clock; stops once no
/// externalMedia channel is left (a new one starts it again).
async fn clock(sim: Arc<Shared>) {
    let mut tick = tokio::time::interval(FRAME_TIME);
    // A late tick is caught up at once: the packets keep their 20 ms grid on average.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tick.tick().await;
        let due = {
            let mut inner = sim.inner();
            if inner.media.is_empty() {
                inner.media_clock = false;
                return;
            }
            frames_due(&mut inner)
        };
        let mut said = Vec::with_capacity(due.len());
        for (socket, to, packet, caller, seq, ts) in due {
            let at = std::time::Instant::now();
            // UDP: a daemon not listening loses the packet, as with Asterisk.
            let _ = socket.send_to(&packet, to).await;
            said.push((caller, Said { at, seq, ts }));
        }
        if !said.is_empty() {
            let mut inner = sim.inner();
            for (caller, s) in said {
                inner.said.entry(caller).or_default().push(s);
            }
        }
    }
}

/// A packet to send: socket, destination, datagram, the caller whose
/// speech it carries, its sequence number and timestamp.
type Due = (Arc<UdpSocket>, SocketAddr, Vec<u8>, String, u16, u32);

/// One frame of every speaking caller, as packets for the externalMedia
/// channels bridged with them.
fn frames_due(inner: &mut Inner) -> Vec<Due> {
    let mut rtps: Vec<String> = inner.media.keys().cloned().collect();
    rtps.sort();
    // Each caller says one frame a tick, however many channels listen.
    let mut spoken: HashMap<String, Vec<u8>> = HashMap::new();
    let mut silent: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for rtp in rtps {
        let mut frame = None;
        let mut speaker = None;
        for caller in callers_of(inner, &rtp) {
            if !spoken.contains_key(&caller) && !silent.contains(&caller) {
                match next_frame(&mut inner.speech, &caller) {
                    Some(f) => {
                        spoken.insert(caller.clone(), f);
                    }
                    None => {
                        silent.insert(caller.clone());
                    }
                }
            }
            if frame.is_none() {
                frame = spoken.get(&caller).cloned();
                if frame.is_some() {
                    speaker = Some(caller.clone());
                }
            }
        }
        let (Some(frame), Some(speaker), Some(stream)) =
            (frame, speaker, inner.media.get_mut(&rtp))
        else {
            continue;
        };
        stream.seq = stream.seq.wrapping_add(1);
        stream.ts = stream.ts.wrapping_add(FRAME_BYTES as u32);
        let packet = RtpPacketBuilder::<&[u8], &[u8]>::new()
            .payload_type(0)
            .sequence_number(stream.seq)
            .timestamp(stream.ts)
            .ssrc(stream.ssrc)
            .marker_bit(false)
            .payload(frame.as_slice())
            .write_vec();
        if let Ok(packet) = packet {
            out.push((
                stream.socket.clone(),
                stream.remote,
                packet,
                speaker,
                stream.seq,
                stream.ts,
            ));
        }
    }
    out
}

fn next_frame(speech: &mut HashMap<String, VecDeque<u8>>, caller: &str) -> Option<Vec<u8>> {
    let queue = speech.get_mut(caller)?;
    if queue.len() < FRAME_BYTES {
        speech.remove(caller);
        return None;
    }
    let frame: Vec<u8> = queue.drain(..FRAME_BYTES).collect();
    if queue.is_empty() {
        speech.remove(caller);
    }
    Some(frame)
}

/// Hears what the daemon sends to `channel` until the channel is gone.
async fn receive(sim: Arc<Shared>, channel: String, socket: Arc<UdpSocket>) {
    // Large enough that no datagram is cut short and misread.
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => {
                // An ICMP error reported on the socket: nothing to hear, keep listening.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let at = std::time::Instant::now();
        let mut inner = sim.inner();
        let heard = match RtpPacket::parse(&buf[..n]) {
            Ok(p) => Heard {
                at,
                from,
                seq: p.sequence_number(),
                ts: p.timestamp(),
                ssrc: p.ssrc(),
                marker: p.marker_bit(),
                payload_type: p.payload_type(),
                payload: p.payload().to_vec(),
            },
            Err(_) => {
                inner.bad_rtp += 1;
                continue;
            }
        };
        for caller in callers_of(&inner, &channel) {
            inner.heard.entry(caller).or_default().push(heard.clone());
        }
    }
}
