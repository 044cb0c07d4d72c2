//! What the simulated PBX does with a dialled endpoint: the lab's dialplan
//! from `tests/fixtures/ari/LAB.md`, as plain functions.
//!
//! `Local/<n>@sim-pstn` reaches the fake PSTN directly; `Local/<n>@from-voip`
//! goes through the production-like context that `Dial()`s the PSTN (and
//! sends 3241000752 to `openai-app`); `Local/<n>@sim-pstn-dtmf` is the later
//! lab's callee who presses 1; `Local/<n>@sim-human`, `@sim-notsure` and
//! `@sim-machine` are the later lab's greetings that `AMD()` was recorded
//! against (fact 17); `Local/100@agents` is the human agent a caller is
//! bridged with (fact 18); `SIP/…` and `PJSIP/…` are direct trunk endpoints
//! whose channel carries the Q.850 cause itself.

use std::time::Duration;

use super::AmdVerdict;

/// How the callee behaves, picked by the last digit of the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callee {
    /// Answers, then hangs up after this long (0–3: 20 s, 7: 2 s, 8: 5 min).
    Answers { hangs_up_after: Duration },
    /// 4: `Busy()`.
    Busy,
    /// 5: rings and never answers.
    NeverAnswers,
    /// 6: `Congestion()`.
    Congestion,
    /// 9: `Hangup(1)`, unallocated number.
    Unallocated,
    /// Cause 21, call rejected (not in the lab's table; set per number).
    Rejects,
}

impl Callee {
    pub fn for_number(number: &str) -> Callee {
        match number.bytes().last() {
            Some(b'0'..=b'3') => Callee::Answers {
                hangs_up_after: Duration::from_secs(20),
            },
            Some(b'4') => Callee::Busy,
            Some(b'5') => Callee::NeverAnswers,
            Some(b'6') => Callee::Congestion,
            Some(b'7') => Callee::Answers {
                hangs_up_after: Duration::from_secs(2),
            },
            Some(b'8') => Callee::Answers {
                hangs_up_after: Duration::from_secs(300),
            },
            _ => Callee::Unallocated,
        }
    }

    pub fn answers(&self) -> bool {
        matches!(self, Callee::Answers { .. })
    }

    /// The lab's `Goto` labels and applications, for `ChannelDialplan` events.
    pub fn digit(number: &str) -> char {
        number.chars().last().unwrap_or('0')
    }
}

/// How a callee of the later lab greets (`LAB.md`, contexts added for the
/// later scenarios), and what Asterisk's `AMD()` made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// `sim-human`: a short "hello" then real silence.
    Human,
    /// `sim-notsure`: the "hello" then `Wait()`, which sends no audio frames.
    NotSure,
    /// `sim-machine`: a 5.66 s voicemail greeting.
    Machine,
}

impl Greeting {
    /// The lab's context for this greeting.
    pub fn context(self) -> &'static str {
        match self {
            Greeting::Human => "sim-human",
            Greeting::NotSure => "sim-notsure",
            Greeting::Machine => "sim-machine",
        }
    }

    /// The verdict and delay recorded for this greeting (fact 17).
    pub fn verdict(self) -> AmdVerdict {
        match self {
            Greeting::Human => AmdVerdict::human(),
            Greeting::NotSure => AmdVerdict::notsure(),
            Greeting::Machine => AmdVerdict::machine(),
        }
    }
}

/// The inbound number that the `from-voip` context sends to `openai-app`.
pub const AGENT_NUMBER: &str = "3241000752";

/// How an originated endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `Local/<n>@sim-pstn`.
    LocalPstn { number: String },
    /// `Local/<n>@sim-pstn-dtmf`: answers, and presses 1 two seconds later.
    LocalPstnDtmf { number: String },
    /// `Local/<n>@sim-human`, `@sim-notsure`, `@sim-machine`: answers and
    /// greets (recordings `amd-human`, `amd-notsure`, `amd-machine`).
    LocalGreeting { number: String, greeting: Greeting },
    /// `Local/100@agents`: a human agent who answers, says hello, waits 3 s
    /// and hangs up (recording `callee-dtmf-bridge`).
    LocalAgents { number: String },
    /// `Local/<n>@from-voip`, dialling the PSTN from its `;2` half.
    LocalFromVoip { number: String },
    /// `Local/3241000752@from-voip`: answered and sent to `openai-app`.
    LocalAgent,
    /// `Local/<n>@<any other context>`: both halves die at once, cause 0.
    LocalUnknownContext { number: String, context: String },
    /// `SIP/<trunk>/<n>` or `PJSIP/<n>@<trunk>`.
    Direct {
        tech: String,
        trunk: String,
        number: String,
        dialstring: String,
    },
    /// A technology Asterisk has no driver for: 500 Allocation failed.
    Unavailable,
}

