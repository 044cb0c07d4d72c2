//! The product's rules, as plain functions over plain data: no I/O, no
//! clock, no async runtime. Everything here is decided from its arguments,
//! so each rule is tested exhaustively and on its own; the I/O around them
//! (MySQL in `billing`, Asterisk in `ari`, the passes in `campaign`) only
//! gathers the facts and carries out the decision. `.ci/run` fails if a
//! file here names an async runtime, a database or HTTP client, or the
//! system clock.
//!
//! Where each rule lives (README "Who is called", "A pass"):
//! - `cutoff` — the cut-off-day rule;
//! - `phone` — Colombian mobile numbers, masking;
//! - `window`, `holidays` — the legal calling window (Ley 2300) and
//!   Colombia's computed holidays;
//! - `selection` — one flagged client → call or the reason not to, with the
//!   retry policy and the contact limit;
//! - `outcome` — the outcomes and "delivered means heard";
//! - `evidence` — how a call ended, from its events and what the daemon did;
//! - `media` — a prompt's placeholders filled for one client;
//! - `script` — what an answered reminder call does next: the machine
//!   check, the reminder, the keypad menu and its actions;
//! - `inbound` — the voice agent: who is calling, what it may know,
//!   promises to pay, how an inbound call ended;
//! - `trunks` — endpoint templates, trunk choice, cool-downs, whose fault a
//!   refusal was, and failover between trunks.

pub mod cutoff;
pub mod evidence;
pub mod holidays;
pub mod inbound;
pub mod media;
pub mod outcome;
pub mod phone;
pub mod script;
pub mod selection;
pub mod trunks;
pub mod window;
