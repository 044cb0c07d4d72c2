//! The configured trunks at run time: who has a free channel, who is
//! cooling down after failing, who is held while Asterisk refuses, whose
//! endpoint Asterisk says is offline (README "Trunk health"), and
//! per-trunk counts. The decisions are `rules::trunks`'; this holds the
//! state, the clock and the waiting, and asks Asterisk for endpoint states.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ari::AriClient;
use crate::config::TrunkConfig;
use crate::rules::trunks::{
    asterisk_refusing, choose, cooldown, Health, TrunkState, REFUSAL_WINDOW,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkStats {
    pub attempts: u64,
    pub answered: u64,
    pub failed: u64,
    /// Originates sent to Asterisk on this trunk (accepted or refused).
    pub originates: u64,
    /// Its state when the stats were taken.
    pub state: TrunkState,
}

/// One trunk as an operator sees it now (metrics, the pass summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkView {
    pub name: String,
    pub in_use: u32,
    pub max_channels: u32,
    pub state: TrunkState,
    /// `Tech/resource` and its last known state, when the trunk has one.
    pub health_endpoint: Option<(String, Health)>,
    pub originates: u64,
}

struct Slot {
    cfg: TrunkConfig,
    /// The endpoint gating this trunk (`rules::trunks::health_endpoint`).
    health_endpoint: Option<String>,
    health: Health,
    in_use: u32,
    cool_until: Option<Instant>,
    failures: u32,
    stats: TrunkStats,
    /// The latest refusal, with the cool-down state it replaced (so a
    /// refusal found to be Asterisk's, not the trunk's, can be undone).
    refusal: Option<Refused>,
}

/// A trunk's refusals close together: the state before the first (what an
/// "Asterisk refusing" verdict restores) and how many were counted.
#[derive(Clone, Copy)]
struct Refused {
    first: Instant,
    at: Instant,
    count: u64,
    failures_before: u32,
    cool_until_before: Option<Instant>,
}

struct State {
    slots: Vec<Slot>,
    /// When Asterisk last accepted an originate on any trunk.
    last_placed: Option<Instant>,
    /// When refusals were last found to be Asterisk's.
    last_verdict: Option<Instant>,
    /// While Asterisk itself refuses originates, nobody dials until then.
    hold_until: Option<Instant>,
    hold_step: Duration,
}

pub struct TrunkPool {
    state: Mutex<State>,
    freed: Notify,
    cooldown: Duration,
}

/// Whose fault a refused originate was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This trunk's: it cools down, the attempt moves to the next trunk.
    Trunk,
    /// Asterisk's: every trunk refused within `rules::trunks::REFUSAL_WINDOW` and none
    /// placed a call since, as while `core stop gracefully` waits
    /// (every originate answers 500 `Allocation failed`, the same as a
    /// broken endpoint). No cool-down, no attempt spent: the pool holds
    /// every originate for a while and the attempt is tried again.
    Asterisk,
}

const FIRST_HOLD: Duration = Duration::from_secs(1);
const MAX_HOLD: Duration = Duration::from_secs(30);

/// How a use of a trunk went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Asterisk placed the call (answered or not); `at`: when it accepted
    /// the originate.
    Placed { answered: bool, at: Instant },
    /// The trunk refused or congested before ringing: cool it down.
    TrunkFailed,
    /// Nothing to say about the trunk (ARI down, shutdown, or a
    /// congestion not yet known to be the trunk's).
    Neutral,
}

