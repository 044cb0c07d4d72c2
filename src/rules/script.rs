//! What an answered reminder call does next (README "The callee talks
//! back"): the answering-machine check, the reminder, the keypad menu and
//! its actions, as a state machine over plain events. `campaign::call`
//! carries each step out on Asterisk and feeds the events back.
//!
//! With no menu and no machine check this is the original call: the
//! reminder, then hang up. Keys are then ignored, so the call log is what
//! it always was.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a key does (`[menu] actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `continue` to the `[transfer]` destination: a person.
    Transfer,
    /// The reminder again, at most `MAX_REPEATS` times a call.
    Repeat,
    /// The voice agent takes the call, already knowing the client.
    Agent,
    /// Confirmation prompt, and the client is never dialled again.
    OptOut,
}

/// What to do when an answering machine took the call (`amd.on_machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMachine {
    Hangup,
    LeaveMessage,
}

/// Times the reminder may be asked for again in one call.
pub const MAX_REPEATS: u8 = 2;

/// The prompts an answered call plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    Reminder,
    Options,
    OptOutConfirmation,
}

/// The next thing to do on the channel. Every step after a key other than
/// `Nothing` first stops whatever is playing (`DELETE /playbacks/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Leave Stasis for `AMD()`; the channel comes back with a verdict.
    DetectMachine,
    Play(Prompt),
    /// Start the `menu.wait_secs` timer.
    WaitForDigit,
    Transfer,
    Agent,
    /// Record the opt-out, then play its confirmation.
    OptOut,
    HangUp,
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Answered,
    Detecting,
    Reminder,
    Options,
    Waiting,
    Confirming,
    /// The channel went on to the dialplan (transfer, agent).
    Left,
    Ending,
}

/// An answered call's script. Feed it what happens; do what it says.
#[derive(Debug, Clone)]
pub struct Script {
    actions: BTreeMap<char, Action>,
    amd: Option<OnMachine>,
    phase: Phase,
    repeats: u8,
    options_replayed: bool,
    machine: bool,
    reminder_heard: bool,
    opted_out: bool,
    menu_done: bool,
}

/// How the script ended, for the outcome (`campaign::call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Nothing the callee chose: decide from the events as ever.
    Plain,
    /// The options played and no key came in time, so the dialer hung up:
    /// the callee had the reminder and chose nothing (`completed`), even
    /// if their own keys (a repeat, an unmapped key) cut the reminder.
    MenuDone,
    /// A key sent the call on (`transfer` or `agent`).
    Left(Action),
    OptedOut,
    /// A machine answered; `message_left` when the reminder played to it in full.
    Machine {
        message_left: bool,
    },
}

impl Script {
    /// `actions` empty: no menu. `amd` `None`: no machine check.
    pub fn new(actions: BTreeMap<char, Action>, amd: Option<OnMachine>) -> Script {
        Script {
            actions,
            amd,
            phase: Phase::Answered,
            repeats: 0,
            options_replayed: false,
            machine: false,
            reminder_heard: false,
            opted_out: false,
            menu_done: false,
        }
    }

    /// The call was answered (its first `StasisStart`).
    pub fn answered(&mut self) -> Step {
        if self.phase != Phase::Answered {
            return Step::Nothing;
        }
        if self.amd.is_some() {
            self.phase = Phase::Detecting;
            Step::DetectMachine
        } else {
            self.reminder()
        }
    }

    /// `AMD()`'s `AMDSTATUS`. Anything but `MACHINE` (`HUMAN`, `NOTSURE`,
    /// a status this code does not know) gets the reminder: a person
    /// taken for a machine is worse than a message on a machine.
    pub fn verdict(&mut self, status: &str) -> Step {
        if self.phase != Phase::Detecting {
            return Step::Nothing;
        }
        if status == "MACHINE" {
            self.machine = true;
            if self.amd == Some(OnMachine::Hangup) {
                self.phase = Phase::Ending;
                return Step::HangUp;
            }
        }
        self.reminder()
    }

    /// The prompt playing now ended on its own (not cut by a key).
    pub fn finished(&mut self) -> Step {
        match self.phase {
            Phase::Reminder => {
                self.reminder_heard = true;
                if self.actions.is_empty() || self.machine {
                    self.phase = Phase::Ending;
                    Step::HangUp
                } else {
                    self.options()
                }
            }
            Phase::Options => {
                self.phase = Phase::Waiting;
                Step::WaitForDigit
            }
            Phase::Confirming => {
                self.phase = Phase::Ending;
                Step::HangUp
            }
            _ => Step::Nothing,
        }
    }

