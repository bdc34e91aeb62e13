//! The workload: which request comes next, and what the database must hold
//! once every acknowledged request is persisted.
//!
//! Each (post, user) pair has at most one request in flight. A request for a
//! pair is only sent after the previous one for that pair was answered, so
//! the api stamps them in the order they were sent and the pair's final state
//! is that of its last acknowledged request, with no guessing about races.
//! A pair whose request failed may or may not have been published; it is
//! marked uncertain, gets no further requests and is left out of the exact
//! expectations.

use likes_db::Action;
pub use likes_testkit::verify::Expectation;
use likes_testkit::verify::Expectations;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use std::time::Duration;

/// When the load stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many requests.
    After(u64),
    /// Once this much time has passed (closed loop), or once the schedule
    /// reaches it (open loop).
    Elapsed(Duration),
}

/// The shape of the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub stop: Stop,
    /// Open-loop rate in requests per second; `None` is closed loop.
    pub rate: Option<f64>,
    /// Posts besides the celebrity post.
    pub posts: u32,
    pub hot_fraction: f64,
    pub duplicate_fraction: f64,
    pub unlike_fraction: f64,
    pub seed: u64,
}

/// Ids of one run: every post id starts with a prefix unique to the run, so
/// runs against a shared database never mix and verification can find the
/// run's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under a fresh random run id.
    pub fn random() -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("lt-{}-", &run[..10]),
        }
    }

    /// Names under the run id `run` (letters and digits, checked by the
    /// options).
    pub fn of(run: &str) -> Self {
        Self {
            prefix: format!("lt-{run}-"),
        }
    }

    /// The common prefix of this run's post ids.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A `LIKE` pattern matching this run's post ids (the prefix has no `%`
    /// or `_`: it is `lt-`, hex digits and `-`).
    pub fn like_pattern(&self) -> String {
        format!("{}%", self.prefix)
    }

    /// Post 0 is the celebrity post; 1..=posts are the others.
    pub fn post(&self, post: u32) -> String {
        if post == HOT_POST {
            format!("{}hot", self.prefix)
        } else {
            format!("{}p{post}", self.prefix)
        }
    }

    /// Each pair has a user of its own: the user number is the pair number.
    pub fn user(&self, pair: u32) -> String {
        format!("u{pair}")
    }

    /// The post number of a post id of this run.
    pub fn parse_post(&self, id: &str) -> Option<u32> {
        match id.strip_prefix(&self.prefix)? {
            "hot" => Some(HOT_POST),
            rest => rest
                .strip_prefix('p')?
                .parse()
                .ok()
                .filter(|&p| p != HOT_POST),
        }
    }

    /// The pair number of a user id of this run.
    pub fn parse_user(&self, id: &str) -> Option<u32> {
        id.strip_prefix('u')?.parse().ok()
    }
}

/// The celebrity post's number.
pub const HOT_POST: u32 = 0;

/// Why a request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The first Like of a new pair.
    Fresh,
    /// The Like of a pair whose Like was already acknowledged.
    Duplicate,
    /// The Unlike of a pair whose Like was acknowledged.
    Unlike,
}

/// One request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub pair: u32,
    pub post: u32,
    pub action: Action,
    pub kind: Kind,
    /// When it is due, counted from the start (open loop only).
    pub due: Option<Duration>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Acknowledged,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    post: u32,
    last_acknowledged: Option<Action>,
    uncertain: bool,
}

/// Requests sent per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KindCounts {
    pub fresh: u64,
    pub duplicate: u64,
    pub unlike: u64,
}

/// Hands out requests and records their answers; shared by the senders
/// behind a mutex (each call holds it for a few hundred nanoseconds).
#[derive(Debug)]
pub struct Ledger {
    workload: Workload,
    rng: SmallRng,
    pairs: Vec<Pair>,
    /// Pairs whose last acknowledged request is a Like and that have nothing
    /// in flight: the candidates for a duplicate or an Unlike.
    idle_liked: Vec<u32>,
    issued: KindCounts,
}

