//! One agent call (README "The voice agent"): OpenAI Realtime session
//! first (the caller keeps ringing meanwhile), then answer, bridge and
//! externalMedia, then the conversation until someone ends it.
//!
//! The loop owns everything of the call but the outbound queue: caller
//! RTP in → `input_audio_buffer.append`; `response.output_audio.delta` →
//! the call's `pacer::Line` (its queue, shared for microseconds at a time
//! with the pacer thread that sends every call's RTP on time) → RTP to
//! Asterisk. The hard part is barge-in: on `speech_started` the queue is
//! dropped at once, the response cancelled, and the item truncated at
//! exactly what went out to Asterisk (8 bytes of μ-law per ms), so the
//! model forgets what the caller never heard. Tool results go back only
//! after their response's `response.done`, as the GA protocol requires.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::{sleep_until, Instant};

use super::fallback::{self, Played};
use super::media::{self, caller_gone, Created, SetupError};
use super::pacer::Line;
use super::realtime::{self, ConnectError, ServerEvent, Session, SessionSpec};
use super::rtp::{accept, FRAME, PTIME, SILENCE};
use super::tools::{self, Tool};
use super::{Caller, End, VoiceAgent};
use crate::ari::model::Channel;
use crate::ari::router::Inbox;
use crate::clock::local_now;
use crate::rules::inbound::{check_promise, instructions, How};

/// Liveness of the OpenAI socket: a ping this often, and lost after this
/// long without any frame from the server.
const PING_EVERY: Duration = Duration::from_secs(2);
const SILENT_SESSION: Duration = Duration::from_secs(7);
/// How often a silent caller's gap is filled for OpenAI.
const SILENCE_FILL: Duration = Duration::from_millis(100);
/// Longest wait for a goodbye (or "I'll transfer you") to be spoken.
const LAST_WORDS: Duration = Duration::from_secs(10);
/// A caller who picked up must not sit in silence longer than this while
/// OpenAI connects (README "The voice agent").
const MAX_SILENCE: Duration = Duration::from_millis(1900);

/// What the call does once the agent's last words have been played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    HangUp(How),
    Transfer,
}

/// Where the call is in its ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Talking.
    No,
    /// Waiting for the response with the last words to finish.
    AwaitingWords(Then, Instant),
    /// Last words generated; act once they have been played.
    Draining(Then, Instant),
}

struct Conversation<'a> {
    agent: &'a VoiceAgent,
    caller: &'a Caller,
    caller_id: &'a str,
    row: Option<u64>,
    session: Session,
    /// The agent's audio on its way to Asterisk, paced by the pacer thread.
    out: Arc<Line>,
    response_active: bool,
    response_audio: bool,
    /// Items the caller talked over: their late deltas are dropped.
    cut: HashSet<String>,
    current_item: Option<Arc<str>>,
    /// Function calls of the response in progress.
    calls: Vec<(String, String, String)>,
    tokens_in: u64,
    tokens_out: u64,
    transcript: Option<String>,
    ending: Ending,
    /// The response asked for as the last words, once created.
    last_words_id: Option<String>,
    /// Tool results being worked out off the audio path (MySQL), in the
    /// order of their calls, and what to do once they are all back.
    pending: Vec<(String, tokio::task::JoinHandle<String>)>,
    after_tools: Option<Then>,
    /// The OpenAI socket is still open.
    open: bool,
}

