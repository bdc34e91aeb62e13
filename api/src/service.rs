//! The `likes.v1.LikeService` implementation.

use crate::{counts::CountCache, error::ApiError, pages, publisher::Publisher, validate, watch};
use likes_common::config::ApiSettings;
use likes_common::ids::{PostId, UserId};
use likes_db::{ReadPools, repository};
use likes_proto::events::{LikeEvent, like_event::Action};
use likes_proto::pb::{
    GetLikeCountRequest, GetLikeCountResponse, GetLikeCountsRequest, GetLikeCountsResponse,
    GetLikeSummariesRequest, GetLikeSummariesResponse, HasLikedRequest, HasLikedResponse,
    LikeRequest, LikeResponse, LikeSummary, Liker, ListLikersRequest, ListLikersResponse,
    UnlikeRequest, UnlikeResponse, WatchLikeCountsRequest, like_service_server::LikeService,
};
use std::sync::Arc;
use std::{collections::HashSet, time::Duration};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tracing::{Span, instrument};
use uuid::Uuid;

/// Serves LikeService: writes go to the queue; counts come from the count
/// cache, other reads from PostgreSQL.
#[derive(Debug, Clone)]
pub struct LikeApi {
    publisher: Arc<Publisher>,
    reads: ReadPools,
    counts: CountCache,
    metrics: Arc<RpcMetrics>,
    /// The places of WatchLikeCounts streams.
    watchers: Arc<Semaphore>,
    watch_limit: usize,
    watch_interval: Duration,
    /// Cancelled when the api stops: streams end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl LikeApi {
    /// Admission (`api.max_concurrent_requests`) happens before a call gets
    /// here, in [`crate::admission`]. Call after the metrics recorder is
    /// installed: the handles of the usual outcomes are taken here, once.
    pub fn new(
        publisher: Arc<Publisher>,
        reads: ReadPools,
        counts: CountCache,
        settings: &ApiSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            publisher,
            reads,
            counts,
            metrics: Arc::new(RpcMetrics::new()),
            watchers: Arc::new(Semaphore::new(settings.max_watch_streams)),
            watch_limit: settings.max_watch_streams,
            watch_interval: settings.watch_min_interval(),
            shutdown,
        }
    }

    /// Stamps the event, publishes it and waits for the broker's confirm.
    async fn enqueue(
        &self,
        post: PostId,
        user: UserId,
        action: Action,
    ) -> Result<String, ApiError> {
        let event = LikeEvent {
            event_id: Uuid::now_v7().to_string(),
            post_id: post.into_inner(),
            user_id: user.into_inner(),
            action: action.into(),
            occurred_at_micros: likes_common::time::now_micros(),
        };
        Span::current().record("event.id", event.event_id.as_str());
        let event_id = event.event_id.clone();
        self.publisher.publish(event).await?;
        Ok(event_id)
    }
}

#[tonic::async_trait]
impl LikeService for LikeApi {
    type WatchLikeCountsStream = ReceiverStream<watch::Sent>;

    #[instrument(name = "GetLikeSummaries", skip_all, fields(posts.count, viewer.id))]
    async fn get_like_summaries(
        &self,
        request: Request<GetLikeSummariesRequest>,
    ) -> Result<Response<GetLikeSummariesResponse>, Status> {
        observed(&self.metrics.get_like_summaries, async move {
            let GetLikeSummariesRequest {
                viewer_id,
                post_ids,
            } = request.into_inner();
            let viewer = validate::viewer(viewer_id)?;
            let posts = distinct(validate::post_ids_at_most(
                post_ids,
                validate::MAX_PAGE_POSTS,
            )?);
            let span = Span::current();
            span.record("posts.count", posts.len());
            if let Some(viewer) = &viewer {
                span.record("viewer.id", viewer.as_str());
            }
            if posts.is_empty() {
                return Ok(Response::new(GetLikeSummariesResponse::default()));
            }
            // With a viewer, the counts memory lacks and the viewer's states
            // are one statement; without, a warm cache needs none.
            let (counts, liked) = match &viewer {
                Some(viewer) => {
                    let lookup = self.counts.lookup(&posts).await;
                    let (loaded, liked) = self
                        .reads
                        .read(|conn| {
                            let (viewer, posts) = (viewer.clone(), posts.clone());
                            let missing = lookup.missing().to_vec();
                            Box::pin(async move {
                                repository::summaries(conn, &viewer, &posts, &missing).await
                            })
                        })
                        .await
                        .map_err(ApiError::from)?;
                    (self.counts.settle(lookup, Ok(loaded)).await, liked)
                }
                None => (self.counts.counts(&posts).await, HashSet::new()),
            };
            let counts = counts.map_err(ApiError::from)?;
            let summaries = counts
                .into_iter()
                .map(|(post, count)| {
                    let viewer_liked = liked.contains(&post);
                    (
                        post,
                        LikeSummary {
                            count,
                            viewer_liked,
                        },
                    )
                })
                .collect();
            Ok(Response::new(GetLikeSummariesResponse { summaries }))
        })
        .await
    }

