//! Drives likes through a running api; [`check_exactly`] (from
//! [`crate::verify`]) then checks the result in PostgreSQL.

pub use crate::verify::check_exactly;
use futures_util::{StreamExt, stream};
use likes_proto::pb::{LikeRequest, like_service_client::LikeServiceClient};
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Pairs whose Like was answered OK.
    pub acknowledged: Vec<(String, String)>,
    /// Calls answered UNAVAILABLE (or DEADLINE_EXCEEDED) and retried.
    pub retried: u64,
}

/// `n` likes over `posts` posts, user ids unique per like, tagged by `run`.
pub fn pairs(run: &str, n: usize, posts: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("post-{}", i % posts), format!("{run}-user-{i}")))
        .collect()
}

/// Sends a Like for every pair, `concurrency` at a time over the clients.
/// UNAVAILABLE and DEADLINE_EXCEEDED are retried (as a caller should) for
/// up to `retry_for`; any other error fails the run.
pub async fn like_all(
    clients: &[LikeServiceClient<Channel>],
    pairs: Vec<(String, String)>,
    concurrency: usize,
    retry_for: Duration,
) -> anyhow::Result<LoadOutcome> {
    let results: Vec<anyhow::Result<((String, String), u64)>> =
        stream::iter(pairs.into_iter().enumerate())
            .map(|(i, pair)| {
                let mut client = clients[i % clients.len()].clone();
                async move {
                    let deadline = Instant::now() + retry_for;
                    let mut retried = 0;
                    loop {
                        let mut request = tonic::Request::new(LikeRequest {
                            post_id: pair.0.clone(),
                            user_id: pair.1.clone(),
                        });
                        request.set_timeout(Duration::from_secs(5));
                        match client.like(request).await {
                            Ok(_) => return Ok((pair, retried)),
                            Err(status)
                                if matches!(
                                    status.code(),
                                    Code::Unavailable | Code::DeadlineExceeded
                                ) && Instant::now() < deadline =>
                            {
                                retried += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(status) => anyhow::bail!("Like {pair:?} failed: {status:?}"),
                        }
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let mut outcome = LoadOutcome::default();
    for result in results {
        let (pair, retried) = result?;
        outcome.acknowledged.push(pair);
        outcome.retried += retried;
    }
    Ok(outcome)
}
