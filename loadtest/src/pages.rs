//! What product pages ask of the service, for `bench`: a feed page in one
//! call against the 51 it takes without GetLikeSummaries, ListLikers deep
//! in a long list, and what the likers index and a thousand live-count
//! watchers cost the writes.
//!
//! The feed pages are `../shared/grpc-ceiling`'s readers (`reads --kind
//! feed` and `--kind summaries`, the same client both ways); the rest is
//! this crate's client against the bench's processes.

use crate::{
    Report,
    processes::Services,
    report::Latency,
    scenario::Names,
    viewers::{SharedReads, reads_and_their_cost},
};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use likes_proto::pb::{ListLikersRequest, WatchLikeCountsRequest};
use serde::{Deserialize, Serialize};
use std::{future::Future, time::Duration};
use tokio::time::Instant;

/// A feed page of 50 posts with a viewer, both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feed {
    /// GetLikeCounts of the 50 posts and HasLiked of each: 51 calls a page.
    pub per_post_calls: SharedReads,
    pub per_post_transactions_per_page: f64,
    /// One GetLikeSummaries a page.
    pub one_call: SharedReads,
    /// PostgreSQL transactions (so statements) per page meanwhile.
    pub one_call_transactions_per_page: f64,
}

/// Feed pages of the shared tool's spike `run_id`'s posts for `seconds`
/// each way; `None` where the shared tool is missing.
pub async fn feed(services: &Services, run_id: &str, seconds: u32) -> anyhow::Result<Option<Feed>> {
    let Some((per_post_calls, per_post_transactions_per_page)) =
        reads_and_their_cost(services, run_id, seconds, "feed").await?
    else {
        return Ok(None);
    };
    let Some((one_call, one_call_transactions_per_page)) =
        reads_and_their_cost(services, run_id, seconds, "summaries").await?
    else {
        return Ok(None);
    };
    Ok(Some(Feed {
        per_post_calls,
        per_post_transactions_per_page,
        one_call,
        one_call_transactions_per_page,
    }))
}

/// ListLikers of one post with many likers: the first page against a deep
/// one, called alternately by one caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Likers {
    pub likers: u64,
    pub page_size: i32,
    pub deep_page: u32,
    pub first_page_us: Latency,
    pub deep_page_us: Latency,
}

/// The post the likers benchmark reads.
const LIKERS_POST: &str = "bench-likers";

/// Writes `likers` likers of one post straight into the services'
/// database (a read benchmark's fixture: going through the pipeline would
/// only take longer), walks to page `deep_page` of `page_size`, then reads
/// page 1 and that page alternately `calls` times each.
pub async fn likers(
    services: &Services,
    likers: u64,
    deep_page: u32,
    calls: u32,
) -> anyhow::Result<Likers> {
    let page_size = 100;
    let mut db = AsyncPgConnection::establish(services.env.settings.database.url.expose()).await?;
    diesel::sql_query(
        "INSERT INTO likes (post_id, user_id, liked, event_at_micros, event_id, last_delta)
         SELECT $1, 'u' || i, true, 1700000000000000 + i * 1000, gen_random_uuid(), 1
         FROM generate_series(1, $2) AS i",
    )
    .bind::<Text, _>(LIKERS_POST)
    .bind::<BigInt, _>(i64::try_from(likers)?)
    .execute(&mut db)
    .await?;
    diesel::sql_query("INSERT INTO like_counts (post_id, count, version) VALUES ($1, $2, 1)")
        .bind::<Text, _>(LIKERS_POST)
        .bind::<BigInt, _>(i64::try_from(likers)?)
        .execute(&mut db)
        .await?;
    // What autovacuum would soon do: statistics that know the new rows.
    diesel::sql_query("ANALYZE likes").execute(&mut db).await?;

    let mut client = crate::driver::connect(&services.api_addr(), 1)
        .await?
        .remove(0);
    let page = |page_token: String| ListLikersRequest {
        post_id: LIKERS_POST.to_owned(),
        page_size,
        page_token,
    };
    let mut token = String::new();
    for _ in 1..deep_page {
        token = client
            .list_likers(page(token))
            .await?
            .into_inner()
            .next_page_token;
        anyhow::ensure!(!token.is_empty(), "fewer than {deep_page} pages of likers");
    }
    let (mut first, mut deep) = (
        crate::driver::latency_histogram(),
        crate::driver::latency_histogram(),
    );
    for _ in 0..calls {
        for (token, histogram) in [(String::new(), &mut first), (token.clone(), &mut deep)] {
            let started = Instant::now();
            let listed = client.list_likers(page(token)).await?.into_inner();
            anyhow::ensure!(listed.likers.len() == page_size as usize, "a short page");
            histogram.saturating_record(micros(started.elapsed()));
        }
    }
    Ok(Likers {
        likers,
        page_size,
        deep_page,
        first_page_us: Latency::of_or_empty(&first),
        deep_page_us: Latency::of_or_empty(&deep),
    })
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The default spike three ways, interleaved trial by trial: without the
/// likers index, with it (the default), and with it while watchers follow
/// the hot post's count; each trial in another order, a CHECKPOINT before
/// each arm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpikeArms {
    /// Each arm's end-to-end likes/s, trial by trial.
    pub without_index: Vec<f64>,
    pub with_index: Vec<f64>,
    pub with_watchers: Vec<f64>,
    /// PostgreSQL's CPU per like in the arms with and without the index,
    /// trial by trial: the index's cost where it is paid, which the
    /// end-to-end rates are too noisy to show.
    #[serde(default)]
    pub postgres_us_with_index: Vec<f64>,
    #[serde(default)]
    pub postgres_us_without_index: Vec<f64>,
    /// All the processes' CPU per like (load generator, api, worker,
    /// broker, PostgreSQL) in the arm without the index, trial by trial: on
    /// a host whose cores the spike saturates, PostgreSQL's added CPU over
    /// this is the share of the end-to-end rate the index costs.
    #[serde(default)]
    pub all_us_without_index: Vec<f64>,
    /// Every arm's reports verified (each acknowledged like stored once).
    pub verified: bool,
    /// What the watchers saw, trial by trial.
    pub watched: Vec<Watched>,
    /// The api's peak RSS after all the arms.
    pub api_peak_rss_mib: Option<f64>,
}

