//! `likes-readbench`: GetLikeCount latency for given posts, to show that a
//! read costs the same for a post with a million likes as for a post with
//! one (counts come from one counter row, never from counting likes).
//!
//! ```sh
//! likes-readbench --target 127.0.0.1:50051 --calls 2000 --post hot --post cold
//! ```
//! Prints one line per post: its count and the p50 / p99 / max latency of
//! `--calls` sequential calls, in microseconds.

use clap::Parser;
use hdrhistogram::Histogram;
use likes_proto::pb::{GetLikeCountRequest, like_service_client::LikeServiceClient};
use std::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// host:port of a running likes-api.
    #[arg(long)]
    target: String,
    /// Sequential calls per post.
    #[arg(long, default_value_t = 2000)]
    calls: u32,
    /// Posts to read (repeat the flag).
    #[arg(long = "post", required = true)]
    posts: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = LikeServiceClient::connect(format!("http://{}", args.target)).await?;
    for post in &args.posts {
        let mut latency = Histogram::<u64>::new(3)?;
        let mut count = 0;
        for _ in 0..args.calls {
            let started = Instant::now();
            count = client
                .get_like_count(GetLikeCountRequest {
                    post_id: post.clone(),
                })
                .await?
                .into_inner()
                .count;
            latency.record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        }
        println!(
            "post={post} count={count} calls={} p50_us={} p99_us={} max_us={}",
            args.calls,
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max()
        );
    }
    Ok(())
}
