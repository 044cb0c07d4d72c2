//! Every metric, read from the running dialer when Prometheus scrapes
//! (a `prometheus_client` `Collector`): the trunk pool, the outcomes
//! written to MySQL, the passes, the ARI connection and the voice agent.
//! Counters are since the daemon started, as Prometheus expects.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::ari::connection::Stats as EventStats;
use crate::campaign::pass::Campaign;
use crate::rules::inbound::How;
use crate::rules::trunks::TrunkState;
use crate::voice_agent::VoiceAgent;

/// Every metric's name starts with this (`overdue_outcomes_total` …).
pub const PREFIX: &str = "overdue";

/// What the metrics are read from.
#[derive(Clone)]
pub struct Sources {
    pub campaign: Arc<Campaign>,
    pub voice_agent: Arc<VoiceAgent>,
    pub events: Arc<EventStats>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    /// A registry holding every metric of this dialer.
    pub fn registry(self) -> Registry {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(self));
        registry
    }
}

type Fmt = Result<(), std::fmt::Error>;

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: V,
) -> Fmt {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Fmt {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        self.trunks(&mut enc)?;
        self.outcomes(&mut enc)?;
        self.passes(&mut enc)?;
        self.ari(&mut enc)?;
        self.voice_agent(&mut enc)
    }
}

impl Sources {
    fn trunks(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let trunks = self.campaign.trunks.view();
        let mut m = enc.encode_descriptor(
            "trunk_calls_in_flight",
            "Channels in use on each trunk (calls being originated or up).",
            None,
            MetricType::Gauge,
        )?;
        for t in &trunks {
            m.encode_family(&[("trunk", t.name.as_str())])?
                .encode_gauge(&i64::from(t.in_use))?;
        }
        let mut m = enc.encode_descriptor(
            "trunk_max_channels",
            "Configured max_channels of each trunk.",
            None,
            MetricType::Gauge,
        )?;
        for t in &trunks {
            m.encode_family(&[("trunk", t.name.as_str())])?
                .encode_gauge(&i64::from(t.max_channels))?;
        }
        let mut m = enc.encode_descriptor(
            "trunk_state",
            "1 for each trunk's current state (up, cooling after failures, offline endpoint), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for t in &trunks {
            for s in TrunkState::ALL {
                m.encode_family(&[("trunk", t.name.as_str()), ("state", s.as_str())])?
                    .encode_gauge(&i64::from(t.state == s))?;
            }
        }
        let mut m = enc.encode_descriptor(
            "originates",
            "Originates sent to Asterisk, by trunk (accepted or refused).",
            None,
            MetricType::Counter,
        )?;
        for t in &trunks {
            m.encode_family(&[("trunk", t.name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&t.originates, None)?;
        }
        Ok(())
    }

    fn outcomes(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let tally = self.campaign.billing.tally();
        let mut m = enc.encode_descriptor(
            "outcomes",
            "Outcomes written to overdue_call_log, by outcome and trunk (trunk \"none\": not dialled).",
            None,
            MetricType::Counter,
        )?;
        for ((outcome, trunk), n) in tally.outcomes() {
            m.encode_family(&[("outcome", outcome.as_str()), ("trunk", trunk.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let mut m = enc.encode_descriptor(
            "delivered",
            "Reminders delivered (heard), by trunk.",
            None,
            MetricType::Counter,
        )?;
        for (trunk, n) in tally.delivered() {
            m.encode_family(&[("trunk", trunk.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        gauge(
            enc,
            "outcome_writes_waiting",
            "Outcome writes not yet landed in MySQL (retried while MySQL is away).",
            tally.writes_waiting(),
        )
    }

    fn passes(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let p = self.campaign.passes.get();
        counter(enc, "passes", "Passes run.", p.passes)?;
        gauge(
            enc,
            "last_pass_duration_seconds",
            "Wall time of the last pass.",
            p.last_wall.as_secs_f64(),
        )?;
        gauge(
            enc,
            "last_pass_selected_clients",
            "Clients the last pass read as due.",
            p.last_selected as u64,
        )
    }

    fn ari(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let connected = self.campaign.ari_state.borrow().is_connected();
        gauge(
            enc,
            "ari_connected",
            "1 while the ARI event WebSocket is connected (nothing is originated otherwise).",
            i64::from(connected),
        )?;
        let connects = self.events.connects.load(Ordering::Relaxed);
        counter(
            enc,
            "ari_reconnects",
            "Event WebSocket connections after the first.",
            connects.saturating_sub(1),
        )?;
        counter(
            enc,
            "ari_events",
            "ARI events received.",
            self.events.events.load(Ordering::Relaxed),
        )?;
        counter(
            enc,
            "ari_malformed_events",
            "ARI frames that could not be decoded (skipped).",
            self.events.malformed.load(Ordering::Relaxed),
        )
    }

    fn voice_agent(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let va = &self.voice_agent;
        let stats = &va.stats;
        gauge(
            enc,
            "agent_calls_in_flight",
            "Inbound calls talking with the OpenAI agent now.",
            va.agents_live() as u64,
        )?;
        gauge(
            enc,
            "inbound_calls_in_flight",
            "Inbound calls in progress (agent or fallback prompt).",
            va.calls_live() as u64,
        )?;
        let mut m = enc.encode_descriptor(
            "inbound_calls",
            "Inbound calls ended, by how (overdue_inbound_log.how).",
            None,
            MetricType::Counter,
        )?;
        for how in How::ALL {
            m.encode_family(&[("how", how.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&stats.ended(how), None)?;
        }
        let mut m = enc.encode_descriptor(
            "openai_tokens",
            "OpenAI Realtime tokens, by direction (from response.done usage).",
            None,
            MetricType::Counter,
        )?;
        for (dir, n) in [
            ("in", stats.tokens_in.load(Ordering::Relaxed)),
            ("out", stats.tokens_out.load(Ordering::Relaxed)),
        ] {
            m.encode_family(&[("direction", dir)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        counter(
            enc,
            "late_rtp_packets",
            "Agent RTP packets sent more than 20 ms after they were due.",
            stats.late_rtp.load(Ordering::Relaxed),
        )?;
        counter(
            enc,
            "dropped_rtp_packets",
            "Datagrams dropped on agent media sockets (not from Asterisk, not RTP, not PCMU).",
            stats.dropped_rtp.load(Ordering::Relaxed),
        )
    }
}
