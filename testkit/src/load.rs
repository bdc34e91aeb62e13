//! Drives likes through a running api; [`check_exactly`] (from
//! [`crate::verify`]) then checks the result in PostgreSQL.

pub use crate::verify::check_exactly;
use futures_util::{StreamExt, stream};
use likes_proto::pb::{LikeRequest, like_service_client::LikeServiceClient};
use std::{collections::BTreeMap, time::Duration};
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

/// A steady stream of Likes, for faults that last a while: the rate a
/// caller population sends at, whatever the service answers.
#[derive(Debug, Clone)]
pub struct Steady {
    /// Likes started per second, on average since the start (fewer while
    /// `in_flight` are all waiting; the backlog is sent when they return).
    pub per_second: u32,
    /// Likes in flight at most, retries included: bounds memory.
    pub in_flight: usize,
    /// Distinct posts the likes go to.
    pub posts: usize,
    /// Deadline of each attempt (`grpc-timeout`).
    pub attempt_timeout: Duration,
    /// How long one like is retried on UNAVAILABLE / DEADLINE_EXCEEDED
    /// before the run fails.
    pub retry_for: Duration,
}

impl Default for Steady {
    fn default() -> Self {
        Self {
            per_second: 3_000,
            in_flight: 256,
            posts: 50,
            attempt_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(60),
        }
    }
}

/// What a steady load saw.
#[derive(Debug, Default)]
pub struct SteadyOutcome {
    /// Pairs whose Like was answered OK (every pair sent, in the end).
    pub acknowledged: Vec<(String, String)>,
    /// From the first like sent to the last answer.
    pub ran_for: Duration,
    /// Answers UNAVAILABLE, each retried.
    pub unavailable: u64,
    /// Answers DEADLINE_EXCEEDED, each retried.
    pub deadline_exceeded: u64,
    /// Likes that needed at least one retry.
    pub delayed: u64,
    /// Failed answers by status message (the api says why it failed).
    pub reasons: BTreeMap<String, u64>,
    /// When each of those failed answers came, from the start, in order.
    pub failures: Vec<Duration>,
    /// The longest a like took from its first attempt to its OK.
    pub longest_wait: Duration,
}

impl SteadyOutcome {
    /// Likes answered OK per second of the run.
    pub fn per_second(&self) -> f64 {
        self.acknowledged.len() as f64 / self.ran_for.as_secs_f64().max(f64::EPSILON)
    }

    /// The failed answers as windows of time (from the start of the run):
    /// failures less than `gap` apart share a window.
    pub fn windows(&self, gap: Duration) -> Vec<std::ops::Range<Duration>> {
        let mut windows: Vec<std::ops::Range<Duration>> = Vec::new();
        for &at in &self.failures {
            match windows.last_mut() {
                Some(window) if at.saturating_sub(window.end) < gap => window.end = at,
                _ => windows.push(at..at),
            }
        }
        windows
    }
}

#[derive(Debug, Default)]
struct SteadyShared {
    acknowledged: Vec<(String, String)>,
    failures: Vec<Duration>,
    unavailable: u64,
    deadline_exceeded: u64,
    delayed: u64,
    reasons: BTreeMap<String, u64>,
    longest_wait: Duration,
}

