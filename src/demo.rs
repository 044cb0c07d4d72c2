//! `overdue-dialer demo`: the embedded default. A demo billing database on
//! a local MariaDB, the in-repo Asterisk simulator, one pass, and a table
//! of what happened — the product end to end on one machine.

use anyhow::Context;
use mysql_async::prelude::Queryable;

use crate::billing::{demo_data, Billing};
use crate::campaign::pass::{PassOptions, PassSummary};
use crate::campaign::preview;
use crate::clock::local_now;
use crate::config::{Config, TrunkConfig};
use crate::dialer::Dialer;
use crate::realtime_sim::{FakeConfig, FakeRealtime};
use crate::rules::script::Action;
use crate::rules::selection::Policy;
use crate::sim::{SimConfig, Simulator};

/// Creates the demo database, then either shows the preview or runs one
/// pass against the simulator and prints what happened (through `emit`).
pub async fn run(
    mysql_url: &str,
    clients: usize,
    preview_only: bool,
    emit: fn(&str),
) -> anyhow::Result<()> {
    // No server at a local address (or root refused): a private MariaDB,
    // stopped and removed when `mariadb` drops at the end of the demo.
    let mariadb = crate::billing::private_server::reachable_or_private(mysql_url).await?;
    if let Some(why) = &mariadb.why {
        emit(&format!(
            "{why}: using a private MariaDB, removed at exit.\n\n"
        ));
    }
    let mysql_url = mariadb.url.as_str();
    let opts = mysql_async::Opts::from_url(mysql_url)
        .context("--mysql-url: expected mysql://user:password@host:port/overdue_demo")?;
    let db = opts.db_name().unwrap_or("overdue_demo").to_owned();
    // The demo drops and recreates its database: never let it near a real one.
    if !db.starts_with("overdue_demo") || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        anyhow::bail!(
            "--mysql-url: the demo database name must start with overdue_demo (found {db:?})"
        );
    }
    let server = mysql_async::OptsBuilder::from_opts(opts.clone()).db_name(None::<String>);
    let mut conn = mysql_async::Conn::new(server).await.with_context(|| {
        format!(
            "cannot connect to MariaDB at {}:{} (is it running, and does it let this user in?)",
            opts.ip_or_hostname(),
            opts.tcp_port()
        )
    })?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        .await?;
    conn.query_drop(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
        .await?;
    conn.query_drop(format!("USE `{db}`")).await?;
    let mut config = demo_config(&opts, &db);
    let now = local_now(config.timezone);
    let data = demo_data::generate(&demo_data::Spec {
        clients,
        seed: 42,
        anchor: now,
        clean: false,
        invoices_max: 4,
    });
    demo_data::load(&mut conn, &data).await?;
    conn.disconnect().await?;
    emit(&format!(
        "Demo database `{db}` created with {clients} generated clients.\n\n"
    ));

    if preview_only {
        let mut at = now;
        if config.window.check_local(now).is_err() {
            if let Some(open) = config.window.next_open(now) {
                emit("The calling window is closed now; showing the decisions at its next opening.\n\n");
                at = open;
            }
        }
        let billing = Billing::new(config.mysql.opts());
        let facts = billing.flagged_clients().await?;
        billing.close().await?;
        let lines = preview::lines(&facts, at, &Policy::from_config(&config), &config.window);
        emit(&preview::render_table(
            &lines,
            &preview::header(&config, at),
        ));
        return Ok(());
    }

    // Five callees who will answer talk back: a key each, and a machine.
    let billing = Billing::new(config.mysql.opts());
    let facts = billing.flagged_clients().await;
    billing.close().await?;
    let talkers = talkers(&facts?, now, &Policy::from_config(&config));

    // The simulated PBX runs 20 times faster than life: a 30 s ring timeout
    // takes 1.5 s, the 4.4 s prompt 0.2 s.
    let mut sim_config = SimConfig {
        time_scale: 0.05,
        answer_delay: std::time::Duration::from_secs(4),
        // A transferred callee talks to the call center for a while.
        continue_hangup_after: Some(std::time::Duration::from_secs(10)),
        ..SimConfig::default()
    };
    for (name, secs) in [("overdue-menu", 15), ("overdue-opt-out", 8)] {
        sim_config.sounds.insert(
            name.into(),
            crate::sim::SoundSpec {
                languages: vec!["es_MX".into()],
                duration: std::time::Duration::from_secs(secs),
            },
        );
    }
    for (talker, (_, number)) in TALKERS.iter().zip(&talkers) {
        match talker.key {
            Some((at, key)) => {
                sim_config.dtmf.insert(
                    number.clone(),
                    vec![(std::time::Duration::from_secs_f64(at), key)],
                );
            }
            None => {
                sim_config
                    .amd
                    .insert(number.clone(), crate::sim::AmdVerdict::machine());
            }
        }
    }
    let sim = Simulator::start(sim_config, 0)
        .await
        .context("cannot start the ARI simulator")?;
    config.ari.url = sim.url();
    let _log = crate::logging::init(&crate::config::LoggingConfig {
        level: "warn".into(),
        ..Default::default()
    })?;
    emit(&format!(
        "Asterisk ARI simulator on {}; calling (window ignored for the demo)…\n\n",
        sim.url()
    ));
    let fake = FakeRealtime::start(FakeConfig {
        response_audio_ms: 1200,
        ..FakeConfig::default()
    })
    .await
    .context("cannot start the fake OpenAI Realtime server")?;
    config.voice_agent.url = fake.url();
    config.voice_agent.api_key = crate::config::Secret::new(fake.config().api_key.clone());
    let (_abort_tx, abort) = tokio::sync::watch::channel(false);
    let opts = PassOptions {
        ignore_window: true,
        drain: None,
        probe: None,
    };
    let tz = config.timezone;
    let dialer = match Dialer::connect(config, "demo".into()).await {
        Ok(d) => d,
        Err(e) => {
            sim.shutdown().await;
            return Err(e);
        }
    };
    let summary = dialer.pass(opts, abort).await;
    let inbound = match &summary {
        Ok(_) => Some(inbound_call(&dialer, &sim, &fake, &data, tz).await),
        Err(_) => None,
    };
    dialer.shutdown().await;
    let left = sim.live_channels();
    sim.shutdown().await;
    let summary = summary?;
    emit(&demo_report(&summary));
    emit(
        "\nCallees who talked back (menu: 1 person, 2 repeat, 0 voice agent, 9 opt-out; AMD on):\n",
    );
    for (talker, (client, _)) in TALKERS.iter().zip(&talkers) {
        emit(&format!("  client {client:>4}: {}\n", talker.what));
    }
    if let Some(inbound) = inbound {
        emit(&inbound?);
    }
    if left > 0 {
        emit(&format!(
            "warning: {left} channels were still up on the simulator\n"
        ));
    }
    let kept = if mariadb.why.is_some() {
        " (on the private MariaDB, removed now: start a server at 127.0.0.1:3306 to keep them)"
    } else {
        ""
    };
    emit(&format!(
        "\nEvery outcome is in `{db}`.overdue_call_log and the afiliados counters; \
         the inbound call in overdue_inbound_log, its promise in overdue_payment_promise{kept}.\n"
    ));
    Ok(())
}

