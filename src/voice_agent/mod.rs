//! Inbound calls on the agent app (SPEC §9). Until the OpenAI agent is
//! built, every caller hears the fallback prompt and is hung up cleanly.

pub mod fallback;
