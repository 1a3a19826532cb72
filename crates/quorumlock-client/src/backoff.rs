//! Bounded exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Pauses that double from an initial value up to a bound; each pause is
/// drawn from the upper half of the current step, so that clients that failed
/// together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    step_max: Duration,
}

impl Backoff {
    /// Starts at `initial`, never exceeding `step_max`.
    pub fn new(initial: Duration, step_max: Duration) -> Self {
        let step_max = step_max.max(Duration::from_millis(1));
        Backoff {
            step: initial.clamp(Duration::from_millis(1), step_max),
            step_max,
        }
    }

    /// The next pause.
    pub fn next_pause(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.step_max);
        let half = step / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_but_stay_within_the_bound_and_the_upper_half_of_each_step() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        let steps = [50, 100, 200, 400, 400, 400];
        for step in steps {
            let step = Duration::from_millis(step);
            let pause = backoff.next_pause();
            assert!(
                pause >= step / 2 && pause <= step,
                "pause {pause:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn zero_settings_still_give_a_positive_bounded_pause() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        for _ in 0..4 {
            assert!(backoff.next_pause() <= Duration::from_millis(1));
        }
    }
}
