//! The reminder call talks back (README "The callee talks back"): each key
//! of the menu end to end, answering machines, and the menu off giving the
//! old call log. Against the simulator (callees press keys on a script,
//! `AMD()` answers per number) and a real MariaDB.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestDb;
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::campaign::pass::PassOptions;
use overdue_dialer::config::{Config, TrunkConfig};
use overdue_dialer::dialer::one_pass;
use overdue_dialer::rules::script::{Action, OnMachine};
use overdue_dialer::sim::{AmdVerdict, Played, SimConfig, Simulator, SoundSpec};

/// Every simulated duration runs 50 times faster: the 4.38 s reminder in
/// 88 ms, the 3 s options in 60 ms, a key 1 s after answer at 20 ms.
const SCALE: f64 = 0.02;
const LOCAL: &str = "Local/{number}@from-voip";
const DIRECT: &str = "PJSIP/{number}@voip_issabel";

struct Rig {
    db: TestDb,
    sim: Simulator,
    config: Config,
}

fn sounds(c: &mut SimConfig) {
    for (name, ms) in [("overdue-menu", 3_000), ("overdue-opt-out", 2_000)] {
        c.sounds.insert(
            name.into(),
            SoundSpec {
                languages: vec!["es_MX".into()],
                duration: Duration::from_millis(ms),
            },
        );
    }
}

