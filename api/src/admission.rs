//! Admission: how many calls the api takes at once, decided when a call's
//! HEADERS arrive, before tonic reads or decodes a byte of its body.
//!
//! A tower layer (added with `Server::layer`, so it covers every service)
//! gives each call a place, or answers at once RESOURCE_EXHAUSTED (a
//! trailers-only response; the body is never read); the call keeps it until
//! its response is ready. Writes (Like, Unlike) and everything else (reads,
//! health, reflection) have budgets of their own, `api.max_concurrent_requests`
//! places each, so however many reads wait, a Like is never refused for
//! their sake. With the per-connection stream limit
//! (`MAX_CONCURRENT_STREAMS`, enforced by h2) this bounds what calls
//! that never finish sending can hold.
//!
//! Request bodies are metered on the way in: each call counts the size of
//! the gRPC message its body announces against one global budget
//! (the requests of every place at their largest, at most 64 MiB); a body
//! that would go over it fails
//! with RESOURCE_EXHAUSTED.
//!
//! Half-sent requests must not lock callers out: when every place of a
//! budget is taken, a new call takes the place of the oldest call of that
//! budget (LikeService or health) whose request body has been waiting on the
//! network for longer than [`REQUEST_BODY_GRACE`]. That call ends with
//! RESOURCE_EXHAUSTED; its handler never ran, because tonic hands a unary
//! request to the handler only once the whole body has arrived. Reflection
//! is a bidirectional stream whose body stays open by design: it is never
//! evicted.

mod body;

use crate::error::ApiError;
use body::MeteredBody;
use futures_util::task::AtomicWaker;
use likes_common::config::ApiSettings;
use pin_project_lite::pin_project;
use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::Instant;
use tonic::{
    Status,
    body::Body,
    codegen::http::{Request, Response},
};
use tower::{Layer, Service};

/// Paths whose calls send one request message and may be evicted while it
/// is still arriving.
const EVICTABLE_PREFIXES: [&str; 2] = ["/likes.v1.LikeService/", "/grpc.health.v1.Health/"];

/// The gRPC length-prefixed message header: compression flag, u32 length.
const MESSAGE_PREFIX: usize = 5;

/// Paths of the calls that take a write place.
const WRITE_PATHS: [&str; 2] = ["/likes.v1.LikeService/Like", "/likes.v1.LikeService/Unlike"];

/// The two budgets of places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Write,
    Read,
}

impl Class {
    fn of(path: &str) -> Self {
        if WRITE_PATHS.contains(&path) {
            Self::Write
        } else {
            Self::Read
        }
    }
}

/// One budget of places: its calls in flight, and those of its evictable
/// calls whose body has waited on the network, in the order they first
/// did (finished entries are dropped lazily).
#[derive(Debug)]
struct Places {
    limit: usize,
    in_flight: AtomicUsize,
    receiving: Mutex<VecDeque<Arc<Call>>>,
}

