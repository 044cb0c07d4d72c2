//! Inbound calls on the agent app (README "The voice agent"): who is
//! calling, whether the AI agent can take the call, and the record of it.
//!
//! Every inbound call goes through [`VoiceAgent::take`]: the caller is
//! looked up (exactly one client, or nothing is known), a row is opened in
//! `overdue_inbound_log`, then either the agent (`call`: a bridge, an
//! externalMedia channel and an OpenAI Realtime session) or the fallback
//! prompt (`fallback`) handles it, and the row is completed with how it
//! ended. The agent shares ARI plumbing with the campaign only through
//! `ari`, never through `campaign`.

pub mod call;
pub mod fallback;
pub mod media;
pub mod pacer;
pub mod realtime;
pub mod rtp;
pub mod tools;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::ari::model::Channel;
use crate::ari::router::{Inbox, Router};
use crate::ari::AriClient;
use crate::billing::inbound::InboundEnd;
use crate::billing::Billing;
use crate::clock::local_now;
use crate::config::Config;
use crate::rules::inbound::{caller_mobile, match_caller, Account, CallerMatch, How};

/// The most a caller waits on MySQL before the call goes on without it
/// (twice: the lookup and the log row), so silence stays short.
const DB_WAIT: Duration = Duration::from_millis(700);

/// Counters an operator (and the benchmark) reads.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub agent_calls: AtomicU64,
    /// Callees a reminder call handed over (keypad `agent`).
    pub handed_over: AtomicU64,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
    /// Agent RTP packets sent more than 20 ms after they were due.
    pub late_rtp: AtomicU64,
    /// Datagrams dropped: not from Asterisk, unparsable, not PCMU.
    pub dropped_rtp: AtomicU64,
    /// Inbound calls ended, by how (in the order of `How::ALL`).
    pub ended: [AtomicU64; How::ALL.len()],
}

impl Stats {
    /// Inbound calls ended this way so far.
    pub fn ended(&self, how: How) -> u64 {
        How::ALL
            .iter()
            .position(|h| *h == how)
            .map_or(0, |i| self.ended[i].load(Ordering::Relaxed))
    }

    fn count_end(&self, how: How) {
        if let Some(i) = How::ALL.iter().position(|h| *h == how) {
            self.ended[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub struct VoiceAgent {
    pub(crate) ari: AriClient,
    pub(crate) router: Arc<Router>,
    pub(crate) billing: Billing,
    pub(crate) config: Arc<Config>,
    pub(crate) ports: Arc<rtp::PortPool>,
    /// Agent calls in progress (for `voice_agent.max_concurrent`).
    agents: AtomicUsize,
    /// Inbound calls in progress, agent or fallback.
    live: AtomicUsize,
    idle: Notify,
    stopping: AtomicBool,
    /// Set when the shutdown grace is over: calls end now.
    pub(crate) stop: watch::Sender<bool>,
    pub stats: Stats,
}

/// Who the caller is and what the agent may know.
pub(crate) struct Caller {
    pub e164: Option<String>,
    pub masked: String,
    pub matched: CallerMatch,
    pub account: Option<Account>,
}

/// Keeps the live counters right however a call ends (panics included).
struct LiveGuard<'a>(&'a VoiceAgent);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub(crate) struct AgentSlot<'a>(&'a VoiceAgent);

impl Drop for AgentSlot<'_> {
    fn drop(&mut self) {
        self.0.agents.fetch_sub(1, Ordering::SeqCst);
    }
}

impl VoiceAgent {
    pub fn new(
        ari: AriClient,
        router: Arc<Router>,
        billing: Billing,
        config: Arc<Config>,
    ) -> Arc<VoiceAgent> {
        let va = &config.voice_agent;
        let ip = va
            .rtp_bind
            .parse()
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let range = va.port_range().unwrap_or(40_000..=40_999);
        Arc::new(VoiceAgent {
            ari,
            router,
            billing,
            ports: rtp::PortPool::new(ip, range),
            config,
            agents: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            idle: Notify::new(),
            stopping: AtomicBool::new(false),
            stop: watch::channel(false).0,
            stats: Stats::default(),
        })
    }

