//! The event WebSocket and its supervisor (README "A pass").
//!
//! One connection carries both Stasis apps. It is re-established forever
//! with capped exponential backoff and jitter. Callers watch the state and
//! must not originate unless it is `Connected`: Asterisk accepts an
//! originate for an app nobody is listening for and then hangs the answered
//! call up. Asterisk replays nothing after a drop, so events are handed on
//! through a bounded channel with backpressure and are never dropped here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::Message;

use super::client::AriClient;
use super::events::{decode, type_name, Envelope, Event};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Trying to connect (`attempt` counts since the last success).
    Connecting {
        attempt: u32,
    },
    /// The apps are registered; `epoch` increases with every new connection,
    /// so a caller can tell that it must reconcile calls in flight.
    Connected {
        epoch: u64,
    },
    Disconnected {
        reason: String,
    },
}

impl ConnState {
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnState::Connected { .. })
    }
}

/// Reconnect pacing: `initial`, doubling up to `max`, each wait randomised
/// by ±`jitter` so a fleet of daemons does not reconnect in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait before reconnect attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max);
        let factor = 1.0 + rand::thread_rng().gen_range(-self.jitter..=self.jitter);
        capped.mul_f64(factor.max(0.0))
    }
}

/// Counters an operator (and a test) can read.
#[derive(Debug, Default)]
pub struct Stats {
    pub connects: AtomicU64,
    pub events: AtomicU64,
    pub malformed: AtomicU64,
}