/// how, seconds, tokens in, tokens out, match detail.
type InboundRow = (
    Option<String>,
    Option<u32>,
    Option<u64>,
    Option<u64>,
    Option<String>,
);

/// One client calls the agent back: it greets, the caller speaks, the
/// agent records a promise to pay, says goodbye and hangs up.
async fn inbound_call(
    dialer: &Dialer,
    sim: &Simulator,
    fake: &FakeRealtime,
    data: &demo_data::Data,
    tz: chrono_tz::Tz,
) -> anyhow::Result<String> {
    use std::time::{Duration, Instant};
    // A caller the agent will recognise: a mobile no other client has.
    let mobiles: Vec<(i64, crate::rules::phone::Mobile)> = data
        .clients
        .iter()
        .filter_map(|c| {
            Some((
                c.id,
                crate::rules::phone::normalize(c.telefono.as_deref()?).ok()?,
            ))
        })
        .collect();
    let Some((client, mobile)) = mobiles
        .iter()
        .find(|(id, m)| {
            mobiles.iter().filter(|(_, o)| o == m).count() == 1
                && data
                    .invoices
                    .iter()
                    .any(|f| f.client_id == *id && !f.cerrado)
        })
        .cloned()
    else {
        return Ok(
            "\nInbound call: no demo client with a unique mobile and an open invoice.\n".into(),
        );
    };
    // The callee handed to the agent by the keypad may still be talking.
    let until = Instant::now() + Duration::from_secs(5);
    while dialer.voice_agent.calls_live() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conn_id = fake.connections();
    let Some(id) = sim.inbound_call(mobile.national()) else {
        anyhow::bail!("the simulator did not offer the inbound call");
    };
    let until = Instant::now() + Duration::from_secs(10);
    while sim.heard(&id).is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promised = local_now(tz).date() + chrono::Duration::days(7);
    fake.next_response_calls_tool_on(
        conn_id,
        "registrar_promesa_de_pago",
        &format!(r#"{{"fecha":"{promised}"}}"#),
    );
    fake.next_response_calls_tool_on(conn_id, "finalizar_llamada", "{}");
    // The caller talks over the greeting: barge-in, then the promise.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sim.caller_says(&id, crate::realtime_sim::g711::tone_ulaw(700, 440, 8000.0));
    let until = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let mut conn = dialer.campaign.billing.conn().await?;
        let row: Option<InboundRow> = conn
            .query_first("SELECT how, seconds, tokens_in, tokens_out, match_detail FROM overdue_inbound_log ORDER BY id DESC LIMIT 1")
            .await?;
        drop(conn);
        if let Some(r) = row.filter(|r| r.0.is_some()) {
            break r;
        }
        if Instant::now() > until {
            anyhow::bail!("the inbound demo call did not finish within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let promises = dialer.campaign.billing.promises(client).await?;
    let conn = fake.conn(conn_id).unwrap_or_default();
    let heard_ms = sim.heard(&id).len() * 20;
    Ok(format!(
        "\nInbound call from {} (client {client}, {}):\n  \
         agent audio heard by the caller: {heard_ms} ms, barge-ins truncated: {}\n  \
         promises recorded: {}\n  \
         ended: {} after {} s, tokens in/out {}/{}\n",
        mobile.masked(),
        row.4.unwrap_or_default(),
        conn.truncations.len(),
        promises
            .iter()
            .map(|(d, a)| format!(
                "{d}{}",
                a.map(|a| format!(" ({a} pesos)")).unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        row.0.unwrap_or_default(),
        row.1.unwrap_or(0),
        row.2.unwrap_or(0),
        row.3.unwrap_or(0),
    ))
}

/// A demo callee who talks back: the key pressed (seconds after the
/// answer, simulated time), or none for an answering machine.
struct Talker {
    key: Option<(f64, char)>,
    what: &'static str,
}

/// After the machine check (2.9 s for a person) the 4.4 s reminder plays,
/// then the options; these callees hang up 20 s after answering.
const TALKERS: [Talker; 5] = [
    Talker {
        key: Some((4.0, '1')),
        what: "pressed 1 during the reminder: sent to the call center",
    },
    Talker {
        key: Some((4.0, '2')),
        what: "pressed 2 during the reminder: heard it again",
    },
    Talker {
        key: Some((9.0, '9')),
        what: "pressed 9 during the options: opted out, never called again",
    },
    Talker {
        key: Some((4.0, '0')),
        what: "pressed 0: handed to the voice agent, who knew the account",
    },
    Talker {
        key: None,
        what: "an answering machine: hung up, tried again in 4 hours",
    },
];

/// The first callees this pass will reach who answer and stay on for 20 s
/// (numbers ending 0–3 in the simulator), as (client, national number).
fn talkers(
    facts: &[crate::rules::selection::ClientFacts],
    now: chrono::NaiveDateTime,
    policy: &Policy,
) -> Vec<(i64, String)> {
    let mut seen = std::collections::HashSet::new();
    facts
        .iter()
        .filter(|c| crate::rules::selection::check_client(c, now, policy).is_ok())
        .filter_map(|c| {
            let m = crate::rules::phone::normalize(c.telefono.as_deref()?).ok()?;
            Some((c.id, m.national().to_owned()))
        })
        .filter(|(_, n)| matches!(n.as_bytes().last(), Some(b'0'..=b'3')))
        // Two clients on one number would share one script.
        .filter(|(_, n)| seen.insert(n.clone()))
        .take(TALKERS.len())
        .collect()
}

/// The demo's configuration: the simulator's defaults, the demo database,
/// two trunks, the keypad menu and the machine check.
fn demo_config(opts: &mysql_async::Opts, db: &str) -> Config {
    let mut config = Config::for_simulator("http://127.0.0.1:8088", opts, db);
    config.campaign.max_concurrent_calls = 20;
    config.campaign.calls_per_second = 50.0;
    config.menu.actions = [
        ("1", Action::Transfer),
        ("2", Action::Repeat),
        ("0", Action::Agent),
        ("9", Action::OptOut),
    ]
    .into_iter()
    .map(|(k, a)| (k.to_owned(), a))
    .collect();
    config.menu.wait_secs = 2;
    config.transfer.context = "call-center".into();
    config.transfer.extension = "600".into();
    config.amd.enabled = true;
    config.trunks = vec![
        TrunkConfig {
            name: "voip_issabel".into(),
            endpoint: "PJSIP/{number}@voip_issabel".into(),
            max_channels: 12,
            priority: 1,
            caller_id: None,
            health_endpoint: None,
        },
        TrunkConfig {
            name: "from-voip".into(),
            endpoint: "Local/{number}@from-voip".into(),
            max_channels: 12,
            priority: 2,
            caller_id: None,
            health_endpoint: None,
        },
    ];
    config
}

fn demo_report(s: &PassSummary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<12}  {:<13}  {:<15}  {:>5}  {:>6}  {:>6}  DETAIL",
        "CLIENT", "PHONE", "TRUNK", "OUTCOME", "CAUSE", "RING_S", "TALK_S"
    );
    let mut calls = s.calls.clone();
    calls.sort_by_key(|c| c.client_id);
    for c in &calls {
        let _ = writeln!(
            out,
            "{:>6}  {:<12}  {:<13}  {:<15}  {:>5}  {:>6}  {:>6}  {}",
            c.client_id,
            c.phone,
            c.trunk.as_deref().unwrap_or("-"),
            c.outcome.as_str(),
            c.cause.map_or_else(|| "-".to_owned(), |x| x.to_string()),
            c.ring_seconds,
            c.talk_seconds,
            c.detail.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(
        out,
        "\nPass: {} selected in {:.1} s",
        s.selected,
        s.wall.as_secs_f64()
    );
    for (o, n) in &s.outcomes {
        let _ = writeln!(out, "  {:<16}{n:>5}", o.as_str());
    }
    for (r, n) in &s.skipped {
        let _ = writeln!(out, "  skipped: {r:<24}{n:>5}");
    }
    for (t, st) in &s.trunks {
        let _ = writeln!(
            out,
            "  trunk {t:<14} attempts {:>4}  answered {:>4}  failed {:>4}",
            st.attempts, st.answered, st.failed
        );
    }
    out
}
