//! The ARI client against the simulator: REST error mapping, the
//! supervised event WebSocket (reconnects, backpressure, bad frames).

use std::time::Duration;

use overdue_dialer::ari::{
    AriClient, AriError, Backoff, ConnState, Event, EventConnection, Originate,
};
use overdue_dialer::config::Secret;
use overdue_dialer::sim::{SimConfig, Simulator};

async fn sim() -> Simulator {
    Simulator::start(SimConfig::default(), 0).await.unwrap()
}

fn client(sim: &Simulator, password: &str) -> AriClient {
    AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new(password),
        Duration::from_secs(2),
    )
    .unwrap()
}

fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        jitter: 0.2,
    }
}

fn local(number: &str) -> Originate {
    Originate {
        endpoint: format!("Local/{number}@sim-pstn"),
        app: "overdue-app".into(),
        timeout_secs: Some(30),
        ..Originate::default()
    }
}

fn status(e: &AriError) -> u16 {
    e.status().map_or(0, |s| s.as_u16())
}

#[tokio::test]
async fn rest_errors_carry_status_and_asterisks_message() {
    let sim = sim().await;
    let ari = client(&sim, "asterisk");

    let e = client(&sim, "wrong-password").channels().await.unwrap_err();
    assert_eq!(
        (status(&e), e.message()),
        (401, Some("Authentication required"))
    );
    assert!(!e.to_string().contains("wrong-password"), "{e}");

    let e = ari
        .play("nope", &["sound:x".into()], None, None)
        .await
        .unwrap_err();
    assert_eq!((status(&e), e.message()), (404, Some("Channel not found")));
    assert!(e.is_not_found());
    let e = ari.hangup("nope", "normal").await.unwrap_err();
    assert_eq!(status(&e), 404);

    let e = ari
        .originate(&Originate {
            app: String::new(),
            ..local("3001234560")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status(&e), e.message()),
        (400, Some("Application or extension must be specified"))
    );

    let e = ari
        .originate(&Originate {
            endpoint: "Foo/123".into(),
            ..local("x")
        })
        .await
        .unwrap_err();
    assert_eq!((status(&e), e.message()), (500, Some("Allocation failed")));
    sim.configure(|c| {
        c.failing_technologies.insert("PJSIP".into());
    });
    let e = ari
        .originate(&Originate {
            endpoint: "PJSIP/3001234560@voip_issabel".into(),
            ..local("x")
        })
        .await
        .unwrap_err();
    assert_eq!((status(&e), e.message()), (500, Some("Allocation failed")));

    // Our own id, reused while the call is up: 409. Playing before the answer: 412.
    let mut events = EventConnection::spawn(&ari, &["overdue-app", "openai-app"], 64, fast());
    assert!(events.wait_connected(Duration::from_secs(5)).await);
    let ringing = Originate {
        channel_id: Some("overdue-7-1".into()),
        ..local("3001234565")
    };
    let ch = ari.originate(&ringing).await.unwrap();
    assert_eq!((ch.id.as_str(), ch.state.as_str()), ("overdue-7-1", "Down"));
    let e = ari.originate(&ringing).await.unwrap_err();
    assert_eq!(
        (status(&e), e.message()),
        (409, Some("Channel with given unique ID already exists"))
    );
    let e = ari
        .play(
            "overdue-7-1",
            &["sound:morosos_natalia".into()],
            Some("es_MX"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    ari.hangup("overdue-7-1", "normal").await.unwrap();

    // Slow answers become timeouts, refused connections Connect errors.
    sim.configure(|c| c.response_delay = Duration::from_secs(3));
    let e = ari.channels().await.unwrap_err();
    assert!(matches!(e, AriError::Timeout { .. }), "{e:?}");
    sim.configure(|c| c.response_delay = Duration::ZERO);
    let closed = AriClient::new(
        "http://127.0.0.1:1",
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_secs(2),
    )
    .unwrap();
    let e = closed.ping().await.unwrap_err();
    assert!(matches!(e, AriError::Connect { .. }), "{e:?}");
    events.shutdown().await;
}

#[tokio::test]
async fn applications_are_registered_by_the_websocket() {
    let sim = sim().await;
    let ari = client(&sim, "asterisk");
    assert!(ari.applications().await.unwrap().is_empty());
    assert_eq!(
        status(&ari.application("overdue-app").await.unwrap_err()),
        404
    );
    let events = EventConnection::spawn(&ari, &["overdue-app", "openai-app"], 64, fast());
    let mut state = events.state.clone();
    state.wait_for(ConnState::is_connected).await.unwrap();
    let names: Vec<String> = ari
        .applications()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["openai-app", "overdue-app"]);
    assert_eq!(
        ari.application("overdue-app").await.unwrap().name,
        "overdue-app"
    );
    ari.ping().await.unwrap();
    assert_eq!(
        ari.sound("morosos_natalia").await.unwrap().formats[0].language,
        "es_MX"
    );
    assert_eq!(status(&ari.sound("no_such_prompt").await.unwrap_err()), 404);
    events.shutdown().await;
    // Unregistered with the socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ari.applications().await.unwrap().is_empty());
}

/// Waits for the event that carries a ChannelVarset with this value.
async fn expect_var(events: &mut EventConnection, value: &str) {
    loop {
        let env = tokio::time::timeout(Duration::from_secs(5), events.events.recv())
            .await
            .expect("event lost")
            .unwrap();
        if let Event::ChannelVarset { value: v, .. } = &env.event {
            if v == value {
                return;
            }
        }
    }
}

#[tokio::test]
async fn twenty_drops_lose_no_event_sent_while_connected() {
    let sim = sim().await;
    let ari = client(&sim, "asterisk");
    let mut events = EventConnection::spawn(&ari, &["overdue-app", "openai-app"], 1024, fast());
    assert!(events.wait_connected(Duration::from_secs(5)).await);
    // Three answered calls that stay up for five minutes: in Stasis throughout.
    let mut ids = Vec::new();
    for n in ["3001234568", "3101234568", "3201234568"] {
        ids.push(ari.originate(&local(n)).await.unwrap().id);
    }
    let mut in_stasis = 0;
    while in_stasis < 3 {
        if let Event::StasisStart { .. } = events.events.recv().await.unwrap().event {
            in_stasis += 1;
        }
    }
    let mut state = events.state.clone();
    for round in 1..=20u64 {
        // Events sent while connected: each must arrive, in order.
        for (k, id) in ids.iter().enumerate() {
            ari.set_variable(id, "ROUND", &format!("{round}-{k}"))
                .await
                .unwrap();
        }
        for k in 0..ids.len() {
            expect_var(&mut events, &format!("{round}-{k}")).await;
        }
        sim.drop_websockets();
        // The client notices, reconnects, and says so with a new epoch.
        tokio::time::timeout(
            Duration::from_secs(5),
            state.wait_for(|s| *s == ConnState::Connected { epoch: round + 1 }),
        )
        .await
        .expect("no reconnect")
        .unwrap();
        assert_eq!(sim.registered_apps(), ["openai-app", "overdue-app"]);
    }
    assert_eq!(
        events
            .stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        21
    );
    // Asterisk keeps channels in Stasis across drops; reconciliation finds them.
    let live: Vec<String> = ari
        .channels()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    for id in &ids {
        assert!(live.contains(id));
        ari.hangup(id, "normal").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sim.live_channels(), 0);
    events.shutdown().await;
}

#[tokio::test]
async fn a_restart_refuses_then_reconnects_with_no_channels() {
    let sim = sim().await;
    let ari = client(&sim, "asterisk");
    let mut events = EventConnection::spawn(&ari, &["overdue-app", "openai-app"], 64, fast());
    assert!(events.wait_connected(Duration::from_secs(5)).await);
    ari.originate(&local("3001234568")).await.unwrap();
    assert_eq!(sim.live_calls(), 1);
    let mut state = events.state.clone();
    let restart = sim.restart(Duration::from_millis(500));
    let watch = async {
        state.wait_for(|s| !s.is_connected()).await.unwrap();
        // While down, REST is refused outright.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = ari.channels().await.unwrap_err();
        assert!(matches!(e, AriError::Connect { .. }), "{e:?}");
    };
    let (restarted, ()) = tokio::join!(restart, watch);
    restarted.unwrap();
    state
        .wait_for(|s| *s == ConnState::Connected { epoch: 2 })
        .await
        .unwrap();
    assert!(
        ari.channels().await.unwrap().is_empty(),
        "a restart loses every channel"
    );
    assert_eq!(sim.live_channels(), 0);
    events.shutdown().await;
}

#[tokio::test]
async fn slow_consumer_gets_backpressure_not_loss() {
    let sim = sim().await;
    let ari = client(&sim, "asterisk");
    let mut events = EventConnection::spawn(&ari, &["overdue-app"], 4, fast());
    assert!(events.wait_connected(Duration::from_secs(5)).await);
    let id = ari.originate(&local("3001234568")).await.unwrap().id;
    for i in 0..200 {
        ari.set_variable(&id, "N", &i.to_string()).await.unwrap();
    }
    // Read slowly; every value arrives in order.
    let mut next = 0;
    while next < 200 {
        let env = tokio::time::timeout(Duration::from_secs(5), events.events.recv())
            .await
            .unwrap()
            .unwrap();
        if let Event::ChannelVarset {
            variable, value, ..
        } = env.event
        {
            if variable == "N" {
                assert_eq!(value, next.to_string());
                next += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    ari.hangup(&id, "normal").await.unwrap();
    events.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_are_counted_and_skipped() {
    let sim = sim().await;
    let ari = client(&sim, "asterisk");
    let mut events = EventConnection::spawn(&ari, &["overdue-app"], 16, fast());
    assert!(events.wait_connected(Duration::from_secs(5)).await);
    assert!(sim.inject("overdue-app", "{not json"));
    assert!(sim.inject(
        "overdue-app",
        r#"{"type":"StasisStart","application":"overdue-app"}"#
    ));
    assert!(sim.inject(
        "overdue-app",
        r#"{"type":"FutureEvent","application":"overdue-app","x":1}"#
    ));
    let env = tokio::time::timeout(Duration::from_secs(5), events.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.event, Event::Other);
    assert_eq!(
        events
            .stats
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert!(
        events.state.borrow().is_connected(),
        "bad frames do not cost the connection"
    );
    events.shutdown().await;
}

/// A burst of requests is sent at most `MAX_REQUESTS` at a time (a real
/// Asterisk drops HTTP connections past `sessionlimit`, 100): the rest wait
/// their turn and all are answered, over connections that are reused
/// rather than opened afresh. The server here answers each request after
/// 20 ms and counts how many it is answering at once, and how many
/// connections are open at once and in all.
#[tokio::test]
async fn a_burst_of_requests_stays_within_the_request_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (b, p) = (busy.clone(), peak.clone());
    // Connections: open now, most open at once, opened in all.
    let conns: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (b, p, c) = (b.clone(), p.clone(), c.clone());
            let open = c[0].fetch_add(1, Ordering::SeqCst) + 1;
            c[1].fetch_max(open, Ordering::SeqCst);
            c[2].fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                // One request per read: each is small, and HTTP/1 sends the
                // next on a connection only after the answer.
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let now = b.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    b.fetch_sub(1, Ordering::SeqCst);
                    let answer = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
                    if sock.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
                c[0].fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let ari = AriClient::new(&url, "asterisk", Secret::new("pw"), Duration::from_secs(10)).unwrap();
    use overdue_dialer::ari::client::MAX_REQUESTS;
    let burst = MAX_REQUESTS * 4;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..burst {
        let ari = ari.clone();
        calls.spawn(async move { ari.hangup(&format!("c{i}"), "normal").await });
    }
    let mut answered = 0;
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
        answered += 1;
    }
    assert_eq!(answered, burst);
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= MAX_REQUESTS, "{peak} requests in flight at once");
    assert!(peak > 1, "the requests were not sent side by side");
    let (most_open, opened) = (
        conns[1].load(Ordering::SeqCst),
        conns[2].load(Ordering::SeqCst),
    );
    // Asterisk's sessionlimit, 100, counts the event WebSocket too.
    assert!(most_open < 100, "{most_open} connections open at once");
    // Reused: a few more than the requests in flight at most (with 16
    // idle connections kept of 48 in flight, 105 were opened).
    assert!(
        opened <= MAX_REQUESTS + MAX_REQUESTS / 4,
        "{opened} connections opened for {burst} requests"
    );
}

/// `channel_gone` says gone only on Asterisk's 404: a live channel is not
/// gone, and an answer that tells nothing (here a refused login; a
/// timeout alike) is an error, never taken for gone.
#[tokio::test]
async fn channel_gone_only_on_asterisks_404() {
    let sim = sim().await;
    let ari = client(&sim, "asterisk");
    let mut events = EventConnection::spawn(&ari, &["overdue-app"], 64, fast());
    assert!(events.wait_connected(Duration::from_secs(5)).await);
    let ringing = Originate {
        channel_id: Some("overdue-8-1".into()),
        ..local("3001234565")
    };
    ari.originate(&ringing).await.unwrap();
    assert!(!ari.channel_gone("overdue-8-1").await.unwrap());
    assert!(ari.channel_gone("overdue-9-1").await.unwrap());
    let e = client(&sim, "wrong-password")
        .channel_gone("overdue-8-1")
        .await
        .unwrap_err();
    assert_eq!(status(&e), 401);
    ari.hangup("overdue-8-1", "normal").await.unwrap();
    events.shutdown().await;
}