impl Ledger {
    pub fn new(workload: Workload) -> Self {
        let rng = SmallRng::seed_from_u64(workload.seed);
        Self {
            workload,
            rng,
            pairs: Vec::new(),
            idle_liked: Vec::new(),
            issued: KindCounts::default(),
        }
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Requests handed out so far, per kind.
    pub fn issued(&self) -> KindCounts {
        self.issued
    }

    fn total_issued(&self) -> u64 {
        self.issued.fresh + self.issued.duplicate + self.issued.unlike
    }

    /// The next request, or `None` once the load is over. `elapsed` is the
    /// time since the load started.
    pub fn next(&mut self, elapsed: Duration) -> Option<Call> {
        let ticket = self.total_issued();
        let due = self
            .workload
            .rate
            .map(|rate| Duration::from_secs_f64(ticket as f64 / rate));
        let over = match self.workload.stop {
            Stop::After(n) => ticket >= n,
            Stop::Elapsed(limit) => due.unwrap_or(elapsed) >= limit,
        };
        if over {
            return None;
        }
        let draw: f64 = self.rng.random();
        let kind = if self.idle_liked.is_empty() {
            Kind::Fresh
        } else if draw < self.workload.unlike_fraction {
            Kind::Unlike
        } else if draw < self.workload.unlike_fraction + self.workload.duplicate_fraction {
            Kind::Duplicate
        } else {
            Kind::Fresh
        };
        let (pair, action) = match kind {
            Kind::Fresh => {
                self.issued.fresh += 1;
                (self.new_pair(), Action::Like)
            }
            Kind::Duplicate => {
                self.issued.duplicate += 1;
                (self.take_idle_liked(), Action::Like)
            }
            Kind::Unlike => {
                self.issued.unlike += 1;
                (self.take_idle_liked(), Action::Unlike)
            }
        };
        Some(Call {
            pair,
            post: self.pairs[pair as usize].post,
            action,
            kind,
            due,
        })
    }

    fn new_pair(&mut self) -> u32 {
        let post = if self.rng.random::<f64>() < self.workload.hot_fraction {
            HOT_POST
        } else {
            self.rng.random_range(1..=self.workload.posts)
        };
        let pair = u32::try_from(self.pairs.len()).expect("fewer than 2^32 pairs in one run");
        self.pairs.push(Pair {
            post,
            last_acknowledged: None,
            uncertain: false,
        });
        pair
    }

    fn take_idle_liked(&mut self) -> u32 {
        let at = self.rng.random_range(0..self.idle_liked.len());
        self.idle_liked.swap_remove(at)
    }

    /// Records the answer to `call`; an acknowledged Like makes the pair a
    /// candidate for a duplicate or an Unlike again.
    pub fn complete(&mut self, call: &Call, answer: Answer) {
        let pair = &mut self.pairs[call.pair as usize];
        match answer {
            Answer::Acknowledged => {
                pair.last_acknowledged = Some(call.action);
                if call.action == Action::Like && !pair.uncertain {
                    self.idle_liked.push(call.pair);
                }
            }
            Answer::Failed => pair.uncertain = true,
        }
    }

    /// Pairs handed out so far.
    pub fn pair_count(&self) -> u32 {
        u32::try_from(self.pairs.len()).expect("fewer than 2^32 pairs in one run")
    }

    /// The post of a pair, if the pair exists.
    pub fn post_of(&self, pair: u32) -> Option<u32> {
        self.pairs.get(pair as usize).map(|p| p.post)
    }

    /// What the database must hold for `pair` (call once nothing is in flight).
    pub fn expectation(&self, pair: u32) -> Option<Expectation> {
        let pair = self.pairs.get(pair as usize)?;
        Some(match (pair.uncertain, pair.last_acknowledged) {
            (true, _) | (false, None) => Expectation::Uncertain,
            (false, Some(Action::Like)) => Expectation::Liked,
            (false, Some(Action::Unlike)) => Expectation::Unliked,
        })
    }
}

/// A finished run's ledger as the verification reads it: pair numbers are
/// the ledger's, ids are the run's [`Names`].
#[derive(Debug, Clone, Copy)]
pub struct RunExpectations<'a> {
    pub ledger: &'a Ledger,
    pub names: &'a Names,
}

