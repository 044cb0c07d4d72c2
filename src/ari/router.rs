//! Hands each ARI event to the call it belongs to.
//!
//! A call registers its own `channelId` before it originates (events can
//! beat the originate's HTTP answer). An event goes to the call registered
//! under its exact channel id; failing that, an event of a Local `;2` half
//! (`<id>;2`) goes to the call that originated `<id>`. Exact ids come
//! first because an inbound call can itself arrive on a `…;2` channel
//! (a dialplan that reaches Stasis through `Local/`): its own id keeps the
//! `;` and must not be taken for the half of something we originated.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures_channel::mpsc;
use futures_util::StreamExt;

use crate::ari::{Envelope, Event};

/// A call's events. Boxed: an `Envelope` is close to 1 KB. A
/// `futures_channel` queue, not tokio's: tokio's allocates 32 slots at a
/// time and pads its halves to cache lines, ~850 bytes for each call in
/// flight before any event; this one is a small header and a node per
/// event waiting (BENCHMARKS.md "How cost grows").
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Box<Envelope>>,
    /// Events taken out before the call's owner read them (the
    /// `StasisStart` that revealed a call to adopt), handed out first.
    first: VecDeque<Box<Envelope>>,
}

impl Inbox {
    /// Puts back an event taken out to look at, to be handed out next.
    pub(crate) fn unread(&mut self, env: Box<Envelope>) {
        self.first.push_front(env);
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Box<Envelope>> {
        self.first.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    pub async fn recv(&mut self) -> Option<Box<Envelope>> {
        match self.first.pop_front() {
            Some(env) => Some(env),
            None => self.rx.next().await,
        }
    }
}

#[derive(Default)]
pub struct Router {
    calls: Mutex<HashMap<String, mpsc::UnboundedSender<Box<Envelope>>>>,
}

/// The channel id an event is about (`None`: about no channel of ours,
/// such as a `Dial()` run by a dialplan, which is about its far side).
pub(crate) fn channel_of(event: &Event) -> Option<&str> {
    match event {
        Event::Dial {
            caller: Some(_), ..
        } => None,
        Event::PlaybackStarted { playback }
        | Event::PlaybackContinuing { playback }
        | Event::PlaybackFinished { playback } => playback.target_uri.strip_prefix("channel:"),
        other => other.channel().map(|c| c.id.as_str()),
    }
}

impl Router {
    fn calls(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Box<Envelope>>>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts delivering events of `channel_id` (and its `;2`) to the inbox.
    pub(crate) fn register(&self, channel_id: &str) -> Inbox {
        let (tx, rx) = mpsc::unbounded();
        self.calls().insert(channel_id.to_owned(), tx);
        Inbox {
            rx,
            first: VecDeque::new(),
        }
    }

    /// As `register`, unless somebody already follows `channel_id`; `first`
    /// is handed out before anything routed later.
    pub(crate) fn try_register(
        &self,
        channel_id: &str,
        first: Option<Box<Envelope>>,
    ) -> Option<Inbox> {
        let mut calls = self.calls();
        if calls.contains_key(channel_id) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded();
        calls.insert(channel_id.to_owned(), tx);
        Some(Inbox {
            rx,
            first: first.into_iter().collect(),
        })
    }

    /// Delivers `extra`'s events to the inbox already registered under
    /// `owner` (an agent call's externalMedia channel goes to its caller).
    pub(crate) fn alias(&self, owner: &str, extra: &str) -> bool {
        let mut calls = self.calls();
        let Some(tx) = calls.get(owner).cloned() else {
            return false;
        };
        calls.insert(extra.to_owned(), tx);
        true
    }

    pub(crate) fn unregister(&self, channel_id: &str) {
        self.calls().remove(channel_id);
    }

    pub(crate) fn is_registered(&self, channel_id: &str) -> bool {
        self.calls().contains_key(channel_id)
    }

    /// Delivers the event; gives it back when no call claims it.
    pub(crate) fn route(&self, env: Envelope) -> Option<Envelope> {
        let Some(id) = channel_of(&env.event) else {
            return Some(env);
        };
        let calls = self.calls();
        let tx = calls.get(id).or_else(|| {
            id.strip_suffix(";2")
                .and_then(|originated| calls.get(originated))
        });
        match tx {
            Some(tx) => tx
                .unbounded_send(Box::new(env))
                .err()
                .map(|e| *e.into_inner()),
            None => Some(env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ari::model::Channel;

    fn destroyed(id: &str) -> Envelope {
        Envelope {
            application: "openai-app".into(),
            timestamp: String::new(),
            asterisk_id: String::new(),
            event: Event::ChannelDestroyed {
                channel: Channel {
                    id: id.into(),
                    ..Channel::default()
                },
                cause: 16,
                cause_txt: String::new(),
            },
        }
    }

    #[tokio::test]
    async fn exact_ids_first_then_the_originated_half() {
        let router = Router::default();
        // An inbound call whose own channel is the ;2 of a Local pair.
        let mut inbound = router.register("1763900000.7;2");
        // An outbound call we originated: its ;2 half reaches it.
        let mut outbound = router.register("overdue-1-1");
        assert!(router.route(destroyed("1763900000.7;2")).is_none());
        assert!(router.route(destroyed("overdue-1-1;2")).is_none());
        assert!(router.route(destroyed("overdue-1-1")).is_none());
        assert!(
            router.route(destroyed("1763900000.7")).is_some(),
            "the inbound call's ;1 is nobody's"
        );
        let id = |e: Option<Box<Envelope>>| channel_of(&e.unwrap().event).unwrap().to_owned();
        assert_eq!(id(inbound.recv().await), "1763900000.7;2");
        assert_eq!(id(outbound.recv().await), "overdue-1-1;2");
        assert_eq!(id(outbound.recv().await), "overdue-1-1");
    }

    #[tokio::test]
    async fn an_adopted_call_gets_its_first_event_first() {
        let router = Router::default();
        let mut inbox = router
            .try_register("overdue-2-1", Some(Box::new(destroyed("first"))))
            .unwrap();
        assert!(router.try_register("overdue-2-1", None).is_none());
        assert!(router.route(destroyed("overdue-2-1")).is_none());
        let id = |e: Option<Box<Envelope>>| channel_of(&e.unwrap().event).unwrap().to_owned();
        assert_eq!(id(inbox.recv().await), "first");
        assert_eq!(id(inbox.recv().await), "overdue-2-1");
    }
}
