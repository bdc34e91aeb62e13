//! After the load: does PostgreSQL hold exactly what was acknowledged?
//!
//! Every pair whose requests were all acknowledged must be stored once, in
//! the state of its last request; every post's counter must equal the pairs
//! expected liked; no other pair of the run may be stored; and the counter
//! invariant (each counter equals its liked pairs) must hold for the whole
//! database. Pairs with a failed request are uncertain: whatever is stored
//! for them is accepted, and counted into their post's expected count.

use crate::{
    probe::Probe,
    scenario::{Expectation, Ledger, Names},
};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Text},
};
use diesel_async::RunQueryDsl;
use std::collections::HashMap;

/// Differences shown in the report at most.
const EXAMPLES: usize = 10;

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// Pairs with a known expected state.
    pub pairs_expected: u64,
    /// Pairs left out because one of their requests failed.
    pub pairs_uncertain: u64,
    /// Rows of this run in `likes`.
    pub pairs_stored: u64,
    /// Pairs expected liked.
    pub pairs_liked: u64,
    /// Expected pairs with no row.
    pub missing: u64,
    /// Expected pairs stored in the other state.
    pub wrong_state: u64,
    /// Stored pairs of this run that were never sent.
    pub unexpected: u64,
    /// Posts whose counter differs from the expected count.
    pub count_mismatches: u64,
    /// Posts anywhere in the database whose counter differs from its liked
    /// rows (`likes_testkit::verify::counter_mismatches`).
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

/// Compares the database with the ledger (call once nothing is in flight).
pub async fn verify(
    probe: &mut Probe,
    ledger: &Ledger,
    names: &Names,
) -> anyhow::Result<Verification> {
    let pattern = names.like_pattern();
    let rows: Vec<Row> =
        diesel::sql_query("SELECT post_id, user_id, liked FROM likes WHERE post_id LIKE $1")
            .bind::<Text, _>(&pattern)
            .load(probe.statement())
            .await?;
    let counters: Vec<Counter> =
        diesel::sql_query("SELECT post_id, count FROM like_counts WHERE post_id LIKE $1")
            .bind::<Text, _>(&pattern)
            .load(probe.statement())
            .await?;
    let invariant = likes_testkit::verify::counter_mismatches(probe.statement()).await?;

    let mut found = Verification {
        pairs_stored: rows.len() as u64,
        counter_invariant_mismatches: invariant,
        ..Verification::default()
    };
    let mut stored: Vec<Option<bool>> = vec![None; ledger.pair_count() as usize];
    for row in &rows {
        let pair = names
            .parse_user(&row.user_id)
            .filter(|&pair| ledger.post_of(pair) == names.parse_post(&row.post_id));
        match pair {
            Some(pair) => stored[pair as usize] = Some(row.liked),
            None => {
                found.unexpected += 1;
                found.note(|| format!("unexpected row ({}, {})", row.post_id, row.user_id));
            }
        }
    }

    let mut expected_counts: HashMap<u32, i64> = HashMap::new();
    for (pair, stored) in (0..ledger.pair_count()).zip(stored) {
        let expectation = ledger
            .expectation(pair)
            .expect("pair numbers come from the ledger");
        let post = ledger
            .post_of(pair)
            .expect("pair numbers come from the ledger");
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
                        found.note(|| {
                            format!("missing ({}, {})", names.post(post), names.user(pair))
                        });
                    }
                    Some(state) if state != want => {
                        found.wrong_state += 1;
                        found.note(|| {
                            format!(
                                "({}, {}) stored liked={state}, expected liked={want}",
                                names.post(post),
                                names.user(pair)
                            )
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

    let mut stored_counts: HashMap<u32, i64> = HashMap::new();
    for counter in counters {
        match names.parse_post(&counter.post_id) {
            Some(post) => {
                stored_counts.insert(post, counter.count);
            }
            None => {
                found.count_mismatches += 1;
                found.note(|| format!("counter of unknown post {}", counter.post_id));
            }
        }
    }
    let mut posts: Vec<u32> = expected_counts
        .keys()
        .chain(stored_counts.keys())
        .copied()
        .collect();
    posts.sort_unstable();
    posts.dedup();
    for post in posts {
        let want = expected_counts.get(&post).copied().unwrap_or(0);
        let have = stored_counts.get(&post).copied().unwrap_or(0);
        if want != have {
            found.count_mismatches += 1;
            found.note(|| format!("post {} counts {have}, expected {want}", names.post(post)));
        }
    }
    Ok(found)
}