/// Sends Likes at `steady.per_second` over the clients (one new user per
/// like, tagged by `run`) until `stop` is cancelled, then waits for the likes
/// in flight. UNAVAILABLE and DEADLINE_EXCEEDED are retried every 50 ms, as
/// a caller should, for up to `steady.retry_for`; any other error, or a like
/// still failing after that, fails the run.
pub async fn like_steadily(
    clients: Vec<LikeServiceClient<Channel>>,
    run: String,
    steady: Steady,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<SteadyOutcome> {
    use std::sync::{Arc, Mutex};
    anyhow::ensure!(!clients.is_empty(), "like_steadily needs a client");
    const TICK: Duration = Duration::from_millis(10);
    let shared = Arc::new(Mutex::new(SteadyShared::default()));
    let permits = Arc::new(tokio::sync::Semaphore::new(steady.in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0usize;
    'sending: loop {
        tokio::select! {
            () = stop.cancelled() => break 'sending,
            _ = ticker.tick() => {}
        }
        // Whatever is due by now: a late tick does not lower the rate.
        let due = (started.elapsed().as_secs_f64() * f64::from(steady.per_second)) as usize;
        while sent < due {
            let permit = tokio::select! {
                () = stop.cancelled() => break 'sending,
                permit = Arc::clone(&permits).acquire_owned() => permit?,
            };
            let pair = (
                format!("post-{}", sent % steady.posts),
                format!("{run}-user-{sent}"),
            );
            let mut client = clients[sent % clients.len()].clone();
            let shared = Arc::clone(&shared);
            let steady = steady.clone();
            sent += 1;
            tasks.spawn(async move {
                let _permit = permit;
                let first = Instant::now();
                let mut retried = false;
                loop {
                    let mut request = tonic::Request::new(LikeRequest {
                        post_id: pair.0.clone(),
                        user_id: pair.1.clone(),
                    });
                    request.set_timeout(steady.attempt_timeout);
                    let answer = client.like(request).await;
                    {
                        let mut seen = shared.lock().expect("never poisoned: no panics inside");
                        match answer {
                            Ok(_) => {
                                seen.longest_wait = seen.longest_wait.max(first.elapsed());
                                seen.delayed += u64::from(retried);
                                seen.acknowledged.push(pair);
                                return Ok(());
                            }
                            Err(status)
                                if matches!(
                                    status.code(),
                                    Code::Unavailable | Code::DeadlineExceeded
                                ) && first.elapsed() < steady.retry_for =>
                            {
                                if status.code() == Code::Unavailable {
                                    seen.unavailable += 1;
                                } else {
                                    seen.deadline_exceeded += 1;
                                }
                                seen.failures.push(started.elapsed());
                                *seen.reasons.entry(status.message().to_owned()).or_default() += 1;
                                retried = true;
                            }
                            Err(status) => anyhow::bail!("Like {pair:?} failed: {status:?}"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            while let Some(done) = tasks.try_join_next() {
                done??;
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let ran_for = started.elapsed();
    let mut seen = std::mem::take(&mut *shared.lock().expect("never poisoned: no panics inside"));
    seen.failures.sort();
    Ok(SteadyOutcome {
        acknowledged: seen.acknowledged,
        ran_for,
        unavailable: seen.unavailable,
        deadline_exceeded: seen.deadline_exceeded,
        delayed: seen.delayed,
        reasons: seen.reasons,
        failures: seen.failures,
        longest_wait: seen.longest_wait,
    })
}

/// One Like's answer and how long the caller waited for it.
#[derive(Debug)]
pub struct TimedAnswer {
    pub pair: (String, String),
    pub took: Duration,
    pub answer: Result<(), tonic::Status>,
}

/// `callers` concurrent callers, each sending Likes one after another for
/// `period`, and at least one (a new user each time, tagged by `run`, all on post `post`),
/// each call with `deadline` as its `grpc-timeout`: every answer, and how
/// long it took. For bounds on how long a caller can wait.
pub async fn timed_likes(
    client: &LikeServiceClient<Channel>,
    run: &str,
    post: &str,
    callers: usize,
    period: Duration,
    deadline: Duration,
) -> Vec<TimedAnswer> {
    let until = Instant::now() + period;
    let callers = (0..callers).map(|caller| {
        let mut client = client.clone();
        async move {
            let mut answers = Vec::new();
            loop {
                let pair = (post.to_owned(), format!("{run}-{caller}-{}", answers.len()));
                let mut request = tonic::Request::new(LikeRequest {
                    post_id: pair.0.clone(),
                    user_id: pair.1.clone(),
                });
                request.set_timeout(deadline);
                let started = Instant::now();
                let answer = client.like(request).await.map(|_| ());
                answers.push(TimedAnswer {
                    pair,
                    took: started.elapsed(),
                    answer,
                });
                if Instant::now() >= until {
                    break answers;
                }
            }
        }
    });
    futures_util::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// What the database must hold after `answers`: each pair answered OK
/// liked, each other pair either way (a failed call may have been stored).
pub fn expected_states(
    answers: &[TimedAnswer],
) -> Vec<(String, String, crate::verify::Expectation)> {
    answers
        .iter()
        .map(|a| {
            let expected = if a.answer.is_ok() {
                crate::verify::Expectation::Liked
            } else {
                crate::verify::Expectation::Uncertain
            };
            (a.pair.0.clone(), a.pair.1.clone(), expected)
        })
        .collect()
}

/// `users` Likes of `post` at once (user `u<i>` for each i), spread over
/// `clients`: each answer, in order.
pub async fn likes_at_once(
    clients: &[LikeServiceClient<Channel>],
    post: &str,
    users: usize,
) -> Vec<Result<(), tonic::Status>> {
    futures_util::future::join_all((0..users).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let request = LikeRequest {
            post_id: post.to_owned(),
            user_id: format!("u{i}"),
        };
        async move { client.like(request).await.map(|_| ()) }
    }))
    .await
}
