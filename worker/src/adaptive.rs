//! The adaptive batch size: a small controller that the consumer feeds after
//! each committed batch and that answers with the size the next batch should
//! aim at. Pure: no clock, no I/O, so it is tested with synthetic costs.
//!
//! Why adapt at all: a batch costs a fixed part (a transaction, round trips,
//! the ack, a counter update per post) plus a part per row. Small batches
//! pay the fixed part too often; past some size it is paid off, and a bigger
//! batch only adds flush latency, or even loses rows/s when the cost per row
//! grows with the batch (more rows locked at once, more WAL per commit).
//! Where that point lies depends on the workload (one hot post, or likes
//! spread over many posts) and on how busy the database is, so no fixed size
//! is right for all of them.
//!
//! How: hill climbing on rows per second of flush, under a latency budget.
//!
//! - Only full batches (ended by size) tell something about the target. A
//!   batch that ended by time held all there was: no pressure, and the
//!   target stays.
//! - Full batches are measured in windows of [`WINDOW`] at one target, so
//!   that no single flush steers: rows over flush time without the window's
//!   slowest flush (a stall, a checkpoint or a busy core, says nothing about
//!   the size), and how much the batches' rates scatter. On a machine that
//!   the database shares with the api and the broker, flushes of one size
//!   can differ several fold; a difference within that scatter is no
//!   evidence, so every comparison below widens its margin by it.
//! - The target grows by [`STEP`] per window while the rate does not fall
//!   more than [`MAX_LOSS`] below the best of the climb. Demanding a measured
//!   gain instead stalls the climb at small sizes, where the real gain of a
//!   step is smaller than the noise of a few flushes; and on a tie the
//!   larger batch is better, as it spends fewer transactions (CPU that the
//!   database and the api share) per like. When a step does lose, the
//!   target returns to the best size and holds it for [`HOLD_WINDOWS`].
//! - After a hold it probes again, alternately down and up. Up climbs on as
//!   above; a step down is kept only for a clear gain ([`MIN_GAIN`]), so on
//!   a flat stretch the target does not drift down with the noise.
//! - A step up never aims past the size whose flush, scaled from the
//!   window's slowest but one, fits in [`HEADROOM`] of the budget. Scaling a
//!   whole flush overestimates (part of it is fixed), so this errs on the
//!   safe side.
//! - A second flush over the budget within [`BREACH_MEMORY`] batches cuts
//!   the target by [`SHRINK`] (the multiplicative decrease of AIMD), and the
//!   climb starts over from there. A lone stall (a checkpoint, a busy core)
//!   says nothing about the size and is let pass, whereas a database that
//!   really got slower keeps breaching, and cuts in a row follow it down
//!   within a few batches. For the same reason the factor is fixed rather
//!   than scaled by the overshoot.

use crate::batcher::BatchEnd;
use likes_common::config::{BatchMode, WorkerSettings};
use std::time::Duration;

/// Full batches measured at one target before it may move.
pub const WINDOW: usize = 5;
/// Factor of one step: up multiplies the target by it, down divides.
pub const STEP: f64 = 1.25;
/// How far below the climb's best rate a step up may measure and still be
/// kept: a margin for noise (a larger batch is better on a tie).
pub const MAX_LOSS: f64 = 0.10;
/// How much better a step down must measure to be kept: on a tie the larger
/// size we have is as good.
pub const MIN_GAIN: f64 = 0.05;
/// Windows to keep a settled target before probing again.
pub const HOLD_WINDOWS: u32 = 6;
/// Share of the budget a step up may plan to use, leaving room for noise.
pub const HEADROOM: f64 = 0.7;
/// What a second flush over budget multiplies the target by.
pub const SHRINK: f64 = 0.7;
/// Batches within which a second flush over budget cuts the target.
pub const BREACH_MEMORY: u32 = 5;

/// Which way the target is moving or will probe next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// A rate measured at a size.
#[derive(Debug, Clone, Copy)]
struct Measured {
    size: usize,
    rows_per_s: f64,
    /// How much the window's batches disagreed: the range of their rates
    /// relative to `rows_per_s` (0 when all flushed alike, at most 1).
    scatter: f64,
}

