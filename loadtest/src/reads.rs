//! `likes-loadtest reads`: GetLikeCount latency for given posts, to show that
//! a read costs the same for a post with a million likes as for a post with
//! one (counts come from one counter row, never from counting likes).
//!
//! ```sh
//! likes-loadtest reads --target 127.0.0.1:50051 --calls 2000 --post hot --post cold
//! ```

use crate::report::Latency;
use clap::Args;
use likes_proto::pb::GetLikeCountRequest;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Options of `likes-loadtest reads`.
#[derive(Debug, Clone, Args)]
pub struct ReadOptions {
    /// host:port of a running likes-api.
    #[arg(long)]
    pub target: String,
    /// Sequential calls per post.
    #[arg(long, default_value_t = 2000)]
    pub calls: u32,
    /// Posts to read (repeat the flag).
    #[arg(long = "post", required = true)]
    pub posts: Vec<String>,
}

/// One post's reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reads {
    pub post: String,
    /// Its count, as the last call answered.
    pub count: i64,
    pub latency_us: Latency,
}

/// `calls` sequential GetLikeCount calls per post, one connection.
pub async fn measure(options: &ReadOptions) -> anyhow::Result<Vec<Reads>> {
    let mut client = crate::driver::connect(&options.target, 1).await?.remove(0);
    let mut results = Vec::with_capacity(options.posts.len());
    for post in &options.posts {
        let mut latency = crate::driver::latency_histogram();
        let mut count = 0;
        for _ in 0..options.calls {
            let started = Instant::now();
            count = client
                .get_like_count(GetLikeCountRequest {
                    post_id: post.clone(),
                })
                .await?
                .into_inner()
                .count;
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            latency.saturating_record(micros.max(1));
        }
        results.push(Reads {
            post: post.clone(),
            count,
            latency_us: Latency::of_or_empty(&latency),
        });
    }
    Ok(results)
}
