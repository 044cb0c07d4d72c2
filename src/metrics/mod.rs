//! Prometheus metrics (README "Metrics"): what an operator watches on a
//! dashboard instead of reading log lines.
//!
//! This module sits beside `dialer`, above the campaign and the voice
//! agent: they keep plain counters and atomics for their own reasons (the
//! pass summary, the benchmark, `check`) and know nothing of Prometheus;
//! `collector` reads them at scrape time. So no registry is threaded
//! through the call paths, a scrape costs nothing between scrapes, and the
//! layering of README "Layout" holds (nothing below imports this).
//!
//! - `collector` — every metric, read from the running dialer on each scrape;
//! - `server` — the HTTP endpoint (`GET /metrics`) on `metrics.listen`;
//! - `probe` — whether the endpoint answers, for `check`.

pub mod collector;
pub mod probe;
pub mod server;

pub use collector::{Sources, PREFIX};
pub use server::MetricsServer;
