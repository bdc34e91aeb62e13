//! The raw RabbitMQ + PostgreSQL pipe, without gRPC or service code: what
//! the two servers alone allow on this machine. The method of
//! `../shared/ceiling`'s `e2e` and `e2e-packed` cases: persistent messages
//! published with 256 confirms in flight to a durable queue, consumed with
//! prefetch 2 × batch and manual acks, written in batches by one `unnest`
//! insert … `ON CONFLICT DO NOTHING RETURNING` feeding one aggregated counter
//! upsert, then acked with `multiple`. Messages are the service's own
//! protobuf: one `LikeEvent` each, or `per_message` events packed in a
//! `LikeEventBatch`. Like #i goes from user i+1 to one of 100,000 posts.

use crate::broker::{self, Consumer};
use anyhow::Context;
use diesel::sql_types::{Array, BigInt};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use likes_common::config::{AmqpSettings, QueueType};
use likes_proto::events::{LikeEvent, LikeEventBatch, like_event::Action};
use prost::Message;
use std::{fmt, str::FromStr, time::Duration};
use tokio::time::Instant;

/// Posts the likes spread over.
const POSTS: u64 = 100_000;
/// Unconfirmed messages the publisher keeps.
const IN_FLIGHT: usize = 256;
/// A batch that has not filled closes after this long without a delivery.
const IDLE_FLUSH: Duration = Duration::from_millis(50);

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS ceiling_likes (
    post_id bigint NOT NULL, user_id bigint NOT NULL, created_at_micros bigint NOT NULL,
    PRIMARY KEY (post_id, user_id));
CREATE TABLE IF NOT EXISTS ceiling_counts (post_id bigint PRIMARY KEY, n bigint NOT NULL);
TRUNCATE ceiling_likes, ceiling_counts;";

const BATCH_SQL: &str = "
WITH ins AS (
    INSERT INTO ceiling_likes (post_id, user_id, created_at_micros)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
    ON CONFLICT DO NOTHING RETURNING post_id)
INSERT INTO ceiling_counts (post_id, n)
SELECT post_id, count(*) FROM ins GROUP BY post_id ORDER BY post_id
ON CONFLICT (post_id) DO UPDATE SET n = ceiling_counts.n + EXCLUDED.n";

/// The queue the pipe runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Classic, storage version 1 (RabbitMQ 3.10's default).
    Classic,
    /// Classic, storage version 2.
    Classic2,
    Quorum,
}

impl QueueKind {
    /// The kind a service with these settings declares (its classic
    /// queues are storage version 2).
    pub fn of(settings: &AmqpSettings) -> Self {
        match settings.queue_type {
            QueueType::Quorum => Self::Quorum,
            QueueType::Classic => Self::Classic2,
        }
    }

    /// Sets `settings` to declare this kind's type (a service's classic
    /// queues are version 2 whatever the kind says).
    pub fn apply(self, settings: &mut AmqpSettings) {
        settings.queue_type = match self {
            Self::Classic | Self::Classic2 => QueueType::Classic,
            Self::Quorum => QueueType::Quorum,
        };
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Classic2 => "classic2",
            Self::Quorum => "quorum",
        }
    }
}

impl FromStr for QueueKind {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "classic" => Ok(Self::Classic),
            "classic2" => Ok(Self::Classic2),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!("{other:?} is not classic, classic2 or quorum")),
        }
    }
}

/// One pipe measurement's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipe {
    /// Likes per database batch.
    pub batch: u64,
    pub likes: u64,
    /// Likes per broker message.
    pub per_message: u64,
    pub queue: QueueKind,
}

impl fmt::Display for Pipe {
    /// The case as `../shared/ceiling` names it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            batch,
            likes,
            per_message,
            queue,
        } = self;
        match (per_message, queue) {
            (1, QueueKind::Classic) => write!(f, "e2e:{batch}:{likes}"),
            (1, _) => write!(f, "e2e:{batch}:{likes}:{}", queue.as_str()),
            _ => write!(
                f,
                "e2e-packed:{batch}:{likes}:{per_message}:{}",
                queue.as_str()
            ),
        }
    }
}

/// What one trial measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    pub likes: u64,
    pub seconds: f64,
    /// The broker's CPU seconds during the trial, if its pid is known.
    pub broker_cpu_s: Option<f64>,
}

/// A database and a queue of the pipe's own, on the servers of `env`.
#[derive(Debug)]
pub struct Bench {
    amqp: AmqpSettings,
    database_url: String,
}

impl Bench {
    /// Prepares `env`'s database (tables of its own) and its event queue as
    /// `pipe.queue` declares it.
    pub async fn prepare(
        env: &mut likes_testkit::TestEnv,
        queue: QueueKind,
    ) -> anyhow::Result<Self> {
        queue.apply(&mut env.settings.amqp);
        let database_url = env.settings.database.url.expose().to_owned();
        likes_db::ensure_database(&database_url, &env.settings.database.tls_ca_file).await?;
        Ok(Self {
            amqp: env.settings.amqp.clone(),
            database_url,
        })
    }

