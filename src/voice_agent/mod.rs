//! Inbound calls on the agent app (README "A pass"). Until the OpenAI agent is
//! built, every caller hears the fallback prompt and is hung up cleanly.

pub mod fallback;