impl Measured {
    /// Extra distance two measurements must keep before noise is ruled
    /// out, as a share of the rate: the range of four samples over four is
    /// about one standard error of their mean; from the noisier of the two.
    fn noise_margin(&self, other: &Self) -> f64 {
        self.scatter.max(other.scatter) / 4.0
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Moving in `direction` while it pays; `best` is the best window of
    /// this climb (none yet right after a start or a cut).
    Climbing {
        direction: Direction,
        best: Option<Measured>,
    },
    /// Keeping the target; then probing towards `next`.
    Holding { windows_left: u32, next: Direction },
}

/// Full batches seen at the current target.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    len: usize,
    rows_per_s: [f64; WINDOW],
    flushes: [Duration; WINDOW],
}

impl Window {
    fn add(&mut self, size: usize, flush: Duration) {
        let secs = flush.as_secs_f64().max(f64::MIN_POSITIVE);
        self.rows_per_s[self.len] = size as f64 / secs;
        self.flushes[self.len] = flush;
        self.len += 1;
    }

    fn is_full(&self) -> bool {
        self.len == WINDOW
    }

    /// Rows over flush time of the window without its slowest flush. The
    /// slowest goes because a stall (a checkpoint, a busy core) says nothing
    /// about the size; a lucky fast flush adds little time to the sum, so it
    /// cannot make a size look much better than it is.
    fn measure(&self, size: usize) -> Measured {
        let slowest = (0..WINDOW)
            .max_by_key(|&i| self.flushes[i])
            .unwrap_or_default();
        let kept = (0..WINDOW).filter(|&i| i != slowest);
        let (mut rows, mut secs) = (0.0, 0.0);
        let (mut low, mut high) = (f64::INFINITY, 0.0_f64);
        for i in kept {
            let flush = self.flushes[i].as_secs_f64();
            rows += self.rows_per_s[i] * flush;
            secs += flush;
            low = low.min(self.rows_per_s[i]);
            high = high.max(self.rows_per_s[i]);
        }
        let rows_per_s = rows / secs.max(f64::MIN_POSITIVE);
        Measured {
            size,
            rows_per_s,
            scatter: ((high - low) / rows_per_s).min(1.0),
        }
    }

    /// The slowest flush but one: a budget check that one stall does not
    /// veto, while two slow flushes in a window still do.
    fn high_flush(&self) -> Duration {
        let mut flushes = self.flushes;
        flushes.sort();
        flushes[WINDOW - 2]
    }
}

/// Tunes the batch size between `min` and `max` for the most rows per
/// second of flush while flushes stay under `budget`. Starts at `min`, the
/// cautious end: a climb from there takes a few dozen full batches.
#[derive(Debug, Clone)]
pub struct BatchSizer {
    min: usize,
    max: usize,
    budget: Duration,
    target: usize,
    window: Window,
    phase: Phase,
    /// Batches since the last flush over budget (`None`: none yet).
    since_breach: Option<u32>,
}

impl BatchSizer {
    pub fn new(min: usize, max: usize, budget: Duration) -> Self {
        let max = max.max(1);
        let min = min.clamp(1, max);
        Self {
            min,
            max,
            budget,
            target: min,
            window: Window::default(),
            phase: Phase::Climbing {
                direction: Direction::Up,
                best: None,
            },
            since_breach: None,
        }
    }

    /// The size the next batch should aim at.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Takes what one committed batch measured (its size, its flush time
    /// from close to ack, and why it ended) and returns the next target.
    pub fn observe(&mut self, size: usize, flush: Duration, end: BatchEnd) -> usize {
        let recent_breach = self.since_breach.is_some_and(|n| n < BREACH_MEMORY);
        self.since_breach = self.since_breach.map(|n| n.saturating_add(1));
        if flush > self.budget {
            if recent_breach {
                self.cut();
            }
            self.since_breach = Some(0);
        } else if end == BatchEnd::Full && size > 0 {
            self.window.add(size, flush);
            if self.window.is_full() {
                self.end_window();
            }
        }
        self.target
    }

