//! overdue-dialer: phones an ISP's clients whose invoices are overdue,
//! through Asterisk's ARI, and writes every outcome back to MySQL.
//!
//! Layout: pure rules live next to the data they judge (`billing::cutoff`,
//! `billing::phone`, `compliance`, `campaign::selection`); I/O sits at the
//! edges (`billing::store` for MySQL, `ari` for Asterisk).

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
pub mod rules;
pub mod sim;
pub mod voice_agent;
