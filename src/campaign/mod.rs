//! The outbound campaign: who to call, on which trunk, and how calls end.

pub mod outcome;
pub mod preview;
pub mod selection;
pub mod trunks;
