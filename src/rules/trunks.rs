//! Trunks (README "A pass", trunk failover): endpoint templates, which
//! trunk takes a call, how long a failing trunk cools down, whose fault a
//! refused originate was, failover between trunks for one attempt, and
//! trunk health (README "Trunk health": which Asterisk endpoint a trunk
//! depends on, and whether its state lets it take calls). The pool in
//! `campaign::trunks` holds the state and the clock.

use std::time::Duration;

/// Checks an ARI endpoint template such as `PJSIP/{number}@voip_issabel`,
/// `SIP/voip_issabel/{number}` or `Local/{number}@from-voip`.
/// On failure, says what was expected (for the config error).
pub fn check_endpoint_template(template: &str) -> Result<(), String> {
    let expected = "a template like \"PJSIP/{number}@trunk\" with {number} exactly once";
    let Some((tech, resource)) = template.split_once('/') else {
        return Err(format!(
            "{expected}, found {template:?} (no technology/ prefix)"
        ));
    };
    if tech.is_empty() || !tech.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{expected}, found {template:?} (bad technology {tech:?})"
        ));
    }
    if resource.matches("{number}").count() != 1 {
        return Err(format!("{expected}, found {template:?}"));
    }
    if template
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{expected}, found {template:?} (contains whitespace)"
        ));
    }
    let rest = resource.replace("{number}", "");
    if rest.contains('{') || rest.contains('}') {
        return Err(format!(
            "{expected}, found {template:?} (unknown placeholder)"
        ));
    }
    Ok(())
}

/// The Asterisk endpoint (`Tech/resource`) whose state says whether a
/// trunk can carry calls. `explicit` is `health_endpoint` from the trunk's
/// configuration: empty means "none" (an operator opting out); absent
/// means implied by the template — `PJSIP/…@x` depends on `PJSIP/x` and
/// `SIP/x/…` on `SIP/x`. A `Local/` template goes through the dialplan,
/// whose real trunk we cannot see, so it implies none.
pub fn health_endpoint(explicit: Option<&str>, template: &str) -> Option<String> {
    if let Some(e) = explicit {
        let e = e.trim();
        return (!e.is_empty()).then(|| e.to_owned());
    }
    let (tech, rest) = template.split_once('/')?;
    let resource = match tech {
        "PJSIP" => rest.rsplit_once('@').map(|(_, r)| r)?,
        "SIP" => rest.split_once('/').map(|(r, _)| r)?,
        _ => return None,
    };
    // A resource built from the number is not one endpoint.
    if resource.is_empty() || resource.contains('{') {
        return None;
    }
    Some(format!("{tech}/{resource}"))
}

/// Checks an explicit `health_endpoint` (`Tech/resource`, as in
/// `GET /ari/endpoints/{tech}/{resource}`). On failure, says what was
/// expected.
pub fn check_health_endpoint(endpoint: &str) -> Result<(), String> {
    let expected = "an Asterisk endpoint like \"PJSIP/voip_issabel\" (or \"\" for none)";
    match endpoint.split_once('/') {
        Some((tech, resource))
            if !tech.is_empty()
                && tech.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !resource.is_empty()
                && !resource.chars().any(|c| {
                    c == '/' || c == '{' || c == '}' || c.is_whitespace() || c.is_control()
                }) =>
        {
            Ok(())
        }
        _ => Err(format!("{expected}, found {endpoint:?}")),
    }
}

/// An endpoint's state as Asterisk reports it (`online`, `offline`,
/// `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    Online,
    Offline,
    /// Asterisk does not know (no qualify configured, or not yet checked),
    /// or we could not ask.
    Unknown,
}

impl Health {
    /// Asterisk's word for it; anything unexpected is `Unknown`, so a
    /// newer Asterisk's new state never stops the calls.
    pub fn parse(state: &str) -> Health {
        match state.trim().to_ascii_lowercase().as_str() {
            "online" => Health::Online,
            "offline" => Health::Offline,
            _ => Health::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Online => "online",
            Health::Offline => "offline",
            Health::Unknown => "unknown",
        }
    }