    fn end_window(&mut self) {
        let window = std::mem::take(&mut self.window);
        let measured = window.measure(self.target);
        match self.phase {
            Phase::Holding { windows_left, next } if windows_left > 1 => {
                self.phase = Phase::Holding {
                    windows_left: windows_left - 1,
                    next,
                };
            }
            Phase::Holding { next, .. } => self.step(next, measured, &window),
            Phase::Climbing {
                direction,
                best: None,
            } => self.step(direction, measured, &window),
            Phase::Climbing {
                direction: Direction::Up,
                best: Some(best),
            } => {
                let margin = measured.noise_margin(&best);
                if measured.rows_per_s >= best.rows_per_s * (1.0 - MAX_LOSS - margin) {
                    let best = if measured.rows_per_s > best.rows_per_s {
                        measured
                    } else {
                        best
                    };
                    self.step(Direction::Up, best, &window);
                } else {
                    self.target = best.size;
                    self.hold(Direction::Down);
                }
            }
            Phase::Climbing {
                direction: Direction::Down,
                best: Some(best),
            } => {
                let margin = measured.noise_margin(&best);
                if measured.rows_per_s > best.rows_per_s * (1.0 + MIN_GAIN + margin) {
                    self.step(Direction::Down, measured, &window);
                } else {
                    self.target = best.size;
                    self.hold(Direction::Up);
                }
            }
        }
    }

    /// Moves one step towards `direction`, remembering `best` as the rate to
    /// compare the next window with; holds if a bound or the budget leaves
    /// no room.
    fn step(&mut self, direction: Direction, best: Measured, window: &Window) {
        let current = self.target as f64;
        let next = match direction {
            Direction::Up => {
                let high = window.high_flush().as_secs_f64().max(f64::MIN_POSITIVE);
                let fits = current * HEADROOM * self.budget.as_secs_f64() / high;
                (current * STEP).min(fits).floor()
            }
            Direction::Down => (current / STEP).ceil(),
        };
        let next = (next as usize).clamp(self.min, self.max);
        // Up with no room left in the budget holds rather than shrinks:
        // flushes over the budget itself are what cut the target.
        let blocked = match direction {
            Direction::Up => next <= self.target,
            Direction::Down => next >= self.target,
        };
        if blocked {
            let reversed = match direction {
                Direction::Up => Direction::Down,
                Direction::Down => Direction::Up,
            };
            self.hold(reversed);
        } else {
            self.target = next;
            self.phase = Phase::Climbing {
                direction,
                best: Some(best),
            };
        }
    }

    fn hold(&mut self, next: Direction) {
        self.window = Window::default();
        self.phase = Phase::Holding {
            windows_left: HOLD_WINDOWS,
            next,
        };
    }

    fn cut(&mut self) {
        self.target = ((self.target as f64 * SHRINK).floor() as usize).clamp(self.min, self.max);
        // Climb again at once: a lone stall costs little, and the step-up
        // cap keeps a database that really got slower from being pushed
        // back over the budget.
        self.window = Window::default();
        self.phase = Phase::Climbing {
            direction: Direction::Up,
            best: None,
        };
    }
}

/// The consumer's batch size: fixed, or tuned by a [`BatchSizer`].
#[derive(Debug, Clone)]
pub enum BatchSizing {
    Fixed(usize),
    /// Boxed: a sizer is a few hundred bytes, a fixed size one word.
    Adaptive(Box<BatchSizer>),
}

impl BatchSizing {
    pub fn from_settings(settings: &WorkerSettings) -> Self {
        match settings.batch_mode {
            BatchMode::Fixed => Self::Fixed(settings.batch_size),
            BatchMode::Adaptive => Self::Adaptive(Box::new(BatchSizer::new(
                settings.batch_min_size,
                settings.batch_size,
                settings.flush_budget(),
            ))),
        }
    }

    /// The size the next batch should aim at.
    pub fn target(&self) -> usize {
        match self {
            Self::Fixed(size) => *size,
            Self::Adaptive(sizer) => sizer.target(),
        }
    }