    /// Runs `pipe` once: publish everything, consume and write it all, and
    /// check that every like is stored and counted once.
    pub async fn trial(&self, pipe: &Pipe, broker: Option<u32>) -> anyhow::Result<Trial> {
        let mut db = AsyncPgConnection::establish(&self.database_url)
            .await
            .context("connecting to the pipe's database")?;
        db.batch_execute(SCHEMA_SQL).await?;
        let (publisher_link, publisher) = broker::open(&self.amqp, "likes-loadtest-pipe").await?;
        broker::declare_purged(&publisher_link, &publisher, &self.amqp).await?;
        let (consumer_link, consumer_channel) =
            broker::open(&self.amqp, "likes-loadtest-pipe-consumer").await?;
        let prefetch = u16::try_from(2 * pipe.batch).unwrap_or(u16::MAX);
        let mut consumer = Consumer::start(&consumer_channel, &self.amqp.queue, prefetch).await?;

        let cpu_before = broker.and_then(crate::procfs::cpu_seconds);
        let started = Instant::now();
        let publishing = {
            let (pipe, queue) = (*pipe, self.amqp.queue.clone());
            tokio::spawn(async move {
                let sent =
                    broker::publish_confirmed(&publisher, &queue, bodies(pipe), IN_FLIGHT).await;
                (sent, publisher)
            })
        };
        let mut got = 0;
        let (mut posts, mut users, mut ats) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = None;
        while got < pipe.likes {
            let flush = match consumer.next(IDLE_FLUSH).await? {
                Some(delivery) => {
                    for event in decode(&delivery.data, pipe.per_message)? {
                        posts.push(event.post_id.parse::<i64>()?);
                        users.push(event.user_id.parse::<i64>()?);
                        ats.push(event.occurred_at_micros);
                        got += 1;
                    }
                    last = Some(delivery);
                    posts.len() as u64 >= pipe.batch || got >= pipe.likes
                }
                None => !posts.is_empty(),
            };
            if flush {
                diesel::sql_query(BATCH_SQL)
                    .bind::<Array<BigInt>, _>(&posts)
                    .bind::<Array<BigInt>, _>(&users)
                    .bind::<Array<BigInt>, _>(&ats)
                    .execute(&mut db)
                    .await?;
                if let Some(delivery) = last.take() {
                    broker::ack_up_to(&delivery).await?;
                }
                posts.clear();
                users.clear();
                ats.clear();
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu_after = broker.and_then(crate::procfs::cpu_seconds);
        let (sent, _publisher) = publishing.await?;
        sent?;
        let _ = publisher_link.close(200, "done".into()).await;
        let _ = consumer_link.close(200, "done".into()).await;

        #[derive(diesel::QueryableByName)]
        struct Totals {
            #[diesel(sql_type = BigInt)]
            rows: i64,
            #[diesel(sql_type = BigInt)]
            counted: i64,
        }
        let totals: Totals = diesel::sql_query(
            "SELECT (SELECT count(*) FROM ceiling_likes) AS rows,
                    (SELECT coalesce(sum(n), 0)::int8 FROM ceiling_counts) AS counted",
        )
        .get_result(&mut db)
        .await?;
        let want = i64::try_from(pipe.likes)?;
        anyhow::ensure!(
            totals.rows == want && totals.counted == want,
            "the pipe stored {} likes and counted {}, not {want}",
            totals.rows,
            totals.counted
        );
        Ok(Trial {
            likes: pipe.likes,
            seconds,
            broker_cpu_s: cpu_after.zip(cpu_before).map(|(a, b)| a - b),
        })
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Like #i: a post among [`POSTS`], user i + 1, so every pair is new.
fn event(i: u64) -> LikeEvent {
    LikeEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        post_id: (splitmix(i) % POSTS).to_string(),
        user_id: (i + 1).to_string(),
        action: Action::Like.into(),
        occurred_at_micros: likes_common::time::now_micros(),
    }
}

/// The message bodies of the pipe, encoded as they are published.
fn bodies(pipe: Pipe) -> impl Iterator<Item = Vec<u8>> {
    let messages = pipe.likes.div_ceil(pipe.per_message);
    (0..messages).map(move |m| {
        let first = m * pipe.per_message;
        let last = (first + pipe.per_message).min(pipe.likes);
        if pipe.per_message == 1 {
            event(first).encode_to_vec()
        } else {
            LikeEventBatch {
                events: (first..last).map(event).collect(),
            }
            .encode_to_vec()
        }
    })
}

fn decode(body: &[u8], per_message: u64) -> anyhow::Result<Vec<LikeEvent>> {
    Ok(if per_message == 1 {
        vec![LikeEvent::decode(body)?]
    } else {
        LikeEventBatch::decode(body)?.events
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_named_as_the_shared_ceiling_names_them() {
        let pipe = |per_message, queue| Pipe {
            batch: 1000,
            likes: 200_000,
            per_message,
            queue,
        };
        assert_eq!(pipe(1, QueueKind::Classic).to_string(), "e2e:1000:200000");
        assert_eq!(
            pipe(1, QueueKind::Quorum).to_string(),
            "e2e:1000:200000:quorum"
        );
        assert_eq!(
            pipe(16, QueueKind::Classic2).to_string(),
            "e2e-packed:1000:200000:16:classic2"
        );
    }

    #[test]
    fn packed_bodies_carry_every_like_once() -> anyhow::Result<()> {
        let pipe = Pipe {
            batch: 10,
            likes: 37,
            per_message: 16,
            queue: QueueKind::Classic2,
        };
        let events: Vec<LikeEvent> = bodies(pipe)
            .map(|body| decode(&body, 16))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(events.len(), 37);
        let users: Vec<String> = events.iter().map(|e| e.user_id.clone()).collect();
        assert_eq!(users[0], "1");
        assert_eq!(users[36], "37");
        Ok(())
    }
}
