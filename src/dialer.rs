//! A running dialer: MySQL, the ARI client, the event WebSocket and the
//! dispatcher that hands events to calls, put together once and shared by
//! `once`, `run` and `demo`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::ari::connection::SupervisorHandle;
use crate::ari::{AriClient, AriError, Backoff, ConnState, Event, EventConnection};
use crate::billing::{schema, Billing};
use crate::campaign::pass::Campaign;
use crate::campaign::router::Router;
use crate::campaign::trunks::pool::TrunkPool;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;

pub struct Dialer {
    pub campaign: Arc<Campaign>,
    /// Event counters of the WebSocket (events, malformed, connects).
    pub events: Arc<crate::ari::connection::Stats>,
    supervisor: SupervisorHandle,
    dispatcher: JoinHandle<()>,
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
    /// Connects to MySQL and Asterisk, failing with an operator-readable
    /// message when either cannot be used.
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
        let (mut rx, state, stats, supervisor) = events.into_parts();
        let router = Arc::new(Router::default());
        let trunks = Arc::new(TrunkPool::new(
            &config.trunks,
            Duration::from_secs(config.campaign.trunk_cooldown_secs),
        ));
        let clock: Arc<dyn Clock> = clock.unwrap_or_else(|| Arc::new(SystemClock(config.timezone)));
        let campaign = Arc::new(Campaign {
            config: config.clone(),
            billing,
            ari: ari.clone(),
            router: router.clone(),
            ari_state: state,
            trunks,
            host,
            clock,
        });

        let dispatcher = tokio::spawn(async move {
            while let Some(env) = rx.recv().await {
                let Some(env) = router.route(env) else {
                    continue;
                };
                match env.event {
                    Event::StasisStart { channel, .. }
                        if env.application == config.ari.inbound_app
                            && !router.is_registered(&channel.id) =>
                    {
                        let va = &config.voice_agent;
                        tokio::spawn(crate::voice_agent::fallback::handle(
                            ari.clone(),
                            router.clone(),
                            channel,
                            va.fallback_media.clone(),
                            config.campaign.lang.clone(),
                            Duration::from_secs(va.max_call_secs),
                        ));
                    }
                    Event::StasisStart { channel, .. } => {
                        // In Stasis but not ours (left from a crash, or another tool): do not leave it hanging.
                        tracing::warn!(channel = %channel.id, app = %env.application, "unknown channel entered Stasis; hanging it up");
                        let ari = ari.clone();
                        tokio::spawn(async move { ari.hangup(&channel.id, "normal").await });
                    }
                    _ => {}
                }
            }
        });
        Ok(Dialer {
            campaign,
            events: stats,
            supervisor,
            dispatcher,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.campaign.ari_state.borrow().is_connected()
    }

    pub fn state(&self) -> ConnState {
        self.campaign.ari_state.borrow().clone()
    }

    pub async fn shutdown(self) {
        self.supervisor.shutdown().await;
        self.dispatcher.abort();
        let _ = self.dispatcher.await;
        let billing = self.campaign.billing.clone();
        let _ = billing.close().await;
    }
}
