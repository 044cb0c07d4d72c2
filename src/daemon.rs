//! `overdue-dialer run`: the long-running service (README "Install on the PBX host"). Passes at the
//! scheduled times and every poll interval inside the calling window, never
//! two at once; systemd is told when we are ready, alive and stopping; on
//! SIGTERM or SIGINT nothing new is dialled, calls in flight get a grace
//! period, every outcome is written, and the process exits 0.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveTime;
use tokio::sync::watch;

use crate::campaign::pass::PassOptions;
use crate::campaign::schedule::next_start;
use crate::clock::Clock;
use crate::config::Config;
use crate::dialer::{host_name, Dialer};

/// One malloc arena for the whole process, set before any thread starts.
///
/// glibc gives each thread that allocates under contention an arena of its
/// own, and freed memory stays in the arena it came from: a call's buffers
/// are allocated on one tokio worker and freed on another, so each arena
/// keeps its own spare memory. With one, the daemon's peak with 1 000 calls
/// in flight is 1–2 MB lower (BENCHMARKS.md "How cost grows"); the lock
/// it shares costs nothing measurable at a few hundred calls a second.
pub fn one_malloc_arena() {
    // SAFETY: mallopt only sets a malloc tunable; called before threads start.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Tells systemd (when it is listening; a no-op otherwise). The send is a
/// blocking socket write, so it runs off the async workers: a reader that
/// falls behind must not stall the calls.
fn notify(state: &[sd_notify::NotifyState<'static>]) {
    let state = state.to_vec();
    tokio::task::spawn_blocking(move || {
        let _ = sd_notify::notify(false, &state);
    });
}

/// A future that resolves on the first SIGTERM or SIGINT.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_until(config, None, terminated()).await
}

/// Runs until `stop` resolves, on `clock` (the system's when `None`).
pub async fn run_until(
    config: Config,
    clock: Option<Arc<dyn Clock>>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let schedule: Vec<NaiveTime> = config.campaign.schedule.iter().map(|t| t.0).collect();
    let poll = chrono::Duration::seconds(config.campaign.poll_interval_secs.max(1) as i64);
    let grace = Duration::from_secs(config.campaign.shutdown_grace_secs);
    let window = config.window.clone();

    let dialer = Dialer::connect_with_clock(config, host_name(), clock).await?;
    let clock = dialer.campaign.clock.clone();
    let _metrics = dialer.serve_metrics().await;
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("connected to MySQL and Asterisk"),
    ]);
    tracing::info!("overdue-dialer running");

    // Watchdog: as long as the runtime turns, systemd hears from us.
    let mut watchdog_usec = 0;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        let every = Duration::from_micros(watchdog_usec / 2);
        tokio::spawn(async move {
            loop {
                notify(&[sd_notify::NotifyState::Watchdog]);
                tokio::time::sleep(every).await;
            }
        });
    }

    tokio::pin!(stop);
    let mut last_start = None;
    let mut agents_done: Option<tokio::task::JoinHandle<()>> = None;
    'daemon: loop {
        let Some(at) = next_start(clock.now(), last_start, &schedule, poll, &window) else {
            anyhow::bail!("the calling window never opens: check [window] in the configuration");
        };
        tracing::info!(next_pass = %at.format("%Y-%m-%d %H:%M:%S"), "waiting for the next pass");
        // Sleep in slices so a clock change or a long wait stays accurate.
        loop {
            let now = clock.now();
            if now >= at {
                break;
            }
            let slice = clock
                .real(at - now)
                .min(Duration::from_secs(60))
                .max(Duration::from_millis(1));
            tokio::select! {
                _ = tokio::time::sleep(slice) => {}
                _ = &mut stop => break 'daemon,
            }
        }
        last_start = Some(clock.now());
        let (drain_tx, drain) = watch::channel(false);
        let (abort_tx, abort) = watch::channel(false);
        let pass = dialer.pass(
            PassOptions {
                ignore_window: false,
                drain: Some(drain),
                probe: None,
            },
            abort,
        );
        tokio::pin!(pass);
        let result = tokio::select! {
            r = &mut pass => r,
            _ = &mut stop => {
                notify(&[sd_notify::NotifyState::Stopping]);
                tracing::info!(grace_s = grace.as_secs(), "stopping: no new calls; calls in flight may finish");
                // Agent calls share the same grace, counted from now.
                let agent = dialer.voice_agent.clone();
                agents_done = Some(tokio::spawn(async move { agent.finish(grace).await }));
                let _ = drain_tx.send(true);
                let hard_stop = tokio::time::sleep(grace);
                tokio::pin!(hard_stop);
                let r = tokio::select! {
                    r = &mut pass => r,
                    _ = &mut hard_stop => {
                        tracing::warn!("grace period over: hanging up calls in flight");
                        let _ = abort_tx.send(true);
                        pass.await
                    }
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "pass failed");
                }
                break 'daemon;
            }
        };
        if let Err(e) = result {
            // MySQL away: try again at the next poll.
            tracing::error!(error = %e, "pass failed; will try again at the next poll");
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    // Agent calls get the same grace as outbound calls (README "The daemon"),
    // counted from the signal, not after the pass's.
    match agents_done {
        Some(done) => {
            let _ = done.await;
        }
        None => dialer.voice_agent.finish(grace).await,
    }
    dialer.shutdown().await;
    tracing::info!("overdue-dialer stopped");
    Ok(())
}