impl Places {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            in_flight: AtomicUsize::new(0),
            receiving: Mutex::new(VecDeque::new()),
        }
    }

    fn lock_receiving(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Call>>> {
        self.receiving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The places and the byte budget, shared by every connection.
#[derive(Debug)]
pub struct Admission {
    writes: Places,
    reads: Places,
    grace: Duration,
    budget: usize,
    bytes: AtomicUsize,
    max_message: usize,
}

/// When every place is taken, a call whose request body has waited on the
/// network this long gives its place to a new one: far longer than a
/// healthy client needs to send a request of a few hundred bytes, short
/// enough that half-sent requests cannot lock callers out.
pub const REQUEST_BODY_GRACE: Duration = Duration::from_millis(200);

/// The cap of the request bytes being received at once: more than this is
/// an attack, not a load.
const REQUEST_BYTES_IN_FLIGHT_CAP: usize = 64 * 1024 * 1024;

impl Admission {
    /// Places of `api.max_concurrent_requests` each for writes and reads; a
    /// byte budget of that many requests of the largest size, at most 64 MiB.
    pub fn new(settings: &ApiSettings) -> Self {
        let limit = settings.max_concurrent_requests.get();
        let max_message = crate::MAX_REQUEST_BYTES;
        let budget = limit
            .saturating_mul(max_message)
            .min(REQUEST_BYTES_IN_FLIGHT_CAP);
        Self::with_limits(limit, REQUEST_BODY_GRACE, budget, max_message)
    }

    fn with_limits(limit: usize, grace: Duration, budget: usize, max_message: usize) -> Self {
        Self {
            writes: Places::new(limit),
            reads: Places::new(limit),
            grace,
            budget,
            bytes: AtomicUsize::new(0),
            max_message,
        }
    }

    fn places(&self, class: Class) -> &Places {
        match class {
            Class::Write => &self.writes,
            Class::Read => &self.reads,
        }
    }

    /// Calls holding a place now, of both budgets.
    pub fn in_flight(&self) -> usize {
        self.writes.in_flight.load(Ordering::Relaxed) + self.reads.in_flight.load(Ordering::Relaxed)
    }

    /// Request body bytes counted against the budget now.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A free place of `class`, or the place of a call of it whose body
    /// stalled.
    fn try_admit(&self, class: Class) -> Option<Arc<Call>> {
        let places = self.places(class);
        let free = places
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < places.limit).then_some(n + 1)
            })
            .is_ok();
        if free || self.evict_stalled(places) {
            return Some(Arc::new(Call::new(class)));
        }
        None
    }

    /// Takes the place of the oldest call of `places` whose body has waited
    /// on the network for longer than the grace; the place passes to the
    /// caller without being released.
    fn evict_stalled(&self, places: &Places) -> bool {
        if self.grace.is_zero() {
            return false;
        }
        let now = Instant::now();
        let mut receiving = places.lock_receiving();
        while let Some(oldest) = receiving.front() {
            if oldest.state() != RECEIVING {
                receiving.pop_front();
                continue;
            }
            if now.saturating_duration_since(oldest.admitted_at) < self.grace {
                return false;
            }
            if oldest.transition(RECEIVING, EVICTED) {
                if let Some(evicted) = receiving.pop_front() {
                    drop(receiving);
                    evicted.waker.wake();
                    metrics::counter!("likes_requests_refused_total", "reason" => "stalled_body")
                        .increment(1);
                }
                return true;
            }
            // Its body completed or the call ended meanwhile: look again.
        }
        false
    }

    /// The body of `call` waits on the network: make it evictable.
    fn waiting(&self, call: &Arc<Call>) {
        if !call.transition(NEW, RECEIVING) {
            return;
        }
        let places = self.places(call.class);
        let mut receiving = places.lock_receiving();
        // At most `limit` entries are live; drop finished ones now and then
        // so a stalled call at the front cannot make the queue grow.
        if receiving.len() >= 2 * places.limit + 16 {
            receiving.retain(|c| c.state() == RECEIVING);
        }
        receiving.push_back(Arc::clone(call));
    }

    /// Counts `extra` more bytes, unless that goes over the budget.
    fn charge(&self, extra: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(extra).filter(|&n| n <= self.budget)
            })
            .is_ok()
    }

    fn refund(&self, bytes: usize) {
        if bytes > 0 {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// Body not seen waiting yet (or not evictable).
const NEW: u8 = 0;
/// Body has waited on the network and has not arrived completely.
const RECEIVING: u8 = 1;
/// Body complete: the handler may run; never evicted.
const RECEIVED: u8 = 2;
/// Place taken by a newer call; the call ends RESOURCE_EXHAUSTED.
const EVICTED: u8 = 3;
/// Response ready, place given back.
const FINISHED: u8 = 4;

/// One admitted call, shared by its response future and its request body.
#[derive(Debug)]
struct Call {
    class: Class,
    state: AtomicU8,
    admitted_at: Instant,
    /// The task reading the body, woken on eviction.
    waker: AtomicWaker,
}

impl Call {
    fn new(class: Class) -> Self {
        Self {
            class,
            state: AtomicU8::new(NEW),
            admitted_at: Instant::now(),
            waker: AtomicWaker::new(),
        }
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn is_evicted(&self) -> bool {
        self.state() == EVICTED
    }

    /// The body arrived completely: the call can no longer be evicted.
    fn received(&self) {
        if !self.transition(NEW, RECEIVED) {
            self.transition(RECEIVING, RECEIVED);
        }
    }
}

/// A call's place; given back on drop unless it was passed on by eviction.
#[derive(Debug)]
struct Place {
    call: Arc<Call>,
    admission: Arc<Admission>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.call.state.swap(FINISHED, Ordering::AcqRel) != EVICTED {
            self.admission
                .places(self.call.class)
                .in_flight
                .fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn overloaded(limit: usize) -> Status {
    ApiError::Overloaded { limit }.into()
}

fn evicted(grace: Duration) -> Status {
    ApiError::RequestTooSlow { grace }.into()
}

fn over_budget(budget: usize) -> Status {
    ApiError::RequestBytesBudget { budget }.into()
}

/// Admits calls; see the module documentation.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            admission: Arc::clone(&self.admission),
        }
    }
}

/// The service behind an [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S> Service<Request<Body>> for Admitted<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = AdmittedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let class = Class::of(path);
        let Some(call) = self.admission.try_admit(class) else {
            metrics::counter!("likes_requests_refused_total", "reason" => "concurrency")
                .increment(1);
            let limit = self.admission.places(class).limit;
            return AdmittedFuture {
                inner: None,
                place: None,
                refusal: Some(overloaded(limit).into_http()),
                grace: self.admission.grace,
            };
        };
        let evictable = EVICTABLE_PREFIXES.iter().any(|p| path.starts_with(p));
        let admission = Arc::clone(&self.admission);
        let metered_call = evictable.then(|| Arc::clone(&call));
        let request = request
            .map(|body| Body::new(MeteredBody::new(body, Arc::clone(&admission), metered_call)));
        AdmittedFuture {
            inner: Some(self.inner.call(request)),
            place: Some(Place { call, admission }),
            refusal: None,
            grace: self.admission.grace,
        }
    }
}

