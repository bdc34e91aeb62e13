//! The count cache: posts' counts in memory, kept current by the changes
//! the workers push after each batch, so that a post read by every viewer
//! costs PostgreSQL one query per expiry, not one per read.
//!
//! An entry is fresh for `api.count_cache_ttl_ms` after it was loaded or
//! last changed by a push; a push replaces it only when its version is
//! newer, so pushes that arrive out of order (two workers, a slow api) never
//! move a count back. A read of a missing or expired entry loads it, and
//! concurrent loads of one post are one query (moka's per-key compute
//! runs them one after another, and all but the first find it fresh).
//! While PostgreSQL cannot be read, an expired entry is still served up to
//! `api.count_max_stale_ms` past its expiry; a read with nothing to serve
//! fails fast, as the pool's circuit does.
//!
//! How stale a count can be: normally one worker batch plus the push's
//! trip (milliseconds); with pushes lost, at most the TTL; with PostgreSQL
//! unreachable, at most the TTL plus `count_max_stale_ms`.

use futures_util::{StreamExt, stream::BoxStream};
use likes_common::config::{AmqpSettings, ApiSettings};
use likes_common::ids::PostId;
use likes_db::{DbError, ReadPools, VersionedCount, repository};
use likes_proto::events::CountChange;
use likes_queue::backoff::Reconnect;
use moka::ops::compute::{CompResult, Op};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

/// Posts whose counts one api keeps. An entry is a few dozen bytes plus
/// its post id, so this is a few MiB at most; the hottest posts, the ones
/// that matter, stay (moka admits and evicts by frequency).
const MAX_ENTRIES: u64 = 100_000;

/// A count as cached, and since when it is known to be current.
#[derive(Debug, Clone, Copy)]
struct Cached {
    count: VersionedCount,
    since: Instant,
}

/// A read of many counts between [`CountCache::lookup`] and
/// [`CountCache::settle`].
#[derive(Debug)]
pub struct Lookup {
    answer: HashMap<String, i64>,
    missing: Vec<PostId>,
    stale: HashMap<String, Cached>,
}

