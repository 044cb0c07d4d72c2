//! The outbound campaign: who to call, on which trunk, and how calls end.

pub mod attempt;
pub mod call;
pub mod pass;
pub mod preview;
pub mod reconcile;
pub mod schedule;
pub mod summary;
pub mod trunks;