/// The handle of a running supervisor.
pub struct EventConnection {
    pub events: mpsc::Receiver<Envelope>,
    pub state: watch::Receiver<ConnState>,
    pub stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EventConnection {
    /// Starts connecting in the background for `apps`.
    pub fn spawn(
        client: &AriClient,
        apps: &[&str],
        capacity: usize,
        backoff: Backoff,
    ) -> EventConnection {
        let (tx, events) = mpsc::channel(capacity.max(1));
        let (state_tx, state) = watch::channel(ConnState::Connecting { attempt: 0 });
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let sup = Supervisor {
            url: events_url(client.base_url(), apps),
            auth: super::client::basic_auth(client.username(), client.password().expose()),
            tx,
            state: state_tx,
            stop: stop_rx,
            stats: stats.clone(),
            backoff,
        };
        let task = tokio::spawn(sup.run());
        EventConnection {
            events,
            state,
            stats,
            stop,
            task,
        }
    }

    /// Waits until connected, or `timeout` passes.
    pub async fn wait_connected(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.state.wait_for(ConnState::is_connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Separates the event stream from the handle that stops the supervisor.
    pub(crate) fn into_parts(
        self,
    ) -> (
        mpsc::Receiver<Envelope>,
        watch::Receiver<ConnState>,
        Arc<Stats>,
        SupervisorHandle,
    ) {
        (
            self.events,
            self.state,
            self.stats,
            SupervisorHandle {
                stop: self.stop,
                task: self.task,
            },
        )
    }

    /// Closes the socket and ends the supervisor.
    pub async fn shutdown(self) {
        // Dropping the receiver first frees a supervisor blocked on a full channel.
        drop(self.events);
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Stops a supervisor whose events were taken with `into_parts`.
pub struct SupervisorHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SupervisorHandle {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn events_url(base: &str, apps: &[&str]) -> String {
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.trim_start_matches("http://"))
    };
    format!(
        "{}/ari/events?app={}&subscribeAll=false",
        ws.trim_end_matches('/'),
        apps.join(",")
    )
}

struct Supervisor {
    url: String,
    auth: String,
    tx: mpsc::Sender<Envelope>,
    state: watch::Sender<ConnState>,
    stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
    backoff: Backoff,
}

/// How long the socket may stay silent after our ping before we call it dead.
const PING_EVERY: Duration = Duration::from_secs(10);
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

enum End {
    Stop,
    Lost(String),
}

impl Supervisor {
    async fn run(mut self) {
        let mut attempt = 0u32;
        let mut epoch = 0u64;
        loop {
            if *self.stop.borrow() {
                return;
            }
            attempt += 1;
            self.state.send_replace(ConnState::Connecting { attempt });
            match self.connect().await {
                Ok(ws) => {
                    attempt = 0;
                    epoch += 1;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(epoch, "ARI event WebSocket connected");
                    self.state.send_replace(ConnState::Connected { epoch });
                    match self.pump(ws).await {
                        End::Stop => {
                            self.state.send_replace(ConnState::Disconnected {
                                reason: "shut down".into(),
                            });
                            return;
                        }
                        End::Lost(reason) => {
                            tracing::warn!(%reason, "ARI event WebSocket lost; no new calls until it is back");
                            self.state.send_replace(ConnState::Disconnected { reason });
                        }
                    }
                }
                Err(reason) => {
                    tracing::warn!(attempt, %reason, "cannot connect the ARI event WebSocket");
                    self.state.send_replace(ConnState::Disconnected { reason });
                }
            }
            let wait = self.backoff.delay(attempt.max(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    async fn connect(
        &self,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    > {
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad ARI URL: {e}"))?;
        let auth = HeaderValue::from_str(&self.auth)
            .map_err(|_| "credentials are not valid header text".to_owned())?;
        req.headers_mut().insert(AUTHORIZATION, auth);
        match tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        {
            Err(_) => Err("connect timed out".into()),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(format!(
                "Asterisk refused the WebSocket: HTTP {}",
                resp.status()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok((ws, _))) => Ok(ws),
        }
    }

    async fn pump(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> End {
        let (mut sink, mut stream) = ws.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_rx = Instant::now();
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return End::Stop;
                }
                _ = ping.tick() => {
                    if last_rx.elapsed() > SILENCE_LIMIT {
                        return End::Lost("no frame from Asterisk for 30 s".into());
                    }
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return End::Lost("ping failed".into());
                    }
                }
                frame = stream.next() => {
                    last_rx = Instant::now();
                    match frame {
                        None => return End::Lost("closed".into()),
                        Some(Err(e)) => return End::Lost(e.to_string()),
                        Some(Ok(Message::Text(text))) => {
                            if !self.deliver(&text).await {
                                return End::Stop;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            return End::Lost(frame.map_or_else(|| "closed by Asterisk".into(), |f| format!("closed by Asterisk: {}", f.reason)));
                        }
                        Some(Ok(_)) => {} // pings are answered by tungstenite; pongs and binary are ignored
                    }
                }
            }
        }
    }

    /// Decodes and hands on one event, waiting for room if the consumer is
    /// behind. `false` when nobody listens any more.
    async fn deliver(&mut self, text: &str) -> bool {
        match decode(text) {
            Ok(env) => {
                if env.event == Event::Other {
                    tracing::trace!(kind = ?type_name(text), "ARI event passed on as Other");
                }
                self.stats.events.fetch_add(1, Ordering::Relaxed);
                // Wait for room (backpressure), but never past a shutdown.
                tokio::select! {
                    sent = self.tx.send(env) => sent.is_ok(),
                    _ = self.stop.changed() => false,
                }
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = ?type_name(text), error = %e, "malformed ARI event ignored");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: 0.2,
        };
        for _ in 0..50 {
            let d1 = b.delay(1);
            assert!(
                d1 >= Duration::from_millis(80) && d1 <= Duration::from_millis(120),
                "{d1:?}"
            );
            let d4 = b.delay(4);
            assert!(
                d4 >= Duration::from_millis(640) && d4 <= Duration::from_millis(960),
                "{d4:?}"
            );
            assert!(b.delay(40) <= Duration::from_millis(2400));
        }
    }

    #[test]
    fn url_carries_apps_but_no_credentials() {
        let url = events_url("http://127.0.0.1:8088", &["overdue-app", "openai-app"]);
        assert_eq!(
            url,
            "ws://127.0.0.1:8088/ari/events?app=overdue-app,openai-app&subscribeAll=false"
        );
        assert!(events_url("https://pbx:8089/", &["a"]).starts_with("wss://pbx:8089/ari/events"));
        assert_eq!(
            crate::ari::client::basic_auth("Asterisk", "pw"),
            "Basic QXN0ZXJpc2s6cHc="
        );
    }
}
