//! Asterisk's REST Interface: the REST client, the event types and the
//! supervised event WebSocket.

pub mod client;
pub mod connection;
pub mod events;
pub mod model;
pub mod router;

pub use client::{AriClient, AriError, Destination, ExternalMedia, Originate};
pub use connection::{Backoff, ConnState, EventConnection};
pub use events::{Envelope, Event};