impl TrunkPool {
    /// Trunks in priority order (1 first; ties keep configuration order).
    pub fn new(trunks: &[TrunkConfig], cooldown: Duration) -> TrunkPool {
        let mut cfgs = trunks.to_vec();
        cfgs.sort_by_key(|t| t.priority);
        let slots = cfgs
            .into_iter()
            .map(|cfg| Slot {
                health_endpoint: cfg.health_endpoint(),
                health: Health::Unknown,
                cfg,
                in_use: 0,
                cool_until: None,
                failures: 0,
                stats: TrunkStats::default(),
                refusal: None,
            })
            .collect();
        TrunkPool {
            state: Mutex::new(State {
                slots,
                last_placed: None,
                last_verdict: None,
                hold_until: None,
                hold_step: FIRST_HOLD,
            }),
            freed: Notify::new(),
            cooldown,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a channel on the best trunk (`rules::trunks::choose`); waits
    /// while none may be used (full, cooling down, held, or in `never`).
    pub(crate) async fn acquire(&self, avoid: &[usize], never: &[usize]) -> (usize, TrunkConfig) {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut state = self.state();
                let now = Instant::now();
                match state.hold_until {
                    Some(t) if t > now => Some(t),
                    _ => {
                        let slots = &mut state.slots;
                        let usable: Vec<bool> = slots
                            .iter()
                            .map(|s| {
                                let cooling = s.cool_until.is_some_and(|t| t > now);
                                s.in_use < s.cfg.max_channels
                                    && TrunkState::of(cooling, s.health).takes_calls()
                            })
                            .collect();
                        if let Some(i) = choose(&usable, avoid, never) {
                            let s = &mut slots[i];
                            s.in_use += 1;
                            s.stats.attempts += 1;
                            return (i, s.cfg.clone());
                        }
                        slots
                            .iter()
                            .filter_map(|s| s.cool_until)
                            .filter(|t| *t > now)
                            .min()
                    }
                }
            };
            match wake_at {
                Some(t) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Gives the channel back and books how it went.
    pub fn release(&self, index: usize, how: Use) {
        let mut state = self.state();
        if let Use::Placed { at, .. } = how {
            // When the originate was accepted, not when the call ended:
            // calls placed before Asterisk began refusing end during it.
            state.last_placed = state.last_placed.max(Some(at));
            if state.last_verdict.is_some_and(|v| at > v) {
                state.hold_step = FIRST_HOLD;
            }
        }
        if let Some(s) = state.slots.get_mut(index) {
            s.in_use = s.in_use.saturating_sub(1);
            match how {
                Use::Placed { answered, .. } => {
                    s.failures = 0;
                    if answered {
                        s.stats.answered += 1;
                    }
                }
                Use::TrunkFailed => {
                    s.stats.failed += 1;
                    Self::cool(s, self.cooldown);
                }
                Use::Neutral => {}
            }
        }
        drop(state);
        self.freed.notify_waiters();
    }

    /// Gives back the channel of an originate Asterisk refused, and
    /// decides whose fault it was (see `Refusal`).
    pub fn refused(&self, index: usize) -> Refusal {
        let mut state = self.state();
        let now = Instant::now();
        let Some(s) = state.slots.get_mut(index) else {
            return Refusal::Trunk;
        };
        s.in_use = s.in_use.saturating_sub(1);
        s.refusal = Some(match s.refusal {
            // Another refusal of the same burst: keep the state before the first.
            Some(r) if now.saturating_duration_since(r.first) <= REFUSAL_WINDOW => Refused {
                at: now,
                count: r.count + 1,
                ..r
            },
            _ => Refused {
                first: now,
                at: now,
                count: 1,
                failures_before: s.failures,
                cool_until_before: s.cool_until,
            },
        });
        s.stats.failed += 1;
        Self::cool(s, self.cooldown);
        let ago = |t: Instant| now.saturating_duration_since(t);
        let refused_ago: Vec<Option<Duration>> = state
            .slots
            .iter()
            .map(|s| s.refusal.map(|r| ago(r.at)))
            .collect();
        let placed_ago = state.last_placed.map(ago);
        let verdict = if asterisk_refusing(&refused_ago, placed_ago, REFUSAL_WINDOW) {
            // Undo the cool-downs these refusals caused: no trunk was at fault.
            for s in &mut state.slots {
                if let Some(r) = s.refusal.take() {
                    s.failures = r.failures_before;
                    s.cool_until = r.cool_until_before;
                    s.stats.failed = s.stats.failed.saturating_sub(r.count);
                }
            }
            let step = state.hold_step;
            state.last_verdict = Some(now);
            state.hold_until = Some(now + step);
            state.hold_step = (step * 2).min(MAX_HOLD);
            tracing::warn!(
                hold_s = step.as_secs_f64(),
                "every trunk refused the originate: Asterisk is refusing calls (stopping?); no trunk cooled down, trying again"
            );
            Refusal::Asterisk
        } else {
            Refusal::Trunk
        };
        drop(state);
        self.freed.notify_waiters();
        verdict
    }

    /// Asterisk restarted: its earlier refusals said nothing about the
    /// trunks, so every cool-down and hold ends now.
    pub(crate) fn clear_cooldowns(&self) {
        let mut state = self.state();
        state.hold_until = None;
        state.hold_step = FIRST_HOLD;
        for s in &mut state.slots {
            s.cool_until = None;
            s.failures = 0;
            s.refusal = None;
        }
        drop(state);
        self.freed.notify_waiters();
    }

    /// Blames a trunk after the fact (its congestion turned out to be its
    /// own: another trunk reached the callee): cool it down.
    pub(crate) fn blame(&self, index: usize) {
        if let Some(s) = self.state().slots.get_mut(index) {
            s.stats.failed += 1;
            Self::cool(s, self.cooldown);
        }
    }

    /// Counts an originate about to be sent on trunk `index`.
    pub(crate) fn originating(&self, index: usize) {
        if let Some(s) = self.state().slots.get_mut(index) {
            s.stats.originates += 1;
        }
    }

    /// The distinct endpoints the trunks depend on.
    pub fn health_endpoints(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state()
            .slots
            .iter()
            .filter_map(|s| s.health_endpoint.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Records what Asterisk says of `endpoint`; each trunk whose state
    /// changes gets one log line. A trunk back online may take the calls
    /// waiting for one at once.
    pub fn set_health(&self, endpoint: &str, health: Health) {
        let mut state = self.state();
        let mut changed = false;
        for s in state
            .slots
            .iter_mut()
            .filter(|s| s.health_endpoint.as_deref() == Some(endpoint))
        {
            if s.health == health {
                continue;
            }
            let before = s.health;
            s.health = health;
            changed = true;
            if health.takes_calls() {
                tracing::info!(trunk = %s.cfg.name, endpoint, from = before.as_str(), to = health.as_str(), "trunk endpoint state changed; the trunk takes calls");
            } else {
                tracing::warn!(trunk = %s.cfg.name, endpoint, from = before.as_str(), to = health.as_str(), "trunk endpoint offline; the trunk takes no calls until it is online");
            }
        }
        drop(state);
        if changed {
            self.freed.notify_waiters();
        }
    }

    /// Every trunk's endpoint is offline: a pass now would only claim
    /// clients to wait for a trunk.
    pub fn all_offline(&self) -> bool {
        let state = self.state();
        !state.slots.is_empty() && state.slots.iter().all(|s| !s.health.takes_calls())
    }

    /// Each trunk as it is now, in priority order.
    pub fn view(&self) -> Vec<TrunkView> {
        let now = Instant::now();
        self.state()
            .slots
            .iter()
            .map(|s| TrunkView {
                name: s.cfg.name.clone(),
                in_use: s.in_use,
                max_channels: s.cfg.max_channels,
                state: TrunkState::of(s.cool_until.is_some_and(|t| t > now), s.health),
                health_endpoint: s.health_endpoint.clone().map(|e| (e, s.health)),
                originates: s.stats.originates,
            })
            .collect()
    }

    /// Whether trunk `index` is cooling down now.
    pub fn is_cooling(&self, index: usize) -> bool {
        let now = Instant::now();
        self.state()
            .slots
            .get(index)
            .and_then(|s| s.cool_until)
            .is_some_and(|t| t > now)
    }

    fn cool(s: &mut Slot, base: Duration) {
        let wait = cooldown(base, s.failures);
        s.failures += 1;
        s.cool_until = Some(Instant::now() + wait);
        tracing::warn!(trunk = %s.cfg.name, cooldown_s = wait.as_secs(), "trunk failing, cooling down");
    }

    pub fn len(&self) -> usize {
        self.state().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (name, counts) per trunk, in priority order.
    pub fn stats(&self) -> Vec<(String, TrunkStats)> {
        let now = Instant::now();
        self.state()
            .slots
            .iter()
            .map(|s| {
                let state = TrunkState::of(s.cool_until.is_some_and(|t| t > now), s.health);
                (
                    s.cfg.name.clone(),
                    TrunkStats {
                        state,
                        ..s.stats.clone()
                    },
                )
            })
            .collect()
    }
}

/// Asks Asterisk for the state of every trunk's endpoint (before each
/// pass, and after each reconnect, when events may have been missed).
/// An endpoint Asterisk cannot tell us about stays as it was, or becomes
/// `unknown` if Asterisk does not know it: usable, with a warning.
pub async fn refresh_health(pool: &TrunkPool, ari: &AriClient) {
    for endpoint in pool.health_endpoints() {
        match ari.endpoint(&endpoint).await {
            Ok(e) => pool.set_health(&endpoint, Health::parse(&e.state)),
            Err(e) if e.is_not_found() => {
                tracing::warn!(endpoint = %endpoint, "trunk health endpoint not found on Asterisk; the trunk's state is unknown (it still takes calls): check health_endpoint in [[trunks]]");
                pool.set_health(&endpoint, Health::Unknown);
            }
            Err(e) => {
                tracing::warn!(endpoint = %endpoint, error = %e, "cannot read the trunk's endpoint state; keeping the last one known");
            }
        }
    }
}

/// Subscribes `app` to every trunk endpoint's `EndpointStateChange`
/// events. Needed after every (re)connect: a restarted Asterisk forgets
/// subscriptions.
pub async fn subscribe_health(pool: &TrunkPool, ari: &AriClient, app: &str) {
    for endpoint in pool.health_endpoints() {
        if let Err(e) = ari.subscribe_endpoint(app, &endpoint).await {
            tracing::warn!(endpoint = %endpoint, error = %e, "cannot subscribe to the trunk endpoint's state changes; its state is read before each pass only");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, priority: u32, max: u32) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            endpoint: format!("PJSIP/{{number}}@{name}"),
            max_channels: max,
            priority,
            caller_id: None,
            health_endpoint: None,
        }
    }

    /// Every trunk refusing within seconds is Asterisk refusing (a
    /// graceful stop): nobody cools down and originates hold; one trunk
    /// refusing while another places calls is that trunk's fault.
    #[tokio::test(start_paused = true)]
    async fn refusals_of_every_trunk_are_asterisks() {
        let pool = TrunkPool::new(
            &[trunk("a", 1, 2), trunk("b", 2, 2)],
            Duration::from_secs(60),
        );
        let (i, _) = pool.acquire(&[], &[]).await;
        assert_eq!(pool.refused(i), Refusal::Trunk, "b has not refused");
        assert!(pool.is_cooling(0));
        let (j, t) = pool.acquire(&[0], &[]).await;
        assert_eq!(t.name, "b");
        assert_eq!(pool.refused(j), Refusal::Asterisk);
        assert!(
            !pool.is_cooling(0) && !pool.is_cooling(1),
            "a's cool-down undone"
        );
        assert_eq!(pool.stats()[0].1.failed, 0);
        // Held for a second, then both trunks are usable again.
        let held = pool.acquire(&[], &[]);
        tokio::pin!(held);
        assert!(
            tokio::time::timeout(Duration::from_millis(900), held.as_mut())
                .await
                .is_err()
        );
        let (k, t) = held.await;
        assert_eq!(t.name, "a");
        pool.release(
            k,
            Use::Placed {
                answered: true,
                at: Instant::now(),
            },
        );
        // Later, a's refusal alone, with b placing calls, is a's fault.
        tokio::time::advance(Duration::from_secs(10)).await;
        let (i, _) = pool.acquire(&[], &[]).await;
        let (j, _) = pool.acquire(&[0], &[]).await;
        pool.release(
            j,
            Use::Placed {
                answered: false,
                at: Instant::now(),
            },
        );
        assert_eq!(pool.refused(i), Refusal::Trunk);
        assert!(pool.is_cooling(0));
        // An Asterisk restart clears it.
        pool.clear_cooldowns();
        assert!(!pool.is_cooling(0));
    }

    /// An offline endpoint stops its trunk (the next one takes the call);
    /// back online, the trunk takes calls again, waiters included.
    #[tokio::test(start_paused = true)]
    async fn offline_trunks_take_no_calls() {
        let pool = TrunkPool::new(
            &[trunk("a", 1, 1), trunk("b", 2, 1)],
            Duration::from_secs(60),
        );
        assert_eq!(pool.health_endpoints(), ["PJSIP/a", "PJSIP/b"]);
        pool.set_health("PJSIP/a", Health::Offline);
        assert_eq!(pool.view()[0].state, TrunkState::Offline);
        assert!(!pool.all_offline());
        let (i, t) = pool.acquire(&[], &[]).await;
        assert_eq!(t.name, "b");
        // b is full and a offline: wait until a is online.
        let waiter = pool.acquire(&[], &[]);
        tokio::pin!(waiter);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiter.as_mut())
                .await
                .is_err()
        );
        pool.set_health("PJSIP/a", Health::Online);
        assert_eq!(waiter.await.1.name, "a");
        pool.release(i, Use::Neutral);
        pool.set_health("PJSIP/a", Health::Offline);
        pool.set_health("PJSIP/b", Health::Offline);
        assert!(pool.all_offline());
        pool.set_health("PJSIP/b", Health::Unknown);
        assert!(!pool.all_offline(), "unknown takes calls");
        let stats = pool.stats();
        assert_eq!(stats[0].1.state, TrunkState::Offline);
        assert_eq!(stats[1].1.state, TrunkState::Up);
    }

    #[tokio::test(start_paused = true)]
    async fn priority_capacity_and_cooldown() {
        let pool = TrunkPool::new(
            &[trunk("b", 2, 1), trunk("a", 1, 2)],
            Duration::from_secs(60),
        );
        assert_eq!(pool.acquire(&[], &[]).await.1.name, "a");
        assert_eq!(pool.acquire(&[], &[]).await.1.name, "a");
        assert_eq!(pool.acquire(&[], &[]).await.1.name, "b", "a is full");
        pool.release(0, Use::TrunkFailed);
        // a is cooling down: b is full, so the next caller waits for b.
        let waiter = pool.acquire(&[], &[]);
        tokio::pin!(waiter);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), waiter.as_mut())
                .await
                .is_err()
        );
        pool.release(
            1,
            Use::Placed {
                answered: true,
                at: Instant::now(),
            },
        );
        assert_eq!(waiter.await.1.name, "b");
        // After the cool-down, a is first again; a second failure doubles it.
        tokio::time::advance(Duration::from_secs(61)).await;
        let (i, t) = pool.acquire(&[], &[]).await;
        assert_eq!((i, t.name.as_str()), (0, "a"));
        pool.release(0, Use::TrunkFailed);
        pool.release(
            0,
            Use::Placed {
                answered: false,
                at: Instant::now(),
            },
        ); // the other a channel
        tokio::time::advance(Duration::from_secs(61)).await;
        let avoid_b = pool.acquire(&[1], &[]);
        tokio::pin!(avoid_b);
        // b is busy (one channel held), a cools for 120 s now.
        assert!(
            tokio::time::timeout(Duration::from_secs(30), avoid_b.as_mut())
                .await
                .is_err()
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(avoid_b.await.1.name, "a");
        let stats = pool.stats();
        assert_eq!(stats[0].0, "a");
        assert_eq!(stats[0].1.failed, 2);
        assert_eq!(stats[1].1.answered, 1);
    }
}
