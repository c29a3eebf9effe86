//! Capped exponential backoff with full jitter.
//!
//! Shared by the MQTT link and every sink so that a hundred docks losing the same server do not
//! reconnect in lock-step: each delay is drawn uniformly from `[0, min(max, initial * 2^attempt)]`
//! ("full jitter"). Pure: the caller passes the random source, which keeps tests deterministic.

use rand::Rng;
use std::time::Duration;

/// Delay schedule for reconnect attempts; one per connection owner.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Creates a schedule whose ceiling starts at `initial` and doubles per attempt up to `max`.
    ///
    /// A `max` below `initial` is raised to `initial` so the ceiling is never smaller than the
    /// first step.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound for the next delay, without jitter; exposed so callers can log it.
    pub fn ceiling(&self) -> Duration {
        // Saturate long before the shift overflows: 2^20 * any sane initial exceeds any sane max.
        let factor = 1u32 << self.attempt.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Draws the delay before the next attempt and counts the attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// How many delays have been drawn since the last reset (i.e. failed attempts in a row).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success, so the next failure waits only about `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connection that had succeeded has ended after `held`: the schedule starts over only
    /// if it held for at least the largest delay. A server that accepts and drops at once (a
    /// broker kicking a duplicate client id, a media server refusing after the handshake) thus
    /// keeps the delays climbing instead of being reconnected to every `initial`.
    pub fn connection_ended(&mut self, held: Duration) {
        if held >= self.max {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_a_connection_that_held_starts_the_schedule_over() {
        let mut b = Backoff::new(250 * MS, 10_000 * MS);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..3 {
            b.next_delay(&mut rng);
            b.connection_ended(100 * MS);
        }
        assert_eq!(b.attempt(), 3);
        assert_eq!(b.ceiling(), 2000 * MS);
        b.connection_ended(10_000 * MS);
        assert_eq!((b.attempt(), b.ceiling()), (0, 250 * MS));
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let mut b = Backoff::new(250 * MS, 10_000 * MS);
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(
            ceilings,
            vec![250, 500, 1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000]
        );
    }

    #[test]
    fn delays_stay_within_jitter_range_and_cap() {
        let mut b = Backoff::new(100 * MS, 3_000 * MS);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            assert!(d <= 3_000 * MS);
        }
    }

    #[test]
    fn jitter_actually_spreads_delays() {
        let mut rng = StdRng::seed_from_u64(3);
        let draws: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(1000 * MS, 1000 * MS).next_delay(&mut rng))
            .collect();
        let min = draws.iter().min().copied().unwrap_or_default();
        let max = draws.iter().max().copied().unwrap_or_default();
        assert!(min < 250 * MS && max > 750 * MS, "min {min:?} max {max:?}");
    }

    #[test]
    fn attempt_counts_and_reset_restarts() {
        let mut b = Backoff::new(250 * MS, 10_000 * MS);
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..6 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.attempt(), 6);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), 250 * MS);
        assert!(b.next_delay(&mut rng) <= 250 * MS);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..100 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }

    #[test]
    fn max_below_initial_is_raised() {
        let b = Backoff::new(2_000 * MS, 10 * MS);
        assert_eq!(b.ceiling(), 2_000 * MS);
    }
}
