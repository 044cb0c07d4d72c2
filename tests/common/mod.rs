//! Shared test support: a fresh MariaDB database per test, dropped after,
//! and the fixtures the tests share (due clients, a configuration for the
//! simulator, trunks).
//!
//! The server is the one at `OVERDUE_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306`). When nothing answers there, or `root` is
//! refused (Debian's socket-only root), the test binary starts one private
//! MariaDB of its own, shared by its tests and gone when it exits
//! (`billing::private_server`). Without the `mariadb-server` package the
//! tests fail (never skip) with the one line that installs it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::{Client, Data, Invoice};
use overdue_dialer::billing::private_server::{self, Server};
use overdue_dialer::config::{Config, TrunkConfig};
use overdue_dialer::sim::Simulator;

pub const DEFAULT_SERVER: &str = "mysql://root@127.0.0.1:3306";

/// The configured server, or this test binary's private one; decided once.
static SERVER: tokio::sync::OnceCell<Result<Server, String>> = tokio::sync::OnceCell::const_new();

/// The URL of the server every test of this binary uses (no database).
pub async fn server_url() -> String {
    let server = SERVER
        .get_or_init(|| async {
            let configured = std::env::var("OVERDUE_TEST_MYSQL_URL")
                .unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
            let server = private_server::reachable_or_private(&configured)
                .await
                .map_err(|e| format!("{e}"))?;
            if let (Some(why), Some(private)) = (&server.why, &server.private) {
                eprintln!(
                    "tests: {why}; using a private MariaDB at {} for this test binary \
                     (removed when it exits)",
                    private.url()
                );
            }
            Ok(server)
        })
        .await;
    match server {
        Ok(s) => s.url.clone(),
        Err(e) => panic!("These tests need a MariaDB server: {e}"),
    }
}

/// A database that exists for one test. Dropped (with its tables) when the
/// value goes out of scope, also when the test panics.
pub struct TestDb {
    pub name: String,
    pub opts: mysql_async::Opts,
    server: mysql_async::Opts,
    server_url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// An empty database.
    pub async fn empty() -> TestDb {
        let server_url = server_url().await;
        let server = mysql_async::Opts::from_url(&server_url)
            .expect("OVERDUE_TEST_MYSQL_URL is not a mysql:// URL");
        let name = format!(
            "odtest_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            rand::random::<u32>()
        );
        let mut conn = match mysql_async::Conn::new(server.clone()).await {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot connect to MariaDB at {server_url} ({e}).\n\
                 Point OVERDUE_TEST_MYSQL_URL at one that lets its user in, or at an address \
                 where none listens (the tests then start a private one)."
            ),
        };
        conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        let opts = mysql_async::OptsBuilder::from_opts(server.clone())
            .db_name(Some(name.clone()))
            .into();
        TestDb {
            name,
            opts,
            server,
            server_url,
        }
    }

    /// A database holding the billing tables, our schema and `data`.
    pub async fn with_data(data: &overdue_dialer::billing::demo_data::Data) -> TestDb {
        let db = TestDb::empty().await;
        let mut conn = db.conn().await;
        overdue_dialer::billing::demo_data::load(&mut conn, data)
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        db
    }

    pub async fn conn(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.opts.clone()).await.unwrap()
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server_url.trim_end_matches('/'), self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside any async context we can rely on: use a
        // short-lived runtime on its own thread.
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let mut conn = mysql_async::Conn::new(server).await.ok()?;
                conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await
                    .ok()?;
                conn.disconnect().await.ok()
            })
        })
        .join();
    }
}

/// Adds a client due every day (corte 1), flagged, with one open invoice.
pub fn due(data: &mut Data, id: i64, phone: &str, saldo: &str) {
    data.clients.push(Client {
        id,
        nombre: format!("Cliente {id}"),
        telefono: Some(phone.to_owned()),
        corte: Some(1),
        outbound_call: true,
        is_sent: false,
        attempts: 0,
        completed_at: None,
    });
    data.invoices.push(Invoice {
        client_id: id,
        saldo: saldo.to_owned(),
        cerrado: false,
    });
}

/// The defaults, on this test's database and this simulator.
pub fn config(db: &TestDb, sim: &Simulator) -> Config {
    Config::for_simulator(&sim.url(), &db.opts, &db.name)
}

pub fn trunk(name: &str, endpoint: &str, priority: u32, max_channels: u32) -> TrunkConfig {
    TrunkConfig {
        name: name.into(),
        endpoint: endpoint.into(),
        max_channels,
        priority,
        caller_id: None,
        health_endpoint: None,
    }
}

/// The `overdue-dialer` binary as an operator's shell would start it, with
/// only the seed script's variables pointing it at this test's database and
/// simulator (every other variable of the test runner is cleared).
pub fn daemon_command(db: &TestDb, sim: &Simulator) -> std::process::Command {
    let opts = &db.opts;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_overdue-dialer"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYSQL_SERVER", opts.ip_or_hostname())
        .env("OVERDUE_MYSQL__PORT", opts.tcp_port().to_string())
        .env("MYSQL_USER", opts.user().unwrap_or("root"))
        .env("MYSQL_PASSWORD", opts.pass().unwrap_or(""))
        .env("MYSQL_DATABASE", &db.name)
        .env("OVERDUE_ARI__URL", sim.url())
        .env("ASTERISK_USERNAME", "asterisk")
        .env("ASTERISK_PASSWORD", "asterisk");
    cmd
}

/// A calling window open all week, all day (for `run` in tests).
pub const OPEN_ALL_WEEK: &str = r#"{weekdays={start="00:00",end="23:59:59"},saturday={start="00:00",end="23:59:59"},sunday={start="00:00",end="23:59:59"},colombian_holidays=false}"#;

/// What systemd sends a service it stops.
pub fn sigterm(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot send SIGTERM to {}", child.id());
}