pin_project! {
    /// The response of an admitted call, or the refusal of one that was not.
    #[derive(Debug)]
    pub struct AdmittedFuture<F> {
        #[pin]
        inner: Option<F>,
        place: Option<Place>,
        refusal: Option<Response<Body>>,
        grace: Duration,
    }
}

impl<F, E> Future for AdmittedFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(refusal) = this.refusal.take() {
            return Poll::Ready(Ok(refusal));
        }
        if this.place.as_ref().is_some_and(|p| p.call.is_evicted()) {
            this.place.take();
            return Poll::Ready(Ok(evicted(*this.grace).into_http()));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Ok(Status::internal("polled after completion").into_http()));
        };
        let response = ready!(inner.poll(cx));
        this.place.take();
        Poll::Ready(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(limit: usize, grace_ms: u64, budget: usize) -> Arc<Admission> {
        Arc::new(Admission::with_limits(
            limit,
            Duration::from_millis(grace_ms),
            budget,
            crate::MAX_REQUEST_BYTES,
        ))
    }

    fn place(admission: &Arc<Admission>) -> Option<Place> {
        place_of(admission, Class::Write)
    }

    fn place_of(admission: &Arc<Admission>, class: Class) -> Option<Place> {
        admission.try_admit(class).map(|call| Place {
            call,
            admission: Arc::clone(admission),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn places_are_limited_and_given_back() {
        let admission = admission(2, 0, 1 << 20);
        let a = place(&admission).expect("first place");
        let _b = place(&admission).expect("second place");
        assert!(place(&admission).is_none(), "two places only");
        drop(a);
        assert!(place(&admission).is_some());
        assert_eq!(
            admission.in_flight(),
            1,
            "the temporary place was given back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_and_writes_have_places_of_their_own() {
        let admission = admission(2, 0, 1 << 20);
        let _reads: Vec<_> = (0..2)
            .map(|_| place_of(&admission, Class::Read).expect("a read place"))
            .collect();
        assert!(place_of(&admission, Class::Read).is_none(), "reads full");
        let _like = place_of(&admission, Class::Write).expect("a Like is never refused for reads");
        assert_eq!(admission.in_flight(), 3);
        assert_eq!(Class::of("/likes.v1.LikeService/Like"), Class::Write);
        assert_eq!(Class::of("/likes.v1.LikeService/Unlike"), Class::Write);
        assert_eq!(Class::of("/likes.v1.LikeService/GetLikeCount"), Class::Read);
        assert_eq!(Class::of("/grpc.health.v1.Health/Check"), Class::Read);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_gives_its_place_to_a_new_call_after_the_grace() {
        let admission = admission(1, 200, 1 << 20);
        let stalled = place(&admission).expect("a place");
        admission.waiting(&stalled.call);
        assert!(place(&admission).is_none(), "within the grace");
        tokio::time::advance(Duration::from_millis(201)).await;
        let newcomer = place(&admission).expect("the stalled call's place");
        assert!(stalled.call.is_evicted());
        assert_eq!(admission.in_flight(), 1);
        drop(stalled);
        assert_eq!(
            admission.in_flight(),
            1,
            "an evicted place is not given back twice"
        );
        drop(newcomer);
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_body_arrived_is_never_evicted() {
        let admission = admission(1, 200, 1 << 20);
        let running = place(&admission).expect("a place");
        admission.waiting(&running.call);
        running.call.received();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(place(&admission).is_none());
        assert!(!running.call.is_evicted());
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_counts_announced_messages_until_the_body_ends() {
        let admission = admission(10, 0, 1_000);
        assert!(admission.charge(600));
        assert!(!admission.charge(401), "over the budget");
        assert!(admission.charge(400));
        admission.refund(1_000);
        assert_eq!(admission.bytes_in_flight(), 0);
    }
}