    /// The callee pressed `digit`.
    pub fn digit(&mut self, digit: char) -> Step {
        // A machine has nothing to choose; after a choice, keys mean nothing.
        if self.machine
            || !matches!(
                self.phase,
                Phase::Reminder | Phase::Options | Phase::Waiting
            )
        {
            return Step::Nothing;
        }
        match self.actions.get(&digit) {
            Some(Action::Transfer) => {
                self.phase = Phase::Left;
                Step::Transfer
            }
            Some(Action::Agent) => {
                self.phase = Phase::Left;
                Step::Agent
            }
            Some(Action::OptOut) => {
                self.phase = Phase::Confirming;
                self.opted_out = true;
                Step::OptOut
            }
            Some(Action::Repeat) if self.repeats < MAX_REPEATS => {
                self.repeats += 1;
                self.reminder()
            }
            // An unmapped key (or one repeat too many) replays the options
            // once; after that such keys are ignored.
            _ if !self.options_replayed && !self.actions.is_empty() => {
                self.options_replayed = true;
                self.options()
            }
            _ => Step::Nothing,
        }
    }

    /// `menu.wait_secs` passed without a key after the options.
    pub fn wait_over(&mut self) -> Step {
        if self.phase != Phase::Waiting {
            return Step::Nothing;
        }
        self.phase = Phase::Ending;
        self.menu_done = true;
        Step::HangUp
    }

    /// A `transfer`/`agent` continue failed (the channel is gone or
    /// Asterisk refused): the call ends as if no key had been pressed.
    pub fn left_failed(&mut self) -> Step {
        if self.phase != Phase::Left {
            return Step::Nothing;
        }
        self.phase = Phase::Ending;
        Step::HangUp
    }

    /// Whether the reminder has played to its end at least once.
    pub fn reminder_heard(&self) -> bool {
        self.reminder_heard
    }

    pub fn ending(&self, left: Option<Action>) -> Ending {
        if let Some(action) = left.filter(|_| self.phase == Phase::Left) {
            Ending::Left(action)
        } else if self.opted_out {
            Ending::OptedOut
        } else if self.machine {
            Ending::Machine {
                message_left: self.reminder_heard,
            }
        } else if self.menu_done {
            Ending::MenuDone
        } else {
            Ending::Plain
        }
    }

    fn reminder(&mut self) -> Step {
        self.phase = Phase::Reminder;
        Step::Play(Prompt::Reminder)
    }

