//! A private MariaDB for `demo` and the tests, so that both work on a
//! machine that has the `mariadb-server` package but no server running (or
//! one whose `root` only logs in through the unix socket, as Debian
//! installs it) — without touching the system's server or its users.
//!
//! [`reachable_or_private`] tries the configured address first; when it is
//! on this machine and nothing answers there, or `root` is refused, it
//! starts a server of its own: a fresh data directory under the temporary
//! directory (`mariadb-install-db`, `root` with no password), `mariadbd` on
//! a free loopback port. Dropping the [`PrivateServer`] stops the server and
//! removes the directory.
//!
//! The test binaries keep theirs in a `static`, which Rust never drops, and
//! anyone may press Ctrl-C or kill the process. So the server is not our
//! child but a small shell watchdog's, which holds the reading end of a pipe
//! whose writing end only we hold: when our process goes away, however it
//! goes, the kernel closes that end, and the watchdog stops the server and
//! removes the directory. The watchdog runs in its own process group, so a
//! Ctrl-C in the terminal reaches us, not it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The one line that makes a Debian machine able to start a private server.
pub const INSTALL_HINT: &str = "sudo apt-get install -y mariadb-server";

/// How long a fresh server may take to accept `root`: `mariadb-install-db`
/// takes 4–10 s on a busy 2-core machine, the server about one more.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a dropped guard waits for the watchdog to stop the server.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum PrivateServerError {
    #[error(
        "{why}, and no MariaDB server is installed here to start a private one (neither \
         mariadbd nor mariadb-install-db was found). Install it with:\n  {INSTALL_HINT}"
    )]
    NotInstalled { why: String },
    #[error("not a mysql:// URL ({url}): {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot prepare the private MariaDB: {0}")]
    Io(#[from] std::io::Error),
    #[error("the private MariaDB did not start: {0}")]
    Start(String),
}

/// The server to use: the configured one, or a private one started because
/// the configured one could not be used (`why`).
pub struct Server {
    /// The configured URL, or the private server's with the same database.
    pub url: String,
    /// Keep it alive while the server is needed; dropping it stops it.
    pub private: Option<PrivateServer>,
    /// Why the configured server was not used, for a line of output.
    pub why: Option<String>,
}

/// Uses `url` when a server there lets its user in; starts a private server
/// when the address is on this machine and nothing answers there, or the
/// login is refused (Debian's `root` only logs in through the socket).
/// Any other failure (a remote host, a missing database, a timeout) is left
/// to the caller's own connection, with the caller's own message.
pub async fn reachable_or_private(url: &str) -> Result<Server, PrivateServerError> {
    let bad = |reason: String| PrivateServerError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let opts = mysql_async::Opts::from_url(url).map_err(|e| bad(e.to_string()))?;
    let host = opts.ip_or_hostname().to_owned();
    let port = opts.tcp_port();
    let configured = Server {
        url: url.to_owned(),
        private: None,
        why: None,
    };
    if !is_local(&host) {
        return Ok(configured);
    }
    // The server, not the database: the caller may be about to create it.
    let server_opts = mysql_async::OptsBuilder::from_opts(opts.clone()).db_name(None::<String>);
    let why =
        match tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(server_opts))
            .await
        {
            Ok(Ok(conn)) => {
                // Only a probe: a failed goodbye changes nothing.
                let _ = conn.disconnect().await;
                return Ok(configured);
            }
            Ok(Err(mysql_async::Error::Io(e))) => {
                format!("no MariaDB answers at {host}:{port} ({e})")
            }
            Ok(Err(mysql_async::Error::Server(e))) if matches!(e.code, 1045 | 1698) => format!(
                "the MariaDB at {host}:{port} refuses {}'s login ({})",
                opts.user().unwrap_or("root"),
                e.message
            ),
            _ => return Ok(configured),
        };
    let private = PrivateServer::start(&why).await?;
    let url = match opts.db_name() {
        Some(db) => format!("{}/{db}", private.url()),
        None => private.url().to_owned(),
    };
    Ok(Server {
        url,
        private: Some(private),
        why: Some(why),
    })
}