/// Clients `(id, phone)`, all due; callees ending in 8 stay on the line
/// for 5 minutes (6 s here), so only the script ends their calls.
async fn rig(clients: &[(i64, &str)], endpoint: &str, menu: bool) -> Rig {
    let mut data = Data::default();
    for &(id, phone) in clients {
        common::due(&mut data, id, phone, "125000.00");
    }
    let db = TestDb::with_data(&data).await;
    let sim = Simulator::start(
        SimConfig {
            time_scale: SCALE,
            // A transferred callee talks to the queue for a while, then hangs up.
            continue_hangup_after: Some(Duration::from_secs(5)),
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    sim.configure(sounds);
    let mut config = common::config(&db, &sim);
    config.trunks = vec![TrunkConfig {
        caller_id: Some("6041234567".into()),
        ..common::trunk("t1", endpoint, 1, 20)
    }];
    config.campaign.calls_per_second = 1000.0;
    config.campaign.max_concurrent_calls = 20;
    config.transfer.context = "call-center".into();
    config.transfer.extension = "600".into();
    if menu {
        config.menu.actions = BTreeMap::from([
            ("1".into(), Action::Transfer),
            ("2".into(), Action::Repeat),
            ("9".into(), Action::OptOut),
            ("0".into(), Action::Agent),
        ]);
        config.menu.wait_secs = 1;
    }
    Rig { db, sim, config }
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    outcome: Option<String>,
    detail: Option<String>,
    delivered: Option<bool>,
    heard: Option<u32>,
    cause: Option<i64>,
    sent: bool,
}

impl Rig {
    /// Each callee's keys: `(seconds after answer, key)`, unscaled.
    fn keys(&self, phone: &str, keys: &[(f64, char)]) {
        let script: Vec<(Duration, char)> = keys
            .iter()
            .map(|&(s, k)| (Duration::from_secs_f64(s), k))
            .collect();
        let phone = phone.to_owned();
        self.sim.configure(move |c| {
            c.dtmf.insert(phone, script);
        });
    }

    async fn pass(&self) {
        let (_tx, abort) = tokio::sync::watch::channel(false);
        let opts = PassOptions {
            ignore_window: true,
            drain: None,
            probe: None,
        };
        one_pass(self.config.clone(), "test-host".into(), opts, abort)
            .await
            .unwrap();
        // Transferred callees are the call center's now; wait them out,
        // then nothing may be left on the PBX.
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.sim.live_channels() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.sim.live_channels(), 0, "channels left on the PBX");
        assert_eq!(self.sim.live_bridges(), 0, "bridges left on the PBX");
    }

    async fn row(&self, client: i64) -> Row {
        let mut conn = self.db.conn().await;
        #[allow(clippy::type_complexity)]
        let row: Option<(Option<String>, Option<String>, Option<bool>, Option<u32>, Option<i64>)> = conn
            .exec_first(
                "SELECT outcome, detail, delivered, heard_seconds, hangup_cause FROM overdue_call_log WHERE client_id = ? ORDER BY attempt_no DESC LIMIT 1",
                (client,),
            )
            .await
            .unwrap();
        let sent: Option<i64> = conn
            .exec_first(
                "SELECT outbound_call_is_sent FROM afiliados WHERE id = ?",
                (client,),
            )
            .await
            .unwrap();
        let (outcome, detail, delivered, heard, cause) = row.unwrap_or_default();
        Row {
            outcome,
            detail,
            delivered,
            heard,
            cause,
            sent: sent == Some(1),
        }
    }

    /// What the callee of `client`'s first attempt heard: media, and
    /// whether a key cut it.
    fn heard(&self, client: i64) -> Vec<(String, bool)> {
        self.played(client)
            .into_iter()
            .map(|p| (p.media, p.stopped))
            .collect()
    }

    fn played(&self, client: i64) -> Vec<Played> {
        self.sim.played(&format!("overdue-{client}-1"))
    }

    async fn opt_outs(&self) -> Vec<(i64, Option<String>, Option<String>)> {
        let mut conn = self.db.conn().await;
        conn.query("SELECT client_id, phone_e164, channel_id FROM overdue_opt_out ORDER BY id")
            .await
            .unwrap()
    }
}

const REMINDER: &str = "sound:morosos_natalia";
const OPTIONS: &str = "sound:overdue-menu";

async fn each_key(endpoint: &str) {
    let clients = [
        (1, "3001234518"), // 1 during the reminder: a person
        (2, "3001234528"), // 2 during the reminder, then nothing
        (3, "3001234538"), // 9 after the options: opt-out
        (4, "3001234548"), // no key
        (5, "3001234558"), // an unmapped key while we wait, then nothing
        (6, "3001234568"), // 2, 2, then a third 2 that only replays the options
    ];
    let rig = rig(&clients, endpoint, true).await;
    // The reminder is 4.38 s, the options 3 s: a key at 1 s falls in the
    // reminder, one at 20 s in the wait after the options (1 s of real
    // time, 50 s here). Under load a key may land a little late, so the
    // asserts below say what was played, and whether a key cut it only
    // where that cannot depend on timing.
    rig.keys("3001234518", &[(1.0, '1')]);
    rig.keys("3001234528", &[(1.0, '2')]);
    rig.keys("3001234538", &[(20.0, '9')]);
    rig.keys("3001234558", &[(20.0, '5')]);
    rig.keys("3001234568", &[(1.0, '2'), (7.0, '2'), (13.0, '2')]);
    rig.pass().await;

    // 1: transferred where [transfer] says, a delivered reminder.
    let r = rig.row(1).await;
    assert_eq!(r.outcome.as_deref(), Some("transferred"), "{r:?}");
    assert_eq!(r.detail.as_deref(), Some("to call-center,600,1"));
    assert!(r.sent && r.delivered == Some(true), "{r:?}");
    assert_eq!(
        rig.sim.continued_to("overdue-1-1"),
        Some(("call-center".into(), "600".into(), 1))
    );
    assert_eq!(rig.heard(1), [(REMINDER.into(), true)]);

    // 2: the reminder cut and played again, then the options, then the
    // wait ran out: heard to the end, completed.
    let r = rig.row(2).await;
    assert_eq!(r.outcome.as_deref(), Some("completed"), "{r:?}");
    assert!(r.sent);
    assert_eq!(
        rig.heard(2),
        [
            (REMINDER.into(), true),
            (REMINDER.into(), false),
            (OPTIONS.into(), false)
        ]
    );

    // 3: the confirmation, a row in overdue_opt_out, delivered.
    let r = rig.row(3).await;
    assert_eq!(r.outcome.as_deref(), Some("opted_out"), "{r:?}");
    assert!(r.sent && r.delivered == Some(true));
    let media = |c| -> Vec<String> { rig.heard(c).into_iter().map(|(m, _)| m).collect() };
    assert_eq!(media(3), [REMINDER, OPTIONS, "sound:overdue-opt-out"]);
    assert!(!rig.heard(3)[0].1, "the reminder was cut");
    assert_eq!(
        rig.opt_outs().await,
        [(
            3,
            Some("+573001234538".to_owned()),
            Some("overdue-3-1".to_owned())
        )]
    );

    // 4: reminder, options, no key: completed.
    let r = rig.row(4).await;
    assert_eq!(r.outcome.as_deref(), Some("completed"), "{r:?}");
    assert_eq!(
        rig.heard(4),
        [(REMINDER.into(), false), (OPTIONS.into(), false)]
    );

    // 5: an unmapped key replays the options once.
    assert_eq!(rig.row(5).await.outcome.as_deref(), Some("completed"));
    assert_eq!(media(5), [REMINDER, OPTIONS, OPTIONS]);

    // 6: two repeats at most; the third 2 only replays the options. (Where
    // each key lands depends on timing; how many reminders play does not.)
    assert_eq!(rig.row(6).await.outcome.as_deref(), Some("completed"));
    let heard = rig.heard(6);
    let reminders = heard.iter().filter(|(m, _)| m == REMINDER).count();
    assert_eq!(reminders, 3, "{heard:?}");
    assert_eq!(
        heard.last(),
        Some(&(OPTIONS.to_owned(), false)),
        "{heard:?}"
    );

    // Nobody else was sent anywhere.
    for c in [2, 3, 4, 5, 6] {
        assert_eq!(rig.sim.continued_to(&format!("overdue-{c}-1")), None);
    }
}

#[tokio::test]
async fn each_key_on_the_local_path() {
    each_key(LOCAL).await;
}

#[tokio::test]
async fn each_key_on_a_direct_trunk() {
    each_key(DIRECT).await;
}

#[tokio::test]
async fn a_key_cuts_the_prompt_at_once() {
    let rig = rig(&[(1, "3001234518")], DIRECT, true).await;
    // The opt-out key 2 s into the 4.38 s reminder.
    rig.keys("3001234518", &[(2.0, '9')]);
    rig.pass().await;
    let played = rig.played(1);
    assert_eq!(played.len(), 2, "{played:?}");
    let reminder = &played[0];
    assert!(reminder.stopped, "{played:?}");
    // The key reaches us as its press ends (0.2 s, LAB.md fact 15): the
    // prompt must stop within 100 ms of that, not play on to its end.
    let key_event = Duration::from_secs_f64(2.2 * SCALE);
    let lasted = reminder
        .ended
        .expect("the cut reminder ended")
        .duration_since(reminder.started);
    assert!(
        lasted < key_event + Duration::from_millis(100),
        "the reminder played {lasted:?} after a key at {key_event:?}"
    );
    assert_eq!(rig.row(1).await.outcome.as_deref(), Some("opted_out"));
}

#[tokio::test]
async fn the_agent_key_hands_the_callee_to_the_voice_agent_knowing_the_client() {
    let mut rig = rig(&[(6, "3001234568")], LOCAL, true).await;
    // No OpenAI key: the agent answers with its fallback, which may speak
    // the balance of a known client.
    rig.config.voice_agent.fallback_media =
        vec!["sound:morosos_natalia".into(), "number:{saldo}".into()];
    rig.keys("3001234568", &[(1.0, '0')]);
    rig.pass().await;
    let r = rig.row(6).await;
    assert_eq!(r.outcome.as_deref(), Some("transferred"), "{r:?}");
    assert_eq!(r.detail.as_deref(), Some("agent"));
    assert!(r.sent);
    assert_eq!(
        rig.sim.continued_to("overdue-6-1"),
        Some(("overdue-agent".into(), "6".into(), 1))
    );
    let mut conn = rig.db.conn().await;
    #[allow(clippy::type_complexity)]
    let rows: Vec<(Option<i64>, Option<String>, Option<String>, String)> = conn
        .query("SELECT client_id, match_detail, how, channel_id FROM overdue_inbound_log")
        .await
        .unwrap();
    assert_eq!(
        rows,
        [(
            Some(6),
            Some("handed over by the reminder call".to_owned()),
            Some("fallback_no_key".to_owned()),
            "overdue-6-1".to_owned()
        )]
    );
    let media: Vec<String> = rig.heard(6).into_iter().map(|(m, _)| m).collect();
    assert_eq!(media, [REMINDER, REMINDER, "number:125000"]);
}

async fn machine(
    status: &str,
    cause: &str,
    on_machine: OnMachine,
    counts: bool,
) -> (Row, Vec<String>, Rig) {
    let mut rig = rig(&[(1, "3001234518")], DIRECT, true).await;
    rig.config.amd.enabled = true;
    rig.config.amd.on_machine = on_machine;
    rig.config.amd.message_counts_as_delivered = counts;
    let (status, cause) = (status.to_owned(), cause.to_owned());
    rig.sim.configure(move |c| {
        c.amd.insert(
            "3001234518".into(),
            AmdVerdict {
                status,
                cause,
                after: Duration::from_secs(2),
            },
        );
    });
    rig.pass().await;
    let media = rig.heard(1).into_iter().map(|(m, _)| m).collect();
    (rig.row(1).await, media, rig)
}

#[tokio::test]
async fn a_person_or_a_doubt_hears_the_reminder_after_amd() {
    for (status, cause) in [("HUMAN", "HUMAN-800-800"), ("NOTSURE", "TOOLONG-4820")] {
        let (r, media, rig) = machine(status, cause, OnMachine::Hangup, false).await;
        assert_eq!(r.outcome.as_deref(), Some("completed"), "{status}: {r:?}");
        assert!(r.sent);
        let detail = r.detail.unwrap_or_default();
        assert!(
            detail.starts_with(&format!("AMD {status} ({cause}) in ")),
            "{detail}"
        );
        assert_eq!(media, [REMINDER, OPTIONS]);
        assert_eq!(
            rig.sim.continued_to("overdue-1-1").map(|t| t.0),
            Some("overdue-amd".to_owned())
        );
    }
}

#[tokio::test]
async fn a_machine_is_hung_up_on_and_tried_again_later() {
    let (r, media, rig) = machine("MACHINE", "MAXWORDS-3-2", OnMachine::Hangup, true).await;
    assert_eq!(r.outcome.as_deref(), Some("voicemail"), "{r:?}");
    assert_eq!(r.delivered, Some(false));
    assert!(!r.sent);
    assert!(media.is_empty(), "a machine heard {media:?}");
    assert_eq!(
        rig.sim.continued_to("overdue-1-1"),
        Some(("overdue-amd".into(), "s".into(), 1))
    );
    assert!(
        r.detail
            .as_deref()
            .unwrap_or("")
            .contains("AMD MACHINE (MAXWORDS-3-2) in "),
        "{r:?}"
    );
    // retry_minutes.voicemail (240): not before, and then again.
    rig.pass().await;
    assert_eq!(rig.sim.originate_count(), 1, "called again too soon");
    let mut conn = rig.db.conn().await;
    conn.query_drop("UPDATE overdue_call_log SET ended_at = ended_at - INTERVAL 241 MINUTE, claimed_at = claimed_at - INTERVAL 241 MINUTE")
        .await
        .unwrap();
    rig.pass().await;
    assert_eq!(
        rig.sim.originate_count(),
        2,
        "not called again after the delay"
    );
}

#[tokio::test]
async fn a_message_on_a_machine_counts_only_when_configured() {
    for counts in [false, true] {
        let (r, media, rig) =
            machine("MACHINE", "MAXWORDS-3-2", OnMachine::LeaveMessage, counts).await;
        assert_eq!(r.outcome.as_deref(), Some("voicemail"), "{r:?}");
        assert_eq!(r.delivered, Some(counts), "{r:?}");
        assert_eq!(r.sent, counts);
        // The reminder alone, after the greeting: no menu for a machine.
        assert_eq!(media, [REMINDER]);
        assert_eq!(
            rig.sim.continued_to("overdue-1-1"),
            Some(("overdue-amd".into(), "message".into(), 1))
        );
        assert!(
            r.detail
                .as_deref()
                .unwrap_or("")
                .starts_with("message left; AMD MACHINE"),
            "{r:?}"
        );
    }
}

/// With no menu, keys change nothing: the call log is what it always was.
#[tokio::test]
async fn menu_off_the_call_log_is_unchanged_whatever_the_callee_presses() {
    let clients = [(1, "3001234510"), (2, "3001234517"), (3, "3001234518")];
    let mut logs = Vec::new();
    for press in [false, true] {
        let mut rig = rig(&clients, LOCAL, false).await;
        rig.config.campaign.call_timeout_secs = 40;
        if press {
            for (_, phone) in clients {
                rig.keys(phone, &[(1.0, '1'), (3.0, '9')]);
            }
        }
        rig.pass().await;
        let mut rows = Vec::new();
        for (id, _) in clients {
            let mut row = rig.row(id).await;
            // Digit 7 hangs up 40 ms into its call: on a busy machine that
            // may come before its prompt started (no heard_seconds) or just
            // after (0 s) — a race with the machine's load, not with keys.
            row.heard = Some(row.heard.unwrap_or(0));
            rows.push(row);
            let heard = rig.heard(id);
            assert!(heard.len() <= 1, "{heard:?}");
            assert!(
                heard.iter().all(|(_, cut)| !cut),
                "a key cut the prompt with the menu off"
            );
        }
        logs.push(rows);
    }
    assert_eq!(logs[0], logs[1]);
    let outcomes: Vec<_> = logs[0]
        .iter()
        .map(|r| r.outcome.clone().unwrap_or_default())
        .collect();
    // 0: heard to the end; 7: hangs up 2 s in; 8: stays on, the prompt ends.
    assert_eq!(outcomes, ["completed", "hung_up_early", "completed"]);
}

/// `number:{saldo}` and `{corte_fecha}` reach Asterisk as the Spanish
/// sounds that say them, after the recorded prompt.
#[tokio::test]
async fn the_balance_and_the_cut_off_date_are_spoken() {
    let mut rig = rig(&[(1, "3001234518")], DIRECT, false).await;
    rig.config.campaign.media = vec![
        REMINDER.into(),
        "number:{saldo}".into(),
        "{corte_fecha}".into(),
    ];
    rig.pass().await;
    assert_eq!(rig.row(1).await.outcome.as_deref(), Some("completed"));
    let media: Vec<String> = rig.heard(1).into_iter().map(|(m, _)| m).collect();
    assert_eq!(media.len(), 5, "{media:?}");
    assert_eq!(media[..2], [REMINDER, "number:125000"]);
    assert!(media[2].starts_with("number:"), "{media:?}");
    assert_eq!(media[3], "sound:digits/es-de");
    assert!(media[4].starts_with("sound:digits/mon-"), "{media:?}");
}

/// An options prompt Asterisk cannot play is a configuration error, not
/// the callee's doing: the call goes on as if it had played.
#[tokio::test]
async fn a_missing_options_prompt_leaves_the_keys_working() {
    let rig = rig(&[(1, "3001234518"), (2, "3001234528")], DIRECT, true).await;
    rig.sim.configure(|c| {
        c.sounds.remove("overdue-menu");
    });
    rig.keys("3001234518", &[(12.0, '1')]);
    rig.pass().await;
    let r = rig.row(1).await;
    assert_eq!(r.outcome.as_deref(), Some("transferred"), "{r:?}");
    let r = rig.row(2).await;
    assert_eq!(r.outcome.as_deref(), Some("completed"), "{r:?}");
    assert!(r.sent);
}
