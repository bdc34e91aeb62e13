//! Does PostgreSQL hold exactly what was acknowledged? One check for the
//! tests and the load test alike.
//!
//! [`verify`] compares the stored pairs and counters with what the caller
//! expects ([`Expectations`]): every pair whose requests were all
//! acknowledged is stored once, in the state of its last request; every
//! post's counter equals the pairs expected liked on it; no other pair in
//! scope is stored; and the counter invariant (each counter equals its liked
//! pairs) holds for the whole database. A pair with a failed request is
//! [`Expectation::Uncertain`]: whatever is stored for it is accepted, and
//! counted into its post's expected count. The rows, the counters and the
//! invariant are read in one read-only repeatable-read transaction, so they
//! are one snapshot and one transaction in `pg_stat_database`.
//!
//! [`check_exactly`] is the tests' form: a list of acknowledged Likes
//! against the whole database, failing with the differences. The small
//! queries below it read one counter or one pair.

use anyhow::Context;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, fmt};

/// Differences kept as readable examples at most.
const EXAMPLES: usize = 10;

/// What the database must hold for one pair once everything is persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    Liked,
    Unliked,
    /// A request for it failed (it may or may not have been published):
    /// either state, or no row, is accepted.
    Uncertain,
}

/// The pairs a test or a load run sent, numbered `0..pair_count()`.
pub trait Expectations {
    fn pair_count(&self) -> usize;
    /// The post id, user id and expected state of pair `pair`.
    fn pair(&self, pair: usize) -> (String, String, Expectation);
    /// The number of the pair stored as (`post_id`, `user_id`), if it was sent.
    fn find(&self, post_id: &str, user_id: &str) -> Option<usize>;
}

/// Which rows and counters belong to the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Posts whose id matches this `LIKE` pattern (a load run's prefix).
    Posts(&'a str),
    /// The whole database (a test's own).
    Everything,
}

impl Scope<'_> {
    fn pattern(self) -> &'static str {
        match self {
            Self::Posts(_) => "post_id LIKE $1",
            // `$1 IS NULL` keeps one bind parameter in both forms.
            Self::Everything => "$1::text IS NULL",
        }
    }

    fn bind(self) -> Option<String> {
        match self {
            Self::Posts(pattern) => Some(pattern.to_owned()),
            Self::Everything => None,
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Pairs with a known expected state.
    pub pairs_expected: u64,
    /// Pairs left out because one of their requests failed.
    pub pairs_uncertain: u64,
    /// Rows in scope in `likes`.
    pub pairs_stored: u64,
    /// Pairs expected liked.
    pub pairs_liked: u64,
    /// Expected pairs with no row.
    pub missing: u64,
    /// Expected pairs stored in the other state.
    pub wrong_state: u64,
    /// Stored pairs in scope that were never sent.
    pub unexpected: u64,
    /// Posts whose counter differs from the expected count.
    pub count_mismatches: u64,
    /// Posts anywhere in the database whose counter differs from its liked rows.
    pub counter_invariant_mismatches: i64,
    /// The first few differences, readable.
    pub examples: Vec<String>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.wrong_state == 0
            && self.unexpected == 0
            && self.count_mismatches == 0
            && self.counter_invariant_mismatches == 0
    }

    fn note(&mut self, difference: impl FnOnce() -> String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(difference());
        }
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  pairs: {} expected ({} liked), {} stored, {} uncertain (a request failed)",
            self.pairs_expected, self.pairs_liked, self.pairs_stored, self.pairs_uncertain
        )?;
        writeln!(
            f,
            "  missing {}, wrong state {}, unexpected {}, post counts wrong {}, counter invariant broken on {} posts",
            self.missing,
            self.wrong_state,
            self.unexpected,
            self.count_mismatches,
            self.counter_invariant_mismatches
        )?;
        for example in &self.examples {
            writeln!(f, "  - {example}")?;
        }
        Ok(())
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    post_id: String,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Bool)]
    liked: bool,
}