pub(crate) async fn run(
    agent: &Arc<VoiceAgent>,
    channel: &Channel,
    caller: &Caller,
    row: Option<u64>,
    inbox: &mut Inbox,
    slot: super::AgentSlot<'_>,
    arrived: Instant,
) -> End {
    let id = channel.id.as_str();
    let va = &agent.config.voice_agent;
    let today = local_now(agent.config.timezone).date();
    let instructions = instructions(&va.instructions, caller.account.as_ref(), today);
    let spec = SessionSpec {
        url: &va.url,
        model: &va.model,
        api_key: va.api_key.expose(),
        voice: &va.voice,
        instructions: &instructions,
        // Transcribing the caller costs; only when transcripts are kept.
        transcription_model: if va.store_transcripts {
            &va.transcription_model
        } else {
            ""
        },
        tools: tools::declarations(
            agent.config.transfer.is_configured(),
            caller.account.is_some(),
        ),
    };
    let mut timeout = Duration::from_millis(va.connect_timeout_ms);
    if channel.state == "Up" {
        // Already answered: the caller hears silence from arrival on.
        timeout = timeout.min(MAX_SILENCE.saturating_sub(arrived.elapsed()));
    }
    let connecting = realtime::connect(&spec, timeout);
    tokio::pin!(connecting);
    let session = loop {
        tokio::select! {
            r = &mut connecting => break r,
            env = inbox.recv() => match env {
                Some(env) if caller_gone(&env.event, id) => return End::just(How::CallerHungUp),
                Some(_) => {}
                None => return End::just(How::Error),
            },
        }
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let how = match e {
                ConnectError::Unreachable(_) => How::FallbackUnreachable,
                ConnectError::Refused(_) => How::FallbackRefused,
            };
            tracing::warn!(channel = %id, caller = %caller.masked, error = %e, "voice agent not available: fallback prompt");
            // A caller on the fallback holds no agent place.
            drop(slot);
            return fallback::run(agent, channel, caller, how, inbox).await;
        }
    };
    if let Err(how) = fallback::answer(agent, channel, inbox).await {
        session.close().await;
        return End::just(how);
    }
    let mut created = Created::default();
    // The pacer sends from a duplicate of the call's socket.
    let set_up = media::setup(agent, id, inbox, &mut created)
        .await
        .and_then(|m| match Line::open(&m.sock, m.asterisk) {
            Ok(line) => Ok((m, line)),
            Err(e) => Err(SetupError::Failed(format!(
                "cannot hand the RTP socket to the pacer: {e}"
            ))),
        });
    let (media, line) = match set_up {
        Ok(m) => m,
        Err(e) => {
            session.close().await;
            let gone = media::teardown(agent, id, inbox, &mut created).await;
            return match e {
                SetupError::CallerGone => End::just(How::CallerHungUp),
                SetupError::Failed(why) => {
                    tracing::error!(channel = %id, error = %why, "cannot set up the agent's audio path: fallback prompt");
                    if gone {
                        End::just(How::Error)
                    } else {
                        fallback::play_fallback(agent, id, caller, How::Error, inbox).await
                    }
                }
            };
        }
    };
    // The instructions open with the greeting.
    session.send(realtime::respond(None));
    let mut conv = Conversation {
        agent,
        caller,
        caller_id: id,
        row,
        session,
        out: line,
        response_active: false,
        response_audio: false,
        cut: HashSet::new(),
        current_item: None,
        calls: Vec::new(),
        tokens_in: 0,
        tokens_out: 0,
        transcript: va.store_transcripts.then(String::new),
        ending: Ending::No,
        last_words_id: None,
        pending: Vec::new(),
        after_tools: None,
        open: true,
    };
    let outcome = conv.talk(&media, inbox).await;
    let Conversation {
        session,
        out,
        tokens_in,
        tokens_out,
        transcript,
        ..
    } = conv;
    // Nothing more is sent; the pacer lets go of the line by itself.
    agent
        .stats
        .late_rtp
        .fetch_add(out.close(), Ordering::Relaxed);
    session.close().await;
    drop(media);
    let how = match outcome {
        Finish::CallerGone => {
            media::teardown(agent, id, inbox, &mut created).await;
            How::CallerHungUp
        }
        Finish::HangUp(how) => {
            media::teardown(agent, id, inbox, &mut created).await;
            fallback::hang_up(agent, id, inbox).await;
            how
        }
        Finish::Transfer => {
            // The caller leaves the bridge by itself when it continues.
            // (The tool is offered only with a destination configured.)
            let sent = match agent.config.transfer.destination() {
                Some(to) => agent
                    .ari
                    .continue_to(id, &to)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no [transfer] destination configured".to_owned()),
            };
            match sent {
                Ok(()) => {
                    media::teardown(agent, id, inbox, &mut created).await;
                    How::Transferred
                }
                Err(e) => {
                    tracing::error!(channel = %id, error = %e, "cannot transfer the caller; hanging up");
                    media::teardown(agent, id, inbox, &mut created).await;
                    fallback::hang_up(agent, id, inbox).await;
                    How::Error
                }
            }
        }
        Finish::OpenAiLost => {
            // A short apology, then a person if there is one to go to.
            let gone = media::teardown(agent, id, inbox, &mut created).await;
            let va = &agent.config.voice_agent;
            let deadline = Instant::now() + Duration::from_secs(30);
            let played = if gone {
                Played::CallerGone
            } else {
                fallback::play(agent, id, &va.apology_media, inbox, deadline).await
            };
            match (played, agent.config.transfer.destination()) {
                (Played::CallerGone, _) => How::CallerHungUp,
                (_, Some(to)) => match agent.ari.continue_to(id, &to).await {
                    Ok(()) => How::Transferred,
                    Err(e) => {
                        tracing::error!(channel = %id, error = %e, "cannot transfer the caller; hanging up");
                        fallback::hang_up(agent, id, inbox).await;
                        How::Error
                    }
                },
                (_, None) => {
                    fallback::hang_up(agent, id, inbox).await;
                    How::Error
                }
            }
        }
    };
    End {
        how,
        tokens_in,
        tokens_out,
        transcript,
    }
}

