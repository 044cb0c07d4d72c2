//! The outbound campaign: who to call, on which trunk, and how calls end.

pub mod call;
pub mod evidence;
pub mod outcome;
pub mod pass;
pub mod preview;
pub mod reconcile;
pub mod router;
pub mod schedule;
pub mod selection;
pub mod trunks;
