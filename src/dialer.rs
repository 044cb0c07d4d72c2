//! A running dialer: MySQL, the ARI client, the event WebSocket and the
//! dispatcher that hands events to calls, put together once and shared by
//! `once`, `run`, `demo`, the tests and the benchmark. `Dialer::connect` is
//! the one start-up path: it checks the schema, connects MySQL and ARI, and
//! closes the attempts an earlier run left open, so no entry point can
//! skip a step.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use tokio::sync::{mpsc, watch};

use crate::ari::connection::SupervisorHandle;
use crate::ari::router::Router;
use crate::ari::{AriClient, AriError, Backoff, ConnState, Envelope, Event, EventConnection};
use crate::billing::{schema, Billing, Claim};
use crate::campaign::pass::{Campaign, Hooks, PassError, PassOptions, PassSummary};
use crate::campaign::reconcile;
use crate::campaign::trunks::{self, TrunkPool};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::rules::trunks::Health;
use crate::voice_agent::VoiceAgent;

pub struct Dialer {
    pub campaign: Arc<Campaign>,
    /// Inbound calls on the agent app.
    pub voice_agent: Arc<VoiceAgent>,
    /// Event counters of the WebSocket (events, malformed, connects).
    pub events: Arc<crate::ari::connection::Stats>,
    supervisor: SupervisorHandle,
    dispatcher: JoinHandle<()>,
    restarts: JoinHandle<()>,
}