/// How the conversation ended.
enum Finish {
    CallerGone,
    HangUp(How),
    Transfer,
    OpenAiLost,
}

impl Conversation<'_> {
    async fn talk(&mut self, media: &media::Media, inbox: &mut Inbox) -> Finish {
        let va = &self.agent.config.voice_agent;
        let max_length = Instant::now() + Duration::from_secs(va.max_call_secs);
        let mut stop = self.agent.stop.subscribe();
        let mut buf = [0u8; 2048];
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        // Asterisk sends nothing while the caller is silent (LAB.md fact
        // 20), but the server VAD only hears a turn end in audio: the gaps
        // are filled with μ-law silence, so OpenAI's audio clock keeps up
        // with the call's.
        let mut heard_until = Instant::now();
        // A socket can die without closing (a black-holed connection): a
        // ping every few seconds, and a session silent for too long is lost.
        let mut liveness = tokio::time::interval(PING_EVERY);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fill = tokio::time::interval(SILENCE_FILL);
        fill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Acting on the ending comes first: once the last words have
            // been played (or took too long), do what was decided.
            match self.ending {
                Ending::Draining(then, cap) if self.out.queued() == 0 || Instant::now() >= cap => {
                    // Let the last packet be heard before the line goes.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return match then {
                        Then::HangUp(how) => Finish::HangUp(how),
                        Then::Transfer => Finish::Transfer,
                    };
                }
                Ending::AwaitingWords(then, cap) if Instant::now() >= cap => {
                    self.ending = Ending::Draining(then, cap);
                    continue;
                }
                _ => {}
            }
            let ending_cap = match self.ending {
                Ending::No => far_future,
                Ending::AwaitingWords(_, cap) | Ending::Draining(_, cap) => cap,
            };
            tokio::select! {
                biased;
                // The last words played out: back to the top to act.
                _ = self.out.drained(), if matches!(self.ending, Ending::Draining(..)) => {}
                r = media.sock.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        match accept(&buf[..n], from, media.asterisk) {
                            Ok(audio) => {
                                heard_until = Instant::now();
                                self.session.send(realtime::append(audio));
                            }
                            Err(why) => {
                                self.agent.stats.dropped_rtp.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(channel = %self.caller_id, %from, ?why, "RTP datagram dropped");
                            }
                        }
                    }
                }
                ev = self.session.next(), if self.open => match ev {
                    Some(ev) => self.on_server(ev),
                    None => {
                        self.open = false;
                        self.out.set_streaming(false);
                        match self.ending {
                            // What was said is still played; nothing more can come.
                            Ending::Draining(then, cap) | Ending::AwaitingWords(then, cap) => {
                                self.ending = Ending::Draining(then, cap);
                            }
                            Ending::No => {
                                tracing::warn!(channel = %self.caller_id, "OpenAI closed the session mid-call");
                                return Finish::OpenAiLost;
                            }
                        }
                    }
                },
                output = async { (&mut self.pending[0].1).await }, if !self.pending.is_empty() => {
                    let (call_id, _) = self.pending.remove(0);
                    let output = output.unwrap_or_else(|_| {
                        json!({"ok": false, "error": "no se pudo registrar ahora"}).to_string()
                    });
                    self.session.send(realtime::function_output(&call_id, &output));
                    if self.pending.is_empty() {
                        self.tools_answered();
                    }
                },
                env = inbox.recv() => match env {
                    Some(env) if caller_gone(&env.event, self.caller_id) => return Finish::CallerGone,
                    Some(env) => {
                        if let crate::ari::Event::ChannelDestroyed { channel, .. } = &env.event {
                            if channel.id == media::unicast_id(self.caller_id) {
                                tracing::error!(channel = %self.caller_id, "externalMedia channel gone mid-call");
                                return Finish::HangUp(How::Error);
                            }
                        }
                    }
                    None => return Finish::HangUp(How::Error),
                },
                _ = liveness.tick(), if self.open => {
                    if self.session.silent_for() > SILENT_SESSION {
                        tracing::warn!(channel = %self.caller_id, "OpenAI session silent (no pong) for {} s: lost", SILENT_SESSION.as_secs());
                        self.open = false;
                        if self.ending == Ending::No {
                            return Finish::OpenAiLost;
                        }
                    } else {
                        self.session.ping();
                    }
                }
                _ = fill.tick() => {
                    let gap = Instant::now().saturating_duration_since(heard_until);
                    if gap >= SILENCE_FILL {
                        let frames = (gap.as_millis() / PTIME.as_millis()) as u32;
                        heard_until += PTIME * frames;
                        self.session.send(realtime::append(&vec![SILENCE; FRAME * frames as usize]));
                    }
                }
                _ = sleep_until(max_length), if self.ending == Ending::No => {
                    self.last_words(Then::HangUp(How::MaxLength), "Se acabó el tiempo de la llamada: despídete en una frase.");
                }
                _ = sleep_until(ending_cap), if self.ending != Ending::No => {}
                _ = super::stopped(&mut stop) => return Finish::HangUp(How::Error),
            }
        }
    }

    /// Asks for a last sentence, then does `then`.
    fn last_words(&mut self, then: Then, instructions: &str) {
        if self.response_active {
            self.session.send(realtime::cancel());
        }
        self.session.send(realtime::respond(Some(instructions)));
        self.ending = Ending::AwaitingWords(then, Instant::now() + LAST_WORDS);
    }

    fn on_server(&mut self, ev: ServerEvent) {
        match ev {
            ServerEvent::Audio { item_id, audio } => {
                if self.cut.contains(&item_id) {
                    return;
                }
                self.response_audio = true;
                let item = match &self.current_item {
                    Some(i) if **i == *item_id => i.clone(),
                    _ => {
                        let i: Arc<str> = Arc::from(item_id.as_str());
                        self.current_item = Some(i.clone());
                        i
                    }
                };
                self.out.push(&item, audio);
            }
            ServerEvent::SpeechStarted => self.barge_in(),
            ServerEvent::ResponseCreated { id } => {
                if matches!(self.ending, Ending::AwaitingWords(..)) && self.last_words_id.is_none()
                {
                    self.last_words_id = Some(id);
                }
                self.response_active = true;
                self.out.set_streaming(true);
                self.response_audio = false;
                self.calls.clear();
            }
            ServerEvent::FunctionItem { call_id, name } => {
                if let Some(c) = self.calls.iter_mut().find(|c| c.0 == call_id) {
                    c.1 = name;
                } else {
                    self.calls.push((call_id, name, String::new()));
                }
            }
            ServerEvent::FunctionArgs {
                call_id,
                name,
                arguments,
            } => {
                if let Some(c) = self.calls.iter_mut().find(|c| c.0 == call_id) {
                    c.2 = arguments;
                    if let Some(n) = name {
                        c.1 = n;
                    }
                } else {
                    self.calls
                        .push((call_id, name.unwrap_or_default(), arguments));
                }
            }
            ServerEvent::ResponseDone {
                id,
                status,
                tokens_in,
                tokens_out,
                calls,
                ..
            } => {
                self.response_active = false;
                self.out.set_streaming(false);
                self.tokens_in += tokens_in;
                self.tokens_out += tokens_out;
                for (call_id, name, arguments) in calls {
                    if let Some(c) = self.calls.iter_mut().find(|c| c.0 == call_id) {
                        if c.1.is_empty() {
                            c.1 = name;
                        }
                        if c.2.is_empty() {
                            c.2 = arguments;
                        }
                    } else {
                        self.calls.push((call_id, name, arguments));
                    }
                }
                // Only the response created for the last words ends the
                // wait (not the one cancelled to make room for them).
                if let Ending::AwaitingWords(then, cap) = self.ending {
                    if self.last_words_id.as_deref() != Some(id.as_str()) {
                        return;
                    }
                    self.ending = Ending::Draining(then, cap);
                    self.calls.clear();
                    return;
                }
                // A cancelled response's tool calls were never meant.
                if status == "cancelled" {
                    self.calls.clear();
                    return;
                }
                if status == "failed" {
                    tracing::warn!(channel = %self.caller_id, "OpenAI response failed");
                }
                let calls = std::mem::take(&mut self.calls);
                self.run_tools(calls);
            }
            ServerEvent::Transcript { agent, text } => {
                if let Some(t) = &mut self.transcript {
                    t.push_str(if agent { "agente: " } else { "cliente: " });
                    t.push_str(&text);
                    t.push('\n');
                }
            }
            ServerEvent::Error { code, message } => {
                if code == "response_cancel_not_active" {
                    tracing::debug!(channel = %self.caller_id, "cancel with no response in progress (harmless)");
                } else {
                    tracing::warn!(channel = %self.caller_id, %code, %message, "OpenAI error event; the call goes on");
                }
            }
            ServerEvent::Other(kind) => {
                tracing::trace!(channel = %self.caller_id, event = %kind, "OpenAI event not acted on");
            }
        }
    }

    /// The caller talks over the agent: stop at once, and make the model
    /// forget what was not heard. Every item with audio still queued is
    /// cut and truncated at what went out (0 when none did); so is the
    /// item still streaming, whose later deltas are dropped.
    fn barge_in(&mut self) {
        // The last words are heard out: the ending stands.
        if self.ending != Ending::No {
            return;
        }
        let (unplayed, current) = self.out.clear();
        let mut cut = unplayed;
        if self.response_active {
            if let Some((item, ms)) = current {
                if !cut.iter().any(|(i, _)| Arc::ptr_eq(i, &item)) {
                    cut.push((item, ms));
                }
            }
        }
        for (item, sent_ms) in cut {
            self.cut.insert(item.to_string());
            self.session.send(realtime::truncate(&item, sent_ms));
        }
        if self.response_active {
            self.session.send(realtime::cancel());
        }
    }

    /// Answers a response's tool calls. The promise is written by a task
    /// (MySQL must never hold up the audio); results go back in call
    /// order once all are in, then the model is asked to go on — or, after
    /// a transfer or hang-up, for its last words.
    fn run_tools(&mut self, calls: Vec<(String, String, String)>) {
        if calls.is_empty() {
            return;
        }
        let mut then = None;
        for (call_id, name, arguments) in calls {
            let output = match Tool::from_call(&name, &arguments) {
                Tool::Promise { arguments } => {
                    let task = tokio::spawn(promise(
                        self.agent.billing.clone(),
                        self.agent.config.timezone,
                        self.caller.account.as_ref().map(|a| a.client_id),
                        self.row,
                        self.caller_id.to_owned(),
                        arguments,
                    ));
                    self.pending.push((call_id, task));
                    continue;
                }
                Tool::Transfer if self.agent.config.transfer.is_configured() => {
                    then.get_or_insert(Then::Transfer);
                    r#"{"ok":true}"#.to_owned()
                }
                Tool::Transfer => {
                    json!({"ok": false, "error": "no hay asesores disponibles por esta línea"})
                        .to_string()
                }
                Tool::HangUp => {
                    then.get_or_insert(Then::HangUp(How::Agent));
                    r#"{"ok":true}"#.to_owned()
                }
                Tool::Unknown(name) => {
                    tracing::warn!(channel = %self.caller_id, tool = %name, "the model called a tool it was not given");
                    json!({"ok": false, "error": format!("la herramienta {name} no existe")})
                        .to_string()
                }
            };
            let done = tokio::spawn(async move { output });
            self.pending.push((call_id, done));
        }
        self.after_tools = then;
    }

    /// Every result of a response is back with the model.
    fn tools_answered(&mut self) {
        match self.after_tools.take() {
            Some(Then::Transfer) => self.finish_with(
                Then::Transfer,
                "Dile en una frase que lo transfieres con un asesor ahora.",
            ),
            Some(then) => self.finish_with(then, "Despídete en una frase."),
            None => self.session.send(realtime::respond(None)),
        }
    }

    /// Transfer or hang up after the agent's last words: if the response
    /// that called the tool already spoke them, once they are played;
    /// otherwise after one more short response.
    fn finish_with(&mut self, then: Then, instructions: &str) {
        if self.response_audio {
            self.ending = Ending::Draining(then, Instant::now() + LAST_WORDS);
        } else {
            self.last_words(then, instructions);
        }
    }
}

