//! The Asterisk side of an agent call's audio (LAB.md facts 12, 19, 20):
//! a mixing bridge with the caller and an externalMedia channel that
//! streams the bridge to a UDP port of ours, and their teardown.
//!
//! The externalMedia channel is created with our own id, routed to the
//! caller's inbox before the request (its events can beat the answer),
//! and paired by its `StasisStart` args, which carry the caller's id. When
//! the caller hangs up, Asterisk leaves that channel up in the bridge with
//! no event (fact 19): teardown always deletes it and the bridge itself.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::rtp::Lease;
use super::VoiceAgent;
use crate::ari::client::ExternalMedia;
use crate::ari::router::Inbox;
use crate::ari::Event;

/// What was created on Asterisk for one call (for teardown, even when
/// setup stopped half way).
#[derive(Debug, Default)]
pub(crate) struct Created {
    pub bridge: Option<String>,
    pub unicast: Option<String>,
}

/// A call's audio path, ready.
pub(crate) struct Media {
    pub sock: UdpSocket,
    /// Where Asterisk sends from and listens (`UNICASTRTP_LOCAL_*`).
    pub asterisk: SocketAddr,
    pub _lease: Lease,
}

#[derive(Debug)]
pub(crate) enum SetupError {
    CallerGone,
    Failed(String),
}

/// The caller left (hung up, or left Stasis some other way).
pub(crate) fn caller_gone(event: &Event, caller: &str) -> bool {
    match event {
        Event::ChannelDestroyed { channel, .. } | Event::StasisEnd { channel } => {
            channel.id == caller
        }
        _ => false,
    }
}

/// The externalMedia channel's id for a caller (ids keep `;`, which we
/// must not end with: the router would take `…;2` for a Local half).
pub(crate) fn unicast_id(caller: &str) -> String {
    format!("{}{MEDIA_SUFFIX}", caller.replace(';', "-"))
}

/// The agent bridge's id for a caller.
pub(crate) fn bridge_id(caller: &str) -> String {
    format!("{}{BRIDGE_SUFFIX}", caller.replace(';', "-"))
}

const MEDIA_SUFFIX: &str = "-agent-media";
const BRIDGE_SUFFIX: &str = "-agent-bridge";

/// Removes what a call that died without its teardown (a crash, a
/// panic) left on Asterisk, which nothing else would ever remove (LAB.md
/// fact 19): our externalMedia channels, found by their ids, and their
/// bridges. Returns how many channels were removed.
pub(crate) async fn remove_leftovers(ari: &crate::ari::AriClient) -> usize {
    let Ok(channels) = ari.channels().await else {
        return 0;
    };
    let mut removed = 0;
    for ch in channels {
        let Some(base) = ch.id.strip_suffix(MEDIA_SUFFIX) else {
            continue;
        };
        tracing::warn!(channel = %ch.id, "externalMedia channel left by an earlier run: removing it and its bridge");
        if ari.hangup(&ch.id, "normal").await.is_ok() {
            removed += 1;
        }
        let _ = ari.destroy_bridge(&format!("{base}{BRIDGE_SUFFIX}")).await;
    }
    removed
}

/// Best-effort removal of one call's media by id (after a panic).
pub(crate) async fn remove_for(ari: &crate::ari::AriClient, caller: &str) {
    let _ = ari.hangup(&unicast_id(caller), "normal").await;
    let _ = ari.destroy_bridge(&bridge_id(caller)).await;
}