#[derive(QueryableByName)]
struct Counter {
    #[diesel(sql_type = Text)]
    post_id: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Compares the database with `expected` (call once nothing is in flight).
pub async fn verify(
    conn: &mut AsyncPgConnection,
    scope: Scope<'_>,
    expected: &impl Expectations,
) -> anyhow::Result<Verification> {
    let rows_sql = format!(
        "SELECT post_id, user_id, liked FROM likes WHERE {}",
        scope.pattern()
    );
    let counters_sql = format!(
        "SELECT post_id, count FROM like_counts WHERE {}",
        scope.pattern()
    );
    let (rows, counters, invariant) = conn
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run(async |conn| {
            let rows: Vec<Row> = diesel::sql_query(&rows_sql)
                .bind::<diesel::sql_types::Nullable<Text>, _>(scope.bind())
                .load(conn)
                .await?;
            let counters: Vec<Counter> = diesel::sql_query(&counters_sql)
                .bind::<diesel::sql_types::Nullable<Text>, _>(scope.bind())
                .load(conn)
                .await?;
            let invariant = counter_mismatches_query(conn).await?;
            Ok::<_, diesel::result::Error>((rows, counters, invariant))
        })
        .await
        .context("reading the stored likes and counters")?;
    Ok(compare(expected, &rows, counters, invariant))
}

fn compare(
    expected: &impl Expectations,
    rows: &[Row],
    counters: Vec<Counter>,
    invariant: i64,
) -> Verification {
    let mut found = Verification {
        pairs_stored: rows.len() as u64,
        counter_invariant_mismatches: invariant,
        ..Verification::default()
    };
    let mut stored: Vec<Option<bool>> = vec![None; expected.pair_count()];
    for row in rows {
        match expected.find(&row.post_id, &row.user_id) {
            Some(pair) => stored[pair] = Some(row.liked),
            None => {
                found.unexpected += 1;
                found.note(|| format!("unexpected row ({}, {})", row.post_id, row.user_id));
            }
        }
    }

    let mut expected_counts: HashMap<String, i64> = HashMap::new();
    for (pair, stored) in stored.into_iter().enumerate() {
        let (post, user, expectation) = expected.pair(pair);
        let liked = match expectation {
            Expectation::Uncertain => {
                found.pairs_uncertain += 1;
                stored == Some(true)
            }
            Expectation::Liked | Expectation::Unliked => {
                found.pairs_expected += 1;
                let want = expectation == Expectation::Liked;
                match stored {
                    None => {
                        found.missing += 1;
                        found.note(|| format!("missing ({post}, {user})"));
                    }
                    Some(state) if state != want => {
                        found.wrong_state += 1;
                        found.note(|| {
                            format!("({post}, {user}) stored liked={state}, expected liked={want}")
                        });
                    }
                    Some(_) => {}
                }
                want
            }
        };
        if liked {
            found.pairs_liked += u64::from(expectation == Expectation::Liked);
            *expected_counts.entry(post).or_default() += 1;
        }
    }

    let stored_counts: HashMap<String, i64> =
        counters.into_iter().map(|c| (c.post_id, c.count)).collect();
    let mut posts: Vec<&String> = expected_counts.keys().chain(stored_counts.keys()).collect();
    posts.sort_unstable();
    posts.dedup();
    for post in posts {
        let want = expected_counts.get(post).copied().unwrap_or(0);
        let have = stored_counts.get(post).copied().unwrap_or(0);
        if want != have {
            found.count_mismatches += 1;
            found.note(|| format!("post {post} counts {have}, expected {want}"));
        }
    }
    found
}

/// Likes answered OK, each expected liked exactly once.
#[derive(Debug, Default)]
struct Acknowledged<'a> {
    pairs: Vec<&'a (String, String)>,
    index: HashMap<&'a (String, String), usize>,
}

impl<'a> Acknowledged<'a> {
    fn new(acknowledged: &'a [(String, String)]) -> Self {
        let mut this = Self::default();
        for pair in acknowledged {
            if !this.index.contains_key(pair) {
                this.index.insert(pair, this.pairs.len());
                this.pairs.push(pair);
            }
        }
        this
    }
}

impl Expectations for Acknowledged<'_> {
    fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    fn pair(&self, pair: usize) -> (String, String, Expectation) {
        let (post, user) = self.pairs[pair];
        (post.clone(), user.clone(), Expectation::Liked)
    }

    fn find(&self, post_id: &str, user_id: &str) -> Option<usize> {
        self.index
            .get(&(post_id.to_owned(), user_id.to_owned()))
            .copied()
    }
}

/// Fails unless the database holds exactly the `acknowledged` Likes (a
/// pair may be listed more than once): each pair liked once, each post's
/// counter equal to its pairs, nothing else stored or counted, and the
/// counter invariant intact.
pub async fn check_exactly(
    conn: &mut AsyncPgConnection,
    acknowledged: &[(String, String)],
) -> anyhow::Result<()> {
    let found = verify(conn, Scope::Everything, &Acknowledged::new(acknowledged)).await?;
    anyhow::ensure!(found.passed(), "the database differs:\n{found}");
    Ok(())
}