/// This host's name, written into each claim.
pub fn host_name() -> String {
    // /proc/sys may be hidden by the unit's ProcSubset=pid; /etc/hostname is not.
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_owned())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Dialer {
    /// Connects to MySQL and Asterisk (failing with an operator-readable
    /// message when either cannot be used) and closes orphaned attempts.
    pub async fn connect(config: Config, host: String) -> anyhow::Result<Dialer> {
        Dialer::connect_with_clock(config, host, None).await
    }

    /// As `connect`, with another clock (tests of the schedule).
    pub async fn connect_with_clock(
        config: Config,
        host: String,
        clock: Option<Arc<dyn Clock>>,
    ) -> anyhow::Result<Dialer> {
        let config = Arc::new(config);
        let m = &config.mysql;
        let billing = Billing::new(m.opts());
        let mut conn = billing.conn().await.with_context(|| {
            format!(
                "cannot connect to MySQL at {}:{} (database {})",
                m.host, m.port, m.database
            )
        })?;
        let missing = schema::plan(&mut conn).await?;
        if !missing.is_empty() {
            anyhow::bail!("the database lacks the dialer's schema ({} statements): run `overdue-dialer schema apply`", missing.len());
        }
        drop(conn);

        let a = &config.ari;
        let ari = AriClient::new(
            &a.url,
            &a.username,
            a.password.clone(),
            Duration::from_secs(a.request_timeout_secs),
        )?;
        ari.ping().await.map_err(|e| match &e {
            AriError::Status { status, .. } if status.as_u16() == 401 => {
                anyhow::anyhow!(
                    "ARI at {} refused the credentials of user {:?} (ari.username / ari.password)",
                    a.url,
                    a.username
                )
            }
            _ => anyhow::anyhow!("cannot reach Asterisk ARI at {}: {e}", a.url),
        })?;
        let mut events = EventConnection::spawn(
            &ari,
            &[&a.outbound_app, &a.inbound_app],
            4096,
            Backoff::default(),
        );
        if !events.wait_connected(Duration::from_secs(10)).await {
            let state = events.state.borrow().clone();
            events.shutdown().await;
            anyhow::bail!(
                "cannot open the ARI event WebSocket at {}: {state:?}",
                a.url
            );
        }
        let (rx, state, stats, supervisor) = events.into_parts();
        let startup_time = match ari.asterisk_info().await {
            Ok(info) => Some(info.status.startup_time),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read GET /ari/asterisk/info: a restart of Asterisk will not clear trunk cool-downs");
                None
            }
        };
        let (started_tx, asterisk_started) = watch::channel(startup_time);
        let router = Arc::new(Router::default());
        let trunks = Arc::new(TrunkPool::new(
            &config.trunks,
            Duration::from_secs(config.campaign.trunk_cooldown_secs),
        ));
        // Trunk health (README "Trunk health"): state changes as events,
        // and the state now.
        trunks::subscribe_health(&trunks, &ari, &a.outbound_app).await;
        trunks::refresh_health(&trunks, &ari).await;
        let clock: Arc<dyn Clock> = clock.unwrap_or_else(|| Arc::new(SystemClock(config.timezone)));
        let campaign = Arc::new(Campaign {
            config: config.clone(),
            billing,
            ari: ari.clone(),
            router: router.clone(),
            ari_state: state.clone(),
            trunks,
            host,
            clock,
            asterisk_started,
            hooks: Hooks::default(),
            adopted: Default::default(),
            handed_to_agent: Default::default(),
            adopted_done: Default::default(),
            adopt_abort: watch::channel(false).0,
            in_flight: Default::default(),
            passes: Default::default(),
        });
        let voice_agent = VoiceAgent::new(
            ari.clone(),
            router.clone(),
            campaign.billing.clone(),
            config.clone(),
        );
        let dispatcher = tokio::spawn(dispatch(campaign.clone(), voice_agent.clone(), rx));
        let restarts = tokio::spawn(watch_restarts(campaign.clone(), state, started_tx));
        let dialer = Dialer {
            campaign,
            voice_agent,
            events: stats,
            supervisor,
            dispatcher,
            restarts,
        };
        // An agent call's externalMedia channel and bridge outlive a killed
        // daemon (Asterisk never removes them by itself).
        dialer.voice_agent.remove_leftovers().await;
        // Attempts a killed run left open: closed or adopted before anything
        // else, so no entry point can forget them.
        if let Err(e) = reconcile::orphans(&dialer.campaign).await {
            dialer.shutdown().await;
            return Err(anyhow::Error::new(e)
                .context("cannot close the attempts an earlier run left unfinished"));
        }
        Ok(dialer)
    }

    /// One pass: attempts left open are closed (or adopted, and waited
    /// for) first, then the due clients are called.
    pub async fn pass(
        &self,
        opts: PassOptions,
        abort: watch::Receiver<bool>,
    ) -> Result<PassSummary, PassError> {
        self.campaign.pass(opts, abort).await
    }

    /// What the metrics are read from (README "Metrics").
    pub fn metrics_sources(&self) -> crate::metrics::Sources {
        crate::metrics::Sources {
            campaign: self.campaign.clone(),
            voice_agent: self.voice_agent.clone(),
            events: self.events.clone(),
        }
    }

    /// Serves the metrics on `metrics.listen`, when configured. A port
    /// that cannot be bound is logged, not fatal: the calls matter more
    /// than the dashboard, and `check` reports it.
    pub async fn serve_metrics(&self) -> Option<crate::metrics::MetricsServer> {
        let m = &self.campaign.config.metrics;
        let addr = m.addr()?;
        match crate::metrics::MetricsServer::start(addr, self.metrics_sources().registry()).await {
            Ok(server) => {
                tracing::info!(listen = %server.addr(), "metrics served at /metrics");
                Some(server)
            }
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "cannot serve metrics (metrics.listen); running without them");
                None
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.campaign.ari_state.borrow().is_connected()
    }

    pub fn state(&self) -> ConnState {
        self.campaign.ari_state.borrow().clone()
    }

    pub async fn shutdown(self) {
        // Inbound calls still up end now (each records how), while events flow.
        self.voice_agent.finish(Duration::ZERO).await;
        // Adopted calls are hung up (and recorded) while events still flow.
        self.campaign.adopt_abort.send_replace(true);
        let _ =
            tokio::time::timeout(Duration::from_secs(15), self.campaign.wait_adopted(None)).await;
        self.supervisor.shutdown().await;
        self.dispatcher.abort();
        self.restarts.abort();
        let _ = self.dispatcher.await;
        let _ = self.restarts.await;
        let billing = self.campaign.billing.clone();
        let _ = billing.close().await;
    }
}