    /// See [`BatchSizer::observe`]; a fixed size ignores it.
    pub fn observe(&mut self, size: usize, flush: Duration, end: BatchEnd) -> usize {
        match self {
            Self::Fixed(size) => *size,
            Self::Adaptive(sizer) => sizer.observe(size, flush, end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_millis(100);

    /// A synthetic flush cost: fixed + per_row·n + per_row_squared·n².
    #[derive(Debug, Clone, Copy)]
    struct Cost {
        fixed_us: f64,
        per_row_us: f64,
        per_row_squared_us: f64,
    }

    impl Cost {
        fn linear(fixed_ms: f64, per_row_us: f64) -> Self {
            Self {
                fixed_us: fixed_ms * 1000.0,
                per_row_us,
                per_row_squared_us: 0.0,
            }
        }

        /// 10 ms + 10 µs·n + 0.01 µs·n²: rows/s peaks at 1000 rows (30 ms);
        /// larger batches are slower per row, not only slower to flush.
        fn convex() -> Self {
            Self {
                fixed_us: 10_000.0,
                per_row_us: 10.0,
                per_row_squared_us: 0.01,
            }
        }

        fn of(&self, n: usize) -> Duration {
            let n = n as f64;
            Duration::from_secs_f64(
                (self.fixed_us + self.per_row_us * n + self.per_row_squared_us * n * n) / 1e6,
            )
        }

        fn rows_per_s(&self, n: usize) -> f64 {
            n as f64 / self.of(n).as_secs_f64()
        }

        /// The best rate of any size in `min..=max` whose flush fits `budget`.
        fn best_rate(&self, min: usize, max: usize, budget: Duration) -> f64 {
            (min..=max)
                .filter(|&n| self.of(n) <= budget)
                .map(|n| self.rows_per_s(n))
                .fold(0.0, f64::max)
        }
    }

    /// A small deterministic generator, so noisy runs are reproducible.
    struct Noise(u64);

    impl Noise {
        fn new() -> Self {
            Self(0x9E37_79B9_7F4A_7C15)
        }

        /// Uniform in 0..1.
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        /// A factor uniformly in `1 ± spread`.
        fn factor(&mut self, spread: f64) -> f64 {
            1.0 + spread * (2.0 * self.unit() - 1.0)
        }
    }

    /// Feeds `batches` full batches whose flush `flush` gives for a size,
    /// returning each batch's (size, flush).
    fn run_with(
        sizer: &mut BatchSizer,
        batches: usize,
        mut flush: impl FnMut(usize, &mut Noise) -> Duration,
    ) -> Vec<(usize, Duration)> {
        let mut noise = Noise::new();
        (0..batches)
            .map(|_| {
                let size = sizer.target();
                let took = flush(size, &mut noise);
                sizer.observe(size, took, BatchEnd::Full);
                (size, took)
            })
            .collect()
    }

    /// [`run_with`] costed by `cost`, times a noise factor within `spread`.
    fn run(
        sizer: &mut BatchSizer,
        cost: Cost,
        batches: usize,
        spread: f64,
    ) -> Vec<(usize, Duration)> {
        run_with(sizer, batches, |n, noise| {
            cost.of(n).mul_f64(noise.factor(spread))
        })
    }

    /// Share of `batches` whose size's true rate is within `within` of `best`.
    fn share_near_best(batches: &[(usize, Duration)], cost: Cost, best: f64, within: f64) -> f64 {
        let near = batches
            .iter()
            .filter(|(n, _)| cost.rows_per_s(*n) >= best * (1.0 - within))
            .count();
        near as f64 / batches.len() as f64
    }

    /// The true rate of the sizes of `batches`, on average, as a share of
    /// `best`: what noise and probing cost in throughput.
    fn mean_rate_share(batches: &[(usize, Duration)], cost: Cost, best: f64) -> f64 {
        let sum: f64 = batches.iter().map(|(n, _)| cost.rows_per_s(*n)).sum();
        sum / batches.len() as f64 / best
    }

    fn sizes(batches: &[(usize, Duration)]) -> Vec<usize> {
        batches.iter().map(|(n, _)| *n).collect()
    }

    fn new_sizer() -> BatchSizer {
        BatchSizer::new(50, 5000, BUDGET)
    }

    #[test]
    fn starts_at_the_minimum() {
        assert_eq!(new_sizer().target(), 50);
        // A minimum above the maximum is clamped (settings refuse it anyway).
        assert_eq!(BatchSizer::new(900, 500, BUDGET).target(), 500);
    }

    #[test]
    fn with_linear_cost_under_budget_it_grows_to_the_maximum() {
        // 2 ms per batch, 5 µs per row: 5000 rows flush in 27 ms. Every
        // step brings a little more rows/s, so the largest size is best.
        let cost = Cost::linear(2.0, 5.0);
        let mut sizer = new_sizer();
        let batches = run(&mut sizer, cost, 600, 0.0);
        // 21 steps of 1.25 from 50 to 5000, one window each.
        let reached = batches.iter().position(|(n, _)| *n == 5000);
        assert_eq!(reached, Some(21 * WINDOW), "{:?}", sizes(&batches));
        let best = cost.best_rate(50, 5000, BUDGET);
        assert!(share_near_best(&batches[150..], cost, best, 0.05) > 0.95);
        assert!(batches.iter().all(|(_, flush)| *flush <= BUDGET));
    }

    #[test]
    fn with_a_binding_budget_it_stays_under_it() {
        // 5 ms + 50 µs per row: 1900 rows is the most that fits 100 ms, and
        // rows/s grows all the way to 5000, so only the budget stops it.
        let cost = Cost::linear(5.0, 50.0);
        let mut sizer = new_sizer();
        let batches = run(&mut sizer, cost, 600, 0.0);
        assert!(
            batches.iter().all(|(_, flush)| *flush <= BUDGET),
            "a flush over budget: {:?}",
            batches.iter().map(|(_, f)| f).max()
        );
        let best = cost.best_rate(50, 5000, BUDGET);
        assert!(share_near_best(&batches[200..], cost, best, 0.10) > 0.95);
    }

    #[test]
    fn with_convex_cost_it_finds_the_interior_best_size() {
        let cost = Cost::convex();
        let mut sizer = new_sizer();
        let batches = run(&mut sizer, cost, 800, 0.0);
        let best = cost.best_rate(50, 5000, BUDGET);
        let settled = &batches[200..];
        // Mostly at the best size, with probes that go up until a step
        // loses more than MAX_LOSS, then return.
        let share = mean_rate_share(settled, cost, best);
        assert!(share > 0.95, "{share}: settled sizes {:?}", sizes(settled));
        assert!(share_near_best(settled, cost, best, 0.01) > 0.7);
    }

    #[test]
    fn noisy_measurements_do_not_make_it_wander() {
        let cost = Cost::convex();
        let mut sizer = new_sizer();
        // Each flush off by up to ±30%.
        let batches = run(&mut sizer, cost, 4000, 0.3);
        let best = cost.best_rate(50, 5000, BUDGET);
        let settled = &batches[400..];
        // Noise this large hides the gentle slope past the peak, and in
        // doubt a larger batch is kept: it settles above the best size, at
        // a small cost in rows/s.
        let share = mean_rate_share(settled, cost, best);
        assert!(share > 0.85, "{share}: settled sizes {:?}", sizes(settled));
        // No wild swings: noise moves it a few steps around the best size
        // (1000), never far.
        assert!(
            settled
                .iter()
                .all(|(n, _)| (1000.0 / 3.0..=1000.0 * 3.0).contains(&(*n as f64))),
            "settled sizes {:?}",
            sizes(settled)
        );
    }

    #[test]
    fn flushes_dominated_by_waiting_still_grow_the_batch() {
        // A machine shared with the api and the broker: each flush waits
        // 0 to 40 ms for a core whatever its size, on top of 2 ms + 10 µs
        // per row. Per flush the size hardly shows, yet on average a larger
        // batch pays the wait for more rows: it must climb to what the
        // budget allows.
        let cost = Cost::linear(2.0, 10.0);
        let mut sizer = new_sizer();
        let batches = run_with(&mut sizer, 3000, |n, noise| {
            let wait = Duration::from_secs_f64(0.040 * noise.unit());
            cost.of(n).mul_f64(noise.factor(0.3)) + wait
        });
        let on_average = Cost::linear(22.0, 10.0);
        let best = on_average.best_rate(50, 5000, BUDGET);
        let settled = &batches[400..];
        let share = mean_rate_share(settled, on_average, best);
        assert!(share > 0.9, "{share}: settled sizes {:?}", sizes(settled));
        let over = settled.iter().filter(|(_, f)| *f > BUDGET).count();
        assert!(
            over as f64 / settled.len() as f64 <= 0.02,
            "{over} flushes over budget"
        );
    }

    #[test]
    fn occasional_stalls_do_not_keep_it_small() {
        // 2 ms + 20 µs per row with ±30% noise, and one flush in 40 stalled
        // ten times as long (a checkpoint, a busy core): the climb from the
        // minimum must still get most of the way and stay there.
        let cost = Cost::linear(2.0, 20.0);
        let mut sizer = new_sizer();
        let batches = run_with(&mut sizer, 3000, |n, noise| {
            let stall = if noise.unit() < 0.025 { 10.0 } else { 1.0 };
            cost.of(n).mul_f64(noise.factor(0.3) * stall)
        });
        let best = cost.best_rate(50, 5000, BUDGET);
        let settled = &batches[400..];
        let share = mean_rate_share(settled, cost, best);
        assert!(share > 0.9, "{share}: settled sizes {:?}", sizes(settled));
        // Stalls aside, flushes stay inside the budget nearly always.
        let unstalled_over = settled
            .iter()
            .filter(|(n, flush)| *flush > BUDGET && *flush < cost.of(*n).mul_f64(1.3))
            .count();
        assert!(
            unstalled_over as f64 / settled.len() as f64 <= 0.01,
            "{unstalled_over} flushes over budget without a stall"
        );
    }

    #[test]
    fn once_settled_it_only_probes_one_step_at_a_time() {
        for cost in [Cost::linear(2.0, 5.0), Cost::linear(5.0, 50.0)] {
            let mut sizer = new_sizer();
            let batches = run(&mut sizer, cost, 1000, 0.0);
            let settled = sizes(&batches[300..]);
            let changes = settled.windows(2).filter(|w| w[0] != w[1]).count();
            // A probe leaves for one window and comes back: two changes per
            // hold, no more.
            let holds = settled.len() / ((HOLD_WINDOWS as usize + 1) * WINDOW) + 1;
            assert!(changes <= 2 * holds, "{changes} changes: {settled:?}");
            let (low, high) = (settled.iter().min(), settled.iter().max());
            let (Some(&low), Some(&high)) = (low, high) else {
                panic!("no batches");
            };
            assert!(high as f64 <= low as f64 * STEP + 2.0, "{low}..{high}");
        }
    }

    #[test]
    fn a_slower_database_cuts_the_target_below_the_budget() {
        let cheap = Cost::linear(2.0, 5.0);
        let mut sizer = new_sizer();
        run(&mut sizer, cheap, 200, 0.0);
        // Settled at the maximum, apart from a probe one step down now and
        // then: start from the maximum.
        let settled = run(&mut sizer, cheap, 100, 0.0);
        assert!(settled.iter().filter(|(n, _)| *n == 5000).count() > 80);
        while sizer.target() != 5000 {
            run(&mut sizer, cheap, 1, 0.0);
        }
        // The database becomes ten times slower per row: 5000 rows now take
        // half a second, and at most 1960 fit the budget.
        let slow = Cost::linear(2.0, 50.0);
        let batches = run(&mut sizer, slow, 400, 0.0);
        let over = batches.iter().filter(|(_, f)| *f > BUDGET).count();
        // The first breach might be a stall and is let pass; then three
        // cuts bring it under: 5000 · 0.7³ = 1715.
        assert_eq!(over, 4, "{:?}", sizes(&batches[..10]));
        assert!(batches[4..].iter().all(|(_, flush)| *flush <= BUDGET));
        let best = slow.best_rate(50, 5000, BUDGET);
        assert!(share_near_best(&batches[50..], slow, best, 0.10) > 0.9);
    }

    #[test]
    fn the_target_never_leaves_its_bounds() {
        // So dear that even the minimum breaks the budget.
        let dear = Cost::linear(150.0, 100.0);
        let mut sizer = new_sizer();
        assert!(
            run(&mut sizer, dear, 200, 0.1)
                .iter()
                .all(|(n, _)| *n == 50)
        );
        // So cheap that the maximum is best.
        let free = Cost::linear(50.0, 0.1);
        let mut sizer = new_sizer();
        let batches = run(&mut sizer, free, 400, 0.1);
        assert!(batches.iter().all(|(n, _)| (50..=5000).contains(n)));
        assert_eq!(batches.iter().map(|(n, _)| *n).max(), Some(5000));
    }

    #[test]
    fn batches_ended_by_time_keep_the_target() {
        let mut sizer = new_sizer();
        for _ in 0..100 {
            assert_eq!(
                sizer.observe(20, Duration::from_millis(1), BatchEnd::Waited),
                50
            );
        }
        // Flushes over budget cut, whatever ended the batch; a lone one
        // does not.
        let mut sizer = new_sizer();
        run(&mut sizer, Cost::linear(2.0, 5.0), 200, 0.0);
        let before = sizer.target();
        let slow = Duration::from_millis(500);
        assert_eq!(sizer.observe(10, slow, BatchEnd::Waited), before);
        assert_eq!(
            sizer.observe(10, Duration::from_millis(1), BatchEnd::Waited),
            before
        );
        assert_eq!(
            sizer.observe(10, slow, BatchEnd::Waited),
            (before as f64 * SHRINK) as usize
        );
    }

    #[test]
    fn fixed_sizing_ignores_measurements() {
        let mut sizing = BatchSizing::Fixed(500);
        assert_eq!(
            sizing.observe(500, Duration::from_secs(10), BatchEnd::Full),
            500
        );
        assert_eq!(sizing.target(), 500);
    }
}