impl Lookup {
    /// The posts memory could not answer.
    pub fn missing(&self) -> &[PostId] {
        &self.missing
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct CountCache {
    cache: moka::future::Cache<String, Cached>,
    reads: ReadPools,
    ttl: Duration,
    max_stale: Duration,
    metrics: Arc<CacheMetrics>,
    watchers: Arc<Watchers>,
}

/// The posts WatchLikeCounts streams follow: for each, a watch channel
/// holding its latest applied count. A push touches only the channels of
/// watched posts, and wakes only the streams waiting for a change: a
/// stream that has just sent waits out `api.watch_min_interval_ms` without
/// listening, then takes the latest value. So a hot post's 1000 streams
/// cost one wake-up each per interval, not one per worker batch.
#[derive(Debug)]
struct Watchers {
    posts: std::sync::Mutex<HashMap<String, watch::Sender<i64>>>,
    /// Bumped when pushes may have been missed: read every count again.
    resync: watch::Sender<u64>,
}

/// One stream's view of its posts' changes (see [`CountCache::watch`]).
/// Dropping it forgets the posts no other stream watches.
#[derive(Debug)]
pub struct Followed {
    watchers: Arc<Watchers>,
    posts: Vec<(String, watch::Receiver<i64>)>,
    resync: watch::Receiver<u64>,
    /// Seen by [`Followed::changed`], not yet taken.
    resynced: bool,
    woken: Vec<usize>,
}

/// What changed since [`Followed::take_changes`] last ran.
#[derive(Debug, Default)]
pub struct Changes {
    /// Pushed counts of the stream's posts: (post, latest count).
    pub counts: Vec<(String, i64)>,
    /// Pushes may have been missed: read every count again.
    pub resync: bool,
}

impl Followed {
    /// Waits until a post's count changed or a resync was asked for.
    pub async fn changed(&mut self) {
        // `changed` marks what it saw as seen: remember it for
        // `take_changes`.
        enum Woken {
            Resync,
            Post(usize),
        }
        let woken = if self.posts.is_empty() {
            self.resync.changed().await.ok().map(|()| Woken::Resync)
        } else {
            let posts = futures_util::future::select_all(
                self.posts
                    .iter_mut()
                    .map(|(_, receiver)| Box::pin(receiver.changed())),
            );
            tokio::select! {
                changed = self.resync.changed() => changed.ok().map(|()| Woken::Resync),
                (changed, index, _) = posts => changed.ok().map(|()| Woken::Post(index)),
            }
        };
        match woken {
            Some(Woken::Resync) => self.resynced = true,
            Some(Woken::Post(index)) => self.woken.push(index),
            None => {}
        }
    }

    /// The latest count of each post that changed, once each.
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = Changes {
            resync: std::mem::take(&mut self.resynced)
                || self.resync.has_changed().unwrap_or(false),
            counts: Vec::new(),
        };
        self.resync.mark_unchanged();
        let woken = std::mem::take(&mut self.woken);
        for (index, (post, receiver)) in self.posts.iter_mut().enumerate() {
            if woken.contains(&index) || receiver.has_changed().unwrap_or(false) {
                changes
                    .counts
                    .push((post.clone(), *receiver.borrow_and_update()));
            }
        }
        changes
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        let posts: Vec<String> = self.posts.drain(..).map(|(post, _)| post).collect();
        let mut watched = self
            .watchers
            .posts
            .lock()
            .expect("never poisoned: no panics inside");
        for post in posts {
            if watched
                .get(&post)
                .is_some_and(|sender| sender.receiver_count() == 0)
            {
                watched.remove(&post);
            }
        }
    }
}

#[derive(Debug)]
struct CacheMetrics {
    hits: metrics::Counter,
    misses: metrics::Counter,
    stale: metrics::Counter,
    loads: metrics::Counter,
    applied: metrics::Counter,
    ignored: metrics::Counter,
    entries: metrics::Gauge,
}

impl CacheMetrics {
    fn new() -> Self {
        let lookup = |result: &'static str| metrics::counter!("likes_count_cache_lookups_total", "result" => result);
        let push = |outcome: &'static str| metrics::counter!("likes_count_pushes_total", "outcome" => outcome);
        Self {
            hits: lookup("hit"),
            misses: lookup("miss"),
            stale: lookup("stale"),
            loads: metrics::counter!("likes_count_cache_loads_total"),
            applied: push("applied"),
            ignored: push("stale"),
            entries: metrics::gauge!("likes_count_cache_entries"),
        }
    }
}

impl CountCache {
    pub fn new(reads: ReadPools, settings: &ApiSettings) -> Self {
        let ttl = settings.count_cache_ttl();
        let max_stale = settings.count_max_stale();
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl.saturating_add(max_stale))
                .build(),
            reads,
            ttl,
            max_stale,
            metrics: Arc::new(CacheMetrics::new()),
            watchers: Arc::new(Watchers {
                posts: std::sync::Mutex::default(),
                resync: watch::Sender::new(0),
            }),
        }
    }

    /// Follows the changes of `posts` from now on (for WatchLikeCounts).
    pub fn watch(&self, posts: &[PostId]) -> Followed {
        let mut watched = self
            .watchers
            .posts
            .lock()
            .expect("never poisoned: no panics inside");
        let posts = posts
            .iter()
            .map(|post| {
                let sender = watched
                    .entry(post.as_str().to_owned())
                    .or_insert_with(|| watch::Sender::new(0));
                (post.as_str().to_owned(), sender.subscribe())
            })
            .collect();
        Followed {
            watchers: Arc::clone(&self.watchers),
            posts,
            resync: self.watchers.resync.subscribe(),
            resynced: false,
            woken: Vec::new(),
        }
    }

    /// The count of `post`: from memory while fresh, else loaded (one query
    /// for concurrent readers), else, while PostgreSQL cannot be read, from
    /// memory while within the staleness bound.
    pub async fn count(&self, post: &PostId) -> Result<i64, DbError> {
        let now = Instant::now();
        if let Some(cached) = self.cache.get(post.as_str()).await
            && self.is_fresh(&cached, now)
        {
            self.metrics.hits.increment(1);
            return Ok(cached.count.count);
        }
        self.metrics.misses.increment(1);
        let computed = self
            .cache
            .entry_by_ref(post.as_str())
            .and_try_compute_with(|existing| async move {
                if let Some(existing) = &existing
                    && self.is_fresh(existing.value(), Instant::now())
                {
                    return Ok(Op::Nop);
                }
                self.metrics.loads.increment(1);
                let loaded = self
                    .reads
                    .read(|conn| {
                        let post = post.clone();
                        Box::pin(async move { repository::like_count(conn, &post).await })
                    })
                    .await?;
                Ok::<_, DbError>(Op::Put(newer(existing.map(|e| e.into_value()), loaded)))
            })
            .await;
        self.metrics.entries.set(self.cache.entry_count() as f64);
        match computed {
            Ok(
                CompResult::Inserted(entry)
                | CompResult::ReplacedWith(entry)
                | CompResult::Unchanged(entry),
            ) => Ok(entry.into_value().count.count),
            Ok(CompResult::StillNone(_) | CompResult::Removed(_)) => {
                unreachable!("the load puts a value or fails")
            }
            Err(error) if error.is_transient() => match self.cache.get(post.as_str()).await {
                Some(cached) if self.is_servable(&cached) => {
                    self.metrics.stale.increment(1);
                    Ok(cached.count.count)
                }
                _ => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    /// The counts of `posts`: the fresh ones from memory, every other in
    /// one query; while PostgreSQL cannot be read, stale ones within the
    /// bound, or the error if any post has nothing to serve.
    pub async fn counts(&self, posts: &[PostId]) -> Result<HashMap<String, i64>, DbError> {
        let lookup = self.lookup(posts).await;
        if lookup.missing.is_empty() {
            return Ok(lookup.answer);
        }
        let loaded = self
            .reads
            .read(|conn| {
                let missing = lookup.missing.clone();
                Box::pin(async move { repository::like_counts(conn, &missing).await })
            })
            .await;
        self.settle(lookup, loaded).await
    }

    /// The first half of [`counts`](Self::counts), for a caller that loads
    /// the missing counts itself (in a statement that reads more): what
    /// memory answers, and which posts to load.
    pub async fn lookup(&self, posts: &[PostId]) -> Lookup {
        let now = Instant::now();
        let mut lookup = Lookup {
            answer: HashMap::with_capacity(posts.len()),
            missing: Vec::new(),
            stale: HashMap::new(),
        };
        for post in posts {
            match self.cache.get(post.as_str()).await {
                Some(cached) if self.is_fresh(&cached, now) => {
                    lookup.answer.insert(post.to_string(), cached.count.count);
                }
                Some(cached) => {
                    lookup.stale.insert(post.to_string(), cached);
                    lookup.missing.push(post.clone());
                }
                None => lookup.missing.push(post.clone()),
            }
        }
        self.metrics.hits.increment(lookup.answer.len() as u64);
        self.metrics.misses.increment(lookup.missing.len() as u64);
        lookup
    }

    /// The second half: caches what was `loaded` for the lookup's missing
    /// posts and answers every post, or serves stale counts within the
    /// bound when PostgreSQL could not be read.
    pub async fn settle(
        &self,
        lookup: Lookup,
        loaded: Result<HashMap<String, VersionedCount>, DbError>,
    ) -> Result<HashMap<String, i64>, DbError> {
        let Lookup {
            mut answer,
            missing,
            stale,
        } = lookup;
        if missing.is_empty() {
            return Ok(answer);
        }
        self.metrics.loads.increment(1);
        match loaded {
            Ok(loaded) => {
                for (post, count) in loaded {
                    let kept = self.put(post.clone(), count).await;
                    answer.insert(post, kept.count);
                }
                self.metrics.entries.set(self.cache.entry_count() as f64);
                Ok(answer)
            }
            Err(error) if error.is_transient() => {
                for post in &missing {
                    match stale.get(post.as_str()) {
                        Some(cached) if self.is_servable(cached) => {
                            answer.insert(post.to_string(), cached.count.count);
                        }
                        _ => return Err(error),
                    }
                }
                self.metrics.stale.increment(missing.len() as u64);
                Ok(answer)
            }
            Err(error) => Err(error),
        }
    }

    /// Applies pushed changes: each replaces its post's count unless the
    /// cache holds one as new or newer.
    pub async fn apply(&self, changes: Vec<CountChange>) {
        let mut applied = Vec::new();
        for change in changes {
            let pushed = VersionedCount {
                count: change.count,
                version: change.version,
            };
            let outcome = self
                .cache
                .entry(change.post_id.clone())
                .and_compute_with(|existing| async move {
                    match existing {
                        Some(existing) if existing.value().count.version >= pushed.version => {
                            Op::Nop
                        }
                        _ => Op::Put(Cached {
                            count: pushed,
                            since: Instant::now(),
                        }),
                    }
                })
                .await;
            match outcome {
                CompResult::Unchanged(_) | CompResult::StillNone(_) => {
                    self.metrics.ignored.increment(1);
                }
                _ => {
                    self.metrics.applied.increment(1);
                    applied.push((change.post_id, pushed.count));
                }
            }
        }
        self.metrics.entries.set(self.cache.entry_count() as f64);
        if !applied.is_empty() {
            let watched = self
                .watchers
                .posts
                .lock()
                .expect("never poisoned: no panics inside");
            for (post, count) in applied {
                if let Some(sender) = watched.get(&post) {
                    sender.send_replace(count);
                }
            }
        }
    }

    /// Forgets every count: after pushes may have been missed.
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.metrics.entries.set(0.0);
    }

    /// Tells the watchers to read every count again: pushes may have been
    /// missed.
    fn resync(&self) {
        self.watchers
            .resync
            .send_modify(|generation| *generation += 1);
    }

    /// How long a count may be served without a push refreshing it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Caches a loaded count unless a newer one arrived meanwhile; what is
    /// cached afterwards.
    async fn put(&self, post: String, loaded: VersionedCount) -> VersionedCount {
        let outcome = self
            .cache
            .entry(post)
            .and_compute_with(|existing| async move {
                Op::Put(newer(existing.map(|e| e.into_value()), loaded))
            })
            .await;
        match outcome {
            CompResult::Inserted(entry) | CompResult::ReplacedWith(entry) => {
                entry.into_value().count
            }
            _ => loaded,
        }
    }

    fn is_fresh(&self, cached: &Cached, now: Instant) -> bool {
        now.saturating_duration_since(cached.since) <= self.ttl
    }

    /// Whether a cached count may still be served while PostgreSQL cannot
    /// be read.
    fn is_servable(&self, cached: &Cached) -> bool {
        cached.since.elapsed() <= self.ttl.saturating_add(self.max_stale)
    }
}

/// What to cache after loading `loaded`: it, fresh from now, unless the
/// entry already holds a newer version (pushed while the load ran, or read
/// from a replica that lags), which is kept and counts as fresh.
fn newer(existing: Option<Cached>, loaded: VersionedCount) -> Cached {
    let count = match existing {
        Some(existing) if existing.count.version > loaded.version => existing.count,
        _ => loaded,
    };
    Cached {
        count,
        since: Instant::now(),
    }
}

/// A subscription to the count changes, on a connection of its own (named
/// `likes-api-counts`).
pub struct Subscription {
    connection: likes_queue::Connection,
    changes: BoxStream<'static, Result<Vec<CountChange>, likes_queue::AmqpError>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// Connects and subscribes: once it returns, every change reaches it.
    pub async fn open(settings: &AmqpSettings) -> Result<Self, likes_queue::AmqpError> {
        let connection = likes_queue::connect(settings, "likes-api-counts").await?;
        match likes_queue::counts::subscribe(&connection, settings).await {
            Ok(changes) => Ok(Self {
                connection,
                changes: changes.boxed(),
            }),
            Err(error) => {
                likes_queue::close(&connection, "cannot subscribe").await;
                Err(error)
            }
        }
    }
}

/// Keeps `cache` current with the changes the workers push, from `first`
/// (subscribed before the api served anything, so nothing cached can have
/// missed a change) until `shutdown` is cancelled, resubscribing with
/// backoff when the subscription is lost. Every resubscription clears the
/// cache and tells the watchers to read again: changes may have been missed
/// meanwhile. `likes_count_subscription_up` says whether it is subscribed.
pub async fn follow_pushes(
    cache: CountCache,
    settings: AmqpSettings,
    first: Subscription,
    shutdown: CancellationToken,
) {
    let up = metrics::gauge!("likes_count_subscription_up");
    let mut backoff = Reconnect::new();
    let mut subscription = Some(first);
    loop {
        let mut current = match subscription.take() {
            Some(current) => current,
            None => {
                let opened = tokio::select! {
                    () = shutdown.cancelled() => return,
                    opened = Subscription::open(&settings) => opened,
                };
                match opened {
                    Ok(opened) => {
                        cache.clear();
                        cache.resync();
                        opened
                    }
                    Err(error) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot follow count changes; counts expire after api.count_cache_ttl_ms meanwhile");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                }
            }
        };
        up.set(1.0);
        backoff = Reconnect::new();
        tracing::info!("following count changes");
        let ended = tokio::select! {
            () = shutdown.cancelled() => None,
            ended = follow(&mut current.changes, &cache) => Some(ended),
        };
        up.set(0.0);
        likes_queue::close(&current.connection, "stopped following").await;
        let Some(reason) = ended else { return };
        tracing::warn!(%reason, "lost the count changes; resubscribing");
    }
}

/// Applies the changes of `changes` until it fails; why it ended.
async fn follow(
    changes: &mut BoxStream<'static, Result<Vec<CountChange>, likes_queue::AmqpError>>,
    cache: &CountCache,
) -> String {
    loop {
        match changes.next().await {
            Some(Ok(batch)) => cache.apply(batch).await,
            Some(Err(error)) => return error.to_string(),
            None => return "the subscription ended".to_owned(),
        }
    }
}
