//! When the agent cannot take a call (no API key, OpenAI unreachable or
//! refusing, too many agent calls, the daemon stopping): the caller hears
//! `voice_agent.fallback_media` — with `{saldo}` and `{corte}` of the
//! matched client, if any — and is hung up cleanly. Also the prompt-playing
//! step the agent uses for its apology when OpenAI is lost mid-call.

use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::media::caller_gone;
use super::{Caller, End, VoiceAgent};
use crate::ari::model::Channel;
use crate::ari::router::Inbox;
use crate::ari::Event;
use crate::rules::inbound::How;

/// How a prompt played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Played {
    /// To its end (or Asterisk could not play it: nothing to wait for).
    Done,
    CallerGone,
    /// The call's time ran out, or the daemon must stop now.
    Cut,
}

/// Plays `media` to the caller and waits for it to end.
pub(crate) async fn play(
    agent: &VoiceAgent,
    id: &str,
    media: &[String],
    inbox: &mut Inbox,
    deadline: Instant,
) -> Played {
    let lang = agent.config.campaign.lang.clone();
    if let Err(e) = agent.ari.play(id, media, Some(&lang), None).await {
        if e.is_not_found() {
            return Played::CallerGone;
        }
        tracing::warn!(channel = %id, error = %e, "cannot play a prompt to the inbound caller");
        return Played::Done;
    }
    let mut stop = agent.stop.subscribe();
    loop {
        tokio::select! {
            env = inbox.recv() => match env.map(|e| e.event) {
                Some(Event::PlaybackFinished { playback }) if playback.target_uri == format!("channel:{id}") => {
                    if playback.state == "failed" {
                        tracing::error!(channel = %id, media = %playback.media_uri, lang = %lang,
                            "PROMPT NOT PLAYED to the inbound caller: sound missing on Asterisk? check voice_agent.fallback_media / apology_media");
                    }
                    return Played::Done
                }
                Some(ev) if caller_gone(&ev, id) => return Played::CallerGone,
                Some(_) => {}
                None => return Played::Cut,
            },
            _ = sleep_until(deadline) => return Played::Cut,
            _ = super::stopped(&mut stop) => return Played::Cut,
        }
    }
}

/// Hangs the caller up and waits (briefly) for Asterisk to confirm, so
/// nothing is left behind.
pub(crate) async fn hang_up(agent: &VoiceAgent, id: &str, inbox: &mut Inbox) {
    match agent.ari.hangup(id, "normal").await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return,
        Err(e) => {
            tracing::warn!(channel = %id, error = %e, "cannot hang up the inbound caller");
            return;
        }
    }
    let confirm = Instant::now() + Duration::from_secs(2);
    loop {
        tokio::select! {
            env = inbox.recv() => match env.map(|e| e.event) {
                Some(Event::ChannelDestroyed { channel, .. }) if channel.id == id => break,
                None => break,
                Some(_) => {}
            },
            _ = sleep_until(confirm) => break,
        }
    }
}

/// Answers if needed (the shipped dialplan leaves the caller ringing).
/// A caller who cannot be answered is hung up, never left in Stasis.
pub(crate) async fn answer(
    agent: &VoiceAgent,
    channel: &Channel,
    inbox: &mut Inbox,
) -> Result<(), How> {
    if channel.state == "Up" {
        return Ok(());
    }
    match agent.ari.answer(&channel.id).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Err(How::CallerHungUp),
        Err(e) => {
            tracing::error!(channel = %channel.id, error = %e, "cannot answer the inbound call; hanging it up");
            hang_up(agent, &channel.id, inbox).await;
            Err(How::Error)
        }
    }
}

/// The whole fallback call.
pub(crate) async fn run(
    agent: &VoiceAgent,
    channel: &Channel,
    caller: &Caller,
    how: How,
    inbox: &mut Inbox,
) -> End {
    if let Err(how) = answer(agent, channel, inbox).await {
        return End::just(how);
    }
    play_fallback(agent, &channel.id, caller, how, inbox).await
}

/// The fallback prompt on an answered caller, then the hang-up.
pub(crate) async fn play_fallback(
    agent: &VoiceAgent,
    id: &str,
    caller: &Caller,
    how: How,
    inbox: &mut Inbox,
) -> End {
    let va = &agent.config.voice_agent;
    let (balance, corte) = match &caller.account {
        Some(a) => (Some(a.balance_pesos.to_string()), a.corte.map(i64::from)),
        None => (None, None),
    };
    // Without a matched client, items that would speak account details
    // are left out rather than read as zero.
    let media: Vec<String> = match &caller.account {
        Some(_) => crate::rules::media::fill(
            &va.fallback_media,
            balance.as_deref(),
            corte,
            crate::clock::local_now(agent.config.timezone).date(),
        ),
        None => va
            .fallback_media
            .iter()
            .filter(|m| {
                !m.contains("{saldo}")
                    && !m.contains("{corte}")
                    && m.as_str() != crate::rules::media::CORTE_FECHA
            })
            .cloned()
            .collect(),
    };
    if media.is_empty() {
        hang_up(agent, id, inbox).await;
        return End::just(how);
    }
    let deadline = Instant::now() + Duration::from_secs(va.max_call_secs);
    match play(agent, id, &media, inbox, deadline).await {
        Played::CallerGone => End::just(how),
        Played::Done | Played::Cut => {
            hang_up(agent, id, inbox).await;
            End::just(how)
        }
    }
}