/// Fails unless the database holds exactly these pairs in these states
/// (each pair listed once): nothing else stored or counted, every counter
/// right, the counter invariant intact.
pub async fn check_states(
    conn: &mut AsyncPgConnection,
    expected: &[(String, String, Expectation)],
) -> anyhow::Result<()> {
    let found = verify(conn, Scope::Everything, &States(expected)).await?;
    anyhow::ensure!(found.passed(), "the database differs:\n{found}");
    Ok(())
}

/// Pairs with their expected states, for [`check_states`].
struct States<'a>(&'a [(String, String, Expectation)]);

impl Expectations for States<'_> {
    fn pair_count(&self) -> usize {
        self.0.len()
    }

    fn pair(&self, pair: usize) -> (String, String, Expectation) {
        self.0[pair].clone()
    }

    fn find(&self, post_id: &str, user_id: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|(post, user, _)| post == post_id && user == user_id)
    }
}

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

async fn counter_mismatches_query(
    conn: &mut AsyncPgConnection,
) -> Result<i64, diesel::result::Error> {
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

/// Posts whose counter differs from the number of pairs currently liked.
/// The invariant says this is always 0 after a commit.
pub async fn counter_mismatches(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
    Ok(counter_mismatches_query(conn).await?)
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

/// A count of stored pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Stored {
    #[diesel(sql_type = BigInt)]
    pub rows: i64,
    #[diesel(sql_type = BigInt)]
    pub liked: i64,
}

/// Pairs stored in `scope`, and how many of them are liked.
pub async fn stored(conn: &mut AsyncPgConnection, scope: Scope<'_>) -> anyhow::Result<Stored> {
    let sql = format!(
        "SELECT count(*) AS rows, count(*) FILTER (WHERE liked) AS liked FROM likes WHERE {}",
        scope.pattern()
    );
    Ok(diesel::sql_query(sql)
        .bind::<diesel::sql_types::Nullable<Text>, _>(scope.bind())
        .get_result(conn)
        .await?)
}

/// The sum of the counters in `scope`: its liked pairs, read from one row
/// per post. Unlike [`stored`], which scans `likes`, its cost does not grow
/// with the likes written, so a load run can sample it while it measures.
pub async fn counted(conn: &mut AsyncPgConnection, scope: Scope<'_>) -> anyhow::Result<i64> {
    let sql = format!(
        "SELECT coalesce(sum(count), 0)::bigint AS n FROM like_counts WHERE {}",
        scope.pattern()
    );
    let row: Number = diesel::sql_query(sql)
        .bind::<diesel::sql_types::Nullable<Text>, _>(scope.bind())
        .get_result(conn)
        .await?;
    Ok(row.n)
}

/// Pairs written (liked or not).
pub async fn stored_pairs(conn: &mut AsyncPgConnection) -> anyhow::Result<i64> {
    Ok(stored(conn, Scope::Everything).await?.rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(post: &str, user: &str, liked: bool) -> Row {
        Row {
            post_id: post.into(),
            user_id: user.into(),
            liked,
        }
    }

    fn counter(post: &str, count: i64) -> Counter {
        Counter {
            post_id: post.into(),
            count,
        }
    }

    #[test]
    fn exactly_the_acknowledged_likes_pass_and_each_difference_is_counted() {
        let acknowledged = [
            ("p".to_owned(), "a".to_owned()),
            ("p".to_owned(), "b".to_owned()),
            ("p".to_owned(), "a".to_owned()),
        ];
        let expected = Acknowledged::new(&acknowledged);
        let good = compare(
            &expected,
            &[row("p", "a", true), row("p", "b", true)],
            vec![counter("p", 2)],
            0,
        );
        assert!(good.passed(), "{good}");
        assert_eq!((good.pairs_expected, good.pairs_liked), (2, 2));

        let bad = compare(
            &expected,
            &[row("p", "a", false), row("q", "c", true)],
            vec![counter("p", 1), counter("q", 1)],
            1,
        );
        assert!(!bad.passed());
        assert_eq!(
            (
                bad.missing,
                bad.wrong_state,
                bad.unexpected,
                bad.count_mismatches
            ),
            (1, 1, 1, 2),
            "{bad}"
        );
        assert_eq!(bad.counter_invariant_mismatches, 1);
        assert!(bad.examples.iter().any(|e| e == "missing (p, b)"), "{bad}");
    }
}
