//! Every query of the service.
//!
//! Writes come in batches from the worker: [`write_batch`] applies a whole
//! batch in one SQL statement (so one implicit transaction), whatever its
//! size, by passing each column as one array parameter to `unnest`. That keeps
//! the statement far below PostgreSQL's 65,535 bind-parameter limit (it uses
//! five) and lets the server plan it once.

use crate::{
    DbError,
    models::{Action, CountChange, LikeChange, VersionedCount, WriteOutcome},
    schema::{like_counts, likes},
};
use diesel::{
    CombineDsl, ExpressionMethods, IntoSql, OptionalExtension, QueryDsl, QueryResult,
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    sql_types::{Array, BigInt, Bool, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use likes_common::ids::{PostId, UserId};
use std::collections::{HashMap, HashSet};

/// Upserts each pair's state where the event is newer than the stored one,
/// and adds the resulting changes to the per-post counters: one counter row
/// update per post, in post id order so concurrent workers lock counter rows
/// in the same order and cannot deadlock on them. Each changed counter's
/// version grows by one, and its new count and version are returned (one
/// row each; one row of nulls when no counter changed), for the apis'
/// caches.
///
/// `last_delta` is computed from the stored row (`l`) inside ON CONFLICT,
/// which PostgreSQL evaluates on the latest committed version under a row
/// lock, so the counter stays exact when workers race on the same pair.
const WRITE_BATCH_HEAD: &str = "WITH input AS (SELECT * FROM unnest(";
// Between the five array parameters, which the query builder numbers $1..$5.
const WRITE_BATCH_CASTS: [&str; 5] = [
    "::text[], ",
    "::text[], ",
    "::bool[], ",
    "::int8[], ",
    "::uuid[]",
];
const WRITE_BATCH_TAIL: &str = r#")
        AS t(post_id, user_id, liked, event_at_micros, event_id)
),
changed AS (
    INSERT INTO likes AS l (post_id, user_id, liked, event_at_micros, event_id, last_delta)
    SELECT post_id, user_id, liked, event_at_micros, event_id, liked::int::smallint
    FROM input
    ON CONFLICT (post_id, user_id) DO UPDATE
        SET liked = EXCLUDED.liked,
            event_at_micros = EXCLUDED.event_at_micros,
            event_id = EXCLUDED.event_id,
            last_delta = EXCLUDED.liked::int - l.liked::int
        WHERE (l.event_at_micros, l.event_id) < (EXCLUDED.event_at_micros, EXCLUDED.event_id)
    RETURNING l.post_id, l.last_delta
),
counted AS (
    INSERT INTO like_counts AS c (post_id, count, version)
    SELECT post_id, sum(last_delta), 1
    FROM changed
    GROUP BY post_id
    HAVING sum(last_delta) <> 0
    ORDER BY post_id
    ON CONFLICT (post_id) DO UPDATE SET count = c.count + EXCLUDED.count, version = c.version + 1
    RETURNING c.post_id, c.count, c.version
)
SELECT (SELECT count(*) FROM changed) AS rows_changed, c.post_id, c.count, c.version
FROM (SELECT) AS one LEFT JOIN counted AS c ON true
"#;

/// The batch statement as a query type of its own rather than `sql_query`:
/// diesel never caches `sql_query` statements, so each batch would cost a
/// Parse round trip (and an extra implicit transaction) before its Execute.
/// With a static query id the statement is prepared once per connection.
struct WriteBatch<'a> {
    post_ids: Vec<&'a str>,
    user_ids: Vec<&'a str>,
    liked: Vec<bool>,
    at: Vec<i64>,
    event_ids: Vec<uuid::Uuid>,
}

impl QueryId for WriteBatch<'_> {
    type QueryId = WriteBatch<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for WriteBatch<'_> {
    type SqlType = (BigInt, Nullable<Text>, Nullable<BigInt>, Nullable<BigInt>);
}

impl QueryFragment<Pg> for WriteBatch<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(WRITE_BATCH_HEAD);
        out.push_bind_param::<Array<Text>, _>(&self.post_ids)?;
        out.push_sql(WRITE_BATCH_CASTS[0]);
        out.push_bind_param::<Array<Text>, _>(&self.user_ids)?;
        out.push_sql(WRITE_BATCH_CASTS[1]);
        out.push_bind_param::<Array<Bool>, _>(&self.liked)?;
        out.push_sql(WRITE_BATCH_CASTS[2]);
        out.push_bind_param::<Array<BigInt>, _>(&self.at)?;
        out.push_sql(WRITE_BATCH_CASTS[3]);
        out.push_bind_param::<Array<SqlUuid>, _>(&self.event_ids)?;
        out.push_sql(WRITE_BATCH_CASTS[4]);
        out.push_sql(WRITE_BATCH_TAIL);
        Ok(())
    }
}