    #[instrument(name = "ListLikers", skip_all, fields(post.id))]
    async fn list_likers(
        &self,
        request: Request<ListLikersRequest>,
    ) -> Result<Response<ListLikersResponse>, Status> {
        observed(&self.metrics.list_likers, async move {
            let ListLikersRequest {
                post_id,
                page_size,
                page_token,
            } = request.into_inner();
            let post = validate::post_id("post_id", post_id)?;
            Span::current().record("post.id", post.as_str());
            let size = validate::likers_page_size(page_size)?;
            let after = pages::decode(&post, &page_token)?;
            // One more than the page: whether another page follows.
            let limit = i64::try_from(size + 1).expect("at most 101");
            let mut found = self
                .reads
                .read(|conn| {
                    let (post, after) = (post.clone(), after.clone());
                    Box::pin(
                        async move { repository::likers(conn, &post, after.as_ref(), limit).await },
                    )
                })
                .await
                .map_err(ApiError::from)?;
            let next_page_token = if found.len() > size {
                found.truncate(size);
                found
                    .last()
                    .map(|last| pages::encode(&post, last))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let likers = found
                .into_iter()
                .map(|liker| Liker {
                    user_id: liker.user_id,
                    liked_at: Some(timestamp(liker.event_at_micros)),
                })
                .collect();
            Ok(Response::new(ListLikersResponse {
                likers,
                next_page_token,
            }))
        })
        .await
    }

    #[instrument(name = "WatchLikeCounts", skip_all, fields(posts.count))]
    async fn watch_like_counts(
        &self,
        request: Request<WatchLikeCountsRequest>,
    ) -> Result<Response<Self::WatchLikeCountsStream>, Status> {
        observed(&self.metrics.watch_like_counts, async move {
            let posts = distinct(validate::post_ids_at_most(
                request.into_inner().post_ids,
                validate::MAX_PAGE_POSTS,
            )?);
            Span::current().record("posts.count", posts.len());
            let permit = Arc::clone(&self.watchers)
                .try_acquire_owned()
                .map_err(|_| ApiError::TooManyStreams {
                    limit: self.watch_limit,
                })?;
            let sent = watch::Watch {
                cache: self.counts.clone(),
                posts,
                interval: self.watch_interval,
                shutdown: self.shutdown.clone(),
                permit,
            }
            .start();
            Ok(Response::new(ReceiverStream::new(sent)))
        })
        .await
    }

    #[instrument(name = "Like", skip_all, fields(post.id, user.id, event.id))]
    async fn like(&self, request: Request<LikeRequest>) -> Result<Response<LikeResponse>, Status> {
        observed(&self.metrics.like, async move {
            let LikeRequest { post_id, user_id } = request.into_inner();
            let (post, user) = validate::pair(post_id, user_id)?;
            record_pair(&post, &user);
            let event_id = self.enqueue(post, user, Action::Like).await?;
            Ok(Response::new(LikeResponse { event_id }))
        })
        .await
    }

    #[instrument(name = "Unlike", skip_all, fields(post.id, user.id, event.id))]
    async fn unlike(
        &self,
        request: Request<UnlikeRequest>,
    ) -> Result<Response<UnlikeResponse>, Status> {
        observed(&self.metrics.unlike, async move {
            let UnlikeRequest { post_id, user_id } = request.into_inner();
            let (post, user) = validate::pair(post_id, user_id)?;
            record_pair(&post, &user);
            let event_id = self.enqueue(post, user, Action::Unlike).await?;
            Ok(Response::new(UnlikeResponse { event_id }))
        })
        .await
    }

    #[instrument(name = "GetLikeCount", skip_all, fields(post.id))]
    async fn get_like_count(
        &self,
        request: Request<GetLikeCountRequest>,
    ) -> Result<Response<GetLikeCountResponse>, Status> {
        observed(&self.metrics.get_like_count, async move {
            let post = validate::post_id("post_id", request.into_inner().post_id)?;
            Span::current().record("post.id", post.as_str());
            let count = self.counts.count(&post).await.map_err(ApiError::from)?;
            Ok(Response::new(GetLikeCountResponse {
                post_id: post.into_inner(),
                count,
            }))
        })
        .await
    }

    #[instrument(name = "GetLikeCounts", skip_all, fields(posts.count))]
    async fn get_like_counts(
        &self,
        request: Request<GetLikeCountsRequest>,
    ) -> Result<Response<GetLikeCountsResponse>, Status> {
        observed(&self.metrics.get_like_counts, async move {
            let posts = validate::post_ids(request.into_inner().post_ids)?;
            Span::current().record("posts.count", posts.len());
            if posts.is_empty() {
                return Ok(Response::new(GetLikeCountsResponse::default()));
            }
            let counts = self.counts.counts(&posts).await.map_err(ApiError::from)?;
            Ok(Response::new(GetLikeCountsResponse {
                counts: counts.into_iter().collect(),
            }))
        })
        .await
    }

    #[instrument(name = "HasLiked", skip_all, fields(post.id, user.id))]
    async fn has_liked(
        &self,
        request: Request<HasLikedRequest>,
    ) -> Result<Response<HasLikedResponse>, Status> {
        observed(&self.metrics.has_liked, async move {
            let HasLikedRequest { post_id, user_id } = request.into_inner();
            let (post, user) = validate::pair(post_id, user_id)?;
            record_pair(&post, &user);
            let liked = self
                .reads
                .read(|conn| {
                    let (post, user) = (post.clone(), user.clone());
                    Box::pin(async move { repository::has_liked(conn, &post, &user).await })
                })
                .await
                .map_err(ApiError::from)?;
            Ok(Response::new(HasLikedResponse { liked }))
        })
        .await
    }
}

/// The metric handles of one method, taken once: looking a labelled metric
/// up in the registry allocates its key, which is measurable at tens of
/// thousands of calls a second.
#[derive(Debug)]
struct MethodMetrics {
    method: &'static str,
    ok: metrics::Counter,
    duration: metrics::Histogram,
}

impl MethodMetrics {
    fn new(method: &'static str) -> Self {
        Self {
            method,
            ok: metrics::counter!("likes_rpc_requests_total", "method" => method, "code" => "OK"),
            duration: metrics::histogram!("likes_rpc_duration_seconds", "method" => method),
        }
    }
}

#[derive(Debug)]
struct RpcMetrics {
    like: MethodMetrics,
    unlike: MethodMetrics,
    get_like_count: MethodMetrics,
    get_like_counts: MethodMetrics,
    has_liked: MethodMetrics,
    get_like_summaries: MethodMetrics,
    list_likers: MethodMetrics,
    watch_like_counts: MethodMetrics,
}

impl RpcMetrics {
    fn new() -> Self {
        Self {
            like: MethodMetrics::new("Like"),
            unlike: MethodMetrics::new("Unlike"),
            get_like_count: MethodMetrics::new("GetLikeCount"),
            get_like_counts: MethodMetrics::new("GetLikeCounts"),
            has_liked: MethodMetrics::new("HasLiked"),
            get_like_summaries: MethodMetrics::new("GetLikeSummaries"),
            list_likers: MethodMetrics::new("ListLikers"),
            watch_like_counts: MethodMetrics::new("WatchLikeCounts"),
        }
    }
}

/// Runs one RPC, counting it by method and status code
/// (`likes_rpc_requests_total`) and timing it (`likes_rpc_duration_seconds`).
async fn observed<T>(
    metrics: &MethodMetrics,
    rpc: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = rpc.await;
    match &result {
        Ok(_) => metrics.ok.increment(1),
        Err(status) => metrics::counter!(
            "likes_rpc_requests_total",
            "method" => metrics.method,
            "code" => code_name(status.code())
        )
        .increment(1),
    }
    metrics.duration.record(started.elapsed().as_secs_f64());
    result
}

/// The canonical gRPC name of a code, as Prometheus label.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `posts` without repeats, in the order first asked.
fn distinct(posts: Vec<PostId>) -> Vec<PostId> {
    let mut seen = HashSet::with_capacity(posts.len());
    posts
        .into_iter()
        .filter(|post| seen.insert(post.as_str().to_owned()))
        .collect()
}

/// A time in microseconds since the Unix epoch as a protobuf Timestamp.
fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000)
            .expect("below a second in nanoseconds"),
    }
}

fn record_pair(post: &PostId, user: &UserId) {
    let span = Span::current();
    span.record("post.id", post.as_str());
    span.record("user.id", user.as_str());
}