/// What WatchLikeCounts streams on the hot post saw during one spike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watched {
    pub streams: u32,
    /// Streams whose last count was the hot post's final count.
    pub ended_exact: u32,
    /// Every gap between messages of a stream, from its first change
    /// during the spike to the message with the final count.
    pub gaps_us: Latency,
    /// Streams with a gap over 500 ms.
    pub streams_with_a_gap_over_500_ms: u32,
    /// Messages a stream received, on average.
    pub messages_per_stream: f64,
}

/// Runs [`SpikeArms`] `trials` times: `spike(services, run_id)` runs the
/// default spike with its posts named after `run_id`.
pub async fn spike_arms<F, Fut>(
    services: &Services,
    trials: u32,
    watchers: u32,
    spike: F,
) -> anyhow::Result<SpikeArms>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = anyhow::Result<Report>>,
{
    let mut db = AsyncPgConnection::establish(services.env.settings.database.url.expose()).await?;
    let index = Index::read(&mut db, "likes_likers").await?;
    let mut arms = SpikeArms {
        without_index: Vec::new(),
        with_index: Vec::new(),
        with_watchers: Vec::new(),
        postgres_us_with_index: Vec::new(),
        postgres_us_without_index: Vec::new(),
        all_us_without_index: Vec::new(),
        verified: true,
        watched: Vec::new(),
        api_peak_rss_mib: None,
    };
    let rate = |report: &Report| report.pipeline.persisted_per_s.unwrap_or(0.0);
    let postgres = |report: &Report, into: &mut Vec<f64>| {
        if let Some(cpu) = report.pipeline.process_cpu.get("postgres") {
            into.push(cpu.us_per_like);
        }
    };
    for trial in 1..=trials {
        // Each trial runs the three arms in another order, so no arm always
        // follows the index's rebuild or runs first on a drifting host.
        let mut order = Arm::ALL;
        order.rotate_left((trial as usize - 1) % Arm::ALL.len());
        for arm in order {
            checkpoint(&mut db).await;
            match arm {
                Arm::WithIndex => {
                    let report = spike(format!("indexed{trial}")).await?;
                    arms.verified &= report.passed();
                    arms.with_index.push(rate(&report));
                    postgres(&report, &mut arms.postgres_us_with_index);
                }
                Arm::WithWatchers => {
                    let run = format!("watched{trial}");
                    let hot = Names::of(&run).post(crate::scenario::HOT_POST);
                    let (report, watched) = watching(services, &hot, watchers, spike(run)).await?;
                    arms.verified &= report.passed();
                    arms.with_watchers.push(rate(&report));
                    arms.watched.push(watched);
                }
                Arm::WithoutIndex => {
                    index.drop(&mut db).await?;
                    let report = spike(format!("unindexed{trial}")).await;
                    index.create(&mut db).await?;
                    let report = report?;
                    arms.verified &= report.passed();
                    arms.without_index.push(rate(&report));
                    postgres(&report, &mut arms.postgres_us_without_index);
                    let all = report.pipeline.process_cpu.values();
                    arms.all_us_without_index
                        .push(all.map(|cpu| cpu.us_per_like).sum());
                }
            }
        }
    }
    arms.api_peak_rss_mib = crate::procfs::peak_rss_mib(&services.api_pid().to_string());
    Ok(arms)
}