/// A whole `once`: start, one pass, stop. Fails when an outcome could not
/// be written (it is in the log in full).
pub async fn one_pass(
    config: Config,
    host: String,
    opts: PassOptions,
    abort: watch::Receiver<bool>,
) -> anyhow::Result<PassSummary> {
    let grace = Duration::from_secs(config.campaign.shutdown_grace_secs);
    let dialer = Dialer::connect(config, host).await?;
    let result = dialer.pass(opts, abort).await;
    // Callees the pass handed to the voice agent (keypad `agent`) are not
    // cut off because the pass is over: the agent takes each (its
    // StasisStart follows the continue), then their calls get the grace
    // period.
    let handed = dialer.campaign.handed_to_agent.load(Ordering::SeqCst) as u64;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while dialer.voice_agent.stats.handed_over.load(Ordering::SeqCst) < handed
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dialer.voice_agent.finish(grace).await;
    dialer.shutdown().await;
    let summary = result?;
    if summary.unwritten > 0 {
        anyhow::bail!(
            "{} outcome(s) could not be written to MySQL; each is logged in full above",
            summary.unwritten
        );
    }
    Ok(summary)
}

/// Hands every event to its call; starts what an unclaimed `StasisStart`
/// calls for.
async fn dispatch(
    campaign: Arc<Campaign>,
    voice_agent: Arc<VoiceAgent>,
    mut rx: mpsc::Receiver<Envelope>,
) {
    let config = campaign.config.clone();
    while let Some(env) = rx.recv().await {
        if let Event::EndpointStateChange { endpoint } = &env.event {
            campaign
                .trunks
                .set_health(&endpoint.name(), Health::parse(&endpoint.state));
            continue;
        }
        // A caller entering the agent app is the agent's, even on a `…;2`
        // channel whose `;1` is one of our outbound calls (the router would
        // hand it to that call). An externalMedia channel nobody follows
        // is a leftover, not a caller.
        if let Event::StasisStart { channel, args, .. } = &env.event {
            if env.application == config.ari.inbound_app
                && !campaign.router.is_registered(&channel.id)
                && !channel.name.starts_with("UnicastRTP/")
            {
                voice_agent.take(channel.clone(), args);
                continue;
            }
        }
        let Some(env) = campaign.router.route(env) else {
            continue;
        };
        let Event::StasisStart { channel, .. } = &env.event else {
            continue;
        };
        let channel = channel.clone();
        // One of our attempts that nobody follows: never hang up on it
        // blindly; its claim decides.
        if env.application == config.ari.outbound_app {
            if let Some(claim) = Claim::from_channel_id(&channel.id) {
                if let Some(inbox) = campaign
                    .router
                    .try_register(&channel.id, Some(Box::new(env)))
                {
                    tokio::spawn(reconcile::adopt_answered(
                        campaign.clone(),
                        channel,
                        claim,
                        inbox,
                    ));
                }
                continue;
            }
        }
        // In Stasis but not ours (another tool's): do not leave it hanging.
        tracing::warn!(channel = %channel.id, app = %env.application, "unknown channel entered Stasis; hanging it up");
        let ari = campaign.ari.clone();
        tokio::spawn(async move { ari.hangup(&channel.id, "normal").await });
    }
}

/// After every reconnect, asks Asterisk when it started: a new start time
/// means it restarted, and the refusals that cooled trunks down were its,
/// not theirs.
async fn watch_restarts(
    campaign: Arc<Campaign>,
    mut state: watch::Receiver<ConnState>,
    started: watch::Sender<Option<String>>,
) {
    while state.changed().await.is_ok() {
        if !state.borrow_and_update().is_connected() {
            continue;
        }
        // Changes while the socket was down were not heard, and a restarted
        // Asterisk forgot the subscriptions.
        trunks::subscribe_health(
            &campaign.trunks,
            &campaign.ari,
            &campaign.config.ari.outbound_app,
        )
        .await;
        trunks::refresh_health(&campaign.trunks, &campaign.ari).await;
        match campaign.ari.asterisk_info().await {
            Ok(info) => {
                let now = info.status.startup_time;
                let restarted = started.borrow().as_ref().is_some_and(|b| *b != now);
                if restarted {
                    tracing::warn!(startup_time = %now, "Asterisk restarted: every trunk cool-down cleared");
                    campaign.trunks.clear_cooldowns();
                }
                started.send_replace(Some(now));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read GET /ari/asterisk/info after reconnecting")
            }
        }
    }
}
