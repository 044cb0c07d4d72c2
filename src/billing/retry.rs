//! Writes that must land although MySQL blinks: an outcome, an inbound
//! call's row. One backoff for all of them (200 ms, doubling, at most
//! 30 s between tries) so they behave alike when the server is away.

use std::future::Future;
use std::time::Duration;

use super::BillingError;

/// Runs `write` until it succeeds, fails for a reason retrying cannot fix,
/// or `tries` attempts have failed (`None`: no limit). `retrying(n, e)`
/// is told of each transient failure before the wait, for logging; the
/// result says how many attempts it took.
pub(crate) async fn until_written<T, W, F>(
    tries: Option<u32>,
    mut write: W,
    mut retrying: impl FnMut(u32, &BillingError),
) -> (Result<T, BillingError>, u32)
where
    W: FnMut() -> F,
    F: Future<Output = Result<T, BillingError>>,
{
    let mut wait = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match write().await {
            Err(e) if e.is_transient() && tries.is_none_or(|n| attempt < n) => {
                retrying(attempt, &e);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            done => return (done, attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> BillingError {
        BillingError::Mysql(mysql_async::Error::Io(mysql_async::IoError::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_until_written_or_the_limit() {
        let mut calls = 0;
        let (done, attempts) = until_written(
            None,
            || {
                calls += 1;
                let fail = calls < 4;
                async move {
                    if fail {
                        Err(transient())
                    } else {
                        Ok(7)
                    }
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!((done.ok(), attempts), (Some(7), 4));

        let mut told = Vec::new();
        let (done, attempts) = until_written(
            Some(3),
            || async { Err::<(), _>(transient()) },
            |n, _| told.push(n),
        )
        .await;
        assert!(done.is_err());
        assert_eq!((attempts, told), (3, vec![1, 2]));

        // A mistake in the data is not retried.
        let (done, attempts) = until_written(
            None,
            || async { Err::<(), _>(BillingError::Schema("no table".into())) },
            |_, _| panic!("retried a permanent error"),
        )
        .await;
        assert!(done.is_err());
        assert_eq!(attempts, 1);
    }
}