/// The arms of [`spike_arms`].
#[derive(Debug, Clone, Copy)]
enum Arm {
    WithIndex,
    WithWatchers,
    WithoutIndex,
}

impl Arm {
    const ALL: [Self; 3] = [Self::WithIndex, Self::WithWatchers, Self::WithoutIndex];
}

/// Writes out what the arm before left dirty (rebuilding the index writes
/// the whole table's worth of WAL), so no arm pays for another's
/// checkpoint. Needs a superuser or `pg_checkpoint`; without, the arms run
/// as they are, said on stderr.
async fn checkpoint(db: &mut AsyncPgConnection) {
    if let Err(error) = diesel::sql_query("CHECKPOINT").execute(db).await {
        eprintln!("no CHECKPOINT between the arms: {error}");
    }
}

/// An index as PostgreSQL describes it, to drop and create again.
struct Index {
    name: String,
    definition: String,
}

impl Index {
    async fn read(db: &mut AsyncPgConnection, name: &str) -> anyhow::Result<Self> {
        #[derive(diesel::QueryableByName)]
        struct Definition {
            #[diesel(sql_type = Text)]
            indexdef: String,
        }
        let found: Definition =
            diesel::sql_query("SELECT indexdef FROM pg_indexes WHERE indexname = $1")
                .bind::<Text, _>(name)
                .get_result(db)
                .await?;
        Ok(Self {
            name: name.to_owned(),
            definition: found.indexdef,
        })
    }

    async fn drop(&self, db: &mut AsyncPgConnection) -> anyhow::Result<()> {
        diesel::sql_query(format!("DROP INDEX {}", self.name))
            .execute(db)
            .await?;
        Ok(())
    }

    async fn create(&self, db: &mut AsyncPgConnection) -> anyhow::Result<()> {
        diesel::sql_query(&self.definition).execute(db).await?;
        Ok(())
    }
}

/// What one stream saw: when each message came, and its count.
type Seen = Vec<(Instant, i64)>;

/// Opens `streams` WatchLikeCounts streams on `post`, runs `spike` once
/// each stream has its first count, and reads what the streams saw. The
/// streams are read on a thread and runtime of their own: the load
/// generator's runtime is busy (its verification runs on it), and a stream
/// task waiting behind it would see its messages late.
async fn watching(
    services: &Services,
    post: &str,
    streams: u32,
    spike: impl Future<Output = anyhow::Result<Report>>,
) -> anyhow::Result<(Report, Watched)> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (opened, all_opened) = tokio::sync::oneshot::channel();
    let (addr, watched_post) = (services.api_addr(), post.to_owned());
    let reader = std::thread::spawn(move || -> anyhow::Result<Vec<Seen>> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(follow(addr, watched_post, streams, opened, stopped))
    });
    let opened = tokio::time::timeout(Duration::from_secs(60), all_opened)
        .await
        .map_err(|_| anyhow::anyhow!("the streams did not all start in 60 s"))?;
    opened??;
    let started = Instant::now();
    let report = spike.await;
    let settings = &services.env.settings.api;
    tokio::time::sleep(settings.watch_min_interval() * 2 + Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let seen = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the stream reader panicked"))??;
    let report = report?;
    let last = final_count(services, post).await?;
    let mut watched = Watched {
        streams,
        ended_exact: 0,
        gaps_us: Latency::of_or_empty(&crate::driver::latency_histogram()),
        streams_with_a_gap_over_500_ms: 0,
        messages_per_stream: 0.0,
    };
    let mut histogram = crate::driver::latency_histogram();
    let mut messages = 0;
    for seen in &seen {
        messages += seen.len();
        watched.ended_exact += u32::from(seen.last().is_some_and(|&(_, count)| count == last));
        let gaps_of_stream = gaps(seen, started, last);
        for gap in &gaps_of_stream {
            histogram.saturating_record(micros(*gap));
        }
        let over = gaps_of_stream
            .iter()
            .any(|gap| *gap > Duration::from_millis(500));
        if over {
            let timeline: Vec<String> = seen
                .iter()
                .map(|(at, count)| format!("{:+.0}ms:{count}", signed_ms(*at, started)))
                .collect();
            eprintln!("  a stream with a gap over 500 ms: {}", timeline.join(" "));
        }
        watched.streams_with_a_gap_over_500_ms += u32::from(over);
    }
    watched.gaps_us = Latency::of_or_empty(&histogram);
    watched.messages_per_stream = messages as f64 / f64::from(streams.max(1));
    Ok((report, watched))
}