    /// Only an endpoint Asterisk calls `offline` stops its trunk: `unknown`
    /// is what Asterisk says of every endpoint without `qualify`, and
    /// stopping those would stop working trunks.
    pub fn takes_calls(self) -> bool {
        self != Health::Offline
    }
}

/// What an operator sees of a trunk (metrics, `check`, the pass summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum TrunkState {
    /// May take calls (when a channel is free).
    #[default]
    Up,
    /// Failed recently; takes no calls until its cool-down ends.
    Cooling,
    /// Its endpoint is offline; takes no calls until it is online again.
    Offline,
}

impl TrunkState {
    pub const ALL: [TrunkState; 3] = [TrunkState::Up, TrunkState::Cooling, TrunkState::Offline];

    /// An offline endpoint outranks a cool-down: the operator's fix is
    /// on the endpoint, and the cool-down may end before it is online.
    pub fn of(cooling: bool, health: Health) -> TrunkState {
        if !health.takes_calls() {
            TrunkState::Offline
        } else if cooling {
            TrunkState::Cooling
        } else {
            TrunkState::Up
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrunkState::Up => "up",
            TrunkState::Cooling => "cooling",
            TrunkState::Offline => "offline",
        }
    }

    /// Whether a trunk in this state may take a call at all (its free
    /// channels aside).
    pub fn takes_calls(self) -> bool {
        self == TrunkState::Up
    }
}

/// The endpoint to originate to for these national digits.
pub fn dial_string(template: &str, national: &str) -> String {
    template.replace("{number}", national)
}

/// The trunk that takes the next call: the first (in priority order) with
/// a free channel that is not cooling down (`usable`), preferring those not
/// in `avoid` (trunks that refused this attempt) and never one in `never`
/// (trunks this attempt congested on: it waits for an untried trunk).
pub fn choose(usable: &[bool], avoid: &[usize], never: &[usize]) -> Option<usize> {
    let ok = |i: &usize| usable[*i] && !never.contains(i);
    (0..usable.len())
        .filter(ok)
        .find(|i| !avoid.contains(i))
        .or_else(|| (0..usable.len()).find(ok))
}

/// How long a trunk cools down after its `failures`-th failure in a row
/// (0-based): `base`, doubling, at most an hour.
pub fn cooldown(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(3600))
}

/// "Within the same few seconds": refusals of every trunk this close
/// together are one cause, not several broken trunks.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(5);

/// Whether refused originates are Asterisk's doing rather than the trunks':
/// every trunk refused (`refused_ago`: how long ago each last refused)
/// within `window`, and no call was placed since the oldest of those
/// refusals (`placed_ago`: how long ago the last call was placed). While
/// `core stop gracefully` waits, Asterisk answers every originate with the
/// 500 `Allocation failed` of a broken endpoint.
pub fn asterisk_refusing(
    refused_ago: &[Option<Duration>],
    placed_ago: Option<Duration>,
    window: Duration,
) -> bool {
    let Some(oldest) = refused_ago
        .iter()
        .map(|r| r.filter(|ago| *ago <= window))
        .collect::<Option<Vec<Duration>>>()
        .and_then(|v| v.into_iter().max())
    else {
        return false;
    };
    placed_ago.is_none_or(|p| p > oldest)
}

/// One attempt moving between trunks (README "A pass", trunk failover): a
/// trunk that refuses the originate, or on which the call congests before
/// ringing, is avoided by the next try; after three rounds of such tries
/// the attempt gives up. Refusals that were Asterisk's cost no try.
/// Congested trunks are blamed only when another trunk then gets through:
/// if every trunk congests, the callee's network does.
#[derive(Debug, Clone)]
pub struct Failover {
    trunks: usize,
    refused: Vec<usize>,
    congested: Vec<usize>,
    tries: usize,
}

/// What to do after a try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try again (on another trunk if there is one).
    Retry,
    /// The call is over: record it; these trunks' congestion was their own.
    Finish { blame: Vec<usize> },
    /// Too many trunk failures: record the attempt as not dialled.
    GiveUp,
}

/// How one try on a trunk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Try {
    /// The trunk refused the originate (the pool cools it down).
    Refused,
    /// Asterisk refused on every trunk, or the event socket was down.
    RefusedByAsterisk,
    /// The call congested before ringing.
    CongestedBeforeRinging,
    /// Asterisk placed the call and it ended.
    Placed,
}

