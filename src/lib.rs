//! overdue-dialer: phones an ISP's clients whose invoices are overdue,
//! through Asterisk's ARI, and writes every outcome back to MySQL.
//!
//! Layout (README "Layout"): every rule is a plain function in `rules`,
//! with no I/O and no clock; I/O sits at the edges (`billing` for MySQL,
//! `ari` for Asterisk), and `campaign` and `voice_agent` put them together.

pub mod ari;
pub mod billing;
pub mod campaign;
pub mod check;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dialer;
pub mod logging;
pub mod metrics;
pub mod realtime_sim;
pub mod rules;
pub mod sim;
pub mod voice_agent;