impl Expectations for RunExpectations<'_> {
    fn pair_count(&self) -> usize {
        self.ledger.pairs.len()
    }

    fn pair(&self, pair: usize) -> (String, String, Expectation) {
        let number = u32::try_from(pair).expect("fewer than 2^32 pairs in one run");
        let expectation = self
            .ledger
            .expectation(number)
            .expect("pair numbers come from the ledger");
        (
            self.names.post(self.ledger.pairs[pair].post),
            self.names.user(number),
            expectation,
        )
    }

    fn find(&self, post_id: &str, user_id: &str) -> Option<usize> {
        let pair = self.names.parse_user(user_id)?;
        (self.ledger.post_of(pair)? == self.names.parse_post(post_id)?).then_some(pair as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(stop: Stop) -> Workload {
        Workload {
            stop,
            rate: None,
            posts: 10,
            hot_fraction: 0.9,
            duplicate_fraction: 0.2,
            unlike_fraction: 0.2,
            seed: 7,
        }
    }

    #[test]
    fn names_round_trip() {
        let names = Names::random();
        assert_eq!(names.parse_post(&names.post(HOT_POST)), Some(HOT_POST));
        assert_eq!(names.parse_post(&names.post(42)), Some(42));
        assert_eq!(names.parse_post("other-p1"), None);
        assert_eq!(names.parse_post(&format!("{}p0", names.prefix())), None);
        assert_eq!(names.parse_user(&names.user(17)), Some(17));
        assert!(names.like_pattern().starts_with(names.prefix()));
    }

    #[test]
    fn a_pair_gets_no_second_request_while_one_is_in_flight() {
        let mut ledger = Ledger::new(workload(Stop::After(10_000)));
        let mut in_flight = std::collections::HashSet::new();
        let mut held = Vec::new();
        while let Some(call) = ledger.next(Duration::ZERO) {
            assert!(in_flight.insert(call.pair), "pair {} sent twice", call.pair);
            held.push(call);
            // Answer the oldest half now and then, keeping many in flight.
            if held.len() > 64 {
                for done in held.drain(..32) {
                    in_flight.remove(&done.pair);
                    ledger.complete(&done, Answer::Acknowledged);
                }
            }
        }
        let issued = ledger.issued();
        assert_eq!(issued.fresh + issued.duplicate + issued.unlike, 10_000);
        assert!(
            issued.unlike > 1_000 && issued.duplicate > 1_000,
            "{issued:?}"
        );
    }

    #[test]
    fn unlikes_only_follow_acknowledged_likes_and_failures_are_uncertain() {
        let mut ledger = Ledger::new(workload(Stop::After(3)));
        let first = ledger.next(Duration::ZERO).expect("first call");
        assert_eq!(first.kind, Kind::Fresh, "nothing acknowledged yet");
        ledger.complete(&first, Answer::Acknowledged);
        assert_eq!(ledger.expectation(first.pair), Some(Expectation::Liked));
        let second = ledger.next(Duration::ZERO).expect("second call");
        ledger.complete(&second, Answer::Failed);
        assert_eq!(
            ledger.expectation(second.pair),
            Some(Expectation::Uncertain)
        );
        assert!(ledger.next(Duration::ZERO).is_some());
        assert!(ledger.next(Duration::ZERO).is_none(), "stops after 3");
    }

    #[test]
    fn open_loop_schedules_requests_and_stops_at_the_duration() {
        let mut ledger = Ledger::new(Workload {
            rate: Some(100.0),
            ..workload(Stop::Elapsed(Duration::from_secs(1)))
        });
        let mut due = Vec::new();
        while let Some(call) = ledger.next(Duration::ZERO) {
            due.push(call.due.expect("open loop calls are scheduled"));
            ledger.complete(&call, Answer::Acknowledged);
        }
        assert_eq!(due.len(), 100);
        assert_eq!(due[1], Duration::from_millis(10));
    }
}