/// Applies a batch of likes and unlikes in one statement.
///
/// Several events for one pair are folded first to the last one by
/// (`occurred_at_micros`, `event_id`): PostgreSQL refuses an ON CONFLICT DO
/// UPDATE that touches a row twice, and only the last event matters. Pairs are
/// then sorted, so concurrent batches lock rows in the same order. Events
/// older than what is stored change nothing, so redelivered or late events
/// are harmless: the batch is idempotent.
pub async fn write_batch(
    conn: &mut AsyncPgConnection,
    changes: &[LikeChange],
) -> Result<WriteOutcome, DbError> {
    let latest = fold_to_latest(changes);
    if latest.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let mut query = WriteBatch {
        post_ids: Vec::with_capacity(latest.len()),
        user_ids: Vec::with_capacity(latest.len()),
        liked: Vec::with_capacity(latest.len()),
        at: Vec::with_capacity(latest.len()),
        event_ids: Vec::with_capacity(latest.len()),
    };
    for change in &latest {
        query.post_ids.push(change.post_id.as_str());
        query.user_ids.push(change.user_id.as_str());
        query.liked.push(change.action == Action::Like);
        query.at.push(change.occurred_at_micros);
        query.event_ids.push(change.event_id);
    }
    let rows = query
        .load::<(i64, Option<String>, Option<i64>, Option<i64>)>(conn)
        .await?;
    let rows_changed = <[_]>::first(&rows).map_or(0, |row| row.0);
    let counts: Vec<CountChange> = rows
        .into_iter()
        .filter_map(|(_, post_id, count, version)| {
            Some(CountChange {
                post_id: post_id?,
                count: VersionedCount {
                    count: count?,
                    version: version?,
                },
            })
        })
        .collect();
    Ok(WriteOutcome {
        pairs: latest.len(),
        rows_changed,
        counters_changed: counts.len() as i64,
        counts,
    })
}

/// The last change of each (post, user) pair, sorted by pair.
fn fold_to_latest(changes: &[LikeChange]) -> Vec<&LikeChange> {
    let mut latest: HashMap<(&str, &str), &LikeChange> = HashMap::with_capacity(changes.len());
    for change in changes {
        latest
            .entry((change.post_id.as_str(), change.user_id.as_str()))
            .and_modify(|kept| {
                if change.order_key() > kept.order_key() {
                    *kept = change;
                }
            })
            .or_insert(change);
    }
    let mut pairs: Vec<_> = latest.into_values().collect();
    pairs.sort_unstable_by(|a, b| (&a.post_id, &a.user_id).cmp(&(&b.post_id, &b.user_id)));
    pairs
}

/// The like count of a post and its version; 0 (version 0) for a post
/// never liked.
pub async fn like_count(
    conn: &mut AsyncPgConnection,
    post: &PostId,
) -> Result<VersionedCount, DbError> {
    let found = like_counts::table
        .find(post.as_str())
        .select((like_counts::count, like_counts::version))
        .first::<(i64, i64)>(conn)
        .await
        .optional()?;
    Ok(
        found.map_or_else(VersionedCount::default, |(count, version)| VersionedCount {
            count,
            version,
        }),
    )
}

/// Counts of several posts in one query; every requested post is in the
/// map, 0 (version 0) if never liked.
pub async fn like_counts(
    conn: &mut AsyncPgConnection,
    posts: &[PostId],
) -> Result<HashMap<String, VersionedCount>, DbError> {
    let mut counts: HashMap<String, VersionedCount> = posts
        .iter()
        .map(|p| (p.to_string(), VersionedCount::default()))
        .collect();
    let found = like_counts::table
        .filter(like_counts::post_id.eq_any(posts.iter().map(PostId::as_str)))
        .select((
            like_counts::post_id,
            like_counts::count,
            like_counts::version,
        ))
        .load::<(String, i64, i64)>(conn)
        .await?;
    counts.extend(
        found
            .into_iter()
            .map(|(post, count, version)| (post, VersionedCount { count, version })),
    );
    Ok(counts)
}