/// Bridge, caller in it, externalMedia channel paired and in it.
pub(crate) async fn setup(
    agent: &VoiceAgent,
    caller: &str,
    inbox: &mut Inbox,
    created: &mut Created,
) -> Result<Media, SetupError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| SetupError::Failed(format!("{what}: {e}"));
    let (sock, lease) = agent
        .ports
        .bind()
        .map_err(|e| failed("binding the RTP port", &e))?;
    let local = sock
        .local_addr()
        .map_err(|e| failed("reading the RTP port", &e))?;
    let bridge_id = bridge_id(caller);
    // Recorded before the request: a lost answer must not leak the bridge.
    created.bridge = Some(bridge_id.clone());
    let bridge = agent
        .ari
        .create_bridge_with_id(&bridge_id, &format!("agent {caller}"))
        .await
        .map_err(|e| failed("creating the bridge", &e))?;
    agent
        .ari
        .add_to_bridge(&bridge.id, caller)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                SetupError::CallerGone
            } else {
                failed("bridging the caller", &e)
            }
        })?;
    let media_id = unicast_id(caller);
    agent.router.alias(caller, &media_id);
    created.unicast = Some(media_id.clone());
    let channel = agent
        .ari
        .external_media(&ExternalMedia {
            app: agent.config.ari.inbound_app.clone(),
            external_host: local.to_string(),
            format: "ulaw".into(),
            channel_id: Some(media_id.clone()),
            data: Some(caller.to_owned()),
        })
        .await
        .map_err(|e| failed("creating the externalMedia channel", &e))?;
    let vars = channel.channelvars.unwrap_or_default();
    let asterisk: SocketAddr = match (
        vars.get("UNICASTRTP_LOCAL_ADDRESS"),
        vars.get("UNICASTRTP_LOCAL_PORT"),
    ) {
        (Some(a), Some(p)) => match (a.parse::<std::net::IpAddr>(), p.parse::<u16>()) {
            (Ok(ip), Ok(port)) => SocketAddr::new(ip, port),
            _ => {
                return Err(SetupError::Failed(format!(
                    "unreadable UNICASTRTP_LOCAL_ADDRESS/PORT {a:?} {p:?}"
                )))
            }
        },
        _ => {
            return Err(SetupError::Failed(
                "externalMedia channel without UNICASTRTP_LOCAL_ADDRESS/PORT".into(),
            ))
        }
    };
    // Pair it: its StasisStart names the caller in its args.
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let env = match tokio::time::timeout_at(until, inbox.recv()).await {
            Ok(Some(env)) => env,
            Ok(None) => return Err(SetupError::Failed("event stream closed".into())),
            Err(_) => {
                return Err(SetupError::Failed(
                    "no StasisStart for the externalMedia channel within 3 s".into(),
                ))
            }
        };
        if caller_gone(&env.event, caller) {
            return Err(SetupError::CallerGone);
        }
        if let Event::StasisStart { channel, args, .. } = &env.event {
            if channel.id == media_id {
                if args.first().map(String::as_str) != Some(caller) {
                    return Err(SetupError::Failed(format!(
                        "externalMedia channel came with args {args:?}, not the caller's id"
                    )));
                }
                break;
            }
        }
    }
    agent
        .ari
        .add_to_bridge(&bridge.id, &media_id)
        .await
        .map_err(|e| failed("bridging the externalMedia channel", &e))?;
    Ok(Media {
        sock,
        asterisk,
        _lease: lease,
    })
}

/// Deletes what setup created and waits (briefly) for Asterisk to confirm
/// the externalMedia channel is gone. Returns whether the caller's own
/// `ChannelDestroyed` went by meanwhile.
pub(crate) async fn teardown(
    agent: &VoiceAgent,
    caller: &str,
    inbox: &mut Inbox,
    created: &mut Created,
) -> bool {
    let mut caller_destroyed = false;
    if let Some(unicast) = created.unicast.take() {
        let waiting = match agent.ari.hangup(&unicast, "normal").await {
            Ok(()) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => {
                tracing::warn!(channel = %unicast, error = %e, "cannot hang up the externalMedia channel");
                false
            }
        };
        let until = Instant::now() + Duration::from_secs(2);
        while waiting && Instant::now() < until {
            let Ok(Some(env)) = tokio::time::timeout_at(until, inbox.recv()).await else {
                break;
            };
            match &env.event {
                Event::ChannelDestroyed { channel, .. } if channel.id == unicast => break,
                Event::ChannelDestroyed { channel, .. } if channel.id == caller => {
                    caller_destroyed = true
                }
                _ => {}
            }
        }
        agent.router.unregister(&unicast);
    }
    if let Some(bridge) = created.bridge.take() {
        if let Err(e) = agent.ari.destroy_bridge(&bridge).await {
            if !e.is_not_found() {
                tracing::warn!(bridge = %bridge, error = %e, "cannot destroy the agent bridge");
            }
        }
    }
    caller_destroyed
}
