//! `overdue-dialer run` and the files for the PBX host (README "Install on the PBX host", "Layout").

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use common::TestDb;
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::clock::{Clock, ManualClock};
use overdue_dialer::config::Config;
use overdue_dialer::sim::{Callee, SimConfig, Simulator, SoundSpec};

fn at(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
}

fn clients(n: i64, prefix: &str) -> Data {
    let mut data = Data::default();
    for id in 1..=n {
        common::due(&mut data, id, &format!("{prefix}{id:03}"), "90000.00");
    }
    data
}

fn config(db: &TestDb, sim: &Simulator) -> Config {
    let mut c = common::config(db, sim);
    c.trunks = vec![common::trunk("t1", "PJSIP/{number}@t", 1, 10)];
    c.campaign.calls_per_second = 1000.0;
    c
}

fn originates(sim: &Simulator) -> usize {
    sim.originate_count()
}

async fn settle(sim: &Simulator, want_originates: usize) {
    for _ in 0..400 {
        if originates(sim) >= want_originates && sim.live_channels() == 0 {
            // Give the outcome writes a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {want_originates} originates, saw {}",
        originates(sim)
    );
}

/// Lets the daemon look at the clock a few times without anything to do.
async fn idle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_dials_only_inside_the_window_and_resumes_on_the_next_allowed_day() {
    let db = TestDb::with_data(&clients(3, "3001230")).await;
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.01,
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    for id in 1..=3 {
        sim.configure(|c| {
            c.callees.insert(format!("3001230{id:03}"), Callee::Busy);
        });
    }
    let mut cfg = config(&db, &sim);
    cfg.campaign.poll_interval_secs = 900;
    // Friday 13 November 2026, 18:30. Monday 16 November is a holiday.
    let clock = Arc::new(ManualClock::new(at("2026-11-13 18:30")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(overdue_dialer::daemon::run_until(
        cfg,
        Some(clock.clone() as Arc<dyn Clock>),
        async {
            let _ = stop_rx.await;
        },
    ));

    settle(&sim, 3).await; // first pass at start-up: three busy callees
    assert_eq!(originates(&sim), 3);
    clock.set(at("2026-11-13 18:59"));
    idle().await;
    assert_eq!(originates(&sim), 3, "busy retry (30 min) not due yet");
    clock.set(at("2026-11-13 19:00"));
    idle().await;
    clock.set(at("2026-11-13 23:30"));
    idle().await;
    assert_eq!(originates(&sim), 3, "nothing at or after 19:00");
    clock.set(at("2026-11-14 08:00"));
    settle(&sim, 6).await; // Saturday opening: retries
    clock.set(at("2026-11-14 15:00"));
    idle().await;
    clock.set(at("2026-11-15 10:00"));
    idle().await;
    clock.set(at("2026-11-16 10:00"));
    idle().await;
    assert_eq!(
        originates(&sim),
        6,
        "nothing on Saturday after 15:00, Sunday or the Monday holiday"
    );
    clock.set(at("2026-11-17 07:00"));
    settle(&sim, 9).await; // Tuesday 07:00: third and last attempts

    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
    let mut conn = db.conn().await;
    use mysql_async::prelude::Queryable;
    let claimed: Vec<NaiveDateTime> = conn
        .query("SELECT claimed_at FROM overdue_call_log ORDER BY claimed_at")
        .await
        .unwrap();
    let days: Vec<String> = claimed
        .iter()
        .map(|t| t.format("%a %H:%M").to_string())
        .collect();
    assert_eq!(
        days,
        [
            "Fri 18:30",
            "Fri 18:30",
            "Fri 18:30",
            "Sat 08:00",
            "Sat 08:00",
            "Sat 08:00",
            "Tue 07:00",
            "Tue 07:00",
            "Tue 07:00"
        ]
    );
}

fn spawn_run(db: &TestDb, sim: &Simulator, grace_secs: u64) -> std::process::Child {
    common::daemon_command(db, sim)
        .env("OVERDUE_WINDOW", common::OPEN_ALL_WEEK)
        .env(
            "OVERDUE_CAMPAIGN__SHUTDOWN_GRACE_SECS",
            grace_secs.to_string(),
        )
        .env(
            "OVERDUE_TRUNKS",
            r#"[{name="t1",endpoint="PJSIP/{number}@t",max_channels=10,priority=1}]"#,
        )
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn outcomes(db: &TestDb) -> Vec<Option<String>> {
    use mysql_async::prelude::Queryable;
    db.conn()
        .await
        .query("SELECT outcome FROM overdue_call_log ORDER BY client_id")
        .await
        .unwrap()
}

async fn wait_calls_up(sim: &Simulator, n: usize) {
    for _ in 0..500 {
        if sim.live_calls() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("calls never came up");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_calls_finish_and_exits_zero() {
    let db = TestDb::with_data(&clients(5, "3001238")).await;
    // Answered calls with a 2 s prompt.
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    sim.configure(|c| {
        c.sounds.insert(
            "morosos_natalia".into(),
            SoundSpec {
                languages: vec!["es_MX".into()],
                duration: Duration::from_secs(2),
            },
        );
        for id in 1..=5 {
            c.callees.insert(
                format!("3001238{id:03}"),
                Callee::Answers {
                    hangs_up_after: Duration::from_secs(300),
                },
            );
        }
    });
    let mut child = spawn_run(&db, &sim, 30);
    wait_calls_up(&sim, 5).await;
    common::sigterm(&child);
    let began = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(began.elapsed() < Duration::from_secs(30));
    assert_eq!(
        outcomes(&db).await,
        vec![Some("completed".to_owned()); 5],
        "calls in flight finished and were recorded"
    );
    assert_eq!(sim.live_channels(), 0);
    assert_eq!(sim.originate_count(), 5, "nothing new after SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_past_the_grace_period_hangs_up_and_records() {
    let db = TestDb::with_data(&clients(3, "3001238")).await;
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    sim.configure(|c| {
        c.sounds.insert(
            "morosos_natalia".into(),
            SoundSpec {
                languages: vec!["es_MX".into()],
                duration: Duration::from_secs(600),
            },
        );
    });
    let mut child = spawn_run(&db, &sim, 1);
    wait_calls_up(&sim, 3).await;
    common::sigterm(&child);
    let began = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "exit within the grace period (plus hang-up)"
    );
    assert_eq!(outcomes(&db).await, vec![Some("aborted".to_owned()); 3]);
    assert_eq!(sim.live_channels(), 0);
}

#[test]
fn the_unit_file_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/overdue-dialer.service"
    ))
    .unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "EnvironmentFile=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(key), "{key} missing");
    }
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze not found: install systemd (`sudo apt-get install -y systemd`; .ci/run does)");
    };
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("od-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("overdue-dialer.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/bin/overdue-dialer",
            env!("CARGO_BIN_EXE_overdue-dialer"),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("exposure level for overdue-dialer.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}");
    let _ = std::fs::remove_dir_all(dir);
}

async fn recv_notification(socket: &tokio::net::UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_watchdog_and_stopping() {
    let db = TestDb::with_data(&clients(1, "3001238")).await;
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    let opts = &db.opts;
    let path = std::env::temp_dir().join(format!("od-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's.
    let child = Command::new("sh")
        .args([
            "-c",
            concat!(
                "WATCHDOG_PID=$$ exec ",
                env!("CARGO_BIN_EXE_overdue-dialer"),
                " run"
            ),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MYSQL_SERVER", opts.ip_or_hostname())
        .env("OVERDUE_MYSQL__PORT", opts.tcp_port().to_string())
        .env("MYSQL_USER", opts.user().unwrap_or("root"))
        .env("MYSQL_PASSWORD", opts.pass().unwrap_or(""))
        .env("MYSQL_DATABASE", &db.name)
        .env("OVERDUE_ARI__URL", sim.url())
        .env("ASTERISK_PASSWORD", "asterisk")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let mut heard: Vec<String> = Vec::new();
    while !(heard.iter().any(|m| m.contains("READY=1"))
        && heard.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        match recv_notification(&socket).await {
            Some(m) => heard.push(m),
            None => panic!("the daemon stopped talking to systemd; heard {heard:?}"),
        }
    }
    common::sigterm(&child.0);
    loop {
        match recv_notification(&socket).await {
            Some(m) if m.contains("STOPPING=1") => break,
            Some(_) => {}
            None => panic!("no STOPPING=1 after SIGTERM"),
        }
    }
    // Keep reading, as systemd does, until the daemon exits.
    for _ in 0..200 {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            let _ = std::fs::remove_file(&path);
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), recv_notification(&socket)).await;
    }
    panic!("the daemon did not exit after SIGTERM");
}