    fn options(&mut self) -> Step {
        self.phase = Phase::Options;
        Step::Play(Prompt::Options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn menu() -> Script {
        let actions = BTreeMap::from([
            ('1', Action::Transfer),
            ('2', Action::Repeat),
            ('9', Action::OptOut),
            ('0', Action::Agent),
        ]);
        Script::new(actions, None)
    }

    #[test]
    fn without_menu_or_machine_check_it_is_the_plain_reminder() {
        let mut s = Script::new(BTreeMap::new(), None);
        assert_eq!(s.answered(), Step::Play(Prompt::Reminder));
        // Keys mean nothing and never cut the prompt.
        assert_eq!(s.digit('1'), Step::Nothing);
        assert_eq!(s.finished(), Step::HangUp);
        assert!(s.reminder_heard());
        assert_eq!(s.ending(None), Ending::Plain);
    }

    #[test]
    fn options_follow_the_reminder_then_the_wait() {
        let mut s = menu();
        assert_eq!(s.answered(), Step::Play(Prompt::Reminder));
        assert_eq!(s.finished(), Step::Play(Prompt::Options));
        assert_eq!(s.finished(), Step::WaitForDigit);
        assert_eq!(s.wait_over(), Step::HangUp);
        assert_eq!(s.ending(None), Ending::MenuDone);
        assert!(s.reminder_heard());
    }

    #[test]
    fn a_menu_that_ran_out_after_a_cut_reminder_is_still_done() {
        let mut s = menu();
        s.answered();
        // An unmapped key cuts the reminder and replays the options.
        assert_eq!(s.digit('5'), Step::Play(Prompt::Options));
        assert_eq!(s.finished(), Step::WaitForDigit);
        assert_eq!(s.wait_over(), Step::HangUp);
        assert!(!s.reminder_heard());
        assert_eq!(s.ending(None), Ending::MenuDone);
    }

    #[test]
    fn each_key_does_its_action_during_any_prompt_or_the_wait() {
        for at in 0..3 {
            let mut s = menu();
            s.answered();
            for _ in 0..at {
                s.finished();
            }
            assert_eq!(s.digit('1'), Step::Transfer, "transfer at {at}");
            assert_eq!(
                s.ending(Some(Action::Transfer)),
                Ending::Left(Action::Transfer)
            );
            assert_eq!(s.digit('9'), Step::Nothing, "keys after leaving");

            let mut s = menu();
            s.answered();
            for _ in 0..at {
                s.finished();
            }
            assert_eq!(s.digit('0'), Step::Agent);
            assert_eq!(s.ending(Some(Action::Agent)), Ending::Left(Action::Agent));

            let mut s = menu();
            s.answered();
            for _ in 0..at {
                s.finished();
            }
            assert_eq!(s.digit('9'), Step::OptOut);
            assert_eq!(s.digit('1'), Step::Nothing, "keys during the confirmation");
            assert_eq!(s.finished(), Step::HangUp);
            assert_eq!(s.ending(None), Ending::OptedOut);
        }
    }

    #[test]
    fn repeat_at_most_twice_then_it_is_an_unmapped_key() {
        let mut s = menu();
        s.answered();
        assert_eq!(s.digit('2'), Step::Play(Prompt::Reminder));
        assert_eq!(s.finished(), Step::Play(Prompt::Options));
        assert_eq!(s.digit('2'), Step::Play(Prompt::Reminder));
        assert_eq!(s.finished(), Step::Play(Prompt::Options));
        // Third time: the options once more, then nothing.
        assert_eq!(s.digit('2'), Step::Play(Prompt::Options));
        assert_eq!(s.digit('2'), Step::Nothing);
        assert_eq!(s.finished(), Step::WaitForDigit);
        assert_eq!(s.digit('2'), Step::Nothing);
        assert_eq!(s.wait_over(), Step::HangUp);
    }

    #[test]
    fn an_unmapped_key_replays_the_options_once() {
        let mut s = menu();
        s.answered();
        s.finished();
        assert_eq!(s.finished(), Step::WaitForDigit);
        assert_eq!(s.digit('5'), Step::Play(Prompt::Options));
        assert_eq!(s.finished(), Step::WaitForDigit);
        assert_eq!(s.digit('5'), Step::Nothing);
        // A mapped key still works.
        assert_eq!(s.digit('1'), Step::Transfer);
    }

    #[test]
    fn a_cut_reminder_is_not_heard() {
        let mut s = menu();
        s.answered();
        assert_eq!(s.digit('2'), Step::Play(Prompt::Reminder));
        assert!(!s.reminder_heard());
        s.finished();
        assert!(s.reminder_heard());
    }

    #[test]
    fn machine_check_comes_first_and_its_verdict_decides() {
        for (on_machine, status, first, message) in [
            (
                OnMachine::Hangup,
                "HUMAN",
                Step::Play(Prompt::Reminder),
                None,
            ),
            (
                OnMachine::Hangup,
                "NOTSURE",
                Step::Play(Prompt::Reminder),
                None,
            ),
            (
                OnMachine::Hangup,
                "HANGUP",
                Step::Play(Prompt::Reminder),
                None,
            ),
            (OnMachine::Hangup, "MACHINE", Step::HangUp, Some(false)),
            (
                OnMachine::LeaveMessage,
                "MACHINE",
                Step::Play(Prompt::Reminder),
                Some(true),
            ),
            (
                OnMachine::LeaveMessage,
                "HUMAN",
                Step::Play(Prompt::Reminder),
                None,
            ),
        ] {
            let mut s = Script::new(BTreeMap::from([('1', Action::Transfer)]), Some(on_machine));
            assert_eq!(s.answered(), Step::DetectMachine);
            assert_eq!(s.digit('1'), Step::Nothing, "no keys before the verdict");
            assert_eq!(s.verdict(status), first, "{on_machine:?} {status}");
            if first == Step::HangUp {
                assert_eq!(
                    s.ending(None),
                    Ending::Machine {
                        message_left: false
                    }
                );
                continue;
            }
            match message {
                // The message: no menu, no keys, hang up after it.
                Some(left) => {
                    assert_eq!(s.digit('1'), Step::Nothing);
                    assert_eq!(s.finished(), Step::HangUp);
                    assert_eq!(s.ending(None), Ending::Machine { message_left: left });
                }
                None => {
                    assert_eq!(s.finished(), Step::Play(Prompt::Options));
                    assert_eq!(s.ending(None), Ending::Plain);
                }
            }
        }
        // A message cut short by the machine hanging up is not left.
        let mut s = Script::new(BTreeMap::new(), Some(OnMachine::LeaveMessage));
        s.answered();
        s.verdict("MACHINE");
        assert_eq!(
            s.ending(None),
            Ending::Machine {
                message_left: false
            }
        );
    }

    #[test]
    fn a_failed_transfer_hangs_up() {
        let mut s = menu();
        s.answered();
        s.finished();
        assert_eq!(s.digit('1'), Step::Transfer);
        assert_eq!(s.left_failed(), Step::HangUp);
        assert_eq!(s.ending(None), Ending::Plain);
        assert!(s.reminder_heard());
    }
}