fn signed_ms(at: Instant, from: Instant) -> f64 {
    if at >= from {
        (at - from).as_secs_f64() * 1e3
    } else {
        -((from - at).as_secs_f64() * 1e3)
    }
}

/// The streams' side of [`watching`]: opens them (100 a connection, half
/// the api's limit per connection), says when each has its first count,
/// and records what they receive until `stopped`.
async fn follow(
    addr: String,
    post: String,
    streams: u32,
    opened: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Seen>> {
    let clients = crate::driver::connect(&addr, streams.div_ceil(100) as usize).await?;
    let (first, mut first_counts) = tokio::sync::mpsc::channel(streams as usize);
    let mut followers = Vec::new();
    for i in 0..streams as usize {
        let mut client = clients[i % clients.len()].clone();
        let request = WatchLikeCountsRequest {
            post_ids: vec![post.clone()],
        };
        let (mut stopped, first) = (stopped.clone(), first.clone());
        followers.push(tokio::spawn(async move {
            let mut stream = client.watch_like_counts(request).await?.into_inner();
            let mut seen = Seen::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    message = stream.message() => match message? {
                        Some(change) => {
                            if seen.is_empty() {
                                let _ = first.send(()).await;
                            }
                            seen.push((Instant::now(), change.count));
                        }
                        None => anyhow::bail!("the stream ended"),
                    },
                }
            }
            Ok(seen)
        }));
    }
    for _ in 0..streams {
        first_counts.recv().await;
    }
    let _ = opened.send(Ok(()));
    let mut seen = Vec::with_capacity(followers.len());
    for follower in followers {
        seen.push(follower.await??);
    }
    Ok(seen)
}

/// The gaps between the messages a stream `seen` after `started`, from
/// its first change (the load starts after its own set-up) to the first
/// message with the `last` count.
fn gaps(seen: &[(Instant, i64)], started: Instant, last: i64) -> Vec<Duration> {
    let mut changes = seen.iter().filter(|(at, _)| *at > started);
    let Some(&(mut previous, first)) = changes.next() else {
        return Vec::new();
    };
    let mut gaps = Vec::new();
    if first == last {
        return gaps;
    }
    for &(at, count) in changes {
        gaps.push(at - previous);
        previous = at;
        if count == last {
            break;
        }
    }
    gaps
}

async fn final_count(services: &Services, post: &str) -> anyhow::Result<i64> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let mut db = AsyncPgConnection::establish(services.env.settings.database.url.expose()).await?;
    let found: Count = diesel::sql_query("SELECT count FROM like_counts WHERE post_id = $1")
        .bind::<Text, _>(post)
        .get_result(&mut db)
        .await?;
    Ok(found.count)
}

