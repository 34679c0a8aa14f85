//! A circuit breaker per function: `threshold` consecutive failures open it; while open
//! calls are refused at once; after `recovery` one trial call goes through, and its
//! success closes the breaker (its failure opens it again).

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial: bool },
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Normal call.
    Allowed,
    /// The single trial call after the recovery time.
    Trial,
    /// Refused: the breaker is open.
    Rejected,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    recovery: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, recovery: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            recovery,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Asks to make a call at `now`.
    pub fn permit(&self, now: Instant) -> Permit {
        let mut s = self.state.lock().unwrap();
        match *s {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { trial: true };
                Permit::Trial
            }
            State::Open { .. } => Permit::Rejected,
            State::HalfOpen { trial: true } => Permit::Rejected,
            State::HalfOpen { trial: false } => {
                *s = State::HalfOpen { trial: true };
                Permit::Trial
            }
        }
    }

    /// Reports the outcome of a permitted call.
    pub fn record(&self, permit: Permit, success: bool, now: Instant) {
        if permit == Permit::Rejected {
            return;
        }
        let mut s = self.state.lock().unwrap();
        match (*s, success) {
            (_, true) if permit == Permit::Trial => *s = State::Closed { failures: 0 },
            (State::Closed { .. }, true) => *s = State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                let failures = failures + 1;
                *s = if failures >= self.threshold {
                    State::Open {
                        until: now + self.recovery,
                    }
                } else {
                    State::Closed { failures }
                };
            }
            (State::HalfOpen { .. }, false) if permit == Permit::Trial => {
                *s = State::Open {
                    until: now + self.recovery,
                }
            }
            // Late outcomes of calls admitted before the breaker opened change nothing.
            _ => {}
        }
    }

    /// Gives the trial back without an outcome (the call never reached the function).
    pub fn release_trial(&self, permit: Permit) {
        if permit == Permit::Trial {
            let mut s = self.state.lock().unwrap();
            if let State::HalfOpen { .. } = *s {
                *s = State::HalfOpen { trial: false };
            }
        }
    }

    /// `closed`, `open` or `half-open` (the admin status's names).
    pub fn state_name(&self) -> &'static str {
        match self.state_code() {
            0 => "closed",
            1 => "open",
            _ => "half-open",
        }
    }

    /// 0 closed, 1 open, 2 half-open (the metric's encoding).
    pub fn state_code(&self) -> i64 {
        match *self.state.lock().unwrap() {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_rejects_and_recovers() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            let p = b.permit(t0);
            assert_eq!(p, Permit::Allowed);
            b.record(p, false, t0);
        }
        // A success resets the count.
        b.record(Permit::Allowed, true, t0);
        for _ in 0..3 {
            let p = b.permit(t0);
            b.record(p, false, t0);
        }
        assert_eq!(b.state_code(), 1);
        assert_eq!(b.state_name(), "open");
        assert_eq!(b.permit(t0 + Duration::from_secs(9)), Permit::Rejected);
        // One trial after the recovery time, others still rejected.
        let t1 = t0 + Duration::from_secs(10);
        let trial = b.permit(t1);
        assert_eq!(trial, Permit::Trial);
        assert_eq!(b.state_name(), "half-open");
        assert_eq!(b.permit(t1), Permit::Rejected);
        // A failed trial opens it again.
        b.record(trial, false, t1);
        assert_eq!(b.permit(t1 + Duration::from_secs(1)), Permit::Rejected);
        let t2 = t1 + Duration::from_secs(10);
        let trial = b.permit(t2);
        assert_eq!(trial, Permit::Trial);
        b.record(trial, true, t2);
        assert_eq!(b.state_code(), 0);
        assert_eq!(b.state_name(), "closed");
        assert_eq!(b.permit(t2), Permit::Allowed);
    }

    #[test]
    fn released_trial_can_be_retaken() {
        let b = Breaker::new(1, Duration::ZERO);
        let t = Instant::now();
        b.record(b.permit(t), false, t);
        let trial = b.permit(t);
        assert_eq!(trial, Permit::Trial);
        b.release_trial(trial);
        assert_eq!(b.permit(t), Permit::Trial);
    }
}
