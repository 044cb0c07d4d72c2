//! `overdue-dialer check`: everything the daemon needs, verified one line
//! at a time, each failure with what to do about it (README "Commands").
//!
//! It only looks: it never registers the Stasis apps (that would take them
//! from a running daemon) and never changes the database.

use std::time::Duration;

use crate::ari::{AriClient, AriError};
use crate::billing::{schema, Billing};
use crate::config::Config;
use crate::rules::trunks::check_endpoint_template;

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
    lines.extend(asterisk(config).await);
    for t in &config.trunks {
        lines.push(match check_endpoint_template(&t.endpoint) {
            Ok(()) => Line::ok(format!(
                "trunk {} endpoint {} (priority {}, {} channels)",
                t.name, t.endpoint, t.priority, t.max_channels
            )),
            Err(why) => Line::fail(format!("trunk {} endpoint", t.name), why),
        });
    }
    lines
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

async fn asterisk(config: &Config) -> Vec<Line> {
    let a = &config.ari;
    let ari = match AriClient::new(
        &a.url,
        &a.username,
        a.password.clone(),
        Duration::from_secs(a.request_timeout_secs),
    ) {
        Ok(c) => c,
        Err(e) => return vec![Line::fail("ARI client", e.to_string())],
    };
    match ari.ping().await {
        Ok(()) => {}
        Err(AriError::Status { status, .. }) if status.as_u16() == 401 => {
            return vec![Line::fail(
                format!("ARI at {} as {}", a.url, a.username),
                "credentials refused: set ari.username / ari.password (ASTERISK_USERNAME / ASTERISK_PASSWORD) as in ari.conf",
            )]
        }
        Err(e) => {
            return vec![Line::fail(
                format!("ARI at {}", a.url),
                format!("unreachable ({e}); is Asterisk up with http.conf enabled and ari.conf [general] enabled = yes?"),
            )]
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
    let sounds = config
        .campaign
        .media
        .iter()
        .chain(&config.voice_agent.fallback_media)
        .filter_map(|m| m.strip_prefix("sound:"));
    let mut seen = Vec::new();
    for sound in sounds {
        if seen.contains(&sound) {
            continue;
        }
        seen.push(sound);
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
    lines
}
