//! The billing MySQL database: the daemon's schema, and every query the
//! daemon runs. The rules that judge its data are in `rules`.

pub mod demo_data;
pub mod inbound;
pub mod private_server;
pub mod report;
mod retry;
pub mod schema;
pub mod store;
pub mod tally;

pub use store::{Billing, CallRecord, Claim, Orphan, Seen};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("MySQL: {0}")]
    Mysql(#[from] mysql_async::Error),
    #[error("schema: {0}")]
    Schema(String),
}

impl BillingError {
    /// Worth retrying later (connection lost, server gone, lock contention),
    /// as opposed to a mistake in the data or the schema.
    pub fn is_transient(&self) -> bool {
        match self {
            BillingError::Mysql(mysql_async::Error::Io(_))
            | BillingError::Mysql(mysql_async::Error::Driver(_)) => true,
            BillingError::Mysql(mysql_async::Error::Server(e)) => {
                matches!(e.code, 1205 | 1213 | 2006 | 2013 | 1040 | 1053)
            }
            _ => false,
        }
    }
}
