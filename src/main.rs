//! The `overdue-dialer` command line (SPEC §12).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDateTime;
use clap::{Parser, Subcommand};

use overdue_dialer::billing::{demo_data, schema, Billing};
use overdue_dialer::campaign::pass::{PassOptions, PassSummary};
use overdue_dialer::campaign::preview;
use overdue_dialer::clock::local_now;
use overdue_dialer::config::Config;
use overdue_dialer::dialer::{host_name, one_pass};
use overdue_dialer::rules::selection::Policy;
use overdue_dialer::sim::{SimConfig, Simulator};

#[derive(Parser)]
#[command(
    version,
    about = "Phones clients with overdue invoices through Asterisk ARI"
)]
struct Cli {
    /// Configuration file [default: /etc/overdue-dialer/config.toml when present]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Who would be called now, and why every other flagged client would not. Dials nothing.
    Preview {
        /// Judge at this local time instead of now, e.g. "2026-03-14 10:00".
        #[arg(long, value_parser = parse_local)]
        at: Option<NaiveDateTime>,
        /// One JSON object per client and line, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The daemon: passes on schedule inside the calling window (for systemd).
    Run,
    /// One pass now, as the seed script did from cron: select, call, record.
    Once {
        /// Call even outside the legal calling window (for tests on a lab PBX).
        #[arg(long)]
        ignore_window: bool,
    },
    /// Verify configuration, MySQL, schema, indexes, ARI, apps, sounds, trunks.
    Check,
    /// Outcome counts per day and trunk from the call log.
    Report {
        /// How many days back, today included.
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// The daemon's tables and columns.
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// The embedded default: a demo billing database on a local MariaDB,
    /// the in-repo Asterisk simulator, one pass, and what happened.
    Demo {
        /// Where to create the demo database; its name must start with overdue_demo.
        #[arg(long, default_value = "mysql://root@127.0.0.1:3306/overdue_demo")]
        mysql_url: String,
        /// How many generated clients.
        #[arg(long, default_value_t = 120)]
        clients: usize,
        /// Only create the data and show who would be called.
        #[arg(long)]
        preview_only: bool,
    },
}

#[derive(Subcommand)]
enum SchemaAction {
    /// Print every statement `apply` may run (needs no database).
    Print,
    /// Add what is missing to the configured database; safe to run again.
    Apply,
}

fn parse_local(s: &str) -> Result<NaiveDateTime, String> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .map_err(|_| format!("expected a local time like \"2026-03-14 10:00\", found {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait on a stuck blocking write (a systemd notification nobody reads).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schema {
            action: SchemaAction::Print,
        } => {
            emit(&schema::reference_ddl());
            Ok(())
        }
        Command::Schema {
            action: SchemaAction::Apply,
        } => {
            let config = Config::load(cli.config.as_deref())?;
            let _log = overdue_dialer::logging::init(&config.logging)?;
            let billing = Billing::new(config.mysql.opts());
            let mut conn = billing.conn().await.with_context(|| {
                format!(
                    "cannot connect to MySQL at {}:{}",
                    config.mysql.host, config.mysql.port
                )
            })?;
            let done = schema::apply(&mut conn).await?;
            if done.is_empty() {
                println!(
                    "schema of `{}` is up to date; nothing to do",
                    config.mysql.database
                );
            }
            for stmt in done {
                println!("{stmt};");
            }
            drop(conn);
            billing.close().await?;
            Ok(())
        }
        Command::Preview { at, json } => {
            let config = Config::load(cli.config.as_deref())?;
            let _log = overdue_dialer::logging::init(&config.logging)?;
            let now = at.unwrap_or_else(|| local_now(config.timezone));
            let billing = Billing::new(config.mysql.opts());
            let clients = billing.flagged_clients().await.with_context(|| {
                format!(
                    "cannot read clients from MySQL at {}:{}",
                    config.mysql.host, config.mysql.port
                )
            })?;
            billing.close().await?;
            let lines =
                preview::lines(&clients, now, &Policy::from_config(&config), &config.window);
            if json {
                emit(&preview::render_json(&lines));
            } else {
                emit(&preview::render_table(&lines, &header(&config, now)));
            }
            Ok(())
        }
        Command::Run => {
            let config = Config::load(cli.config.as_deref())?;
            let _log = overdue_dialer::logging::init(&config.logging)?;
            overdue_dialer::daemon::run(config).await
        }
        Command::Report { days } => {
            let config = Config::load(cli.config.as_deref())?;
            let billing = Billing::new(config.mysql.opts());
            let today = local_now(config.timezone).date();
            let since = (today - chrono::Duration::days(i64::from(days.max(1)) - 1))
                .and_time(chrono::NaiveTime::MIN);
            let counts = billing.outcome_counts(since).await.with_context(|| {
                format!(
                    "cannot read the call log from MySQL at {}:{}",
                    config.mysql.host, config.mysql.port
                )
            })?;
            billing.close().await?;
            emit(&overdue_dialer::billing::report::render(&counts));
            Ok(())
        }
        Command::Check => {
            let config = Config::load(cli.config.as_deref())?;
            let lines = overdue_dialer::check::run(&config).await;
            for line in &lines {
                emit(&format!("{}\n", line.render()));
            }
            let failed = lines.iter().filter(|l| !l.ok).count();
            if failed > 0 {
                anyhow::bail!("{failed} check(s) failed");
            }
            Ok(())
        }
        Command::Demo {
            mysql_url,
            clients,
            preview_only,
        } => demo(&mysql_url, clients, preview_only).await,
        Command::Once { ignore_window } => {
            let config = Config::load(cli.config.as_deref())?;
            let _log = overdue_dialer::logging::init(&config.logging)?;
            let (abort_tx, abort) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    let _ = abort_tx.send(true);
                }
            });
            let opts = PassOptions {
                ignore_window,
                drain: None,
            };
            let summary = one_pass(config, host_name(), opts, abort).await?;
            if let Some(closed) = summary.window_closed {
                emit(&format!("Calling window closed ({closed}): nobody was called. --ignore-window overrides it.\n"));
            }
            Ok(())
        }
    }
}