/// The product pages' table of the bench summary: results only.
pub fn summary(
    s: &mut String,
    feed: Option<&Feed>,
    likers: Option<&Likers>,
    arms: Option<&SpikeArms>,
) {
    use std::fmt::Write as _;
    let ms = |micros: u64| format!("{:.1} ms", micros as f64 / 1000.0);
    let _ = writeln!(s, "| Product pages | Measured |");
    let _ = writeln!(s, "|---|---|");
    match feed {
        Some(feed) => {
            let (one, per_post) = (&feed.one_call, &feed.per_post_calls);
            let _ = writeln!(
                s,
                "| feed pages of 50 posts with a viewer, 64 readers: one GetLikeSummaries / 51 calls (pages/s) | {} / {} = **{:.1}×** (p99 {:.1} / {:.1} ms; {} / {} errors) |",
                crate::bench::n(one.reads_per_s),
                crate::bench::n(per_post.reads_per_s),
                one.reads_per_s / per_post.reads_per_s.max(f64::MIN_POSITIVE),
                one.p99_ms,
                per_post.p99_ms,
                one.errors,
                per_post.errors
            );
            let _ = writeln!(
                s,
                "| … PostgreSQL transactions per page: one call / 51 calls | **{:.2}** / {:.2} |",
                feed.one_call_transactions_per_page, feed.per_post_transactions_per_page
            );
        }
        None => {
            let _ = writeln!(s, "| feed pages (`../shared/grpc-ceiling`) | not run |");
        }
    }
    if let Some(l) = likers {
        let _ = writeln!(
            s,
            "| ListLikers of a post with {} likers, {} a page: p99 of page {} / page 1 | {} / {} = **{:.2}×** (p50 {} / {}) |",
            crate::bench::n(l.likers as f64),
            l.page_size,
            l.deep_page,
            ms(l.deep_page_us.p99),
            ms(l.first_page_us.p99),
            l.deep_page_us.p99 as f64 / l.first_page_us.p99.max(1) as f64,
            ms(l.deep_page_us.p50),
            ms(l.first_page_us.p50)
        );
    }
    if let Some(arms) = arms {
        arms_summary(s, arms);
    }
}

