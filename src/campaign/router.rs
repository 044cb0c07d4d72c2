//! Hands each ARI event to the call it belongs to.
//!
//! A call registers its own `channelId` before it originates (events can
//! beat the originate's HTTP answer); events of the `;2` half (`<id>;2`)
//! and playbacks on the channel go to the same call.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::ari::{Envelope, Event};

/// A call's events. Boxed: an `Envelope` is close to 1 KB and a channel
/// allocates its slots 32 at a time, so unboxed every call in flight would
/// hold ~28 KB of empty slots.
pub type Inbox = mpsc::UnboundedReceiver<Box<Envelope>>;

#[derive(Default)]
pub struct Router {
    calls: Mutex<HashMap<String, mpsc::UnboundedSender<Box<Envelope>>>>,
}

/// The channel id an event is about, with a Local `;2` suffix removed.
pub fn key(event: &Event) -> Option<&str> {
    let id = match event {
        // A Dial() from a dialplan (it has a caller) is about the far side.
        Event::Dial {
            caller: Some(_), ..
        } => return None,
        Event::PlaybackStarted { playback }
        | Event::PlaybackContinuing { playback }
        | Event::PlaybackFinished { playback } => playback.target_uri.strip_prefix("channel:")?,
        other => &other.channel()?.id,
    };
    Some(id.strip_suffix(";2").unwrap_or(id))
}

impl Router {
    fn calls(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Box<Envelope>>>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts delivering events of `channel_id` (and its `;2`) to the receiver.
    pub fn register(&self, channel_id: &str) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        self.calls().insert(channel_id.to_owned(), tx);
        rx
    }

    pub fn unregister(&self, channel_id: &str) {
        self.calls().remove(channel_id);
    }

    pub fn is_registered(&self, channel_id: &str) -> bool {
        self.calls().contains_key(channel_id)
    }

    /// Delivers the event; gives it back when no call claims it.
    pub fn route(&self, env: Envelope) -> Option<Envelope> {
        let Some(k) = key(&env.event) else {
            return Some(env);
        };
        let calls = self.calls();
        match calls.get(k) {
            Some(tx) => tx.send(Box::new(env)).err().map(|e| *e.0),
            None => Some(env),
        }
    }
}