/// Whether the user currently likes the post.
pub async fn has_liked(
    conn: &mut AsyncPgConnection,
    post: &PostId,
    user: &UserId,
) -> Result<bool, DbError> {
    let liked = likes::table
        .find((post.as_str(), user.as_str()))
        .select(likes::liked)
        .first::<bool>(conn)
        .await
        .optional()?;
    Ok(liked.unwrap_or(false))
}

/// One feed page's reads in one statement: the counts of `load` (the posts
/// the caller's cache lacks; 0 at version 0 for a post never liked) and
/// which of `posts` `viewer` currently likes.
pub async fn summaries(
    conn: &mut AsyncPgConnection,
    viewer: &UserId,
    posts: &[PostId],
    load: &[PostId],
) -> Result<(HashMap<String, VersionedCount>, HashSet<String>), DbError> {
    let counts = like_counts::table
        .filter(like_counts::post_id.eq_any(load.iter().map(PostId::as_str)))
        .select((
            like_counts::post_id,
            like_counts::count,
            like_counts::version,
            false.into_sql::<Bool>(),
        ));
    let liked = likes::table
        .filter(likes::user_id.eq(viewer.as_str()))
        .filter(likes::post_id.eq_any(posts.iter().map(PostId::as_str)))
        .filter(likes::liked.eq(true))
        .select((
            likes::post_id,
            0_i64.into_sql::<BigInt>(),
            0_i64.into_sql::<BigInt>(),
            true.into_sql::<Bool>(),
        ));
    let rows = counts
        .union_all(liked)
        .load::<(String, i64, i64, bool)>(conn)
        .await?;
    let mut counts: HashMap<String, VersionedCount> = load
        .iter()
        .map(|p| (p.to_string(), VersionedCount::default()))
        .collect();
    let mut liked = HashSet::new();
    for (post, count, version, is_liked) in rows {
        if is_liked {
            liked.insert(post);
        } else {
            counts.insert(post, VersionedCount { count, version });
        }
    }
    Ok((counts, liked))
}

/// Where a page of likers starts: after this liker of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikerCursor {
    pub event_at_micros: i64,
    pub user_id: String,
}

/// Up to `limit` users who like `post`, newest first by the time of the
/// Like that set their state (ties by user id, descending), after `after`:
/// one range scan of the `likes_likers` index, whatever the page.
pub async fn likers(
    conn: &mut AsyncPgConnection,
    post: &PostId,
    after: Option<&LikerCursor>,
    limit: i64,
) -> Result<Vec<LikerCursor>, DbError> {
    use diesel::dsl::sql;
    let mut query = likes::table
        .filter(likes::post_id.eq(post.as_str()))
        .filter(likes::liked.eq(true))
        .order((likes::event_at_micros.desc(), likes::user_id.desc()))
        .select((likes::event_at_micros, likes::user_id))
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        // A row comparison, which the index serves as one range.
        query = query.filter(
            sql::<Bool>("(event_at_micros, user_id) < (")
                .bind::<BigInt, _>(after.event_at_micros)
                .sql(", ")
                .bind::<Text, _>(after.user_id.clone())
                .sql(")"),
        );
    }
    let rows = query.load::<(i64, String)>(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(event_at_micros, user_id)| LikerCursor {
            event_at_micros,
            user_id,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn change(post: &str, user: &str, action: Action, at: i64) -> LikeChange {
        LikeChange {
            event_id: Uuid::now_v7(),
            post_id: PostId::parse(post).expect("valid"),
            user_id: UserId::parse(user).expect("valid"),
            action,
            occurred_at_micros: at,
        }
    }

    #[test]
    fn folding_keeps_the_last_event_of_each_pair_in_pair_order() {
        let changes = vec![
            change("p2", "u1", Action::Like, 10),
            change("p1", "u1", Action::Unlike, 30),
            change("p1", "u1", Action::Like, 20),
            change("p1", "u2", Action::Like, 5),
        ];
        let folded = fold_to_latest(&changes);
        let seen: Vec<_> = folded
            .iter()
            .map(|c| (c.post_id.as_str(), c.user_id.as_str(), c.action))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("p1", "u1", Action::Unlike),
                ("p1", "u2", Action::Like),
                ("p2", "u1", Action::Like),
            ]
        );
    }

    #[test]
    fn folding_breaks_time_ties_by_event_id() {
        let first = change("p", "u", Action::Like, 7);
        let second = change("p", "u", Action::Unlike, 7);
        assert!(second.event_id > first.event_id, "UUIDv7 is time-ordered");
        let changes = [second.clone(), first];
        assert_eq!(fold_to_latest(&changes)[0].action, Action::Unlike);
    }
}
