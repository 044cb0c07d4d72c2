//! The fallback for an inbound call: answer, play the fallback prompt,
//! hang up, and log who called and how it ended.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::ari::model::Channel;
use crate::ari::router::Router;
use crate::ari::{AriClient, Event};
use crate::rules::phone::mask;

pub(crate) async fn handle(
    ari: AriClient,
    router: Arc<Router>,
    channel: Channel,
    media: Vec<String>,
    lang: String,
    max_call: Duration,
) {
    let started = Instant::now();
    let id = channel.id.clone();
    let mut inbox = router.register(&id);
    let caller = mask(&channel.caller.number);
    if channel.state != "Up" {
        if let Err(e) = ari.answer(&id).await {
            tracing::warn!(channel = %id, error = %e, "cannot answer inbound call");
        }
    }
    let mut how = "fallback prompt played";
    match ari.play(&id, &media, Some(&lang), None).await {
        Ok(_) => {}
        Err(e) => {
            how = "fallback prompt refused";
            tracing::warn!(channel = %id, error = %e, "cannot play the fallback prompt");
        }
    }
    let deadline = started + max_call;
    let mut hung_up = false;
    let mut gone = false;
    if how != "fallback prompt refused" {
        loop {
            tokio::select! {
                env = inbox.recv() => match env.map(|e| e.event) {
                    Some(Event::PlaybackFinished { playback }) => {
                        if playback.state != "done" {
                            how = "caller hung up during the fallback prompt";
                        }
                        break;
                    }
                    Some(Event::ChannelDestroyed { .. }) => {
                        how = "caller hung up during the fallback prompt";
                        gone = true;
                        break;
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = sleep_until(deadline) => {
                    how = "maximum call length reached";
                    break;
                }
            }
        }
    }
    if !gone {
        hung_up = ari.hangup(&id, "normal").await.is_ok();
        // Wait (briefly) for Asterisk to confirm, so nothing is left behind.
        let confirm = Instant::now() + Duration::from_secs(2);
        loop {
            tokio::select! {
                env = inbox.recv() => match env.map(|e| e.event) {
                    Some(Event::StasisEnd { .. }) | Some(Event::ChannelDestroyed { .. }) | None => break,
                    Some(_) => {}
                },
                _ = sleep_until(confirm) => break,
            }
        }
    }
    router.unregister(&id);
    tracing::info!(caller = %caller, channel = %id, duration_s = started.elapsed().as_secs(), ended = how, hung_up, "inbound call (voice agent not available: fallback)");
}