/// The spike arms' rows of the product pages' table. Each ratio is the
/// median of the trials' own ratios (arms of one trial run minutes apart,
/// trials farther), then the ratio of the arms' medians.
pub fn arms_summary(s: &mut String, arms: &SpikeArms) {
    use std::fmt::Write as _;
    let median = |rates: &[f64]| crate::ceiling::median_by(rates.iter().copied(), |r| *r);
    let ms = |micros: u64| format!("{:.1} ms", micros as f64 / 1000.0);
    let trials = arms.with_index.len();
    let paired = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(a, b)| a / b.max(f64::MIN_POSITIVE))
            .collect()
    };
    let index_ratios = paired(&arms.with_index, &arms.without_index);
    let watcher_ratios = paired(&arms.with_watchers, &arms.with_index);
    if let (Some(with), Some(without), Some(watched), Some(index_ratio), Some(watcher_ratio)) = (
        median(&arms.with_index),
        median(&arms.without_index),
        median(&arms.with_watchers),
        median(&index_ratios),
        median(&watcher_ratios),
    ) {
        let _ = writeln!(
            s,
            "| the spike's end-to-end likes/s, with the likers index / without ({trials} interleaved trials): median of the trials' ratios (ratio of the medians) | **{index_ratio:.3}** ({} / {} = {:.3}) |",
            crate::bench::n(with),
            crate::bench::n(without),
            with / without
        );
        if let (Some(with), Some(without)) = (
            median(&arms.postgres_us_with_index),
            median(&arms.postgres_us_without_index),
        ) {
            let _ = writeln!(
                s,
                "| … PostgreSQL CPU per like, with the index / without (median) | {with:.1} µs / {without:.1} µs = **{:.2}** |",
                with / without
            );
        }
        let added: Vec<f64> = arms
            .postgres_us_with_index
            .iter()
            .zip(&arms.postgres_us_without_index)
            .zip(&arms.all_us_without_index)
            .map(|((with, without), all)| (with - without) / all.max(f64::MIN_POSITIVE))
            .collect();
        if let Some(share) = median(&added) {
            let _ = writeln!(
                s,
                "| … PostgreSQL's added CPU per like with the index / all the processes' CPU per like without it (median of the trials) | **{:.1}%** |",
                share * 100.0
            );
        }
        let _ = writeln!(
            s,
            "| … with {} WatchLikeCounts streams on the hot post / without: median of the trials' ratios (ratio of the medians) | **{watcher_ratio:.3}** ({} / {} = {:.3}) |",
            <[_]>::first(&arms.watched).map_or(0, |w| w.streams),
            crate::bench::n(watched),
            crate::bench::n(with),
            watched / with
        );
    }
    for (trial, w) in arms.watched.iter().enumerate() {
        let _ = writeln!(
            s,
            "| … the streams, trial {}: ended on the exact count; gap between messages p50 / p99 / max; streams with a gap > 500 ms; messages a stream | **{} / {}**; {} / {} / **{}**; **{}**; {:.1} |",
            trial + 1,
            w.ended_exact,
            w.streams,
            ms(w.gaps_us.p50),
            ms(w.gaps_us.p99),
            ms(w.gaps_us.max),
            w.streams_with_a_gap_over_500_ms,
            w.messages_per_stream
        );
    }
    let _ = writeln!(
        s,
        "| api peak RSS after these spikes | **{}** |",
        arms.api_peak_rss_mib
            .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.0} MiB"))
    );
    let rates = |r: &[f64]| {
        r.iter()
            .map(|&x| crate::bench::n(x))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let ratios = |r: &[f64]| {
        r.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let _ = writeln!(
        s,
        "\nspike arms, end-to-end likes/s by trial: with the index {}; without {}; with watchers {}; ratios by trial, with the index / without {}, with watchers / without {}; {}\n",
        rates(&arms.with_index),
        rates(&arms.without_index),
        rates(&arms.with_watchers),
        ratios(&index_ratios),
        ratios(&watcher_ratios),
        if arms.verified {
            "every acknowledged like stored once"
        } else {
            "VERIFICATION FAILED"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_run_from_the_first_change_to_the_final_count() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let seen = [
            (start, 0),
            (at(1_500), 10),
            (at(1_750), 20),
            (at(2_300), 30),
            (at(2_400), 30),
        ];
        let ms = |gaps: Vec<Duration>| gaps.iter().map(Duration::as_millis).collect::<Vec<_>>();
        assert_eq!(ms(gaps(&seen, start, 30)), [250, 550]);
        assert_eq!(ms(gaps(&seen, start, 10)), Vec::<u128>::new());
        assert_eq!(ms(gaps(&seen[..1], start, 0)), Vec::<u128>::new());
    }

    #[test]
    fn the_table_reads_its_figures_from_the_results() {
        let latency = |p99| Latency {
            count: 10,
            p50: p99 / 2,
            p90: p99,
            p99,
            p999: p99,
            max: p99,
            mean: 1.0,
        };
        let reads = |reads_per_s| SharedReads {
            reads_per_s,
            p99_ms: 2.0,
            errors: 0,
        };
        let feed = Feed {
            per_post_calls: reads(300.0),
            per_post_transactions_per_page: 51.0,
            one_call: reads(4_500.0),
            one_call_transactions_per_page: 1.0,
        };
        let likers = Likers {
            likers: 100_000,
            page_size: 100,
            deep_page: 500,
            first_page_us: latency(1_000),
            deep_page_us: latency(1_500),
        };
        let arms = SpikeArms {
            without_index: vec![20_000.0, 21_000.0, 19_000.0],
            with_index: vec![19_000.0, 20_000.0, 21_000.0],
            with_watchers: vec![18_000.0, 19_000.0, 20_000.0],
            postgres_us_with_index: vec![11.0, 12.0, 10.0],
            postgres_us_without_index: vec![10.0, 9.0, 8.0],
            all_us_without_index: vec![50.0, 40.0, 100.0],
            verified: true,
            watched: vec![Watched {
                streams: 1000,
                ended_exact: 1000,
                gaps_us: latency(260_000),
                streams_with_a_gap_over_500_ms: 0,
                messages_per_stream: 30.0,
            }],
            api_peak_rss_mib: Some(80.0),
        };
        let mut text = String::new();
        summary(&mut text, Some(&feed), Some(&likers), Some(&arms));
        for expected in [
            "| 4,500 / 300 = **15.0×**",
            "| **1.00** / 51.00 |",
            "100,000 likers, 100 a page: p99 of page 500 / page 1 | 1.5 ms / 1.0 ms = **1.50×**",
            "(3 interleaved trials): median of the trials' ratios (ratio of the medians) | **0.952** (20,000 / 20,000 = 1.000) |",
            "streams on the hot post / without: median of the trials' ratios (ratio of the medians) | **0.950** (19,000 / 20,000 = 0.950) |",
            "with the index / without 0.950 / 0.952 / 1.105, with watchers / without 0.947 / 0.950 / 0.952;",
            "with the index / without (median) | 11.0 µs / 9.0 µs = **1.22** |",
            "all the processes' CPU per like without it (median of the trials) | **2.0%** |",
            "| **1000 / 1000**; 130.0 ms / 260.0 ms / **260.0 ms**; **0**; 30.0 |",
            "| **80 MiB** |",
            "every acknowledged like stored once",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
    }
}