/// `registrar_promesa_de_pago`: checked by the rules, written with a time
/// limit; the answer is for the model.
async fn promise(
    billing: crate::billing::Billing,
    tz: chrono_tz::Tz,
    client_id: Option<i64>,
    row: Option<u64>,
    channel: String,
    arguments: String,
) -> String {
    let Some(client_id) = client_id else {
        return json!({"ok": false, "error": "cliente no identificado: no se puede registrar"})
            .to_string();
    };
    let now = local_now(tz);
    let p = match check_promise(&arguments, now.date()) {
        Err(why) => return json!({"ok": false, "error": why}).to_string(),
        Ok(p) => p,
    };
    let write = billing.insert_promise(client_id, &p, row, now);
    match tokio::time::timeout(Duration::from_secs(3), write).await {
        Ok(Ok(_)) => {
            tracing::info!(%channel, client_id, date = %p.date, amount = ?p.amount, "promise to pay recorded");
            json!({"ok": true, "fecha": p.date.to_string(), "monto": p.amount}).to_string()
        }
        Ok(Err(e)) => {
            tracing::error!(%channel, client_id, date = %p.date, amount = ?p.amount, error = %e, "PROMISE TO PAY NOT WRITTEN");
            json!({"ok": false, "error": "no se pudo registrar ahora; un asesor la registrará"})
                .to_string()
        }
        Err(_) => {
            tracing::error!(%channel, client_id, date = %p.date, amount = ?p.amount, "PROMISE TO PAY NOT WRITTEN: MySQL did not answer within 3 s");
            json!({"ok": false, "error": "no se pudo registrar ahora; un asesor la registrará"})
                .to_string()
        }
    }
}
