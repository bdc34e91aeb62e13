//! Checking the counters against the likes, and repairing them
//! (`likes-admin recount`).
//!
//! A post's counter (`like_counts.count`) is the number of its pairs whose
//! `liked` is true; the worker keeps it so by changing both in one
//! statement. Should it drift anyway (a restore, a hand edit, a bug),
//! [`recount`] walks the posts in batches of [`Recount::batch`], in post id
//! order (keyset, never OFFSET), and compares, for each batch, the counters
//! with a count of the liked pairs, both read in one statement and so from
//! one snapshot: a difference seen there is drift, not a write in flight.
//!
//! A drifted post is repaired in a transaction of its own that is safe
//! while workers write: it makes sure the counter row exists, locks it
//! (`FOR UPDATE`), counts the liked pairs again and sets the counter, with
//! its version one higher. A worker's batch changes pairs and then the
//! counter in one statement, so it either committed before the lock (the
//! recount sees its pairs) or waits for it and then adds its change to the
//! repaired value. The apis' count caches take the repaired count when it
//! expires (`api.count_cache_ttl_ms`) or with the post's next change.

use crate::DbError;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Integer, Nullable, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// What to check.
#[derive(Debug, Clone)]
pub struct Recount {
    /// Only this post; `None`: every post with a counter or a pair.
    pub post: Option<String>,
    /// Posts compared per statement.
    pub batch: u32,
    /// Report drift without repairing it.
    pub dry_run: bool,
}

/// A post whose counter differed from its liked pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub post_id: String,
    /// The counter as found (`None`: no counter row).
    pub stored: Option<i64>,
    /// Its liked pairs when compared.
    pub counted: i64,
    /// The counter after the repair (`None` in a dry run).
    pub repaired: Option<i64>,
}

/// What a recount found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub posts_checked: u64,
    pub drift: Vec<Drift>,
}

#[derive(QueryableByName)]
struct Compared {
    #[diesel(sql_type = Text)]
    post_id: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    stored: Option<i64>,
    #[diesel(sql_type = BigInt)]
    counted: i64,
}

/// The next `$2` posts after `$1` (a post id, `''` to start) that have a
/// counter or a pair, each with its counter and its liked pairs, in one
/// snapshot. `$3`: only that post when not null.
const COMPARE_BATCH: &str = r#"
WITH posts AS (
    SELECT post_id FROM (
        (SELECT post_id FROM like_counts
         WHERE post_id > $1 AND ($3::text IS NULL OR post_id = $3)
         ORDER BY post_id LIMIT $2)
        UNION
        (SELECT DISTINCT post_id FROM likes
         WHERE post_id > $1 AND ($3::text IS NULL OR post_id = $3)
         ORDER BY post_id LIMIT $2)
    ) AS candidates
    ORDER BY post_id LIMIT $2
)
SELECT p.post_id,
       c.count AS stored,
       (SELECT count(*) FROM likes l WHERE l.post_id = p.post_id AND l.liked) AS counted
FROM posts p LEFT JOIN like_counts c USING (post_id)
ORDER BY p.post_id
"#;

#[derive(QueryableByName)]
struct Repaired {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Compares the counters with the liked pairs and, unless a dry run,
/// repairs every drifted one. Safe while workers write (see the module).
pub async fn recount(conn: &mut AsyncPgConnection, what: &Recount) -> Result<Report, DbError> {
    let mut report = Report::default();
    let mut after = String::new();
    loop {
        let batch: Vec<Compared> = diesel::sql_query(COMPARE_BATCH)
            .bind::<Text, _>(&after)
            .bind::<Integer, _>(i32::try_from(what.batch.max(1)).unwrap_or(i32::MAX))
            .bind::<Nullable<Text>, _>(what.post.as_deref())
            .load(conn)
            .await?;
        let Some(last) = batch.last() else {
            return Ok(report);
        };
        after = last.post_id.clone();
        report.posts_checked += batch.len() as u64;
        for post in batch {
            if post.stored == Some(post.counted) || (post.stored.is_none() && post.counted == 0) {
                continue;
            }
            let repaired = if what.dry_run {
                None
            } else {
                Some(repair(conn, &post.post_id).await?)
            };
            report.drift.push(Drift {
                post_id: post.post_id,
                stored: post.stored,
                counted: post.counted,
                repaired,
            });
        }
    }
}

/// Sets one post's counter to its liked pairs, under the counter's row lock.
async fn repair(conn: &mut AsyncPgConnection, post_id: &str) -> Result<i64, DbError> {
    let post_id = post_id.to_owned();
    conn.transaction::<_, DbError, _>(async move |conn| {
        // The row to lock: a worker inserting the same post's counter now
        // makes this wait for it, then do nothing.
        diesel::sql_query(
            "INSERT INTO like_counts (post_id, count, version) VALUES ($1, 0, 0) \
             ON CONFLICT (post_id) DO NOTHING",
        )
        .bind::<Text, _>(&post_id)
        .execute(conn)
        .await?;
        diesel::sql_query("SELECT 1 FROM like_counts WHERE post_id = $1 FOR UPDATE")
            .bind::<Text, _>(&post_id)
            .execute(conn)
            .await?;
        // A statement of its own, so a snapshot taken after the lock: every
        // batch that changed this post's counter before it is seen.
        let repaired: Repaired = diesel::sql_query(
            "UPDATE like_counts \
             SET count = counted.n, version = version + 1 \
             FROM (SELECT count(*) AS n FROM likes WHERE post_id = $1 AND liked) AS counted \
             WHERE post_id = $1 \
             RETURNING count",
        )
        .bind::<Text, _>(&post_id)
        .get_result(conn)
        .await?;
        Ok(repaired.count)
    })
    .await
}