fn is_local(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A MariaDB of our own on `127.0.0.1:port`, `root` with no password.
/// Dropping it stops the server and removes its data directory.
pub struct PrivateServer {
    url: String,
    port: u16,
    pid: u32,
    dir: PathBuf,
    watchdog: Child,
    /// Our end of the watchdog's stdin: closing it is the signal to stop.
    hold: Option<ChildStdin>,
}

impl PrivateServer {
    /// Starts one; `why` (why one is needed) is only for the message when
    /// no server is installed.
    pub async fn start(why: &str) -> Result<PrivateServer, PrivateServerError> {
        let binaries =
            Binaries::locate(&search_dirs()).ok_or_else(|| PrivateServerError::NotInstalled {
                why: why.to_owned(),
            })?;
        // The free port is only free until someone else takes it: try again
        // on the rare clash.
        let mut last = None;
        for _ in 0..3 {
            match PrivateServer::start_once(&binaries).await {
                Ok(server) => return Ok(server),
                Err(PrivateServerError::Start(msg)) if msg.contains("Address already in use") => {
                    last = Some(PrivateServerError::Start(msg));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| PrivateServerError::Start("no free port".into())))
    }

    async fn start_once(binaries: &Binaries) -> Result<PrivateServer, PrivateServerError> {
        let binaries = binaries.clone();
        // Spawning and the first line (after mariadb-install-db) block.
        let mut server = tokio::task::spawn_blocking(move || PrivateServer::spawn(&binaries))
            .await
            .map_err(|e| PrivateServerError::Start(format!("starting task failed: {e}")))??;
        let opts = mysql_async::Opts::from_url(&server.url)
            .map_err(|e| PrivateServerError::Start(format!("bad own URL: {e}")))?;
        let began = Instant::now();
        loop {
            if let Ok(Ok(conn)) =
                tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(opts.clone()))
                    .await
            {
                let _ = conn.disconnect().await;
                return Ok(server);
            }
            if !server.is_running() {
                return Err(PrivateServerError::Start(format!(
                    "mariadbd exited; its log says:\n{}",
                    server.log_tail()
                )));
            }
            if began.elapsed() > READY_TIMEOUT {
                let tail = server.log_tail();
                server.stop();
                return Err(PrivateServerError::Start(format!(
                    "mariadbd did not accept root within {} s; its log says:\n{tail}",
                    READY_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes the data directory, starts the watchdog (which installs the
    /// data directory and starts the server) and reads the server's pid.
    fn spawn(binaries: &Binaries) -> Result<PrivateServer, PrivateServerError> {
        let dir = unique_dir()?;
        let port = free_port()?;
        // mariadbd refuses to run as root unless told to (a private,
        // throwaway instance: nothing to protect by switching users).
        let user = if is_root() { "root" } else { "" };
        let mut watchdog = Command::new("/bin/sh");
        watchdog
            .arg("-c")
            .arg(WATCHDOG)
            .arg("overdue-private-mariadb")
            .arg(&dir)
            .arg(&binaries.installer)
            .arg(&binaries.server)
            .arg(port.to_string())
            .arg(user)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // Its own process group: Ctrl-C in the terminal is for us; the
        // watchdog stops the server when we are gone.
        std::os::unix::process::CommandExt::process_group(&mut watchdog, 0);
        let mut child = match watchdog.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(PrivateServerError::Start(format!(
                    "cannot run /bin/sh: {e}"
                )));
            }
        };
        let hold = child.stdin.take();
        let mut line = String::new();
        let read = match child.stdout.take() {
            Some(out) => BufReader::new(out).read_line(&mut line),
            None => Ok(0),
        };
        let mut server = PrivateServer {
            url: format!("mysql://root@127.0.0.1:{port}"),
            port,
            pid: 0,
            dir,
            watchdog: child,
            hold,
        };
        match (read, line.trim().parse::<u32>()) {
            (Ok(_), Ok(pid)) => {
                server.pid = pid;
                Ok(server)
            }
            (read, _) => {
                // mariadb-install-db says why first, then a page of advice.
                let log = std::fs::read_to_string(server.dir.join("install.log"))
                    .map(|l| head(&l, 8))
                    .unwrap_or_default();
                server.stop();
                Err(PrivateServerError::Start(format!(
                    "{} failed ({}):\n{log}",
                    binaries.installer.display(),
                    match read {
                        Err(e) => e.to_string(),
                        Ok(_) => format!("the watchdog said {:?}", line.trim()),
                    }
                )))
            }
        }
    }

    /// `mysql://root@127.0.0.1:PORT`, no database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process (its watchdog's child).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The temporary directory holding the data, socket and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn is_running(&self) -> bool {
        // The watchdog reaps the server as soon as it exits.
        self.pid != 0 && Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log"))
            .map(|l| tail(&l, 15))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Closes our end of the pipe and waits for the watchdog to stop the
    /// server and remove the directory; kills it if it takes too long.
    fn stop(&mut self) {
        drop(self.hold.take());
        let began = Instant::now();
        loop {
            match self.watchdog.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if began.elapsed() > STOP_TIMEOUT => {
                    let _ = self.watchdog.kill();
                    let _ = self.watchdog.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Normally gone already; this covers a watchdog that was killed.
        if self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The watchdog: `$1` the directory, `$2` mariadb-install-db, `$3` mariadbd,
/// `$4` the port, `$5` the user to run as when root (or empty). Prints the
/// server's pid (or `install-failed`), then stops the server when its stdin
/// closes, and removes the directory once both the server has exited and its
/// stdin is closed (so that the log can be read when the server fails).
/// Each server has its own `tmpdir`: bootstraps sharing `/tmp` collide on
/// their temporary tables ("Unknown table 'mysql.tmp_user_sys'", about one
/// in six when six install at once — it failed a CI run).
/// Flags past the essentials make a throwaway server quicker: a small redo
/// log, no doublewrite, no flush per commit, no DNS.
const WATCHDOG: &str = r#"
set -u
dir=$1 installer=$2 server=$3 port=$4 user=$5
exec 3<&0 </dev/null
mkdir -p "$dir/tmp"
if ! "$installer" --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" \
    --auth-root-authentication-method=normal \
    --skip-test-db ${user:+"--user=$user"} --skip-name-resolve --innodb-log-file-size=8M \
    >"$dir/install.log" 2>&1 3<&-; then
  echo install-failed
  read -r _ <&3
  rm -rf "$dir"
  exit 1
fi
"$server" --no-defaults --datadir="$dir/data" --tmpdir="$dir/tmp" --socket="$dir/mariadbd.sock" \
  --port="$port" \
  --bind-address=127.0.0.1 --pid-file="$dir/mariadbd.pid" ${user:+"--user=$user"} \
  --skip-name-resolve --innodb-log-file-size=8M --innodb-doublewrite=0 \
  --innodb-flush-log-at-trx-commit=2 --max-connections=500 >"$dir/server.log" 2>&1 3<&- &
pid=$!
echo "$pid"
exec >/dev/null
(
  read -r _ <&3
  kill -TERM "$pid" 2>/dev/null
  n=0
  while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  kill -KILL "$pid" 2>/dev/null
) &
watch=$!
wait "$pid"
wait "$watch"
rm -rf "$dir"
"#;

/// Where the server's programs are.
#[derive(Clone, Debug)]
struct Binaries {
    installer: PathBuf,
    server: PathBuf,
}

impl Binaries {
    fn locate(dirs: &[PathBuf]) -> Option<Binaries> {
        let find = |names: &[&str]| {
            dirs.iter()
                .flat_map(|d| names.iter().map(move |n| d.join(n)))
                .find(|p| p.is_file())
        };
        Some(Binaries {
            installer: find(&["mariadb-install-db", "mysql_install_db"])?,
            server: find(&["mariadbd", "mysqld"])?,
        })
    }
}

/// `PATH`, then where Debian puts the server (`/usr/sbin` is not in a
/// normal user's `PATH`).
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A new directory only we use, under the temporary directory.
fn unique_dir() -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = base.join(format!(
            "overdue-mariadb-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn head(text: &str, lines: usize) -> String {
    text.lines().take(lines).collect::<Vec<_>>().join("\n")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_package_the_error_gives_the_install_line() {
        assert!(Binaries::locate(&[PathBuf::from("/nonexistent")]).is_none());
        let msg = PrivateServerError::NotInstalled {
            why: "no MariaDB answers at 127.0.0.1:3306".into(),
        }
        .to_string();
        assert!(
            msg.contains("sudo apt-get install -y mariadb-server"),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.1:3306"), "{msg}");
    }

    #[test]
    fn only_this_machine_gets_a_private_server() {
        for local in ["localhost", "127.0.0.1", "127.0.0.2", "::1", "[::1]"] {
            assert!(is_local(local), "{local}");
        }
        for remote in ["db.example.com", "192.0.2.1", "2001:db8::1"] {
            assert!(!is_local(remote), "{remote}");
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn head_keeps_the_first_lines() {
        assert_eq!(head("a\nb\nc\n", 2), "a\nb");
        assert_eq!(head("a", 5), "a");
    }
}
