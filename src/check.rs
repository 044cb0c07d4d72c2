//! `overdue-dialer check`: everything the daemon needs, verified one line
//! at a time, each failure with what to do about it (README "Commands").
//!
//! It only looks: it never registers the Stasis apps (that would take them
//! from a running daemon) and never changes the database.

use std::time::Duration;

use crate::ari::{AriClient, AriError};
use crate::billing::{schema, Billing};
use crate::config::Config;
use crate::metrics::probe::{probe, Probe};
use crate::rules::media::sounds_needed;
use crate::rules::trunks::{check_endpoint_template, Health};

/// One verified item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub ok: bool,
    pub what: String,
    /// What to do, for failures.
    pub fix: Option<String>,
}

impl Line {
    fn ok(what: impl Into<String>) -> Line {
        Line {
            ok: true,
            what: what.into(),
            fix: None,
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            ok: false,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn render(&self) -> String {
        match &self.fix {
            None => format!("✓ {}", self.what),
            Some(fix) => format!("✗ {} — {}", self.what, fix),
        }
    }
}

/// Runs every check against the configured MySQL and Asterisk.
pub async fn run(config: &Config) -> Vec<Line> {
    let mut lines = vec![Line::ok("configuration is valid")];
    lines.extend(mysql(config).await);
    let (ari_lines, ari) = asterisk(config).await;
    lines.extend(ari_lines);
    for t in &config.trunks {
        lines.push(trunk(t, ari.as_ref()).await);
    }
    lines.push(metrics(config).await);
    lines
}

/// A trunk's template, and its endpoint's state when it has one (README
/// "Trunk health"); `ari` is `None` when Asterisk could not be reached.
async fn trunk(t: &crate::config::TrunkConfig, ari: Option<&AriClient>) -> Line {
    if let Err(why) = check_endpoint_template(&t.endpoint) {
        return Line::fail(format!("trunk {} endpoint", t.name), why);
    }
    let what = format!(
        "trunk {} endpoint {} (priority {}, {} channels)",
        t.name, t.endpoint, t.priority, t.max_channels
    );
    let (Some(endpoint), Some(ari)) = (t.health_endpoint(), ari) else {
        return Line::ok(what);
    };
    match ari.endpoint(&endpoint).await {
        Ok(e) => match Health::parse(&e.state) {
            Health::Offline => Line::fail(
                format!("{what}: {endpoint} offline"),
                format!("the trunk takes no calls until Asterisk sees {endpoint} online: check the provider's registration and qualify (`pjsip show endpoint {}`)", e.resource),
            ),
            h => Line::ok(format!("{what}: {endpoint} {}", h.as_str())),
        },
        Err(e) if e.is_not_found() => Line::fail(
            format!("{what}: health endpoint {endpoint} not found on Asterisk"),
            "set health_endpoint in [[trunks]] to the endpoint's name in pjsip.conf / sip.conf, or \"\" for none (its state is unknown meanwhile: the trunk still takes calls)",
        ),
        Err(e) => Line::fail(format!("{what}: state of {endpoint}"), e.to_string()),
    }
}

/// Whether the metrics endpoint answers (README "Metrics").
async fn metrics(config: &Config) -> Line {
    let Some(addr) = config.metrics.addr() else {
        return Line::ok("metrics off (metrics.listen is empty)");
    };
    match probe(addr).await {
        Probe::Ours => Line::ok(format!(
            "metrics endpoint http://{addr}/metrics answers (the daemon is running)"
        )),
        Probe::Free => Line::ok(format!(
            "metrics endpoint http://{addr}/metrics not answering (no daemon running); the address is free for it"
        )),
        Probe::Foreign(what) => Line::fail(
            format!("metrics endpoint http://{addr}/metrics answers without overdue metrics ({what})"),
            "another program holds metrics.listen: choose another address, or stop it",
        ),
        Probe::Unusable(why) => Line::fail(
            format!("metrics address {addr} cannot be used ({why})"),
            "choose another metrics.listen, or \"\" to turn metrics off",
        ),
    }
}

async fn mysql(config: &Config) -> Vec<Line> {
    let m = &config.mysql;
    let billing = Billing::new(m.opts());
    let mut conn = match billing.conn().await {
        Ok(c) => c,
        Err(e) => {
            return vec![Line::fail(
                format!("MySQL at {}:{} database {}", m.host, m.port, m.database),
                format!("cannot connect ({e}); check mysql.* / MYSQL_* and that the server is up"),
            )]
        }
    };
    let mut lines = vec![Line::ok(format!(
        "MySQL reachable at {}:{} (database {})",
        m.host, m.port, m.database
    ))];
    match schema::plan(&mut conn).await {
        Ok(todo) if todo.is_empty() => lines.push(Line::ok(
            "tables and columns present (afiliados, factura, overdue_call_log)",
        )),
        Ok(todo) => lines.push(Line::fail(
            format!("schema incomplete ({} statements missing)", todo.len()),
            "run `overdue-dialer schema apply`",
        )),
        Err(e) => lines.push(Line::fail("billing tables", e.to_string())),
    }
    match schema::missing_indexes(&mut conn).await {
        Ok(missing) if missing.is_empty() => {
            lines.push(Line::ok("indexes for the eligibility query present"))
        }
        Ok(missing) => {
            for ddl in missing {
                lines.push(Line::fail(
                    "index for the eligibility query missing",
                    format!("have a DBA run: {ddl};"),
                ));
            }
        }
        Err(e) => lines.push(Line::fail("indexes", e.to_string())),
    }
    drop(conn);
    let _ = billing.close().await;
    lines
}

async fn asterisk(config: &Config) -> (Vec<Line>, Option<AriClient>) {
    let a = &config.ari;
    let ari = match AriClient::new(
        &a.url,
        &a.username,
        a.password.clone(),
        Duration::from_secs(a.request_timeout_secs),
    ) {
        Ok(c) => c,
        Err(e) => return (vec![Line::fail("ARI client", e.to_string())], None),
    };
    match ari.ping().await {
        Ok(()) => {}
        Err(AriError::Status { status, .. }) if status.as_u16() == 401 => {
            return (vec![Line::fail(
                format!("ARI at {} as {}", a.url, a.username),
                "credentials refused: set ari.username / ari.password (ASTERISK_USERNAME / ASTERISK_PASSWORD) as in ari.conf",
            )], None)
        }
        Err(e) => {
            return (vec![Line::fail(
                format!("ARI at {}", a.url),
                format!("unreachable ({e}); is Asterisk up with http.conf enabled and ari.conf [general] enabled = yes?"),
            )], None)
        }
    }
    let mut lines = vec![Line::ok(format!(
        "ARI reachable at {} as {}",
        a.url, a.username
    ))];
    for app in [&a.outbound_app, &a.inbound_app] {
        lines.push(match ari.application(app).await {
            Err(e) if e.is_not_found() => Line::ok(format!("Stasis app {app} free for the daemon")),
            Ok(_) => Line::fail(
                format!("Stasis app {app} is held by another client"),
                "another overdue-dialer (or ARI tool) is connected with this app; only one may hold it — stop it, or if it is this host's running daemon, all is well",
            ),
            Err(e) => Line::fail(format!("Stasis app {app}"), e.to_string()),
        });
    }
    let lang = &config.campaign.lang;
    let mut media: Vec<String> = config.campaign.media.clone();
    media.extend(config.voice_agent.fallback_media.iter().cloned());
    if !config.menu.actions.is_empty() {
        media.extend(config.menu.media.iter().cloned());
        media.extend(config.menu.opt_out_media.iter().cloned());
    }
    // Spoken amounts and dates need many of Asterisk's own files: one
    // line for all of them, naming the missing ones.
    let (spoken, prompts): (Vec<String>, Vec<String>) = sounds_needed(&media)
        .into_iter()
        .partition(|s| s.starts_with("digits/"));
    for sound in &prompts {
        lines.push(match ari.sound(sound).await {
            Ok(s) if s.formats.iter().any(|f| &f.language == lang) => {
                Line::ok(format!("sound {sound} present for language {lang}"))
            }
            Ok(s) => Line::fail(
                format!(
                    "sound {sound} has no {lang} version (only {:?})",
                    s.formats
                        .iter()
                        .map(|f| f.language.as_str())
                        .collect::<Vec<_>>()
                ),
                format!(
                    "copy {sound}.gsm to /usr/share/asterisk/sounds/{lang}/ (see sounds/README.md)"
                ),
            ),
            Err(e) if e.is_not_found() => Line::fail(
                format!("sound {sound} missing on Asterisk"),
                format!(
                    "copy {sound}.gsm to /usr/share/asterisk/sounds/{lang}/ (see sounds/README.md)"
                ),
            ),
            Err(e) => Line::fail(format!("sound {sound}"), e.to_string()),
        });
    }
    if !spoken.is_empty() {
        let mut missing = Vec::new();
        for sound in &spoken {
            match ari.sound(sound).await {
                Ok(s) if s.formats.iter().any(|f| &f.language == lang) => {}
                _ => missing.push(sound.as_str()),
            }
        }
        lines.push(if missing.is_empty() {
            Line::ok(format!(
                "{} sounds for spoken amounts and dates present for language {lang}",
                spoken.len()
            ))
        } else {
            Line::fail(
                format!(
                    "{} of {} sounds for spoken amounts and dates missing in {lang}: {}",
                    missing.len(),
                    spoken.len(),
                    missing.join(", ")
                ),
                format!("install Asterisk's Spanish core sounds for {lang} (e.g. asterisk-core-sounds-es-gsm into /usr/share/asterisk/sounds/{lang}/)"),
            )
        });
    }
    (lines, Some(ari))
}
