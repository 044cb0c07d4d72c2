//! The `overdue-dialer` command line (SPEC §12).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDateTime;
use clap::{Parser, Subcommand};

use overdue_dialer::billing::{demo_data, schema, Billing};
use overdue_dialer::campaign::preview;
use overdue_dialer::campaign::selection::Policy;
use overdue_dialer::compliance::local_now;
use overdue_dialer::config::Config;

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
    /// The daemon's tables and columns.
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Create a demo billing database on a local MariaDB, fill it with
    /// generated clients, and show who would be called.
    Demo {
        /// Where to create the demo database; its name must start with overdue_demo.
        #[arg(long, default_value = "mysql://root@127.0.0.1:3306/overdue_demo")]
        mysql_url: String,
        /// How many generated clients.
        #[arg(long, default_value_t = 120)]
        clients: usize,
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
    match runtime.block_on(run(cli)) {
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
        Command::Demo { mysql_url, clients } => demo(&mysql_url, clients).await,
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

async fn demo(mysql_url: &str, clients: usize) -> anyhow::Result<()> {
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
            "cannot connect to MariaDB at {}:{} — start one with `sudo apt-get install -y mariadb-server && sudo service mariadb start`",
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
    let config = Config {
        mysql: overdue_dialer::config::MysqlConfig {
            database: db.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut now = local_now(config.timezone);
    let data = demo_data::generate(&demo_data::Spec {
        clients,
        seed: 42,
        anchor: now,
        clean: false,
    });
    demo_data::load(&mut conn, &data).await?;
    conn.disconnect().await?;
    emit(&format!(
        "Demo database `{db}` created with {clients} generated clients.\n\n"
    ));
    if config.window.check_local(now).is_err() {
        if let Some(open) = config.window.next_open(now) {
            emit(
                "The calling window is closed now; showing the decisions at its next opening.\n\n",
            );
            now = open;
        }
    }
    let billing = Billing::new(opts);
    let facts = billing.flagged_clients().await?;
    billing.close().await?;
    let lines = preview::lines(&facts, now, &Policy::from_config(&config), &config.window);
    emit(&preview::render_table(&lines, &header(&config, now)));
    emit("\nSame view for your own database: overdue-dialer preview --config /etc/overdue-dialer/config.toml\n");
    Ok(())
}
