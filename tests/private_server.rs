//! The private MariaDB that `demo` and the tests start when no server
//! answers (`billing::private_server`): it really is a server `root` can use,
//! and nothing of it is left once its guard is dropped or its process dies.
//! These tests need the `mariadb-server` package, not a running server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use overdue_dialer::billing::private_server::{reachable_or_private, PrivateServer};

/// A loopback port nobody listens on (free a moment ago).
fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Waits until `done` holds, for at most `limit`.
fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let began = Instant::now();
    while began.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[tokio::test]
async fn nothing_at_the_address_starts_a_private_server_gone_when_dropped() {
    let port = unused_port();
    let server = reachable_or_private(&format!(
        "mysql://root@127.0.0.1:{port}/overdue_private_test"
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let private = server.private.as_ref().expect("a private server");
    let why = server.why.clone().unwrap_or_default();
    assert!(
        why.contains(&format!("no MariaDB answers at 127.0.0.1:{port}")),
        "{why}"
    );
    assert_ne!(private.port(), port);
    assert_eq!(
        server.url,
        format!(
            "mysql://root@127.0.0.1:{}/overdue_private_test",
            private.port()
        )
    );
    let (pid, dir, own_port) = (private.pid(), private.dir().to_owned(), private.port());
    assert!(alive(pid) && dir.join("data").is_dir());

    // root, no password, and a database of our own, as a test makes one.
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(private.url()).unwrap())
        .await
        .unwrap();
    conn.query_drop("CREATE DATABASE overdue_private_test CHARACTER SET utf8mb4")
        .await
        .unwrap();
    conn.query_drop("CREATE TABLE overdue_private_test.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO overdue_private_test.t VALUES (1), (2)")
        .await
        .unwrap();
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM overdue_private_test.t")
        .await
        .unwrap();
    assert_eq!(n, Some(2));
    let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert!(user.is_some_and(|u| u.starts_with("root@")));
    conn.disconnect().await.unwrap();

    drop(server);
    assert!(
        !alive(pid),
        "mariadbd {pid} still runs after the guard dropped"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!answers(own_port), "something still answers on {own_port}");
}

#[tokio::test]
async fn a_server_that_lets_root_in_is_used_as_it_is() {
    // A private server stands in for "the configured one" here, so the test
    // needs no system server.
    let first = PrivateServer::start("test")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("{}/overdue_demo", first.url());
    let server = reachable_or_private(&url).await.unwrap();
    assert!(server.private.is_none() && server.why.is_none());
    assert_eq!(server.url, url);
}

#[tokio::test]
async fn a_server_that_refuses_the_login_gets_a_private_one_instead() {
    // As Debian's root, which logs in only through the unix socket.
    let refusing = PrivateServer::start("test")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("mysql://nobody@127.0.0.1:{}/overdue_demo", refusing.port());
    let server = reachable_or_private(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let private = server.private.as_ref().expect("a private server");
    assert_ne!(private.port(), refusing.port());
    let why = server.why.clone().unwrap_or_default();
    assert!(why.contains("refuses nobody's login"), "{why}");
    assert_eq!(
        server.url,
        format!("mysql://root@127.0.0.1:{}/overdue_demo", private.port())
    );
}

const CHILD_ENV: &str = "OVERDUE_PRIVATE_SERVER_CHILD";

/// Half of the next test: in a process it starts (and kills), holds a
/// private server and says where it is. Run by itself it does nothing.
#[tokio::test]
async fn child_process_holding_a_private_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let server = PrivateServer::start("test")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("PRIVATE {} {}", server.pid(), server.dir().display());
    tokio::time::sleep(Duration::from_secs(300)).await;
    drop(server);
}

/// The test binaries keep their server in a static that is never dropped,
/// and a process may be killed: the server must go with the process anyway.
#[test]
fn a_killed_process_leaves_no_server_behind() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_holding_a_private_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness's "test … ... " may start the same line.
            if let Some((_, rest)) = line.split_once("PRIVATE ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let said = rx.recv_timeout(Duration::from_secs(120));
    // SIGKILL: no destructor runs, as when a test binary exits or is killed.
    child.kill().unwrap();
    child.wait().unwrap();
    let said = said.expect("the child never reported its private server");
    let (pid, dir) = said.split_once(' ').unwrap();
    let (pid, dir): (u32, PathBuf) = (pid.parse().unwrap(), PathBuf::from(dir));
    assert!(
        eventually(Duration::from_secs(45), || !alive(pid) && !dir.exists()),
        "after its process was killed, mariadbd {pid} alive: {}, {} exists: {}",
        alive(pid),
        dir.display(),
        dir.exists()
    );
}