impl Failover {
    pub fn new(trunks: usize) -> Failover {
        Failover {
            trunks,
            refused: Vec::new(),
            congested: Vec::new(),
            tries: 0,
        }
    }

    /// Trunks the next try should avoid if another is free.
    pub fn avoid(&self) -> Vec<usize> {
        self.refused.clone()
    }

    /// Trunks the next try must not use: it congested there before
    /// ringing, and an untried trunk is left (or congestion would have
    /// been the outcome).
    pub fn never(&self) -> Vec<usize> {
        self.congested.clone()
    }

    pub fn after(&mut self, trunk: usize, how: Try) -> Next {
        match how {
            Try::RefusedByAsterisk => {
                // Nobody's fault on our side: start over on every trunk.
                self.refused.clear();
                self.congested.clear();
                return Next::Retry;
            }
            Try::Refused => {
                if !self.refused.contains(&trunk) {
                    self.refused.push(trunk);
                }
            }
            // Congestion moves on only while an untried trunk is left; on
            // the last one it is the outcome.
            Try::CongestedBeforeRinging
                if !self.congested.contains(&trunk)
                    && self.refused.len() + self.congested.len() + 1 < self.trunks =>
            {
                self.congested.push(trunk);
            }
            Try::CongestedBeforeRinging => return Next::Finish { blame: Vec::new() },
            Try::Placed => {
                return Next::Finish {
                    blame: std::mem::take(&mut self.congested),
                }
            }
        }
        self.tries += 1;
        if self.tries >= self.trunks * 3 {
            Next::GiveUp
        } else {
            Next::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        for ok in [
            "PJSIP/{number}@voip_issabel",
            "SIP/voip_issabel/{number}",
            "Local/{number}@from-voip",
            "PJSIP/57{number}@t",
        ] {
            assert_eq!(check_endpoint_template(ok), Ok(()), "{ok}");
        }
        for bad in [
            "PJSIP/voip_issabel",
            "{number}",
            "PJSIP/{number}@{trunk}",
            "PJ SIP/{number}",
            "/{number}",
            "PJSIP/{number}{number}",
            "PJSIP/{number} @x",
        ] {
            assert!(check_endpoint_template(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dial_string("SIP/voip_issabel/{number}", "3001234567"),
            "SIP/voip_issabel/3001234567"
        );
    }

    #[test]
    fn choice_prefers_untried_trunks_in_priority_order() {
        assert_eq!(choose(&[true, true], &[], &[]), Some(0));
        assert_eq!(choose(&[true, true], &[0], &[]), Some(1));
        assert_eq!(
            choose(&[true, false], &[0], &[]),
            Some(0),
            "a tried trunk beats none"
        );
        assert_eq!(choose(&[false, false], &[], &[]), None);
        assert_eq!(
            choose(&[true, false], &[], &[0]),
            None,
            "a congested trunk is not used again: wait for the untried one"
        );
    }

    #[test]
    fn cooldowns_double_up_to_an_hour() {
        let base = Duration::from_secs(60);
        let got: Vec<u64> = (0..9).map(|f| cooldown(base, f).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    }

    #[test]
    fn the_refusal_rule() {
        let s = |secs: u64| Some(Duration::from_secs(secs));
        let w = REFUSAL_WINDOW;
        assert!(asterisk_refusing(&[s(1), s(4)], None, w));
        assert!(asterisk_refusing(&[s(0)], s(10), w), "a single trunk");
        assert!(!asterisk_refusing(&[s(1), None], None, w));
        assert!(!asterisk_refusing(&[s(1), s(6)], None, w), "too far apart");
        assert!(
            !asterisk_refusing(&[s(1), s(4)], s(2), w),
            "a call got through"
        );
    }

    #[test]
    fn failover_on_refusal_then_success() {
        let mut f = Failover::new(2);
        assert_eq!(f.after(0, Try::Refused), Next::Retry);
        assert_eq!(f.avoid(), [0]);
        assert_eq!(f.after(1, Try::Placed), Next::Finish { blame: vec![] });
    }

    #[test]
    fn congestion_moves_on_and_is_blamed_when_another_trunk_gets_through() {
        let mut f = Failover::new(3);
        assert_eq!(f.after(0, Try::CongestedBeforeRinging), Next::Retry);
        assert_eq!(f.after(1, Try::CongestedBeforeRinging), Next::Retry);
        assert_eq!(f.never(), [0, 1]);
        assert_eq!(f.after(2, Try::Placed), Next::Finish { blame: vec![0, 1] });
    }

    #[test]
    fn congestion_everywhere_is_the_callees_network() {
        let mut f = Failover::new(2);
        assert_eq!(f.after(0, Try::CongestedBeforeRinging), Next::Retry);
        // The last untried trunk congests too: that is the outcome, nobody blamed.
        assert_eq!(
            f.after(1, Try::CongestedBeforeRinging),
            Next::Finish { blame: vec![] }
        );
        let mut single = Failover::new(1);
        assert_eq!(
            single.after(0, Try::CongestedBeforeRinging),
            Next::Finish { blame: vec![] }
        );
    }

    #[test]
    fn refusals_give_up_after_three_rounds_unless_asterisks() {
        let mut f = Failover::new(2);
        for _ in 0..100 {
            assert_eq!(f.after(0, Try::RefusedByAsterisk), Next::Retry);
        }
        let mut tries = 0;
        while f.after(tries % 2, Try::Refused) == Next::Retry {
            tries += 1;
        }
        assert_eq!(tries + 1, 6, "3 rounds of 2 trunks");
    }

    #[test]
    fn health_endpoints_explicit_implied_or_none() {
        let pj = "PJSIP/{number}@voip_issabel";
        assert_eq!(
            health_endpoint(None, pj).as_deref(),
            Some("PJSIP/voip_issabel")
        );
        assert_eq!(
            health_endpoint(None, "PJSIP/57{number}@t1").as_deref(),
            Some("PJSIP/t1")
        );
        assert_eq!(
            health_endpoint(None, "SIP/voip_issabel/{number}").as_deref(),
            Some("SIP/voip_issabel")
        );
        assert_eq!(health_endpoint(None, "Local/{number}@from-voip"), None);
        assert_eq!(health_endpoint(None, "PJSIP/{number}"), None, "no @trunk");
        assert_eq!(health_endpoint(None, "SIP/{number}"), None);
        assert_eq!(health_endpoint(None, "IAX2/{number}@x"), None);
        assert_eq!(
            health_endpoint(Some("PJSIP/other"), "Local/{number}@from-voip").as_deref(),
            Some("PJSIP/other"),
            "explicit wins, even for Local/"
        );
        assert_eq!(health_endpoint(Some(" "), pj), None, "empty opts out");
        assert_eq!(check_health_endpoint("PJSIP/voip_issabel"), Ok(()));
        for bad in [
            "voip",
            "/x",
            "PJSIP/",
            "PJSIP/a/b",
            "PJSIP/{number}",
            "PJ SIP/x",
            "PJSIP/a b",
        ] {
            assert!(check_health_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_offline_stops_a_trunk() {
        assert_eq!(Health::parse("online"), Health::Online);
        assert_eq!(Health::parse("OFFLINE"), Health::Offline);
        assert_eq!(Health::parse("unknown"), Health::Unknown);
        assert_eq!(Health::parse("something new"), Health::Unknown);
        assert!(Health::Online.takes_calls());
        assert!(Health::Unknown.takes_calls());
        assert!(!Health::Offline.takes_calls());
        assert_eq!(TrunkState::of(false, Health::Online), TrunkState::Up);
        assert_eq!(TrunkState::of(false, Health::Unknown), TrunkState::Up);
        assert_eq!(TrunkState::of(true, Health::Online), TrunkState::Cooling);
        assert_eq!(TrunkState::of(true, Health::Offline), TrunkState::Offline);
        assert_eq!(TrunkState::of(false, Health::Offline), TrunkState::Offline);
        assert!(TrunkState::Up.takes_calls());
        assert!(!TrunkState::Cooling.takes_calls());
        assert!(!TrunkState::Offline.takes_calls());
    }
}
