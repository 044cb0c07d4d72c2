//! Whether the metrics endpoint answers, for `check` (README "Metrics").
//! `check` usually runs while the daemon is stopped, so an address that
//! nobody listens on but that could be bound is fine; something else
//! holding it, or answering without our metrics, is not.

use std::net::SocketAddr;
use std::time::Duration;

/// What was found at `metrics.listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A daemon answers with its metrics.
    Ours,
    /// Nobody listens, and the daemon could bind it.
    Free,
    /// Something answers, but not with our metrics (what it said).
    Foreign(String),
    /// Nobody answers and it cannot be bound (why).
    Unusable(String),
}

/// Asks `GET http://{addr}/metrics`; when nothing answers, tries to bind.
pub async fn probe(addr: SocketAddr) -> Probe {
    let url = format!("http://{addr}/metrics");
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => return Probe::Unusable(e.to_string()),
    };
    match client.get(&url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let ours = format!("# TYPE {}_", super::PREFIX);
            if status.is_success() && body.contains(&ours) {
                Probe::Ours
            } else {
                Probe::Foreign(format!("HTTP {status}"))
            }
        }
        Err(e) if e.is_connect() => match std::net::TcpListener::bind(addr) {
            Ok(_) => Probe::Free,
            Err(e) => Probe::Unusable(e.to_string()),
        },
        Err(e) => Probe::Foreign(e.without_url().to_string()),
    }
}
