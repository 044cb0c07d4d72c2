//! The outbound campaign (`overdue-app`): passes, attempts, calls, the
//! trunk pool and crash recovery, carrying out the decisions of `rules`.

pub mod attempt;
pub mod call;
pub mod pass;
pub mod preview;
pub mod probe;
pub mod reconcile;
pub mod schedule;
pub mod summary;
pub mod trunks;