    /// What an earlier run left behind (at start-up, before any call):
    /// agent media on Asterisk, and inbound rows never completed.
    pub async fn remove_leftovers(&self) -> usize {
        match self
            .billing
            .close_interrupted_inbound(local_now(self.config.timezone))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                rows = n,
                "inbound calls cut by an earlier run recorded as error"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot close the inbound rows an earlier run left open")
            }
        }
        media::remove_leftovers(&self.ari).await
    }

    /// Agent calls in progress.
    pub fn agents_live(&self) -> usize {
        self.agents.load(Ordering::SeqCst)
    }

    /// Inbound calls in progress.
    pub fn calls_live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Handles an inbound call that entered the agent app. Its events are
    /// routed to it from now on. `args` of its `StasisStart`: `["client",
    /// id]` when a reminder call sent the callee here (keypad `agent`,
    /// the `overdue-agent` context), so the client is known already.
    pub fn take(self: &Arc<Self>, channel: Channel, args: &[String]) {
        let handed_over = match args {
            [kind, id] if kind == "client" => id.parse::<i64>().ok(),
            _ => None,
        };
        if handed_over.is_some() {
            self.stats.handed_over.fetch_add(1, Ordering::SeqCst);
        }
        let inbox = self.router.register(&channel.id);
        // Whether the daemon was stopping when the caller arrived, not when
        // the lookups are done: a caller who came in before gets the agent.
        let arrived_stopping = self.stopping.load(Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        tokio::spawn(async move {
            let _live = LiveGuard(&me);
            let id = channel.id.clone();
            let run = std::panic::AssertUnwindSafe(me.handle(
                channel,
                handed_over,
                arrived_stopping,
                inbox,
            ));
            if let Err(panic) = futures_util::FutureExt::catch_unwind(run).await {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(channel = %id, panic = %why, "inbound call task panicked; hanging up");
                media::remove_for(&me.ari, &id).await;
                me.router.unregister(&media::unicast_id(&id));
                let _ = me.ari.hangup(&id, "normal").await;
            }
            me.router.unregister(&id);
        });
    }

    /// Lets inbound calls finish for up to `grace`, then ends the rest
    /// (each still records how it ended). New callers meanwhile hear the
    /// fallback prompt.
    pub async fn finish(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let until = Instant::now() + grace;
        while self.calls_live() > 0 && Instant::now() < until {
            let idle = self.idle.notified();
            if self.calls_live() == 0 {
                break;
            }
            let _ = tokio::time::timeout_at(until, idle).await;
        }
        if self.calls_live() == 0 {
            return;
        }
        tracing::warn!(
            calls = self.calls_live(),
            "grace period over: ending inbound calls"
        );
        self.stop.send_replace(true);
        let until = Instant::now() + Duration::from_secs(5);
        while self.calls_live() > 0 && Instant::now() < until {
            let idle = self.idle.notified();
            if self.calls_live() == 0 {
                break;
            }
            let _ = tokio::time::timeout_at(until, idle).await;
        }
    }

    async fn handle(
        self: &Arc<Self>,
        channel: Channel,
        handed_over: Option<i64>,
        arrived_stopping: bool,
        inbox: Inbox,
    ) {
        let started = Instant::now();
        let started_at = local_now(self.config.timezone);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let caller = match handed_over {
            // The callee of a reminder call: the number is the one dialled.
            Some(client) => self.known(client, &channel.connected.number).await,
            None => self.identify(&channel.caller.number).await,
        };
        let row = match tokio::time::timeout(
            DB_WAIT,
            self.billing.open_inbound(
                started_at,
                caller.e164.as_deref(),
                caller.matched.client(),
                &caller.matched.detail(),
                &channel.id,
            ),
        )
        .await
        {
            Ok(Ok(id)) => Some(id),
            Ok(Err(e)) => {
                tracing::warn!(channel = %channel.id, error = %e, "cannot open the inbound call's row; the call goes on");
                None
            }
            Err(_) => {
                tracing::warn!(channel = %channel.id, "MySQL slow: the inbound call's row is not opened; the call goes on");
                None
            }
        };

        let va = &self.config.voice_agent;
        let slot = if arrived_stopping {
            Err(How::FallbackBusy)
        } else if va.api_key.expose().is_empty() {
            Err(How::FallbackNoKey)
        } else if self.agents.fetch_add(1, Ordering::SeqCst) >= va.max_concurrent as usize {
            self.agents.fetch_sub(1, Ordering::SeqCst);
            Err(How::FallbackBusy)
        } else {
            Ok(AgentSlot(self))
        };
        let mut inbox = inbox;
        let end = match slot {
            Ok(slot) => {
                self.stats.agent_calls.fetch_add(1, Ordering::Relaxed);
                call::run(self, &channel, &caller, row, &mut inbox, slot, started).await
            }
            Err(how) => fallback::run(self, &channel, &caller, how, &mut inbox).await,
        };
        let seconds = started.elapsed().as_secs();
        self.stats.count_end(end.how);
        self.stats
            .tokens_in
            .fetch_add(end.tokens_in, Ordering::Relaxed);
        self.stats
            .tokens_out
            .fetch_add(end.tokens_out, Ordering::Relaxed);
        tracing::info!(
            channel = %channel.id,
            caller = %caller.masked,
            client_id = caller.matched.client(),
            matched = %caller.matched.detail(),
            how = %end.how,
            seconds,
            tokens_in = end.tokens_in,
            tokens_out = end.tokens_out,
            "inbound call"
        );
        if let Some(row) = row {
            let end = InboundEnd {
                ended_at: Some(local_now(self.config.timezone)),
                seconds: u32::try_from(seconds).unwrap_or(u32::MAX),
                how: end.how.as_str().to_owned(),
                tokens_in: end.tokens_in,
                tokens_out: end.tokens_out,
                transcript: end.transcript,
            };
            self.billing.close_inbound(row, &end).await;
        }
    }

    /// The client a reminder call handed over. A client gone meanwhile, or
    /// a database too slow, means nothing is known.
    async fn known(&self, client: i64, number: &str) -> Caller {
        let mobile = caller_mobile(number).ok();
        let masked = mobile
            .as_ref()
            .map_or_else(|| crate::rules::phone::mask(number), |m| m.masked());
        let since = local_now(self.config.timezone) - chrono::Duration::days(31);
        let account = match tokio::time::timeout(DB_WAIT, self.billing.account(client, since)).await
        {
            Ok(Ok(account)) => account,
            Ok(Err(e)) => {
                tracing::warn!(client_id = client, error = %e, "cannot read the client's account; the agent will know nothing");
                None
            }
            Err(_) => {
                tracing::warn!(
                    client_id = client,
                    "account lookup too slow; the agent will know nothing"
                );
                None
            }
        };
        Caller {
            e164: mobile.map(|m| m.e164()),
            masked,
            matched: if account.is_some() {
                CallerMatch::Reminder(client)
            } else {
                CallerMatch::Unknown
            },
            account,
        }
    }

    /// The caller's client, if exactly one holds the number. A database
    /// that does not answer in time means nothing is known.
    async fn identify(&self, number: &str) -> Caller {
        let mobile = match caller_mobile(number) {
            Ok(m) => m,
            Err(why) => {
                return Caller {
                    e164: None,
                    masked: crate::rules::phone::mask(number),
                    matched: CallerMatch::NoMobile(why),
                    account: None,
                }
            }
        };
        let since = local_now(self.config.timezone) - chrono::Duration::days(31);
        let lookup = async {
            let candidates = self.billing.caller_candidates(&mobile).await?;
            let matched = match_caller(&mobile, &candidates);
            let account = match matched.client() {
                Some(id) => self.billing.account(id, since).await?,
                None => None,
            };
            Ok::<_, crate::billing::BillingError>((matched, account))
        };
        let (matched, account) = match tokio::time::timeout(DB_WAIT, lookup).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(caller = %mobile.masked(), error = %e, "cannot look the caller up; the agent will know nothing");
                (CallerMatch::Unknown, None)
            }
            Err(_) => {
                tracing::warn!(caller = %mobile.masked(), "caller lookup too slow; the agent will know nothing");
                (CallerMatch::Unknown, None)
            }
        };
        // A client row that vanished between the two queries: nothing known.
        let matched = if matched.client().is_some() && account.is_none() {
            CallerMatch::Unknown
        } else {
            matched
        };
        Caller {
            e164: Some(mobile.e164()),
            masked: mobile.masked(),
            matched,
            account,
        }
    }
}

/// Resolves once the daemon says calls must end now.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// How an inbound call ended, for its row and its log line.
#[derive(Debug, Clone)]
pub(crate) struct End {
    pub how: How,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub transcript: Option<String>,
}

impl End {
    pub fn just(how: How) -> End {
        End {
            how,
            tokens_in: 0,
            tokens_out: 0,
            transcript: None,
        }
    }
}