/// Writes to stdout; a closed pipe (`preview | head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn header(config: &Config, now: NaiveDateTime) -> String {
    let window = match config.window.check_local(now) {
        Ok(()) => "calling window open".to_owned(),
        Err(why) => format!("calling window closed ({why})"),
    };
    format!(
        "Preview at {} {} ({}) — {window}",
        now.format("%Y-%m-%d %H:%M"),
        config.timezone,
        now.format("%A")
    )
}

async fn demo(mysql_url: &str, clients: usize, preview_only: bool) -> anyhow::Result<()> {
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
            "cannot connect to MariaDB at {}:{} — start one with `sudo .ci/setup-mariadb`",
            opts.ip_or_hostname(),
            opts.tcp_port()
        )
    })?;
    use mysql_async::prelude::Queryable;
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
        emit(&preview::render_table(&lines, &header(&config, at)));
        return Ok(());
    }

    // The simulated PBX runs 20 times faster than life: a 30 s ring timeout
    // takes 1.5 s, the 4.4 s prompt 0.2 s.
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.05,
            answer_delay: std::time::Duration::from_secs(4),
            ..SimConfig::default()
        },
        0,
    )
    .await
    .context("cannot start the ARI simulator")?;
    config.ari.url = sim.url();
    let _log = overdue_dialer::logging::init(&overdue_dialer::config::LoggingConfig {
        level: "warn".into(),
        ..Default::default()
    })?;
    emit(&format!(
        "Asterisk ARI simulator on {}; calling (window ignored for the demo)…\n\n",
        sim.url()
    ));
    let (_abort_tx, abort) = tokio::sync::watch::channel(false);
    let opts = PassOptions {
        ignore_window: true,
        drain: None,
    };
    let summary = one_pass(config, "demo".into(), opts, abort).await;
    let left = sim.live_channels();
    sim.shutdown().await;
    let summary = summary?;
    emit(&demo_report(&summary));
    if left > 0 {
        emit(&format!(
            "warning: {left} channels were still up on the simulator\n"
        ));
    }
    emit(&format!(
        "\nEvery outcome is in `{db}`.overdue_call_log and the afiliados counters.\n"
    ));
    Ok(())
}

/// The demo's configuration: defaults, the demo database, two trunks.
fn demo_config(opts: &mysql_async::Opts, db: &str) -> Config {
    use overdue_dialer::config::{MysqlConfig, Secret, TrunkConfig};
    let mut config = Config {
        mysql: MysqlConfig {
            host: opts.ip_or_hostname().to_string(),
            port: opts.tcp_port(),
            user: opts.user().unwrap_or("root").to_owned(),
            password: Secret::new(opts.pass().unwrap_or("")),
            database: db.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    };
    config.ari.username = "asterisk".into();
    config.ari.password = Secret::new("asterisk");
    config.campaign.max_concurrent_calls = 20;
    config.campaign.calls_per_second = 50.0;
    config.trunks = vec![
        TrunkConfig {
            name: "voip_issabel".into(),
            endpoint: "PJSIP/{number}@voip_issabel".into(),
            max_channels: 12,
            priority: 1,
            caller_id: None,
        },
        TrunkConfig {
            name: "from-voip".into(),
            endpoint: "Local/{number}@from-voip".into(),
            max_channels: 12,
            priority: 2,
            caller_id: None,
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