/// Parses an ARI `endpoint` the way the lab's Asterisk would route it.
pub fn route(endpoint: &str) -> Route {
    let Some((tech, resource)) = endpoint.split_once('/') else {
        return Route::Unavailable;
    };
    match tech {
        "Local" => {
            let (number, context) = resource.split_once('@').unwrap_or((resource, "default"));
            let number = number.to_owned();
            match context {
                "sim-pstn" => Route::LocalPstn { number },
                "sim-pstn-dtmf" => Route::LocalPstnDtmf { number },
                "sim-human" | "sim-notsure" | "sim-machine" => Route::LocalGreeting {
                    greeting: match context {
                        "sim-human" => Greeting::Human,
                        "sim-notsure" => Greeting::NotSure,
                        _ => Greeting::Machine,
                    },
                    number,
                },
                // The lab defines only the agent at 100; another extension
                // there fails as an unknown one does.
                "agents" if number == "100" => Route::LocalAgents { number },
                "from-voip" if number == AGENT_NUMBER => Route::LocalAgent,
                "from-voip" => Route::LocalFromVoip { number },
                other => Route::LocalUnknownContext {
                    number,
                    context: other.to_owned(),
                },
            }
        }
        "PJSIP" => {
            // PJSIP/<number>@<endpoint>
            let (number, trunk) = resource.split_once('@').unwrap_or((resource, resource));
            Route::Direct {
                tech: tech.into(),
                trunk: trunk.into(),
                number: number.into(),
                dialstring: resource.into(),
            }
        }
        "SIP" | "IAX2" | "DAHDI" => {
            // SIP/<peer>/<number>
            let (trunk, number) = resource.split_once('/').unwrap_or((resource, ""));
            Route::Direct {
                tech: tech.into(),
                trunk: trunk.into(),
                number: number.into(),
                dialstring: resource.into(),
            }
        }
        _ => Route::Unavailable,
    }
}

impl Route {
    /// The dialled number, as the per-number hooks of `SimConfig` key it.
    pub fn number(&self) -> &str {
        match self {
            Route::LocalPstn { number }
            | Route::LocalPstnDtmf { number }
            | Route::LocalGreeting { number, .. }
            | Route::LocalAgents { number }
            | Route::LocalFromVoip { number }
            | Route::LocalUnknownContext { number, .. }
            | Route::Direct { number, .. } => number,
            Route::LocalAgent => AGENT_NUMBER,
            Route::Unavailable => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_table() {
        assert!(
            matches!(Callee::for_number("3001234560"), Callee::Answers { hangs_up_after } if hangs_up_after.as_secs() == 20)
        );
        assert_eq!(Callee::for_number("3001234564"), Callee::Busy);
        assert_eq!(Callee::for_number("3001234565"), Callee::NeverAnswers);
        assert_eq!(Callee::for_number("3001234566"), Callee::Congestion);
        assert!(
            matches!(Callee::for_number("3001234567"), Callee::Answers { hangs_up_after } if hangs_up_after.as_secs() == 2)
        );
        assert_eq!(Callee::for_number("3001234569"), Callee::Unallocated);
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("Local/3001234560@sim-pstn"),
            Route::LocalPstn {
                number: "3001234560".into()
            }
        );
        assert_eq!(
            route("Local/3001234560@from-voip"),
            Route::LocalFromVoip {
                number: "3001234560".into()
            }
        );
        assert_eq!(route("Local/3241000752@from-voip"), Route::LocalAgent);
        assert_eq!(
            route("Local/3001234561@sim-pstn-dtmf"),
            Route::LocalPstnDtmf {
                number: "3001234561".into()
            }
        );
        assert_eq!(
            route("Local/3001234560@sim-machine"),
            Route::LocalGreeting {
                number: "3001234560".into(),
                greeting: Greeting::Machine
            }
        );
        assert_eq!(
            route("Local/100@agents"),
            Route::LocalAgents {
                number: "100".into()
            }
        );
        assert!(matches!(
            route("Local/101@agents"),
            Route::LocalUnknownContext { .. }
        ));
        assert!(matches!(
            route("Local/3001234560@no-such-context"),
            Route::LocalUnknownContext { .. }
        ));
        assert_eq!(
            route("PJSIP/3001234560@voip_issabel"),
            Route::Direct {
                tech: "PJSIP".into(),
                trunk: "voip_issabel".into(),
                number: "3001234560".into(),
                dialstring: "3001234560@voip_issabel".into()
            }
        );
        assert!(
            matches!(route("SIP/voip_issabel/3001234560"), Route::Direct { ref number, .. } if number == "3001234560")
        );
        assert_eq!(route("Foo/123"), Route::Unavailable);
        assert_eq!(route("garbage"), Route::Unavailable);
    }
}
