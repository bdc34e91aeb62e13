//! Checks of what PostgreSQL holds, for tests and the load generator.

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    liked: bool,
}

/// Posts whose counter differs from the number of pairs currently liked.
/// The invariant says this is always 0 after a commit.
pub async fn counter_mismatches(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
    let row: Number = diesel::sql_query(
        "SELECT count(*) AS n
         FROM (SELECT post_id, count(*) FILTER (WHERE liked) AS liked FROM likes GROUP BY post_id) l
         FULL JOIN like_counts c USING (post_id)
         WHERE coalesce(l.liked, 0) <> coalesce(c.count, 0)",
    )
    .get_result(conn)
    .await?;
    Ok(row.n)
}

/// The stored counter of a post (0 if it has no row).
pub async fn stored_count(conn: &mut AsyncPgConnection, post: &str) -> anyhow::Result<i64> {
    let row: Number = diesel::sql_query(
        "SELECT coalesce((SELECT count FROM like_counts WHERE post_id = $1), 0) AS n",
    )
    .bind::<Text, _>(post)
    .get_result(conn)
    .await?;
    Ok(row.n)
}

/// The stored state of a pair: `None` if no event for it was written.
pub async fn stored_state(
    conn: &mut AsyncPgConnection,
    post: &str,
    user: &str,
) -> anyhow::Result<Option<bool>> {
    let rows: Vec<Flag> =
        diesel::sql_query("SELECT liked FROM likes WHERE post_id = $1 AND user_id = $2")
            .bind::<Text, _>(post)
            .bind::<Text, _>(user)
            .load(conn)
            .await?;
    Ok(rows.into_iter().next().map(|r| r.liked))
}

/// Pairs written (liked or not).
pub async fn stored_pairs(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
    let row: Number = diesel::sql_query("SELECT count(*) AS n FROM likes")
        .get_result(conn)
        .await?;
    Ok(row.n)
}
