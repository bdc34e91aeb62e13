//! The traditional way, for comparison (`--baseline direct`): every request
//! is written straight into PostgreSQL in a transaction of its own, which
//! upserts its `likes` row and then updates its post's `like_counts` row. On
//! a celebrity post every such transaction queues for the same counter row
//! lock, which is what the queue and the batching worker avoid.
//!
//! It writes the same tables, with the same meaning, as the worker, so the
//! same verification applies.

use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use likes_common::config::{DatabaseSettings, SecretUrl};
use likes_db::{Action, DbError, PgPool};

/// Connections the baseline pool leaves to everything else on the server.
const SPARE_CONNECTIONS: i64 = 20;

/// Marks the pair liked, unless it already is.
const LIKE_SQL: &str = "
INSERT INTO likes AS l (post_id, user_id, liked, event_at_micros, event_id, last_delta)
VALUES ($1, $2, true, $3, $4, 1)
ON CONFLICT (post_id, user_id) DO UPDATE
    SET liked = true, event_at_micros = EXCLUDED.event_at_micros,
        event_id = EXCLUDED.event_id, last_delta = 1
    WHERE NOT l.liked";

/// Marks the pair unliked, if it is liked.
const UNLIKE_SQL: &str = "
UPDATE likes
SET liked = false, event_at_micros = $3, event_id = $4, last_delta = -1
WHERE post_id = $1 AND user_id = $2 AND liked";

const COUNT_UP_SQL: &str = "
INSERT INTO like_counts AS c (post_id, count) VALUES ($1, 1)
ON CONFLICT (post_id) DO UPDATE SET count = c.count + 1";

const COUNT_DOWN_SQL: &str = "UPDATE like_counts SET count = count - 1 WHERE post_id = $1";

/// A pool of `wanted` connections on `url` (database created and migrated),
/// fewer if the server would otherwise run out of connections. Returns the
/// pool and its size.
pub async fn pool(url: &str, wanted: u32) -> anyhow::Result<(PgPool, u32)> {
    let settings = DatabaseSettings {
        url: SecretUrl::new(url),
        pool_size: std::num::NonZeroU32::MIN,
        connect_timeout_ms: 30_000,
        ..likes_common::Settings::defaults().database
    };
    let probe = likes_db::connect(&settings).await?;
    let available = {
        let mut conn = likes_db::checkout(&probe).await?;
        server_connections_left(&mut conn).await?
    };
    drop(probe);
    let size = wanted.min(u32::try_from((available - SPARE_CONNECTIONS).max(1)).unwrap_or(1));
    let pool = likes_db::connect(&DatabaseSettings {
        pool_size: size.try_into().unwrap_or(std::num::NonZeroU32::MIN),
        ..settings
    })
    .await?;
    Ok((pool, size))
}

#[derive(diesel::QueryableByName)]
struct Left {
    #[diesel(sql_type = BigInt)]
    left: i64,
}

async fn server_connections_left(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
    let row: Left = diesel::sql_query(
        "SELECT current_setting('max_connections')::int8
                - (SELECT count(*) FROM pg_stat_activity) AS left",
    )
    .get_result(conn)
    .await?;
    Ok(row.left)
}

/// Applies one Like or Unlike in its own transaction.
pub async fn write(pool: &PgPool, post: &str, user: &str, action: Action) -> Result<(), DbError> {
    let mut conn = likes_db::checkout(pool).await?;
    let at = likes_common::time::now_micros();
    let event_id = uuid::Uuid::now_v7();
    conn.transaction::<_, DbError, _>(async |conn| {
        let (change_sql, counter_sql) = match action {
            Action::Like => (LIKE_SQL, COUNT_UP_SQL),
            Action::Unlike => (UNLIKE_SQL, COUNT_DOWN_SQL),
        };
        let changed = diesel::sql_query(change_sql)
            .bind::<Text, _>(post)
            .bind::<Text, _>(user)
            .bind::<BigInt, _>(at)
            .bind::<SqlUuid, _>(event_id)
            .execute(conn)
            .await?;
        if changed == 1 {
            diesel::sql_query(counter_sql)
                .bind::<Text, _>(post)
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await
}
