//! An example client of `likes.v1.LikeService`: what an internal service
//! does on a product page. It likes posts as a user, each call with a
//! deadline and the bearer token, and retries a call answered
//! `UNAVAILABLE` after the delay the server's `RetryInfo` asks for (Like is
//! idempotent, so a retry is always safe); then it reads the feed page of
//! those posts with one `GetLikeSummaries` and prints a line a post:
//! `<post> <count> liked|not-liked`.
//!
//! ```sh
//! cargo run -p likes-example-client -- --user u1 p1 p2 p3
//! LIKES_TOKEN=… cargo run -p likes-example-client -- \
//!     --addr https://likes:50051 --ca-file ca.pem --user u1 p1
//! ```

use clap::Parser;
use likes_proto::pb::{
    GetLikeSummariesRequest, LikeRequest, like_service_client::LikeServiceClient,
};
use std::time::Duration;
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
};
use tonic_types::StatusExt;

#[derive(Debug, Parser)]
struct Args {
    /// The api.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// PEM CAs of an api that serves TLS (then `--addr https://…`).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Bearer token, when the api asks for one (`api.auth_token`).
    #[arg(long, env = "LIKES_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Who likes.
    #[arg(long)]
    user: String,
    /// The posts to like, then to read as a feed page (at most 100).
    #[arg(required = true)]
    posts: Vec<String>,
    /// Each call's deadline.
    #[arg(long, default_value_t = 2000)]
    deadline_ms: u64,
    /// How many times a call is sent at most.
    #[arg(long, default_value_t = 10)]
    attempts: u32,
}

/// Builds each request: the deadline (sent as `grpc-timeout`) and the token.
#[derive(Debug, Clone)]
struct Calls {
    deadline: Duration,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Calls {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }
}

/// Calls `call` until it is not `UNAVAILABLE`, waiting between attempts as
/// long as the server's `RetryInfo` says (100 ms when it says nothing), at
/// most `attempts` times. Returns the answer and how many retries it took.
async fn with_retries<T, F, Fut>(attempts: u32, mut call: F) -> (Result<T, Status>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut retries = 0;
    loop {
        match call().await {
            Err(status) if status.code() == Code::Unavailable && retries + 1 < attempts => {
                let delay = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(delay).await;
                retries += 1;
            }
            answer => return (answer, retries),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let calls = Calls {
        deadline: Duration::from_millis(args.deadline_ms),
        authorization: args
            .token
            .as_deref()
            .map(|token| format!("Bearer {token}").parse())
            .transpose()?,
    };
    let mut endpoint = Channel::from_shared(args.addr.clone())?;
    if let Some(ca_file) = &args.ca_file {
        let ca = Certificate::from_pem(std::fs::read(ca_file)?);
        endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(ca))?;
    }
    let channel = endpoint.connect_lazy();
    let client = LikeServiceClient::new(channel);

    let mut retries = 0;
    for post in &args.posts {
        let (answer, retried) = with_retries(args.attempts, || {
            let mut client = client.clone();
            let request = calls.request(LikeRequest {
                post_id: post.clone(),
                user_id: args.user.clone(),
            });
            async move { client.like(request).await }
        })
        .await;
        answer.map_err(|status| anyhow::anyhow!("Like {post}: {status}"))?;
        retries += retried;
    }
    eprintln!("liked {} posts, {retries} retries", args.posts.len());

    // One call for the whole feed page: counts and whether the user likes
    // each. Reads trail the writes by a few dozen milliseconds.
    let (page, _) = with_retries(args.attempts, || {
        let mut client = client.clone();
        let request = calls.request(GetLikeSummariesRequest {
            viewer_id: args.user.clone(),
            post_ids: args.posts.clone(),
        });
        async move { client.get_like_summaries(request).await }
    })
    .await;
    let page = page.map_err(|status| anyhow::anyhow!("GetLikeSummaries: {status}"))?;
    let summaries = page.into_inner().summaries;
    for post in &args.posts {
        let summary = summaries.get(post).cloned().unwrap_or_default();
        let liked = if summary.viewer_liked {
            "liked"
        } else {
            "not-liked"
        };
        println!("{post} {} {liked}", summary.count);
    }
    Ok(())
}
