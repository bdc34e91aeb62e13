//! The gRPC echo ceiling: an in-memory `likes.v1.LikeService` that answers
//! every call at once (idempotent per pair, counts in memory, no broker, no
//! database), in a process of its own, driven by the load test's own client
//! with the default spike. No likes service on this machine can answer
//! faster than this: both ends of every call share its cores. The method of
//! `../shared/grpc-ceiling`.

use likes_proto::pb::{
    GetLikeCountRequest, GetLikeCountResponse, GetLikeCountsRequest, GetLikeCountsResponse,
    GetLikeSummariesRequest, GetLikeSummariesResponse, HasLikedRequest, HasLikedResponse,
    LikeRequest, LikeResponse, LikeSummary, ListLikersRequest, ListLikersResponse, UnlikeRequest,
    UnlikeResponse,
    like_service_server::{LikeService, LikeServiceServer},
};
use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Mutex, MutexGuard},
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// The echo service: a pair is kept as a 64-bit hash, so the set stays
/// small and its growth does not stall calls.
#[derive(Debug, Default)]
pub struct Echo {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    liked: HashSet<u64>,
    counts: HashMap<String, i64>,
    events: u64,
}

impl Echo {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the echo state is never held across a panic")
    }
}

fn pair(post_id: &str, user_id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (post_id, user_id).hash(&mut hasher);
    hasher.finish()
}

#[tonic::async_trait]
impl LikeService for Echo {
    async fn like(&self, request: Request<LikeRequest>) -> Result<Response<LikeResponse>, Status> {
        let LikeRequest { post_id, user_id } = request.into_inner();
        let key = pair(&post_id, &user_id);
        let mut state = self.state();
        if state.liked.insert(key) {
            *state.counts.entry(post_id).or_default() += 1;
        }
        state.events += 1;
        Ok(Response::new(LikeResponse {
            event_id: format!("echo-{}", state.events),
        }))
    }

    async fn unlike(
        &self,
        request: Request<UnlikeRequest>,
    ) -> Result<Response<UnlikeResponse>, Status> {
        let UnlikeRequest { post_id, user_id } = request.into_inner();
        let key = pair(&post_id, &user_id);
        let mut state = self.state();
        if state.liked.remove(&key) {
            *state.counts.entry(post_id).or_default() -= 1;
        }
        state.events += 1;
        Ok(Response::new(UnlikeResponse {
            event_id: format!("echo-{}", state.events),
        }))
    }

    async fn get_like_count(
        &self,
        request: Request<GetLikeCountRequest>,
    ) -> Result<Response<GetLikeCountResponse>, Status> {
        let post_id = request.into_inner().post_id;
        let count = self.state().counts.get(&post_id).copied().unwrap_or(0);
        Ok(Response::new(GetLikeCountResponse { post_id, count }))
    }

    async fn get_like_counts(
        &self,
        request: Request<GetLikeCountsRequest>,
    ) -> Result<Response<GetLikeCountsResponse>, Status> {
        let state = self.state();
        let counts = request
            .into_inner()
            .post_ids
            .into_iter()
            .map(|id| {
                let n = state.counts.get(&id).copied().unwrap_or(0);
                (id, n)
            })
            .collect();
        Ok(Response::new(GetLikeCountsResponse { counts }))
    }

    async fn has_liked(
        &self,
        request: Request<HasLikedRequest>,
    ) -> Result<Response<HasLikedResponse>, Status> {
        let HasLikedRequest { post_id, user_id } = request.into_inner();
        let liked = self.state().liked.contains(&pair(&post_id, &user_id));
        Ok(Response::new(HasLikedResponse { liked }))
    }

    type WatchLikeCountsStream =
        futures_util::stream::Empty<Result<likes_proto::pb::LikeCountChange, Status>>;

    async fn get_like_summaries(
        &self,
        request: Request<GetLikeSummariesRequest>,
    ) -> Result<Response<GetLikeSummariesResponse>, Status> {
        let GetLikeSummariesRequest {
            viewer_id,
            post_ids,
        } = request.into_inner();
        let state = self.state();
        let summaries = post_ids
            .into_iter()
            .map(|post| {
                let summary = LikeSummary {
                    count: state.counts.get(&post).copied().unwrap_or(0),
                    viewer_liked: state.liked.contains(&pair(&post, &viewer_id)),
                };
                (post, summary)
            })
            .collect();
        Ok(Response::new(GetLikeSummariesResponse { summaries }))
    }

    async fn list_likers(
        &self,
        _request: Request<ListLikersRequest>,
    ) -> Result<Response<ListLikersResponse>, Status> {
        Err(Status::unimplemented("the echo keeps no likers"))
    }

    async fn watch_like_counts(
        &self,
        _request: Request<likes_proto::pb::WatchLikeCountsRequest>,
    ) -> Result<Response<Self::WatchLikeCountsStream>, Status> {
        Err(Status::unimplemented("the echo pushes nothing"))
    }
}

/// Serves the echo on `listener` (with `TCP_NODELAY`, as the api does)
/// until the process is stopped.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(LikeServiceServer::new(Echo::default()))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
