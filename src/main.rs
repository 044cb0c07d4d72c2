//! The `overdue-dialer` command line (README "Commands").

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDateTime;
use clap::{Parser, Subcommand};

use overdue_dialer::billing::{schema, Billing};
use overdue_dialer::campaign::pass::PassOptions;
use overdue_dialer::campaign::preview;
use overdue_dialer::clock::local_now;
use overdue_dialer::config::Config;
use overdue_dialer::dialer::{host_name, one_pass};
use overdue_dialer::rules::selection::Policy;

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
    /// Outcome counts per day and trunk, delivered reminders, inbound
    /// calls, promises to pay and opt-outs, for a range of days.
    Report {
        /// How many days back, today included (when --from is not given).
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// First day (YYYY-MM-DD, local time).
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last day, included (YYYY-MM-DD; default today).
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Csv,
    Json,
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
    overdue_dialer::daemon::one_malloc_arena();
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
                emit(&preview::render_table(
                    &lines,
                    &preview::header(&config, now),
                ));
            }
            Ok(())
        }
        Command::Run => {
            let config = Config::load(cli.config.as_deref())?;
            let _log = overdue_dialer::logging::init(&config.logging)?;
            overdue_dialer::daemon::run(config).await
        }
        Command::Report {
            days,
            from,
            to,
            format,
        } => {
            use overdue_dialer::billing::report;
            let config = Config::load(cli.config.as_deref())?;
            let billing = Billing::new(config.mysql.opts());
            let to = to.unwrap_or_else(|| local_now(config.timezone).date());
            let from =
                from.unwrap_or_else(|| to - chrono::Duration::days(i64::from(days.max(1)) - 1));
            if from > to {
                anyhow::bail!("--from {from} is after --to {to}");
            }
            let r = billing.report(from, to).await.with_context(|| {
                format!(
                    "cannot read the call log from MySQL at {}:{}",
                    config.mysql.host, config.mysql.port
                )
            })?;
            billing.close().await?;
            match format {
                ReportFormat::Table => emit(&report::render_table(&r)),
                ReportFormat::Csv => emit(&report::render_csv(&r)?),
                ReportFormat::Json => emit(&format!("{}\n", report::render_json(&r))),
            }
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
        } => overdue_dialer::demo::run(&mysql_url, clients, preview_only, emit).await,
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
                probe: None,
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
