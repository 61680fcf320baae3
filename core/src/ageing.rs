//! Ageing: how a waiting task's priority grows with its wait, so that nothing starves.
//!
//! Effective priority = base priority + `boost(wait)`. Every function is non-decreasing in
//! the wait and capped, which is what lets the dispatch index keep a static order inside a
//! bucket (same ageing, same base: the oldest task is always the most aged) and find the
//! next time a bucket's head crosses a priority level by inverting the function
//! ([`Ageing::wait_to_reach`]).

use serde::{Deserialize, Serialize};

use crate::Millis;

/// An ageing function. Parameters are validated at submit ([`Ageing::validate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Ageing {
    /// The priority never changes.
    #[default]
    None,
    /// `min(cap, per_minute * wait_minutes)`.
    Linear { per_minute: f64, cap: f64 },
    /// `min(cap, 2^(wait / doubling_ms) - 1)`: slow at first, urgent later.
    Exponential { doubling_ms: Millis, cap: f64 },
    /// `min(cap, increment * floor(wait / every_ms))`: one level every period.
    Step {
        every_ms: Millis,
        increment: f64,
        cap: f64,
    },
}

impl std::hash::Hash for Ageing {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.class_key().hash(state)
    }
}

impl Eq for Ageing {}

/// A bit-exact identity of an ageing function, for bucketing tasks that age alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgeingClassKey(u8, u64, u64, u64);

impl Ageing {
    /// Checks the parameters; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        let finite_non_negative = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number >= 0, got {v}"))
            }
        };
        match *self {
            Ageing::None => Ok(()),
            Ageing::Linear { per_minute, cap } => {
                finite_non_negative("ageing.per_minute", per_minute)?;
                finite_non_negative("ageing.cap", cap)
            }
            Ageing::Exponential { doubling_ms, cap } => {
                if doubling_ms == 0 {
                    return Err("ageing.doubling_ms must be > 0".into());
                }
                finite_non_negative("ageing.cap", cap)
            }
            Ageing::Step {
                every_ms,
                increment,
                cap,
            } => {
                if every_ms == 0 {
                    return Err("ageing.every_ms must be > 0".into());
                }
                finite_non_negative("ageing.increment", increment)?;
                finite_non_negative("ageing.cap", cap)
            }
        }
    }

    pub fn class_key(&self) -> AgeingClassKey {
        match *self {
            Ageing::None => AgeingClassKey(0, 0, 0, 0),
            Ageing::Linear { per_minute, cap } => {
                AgeingClassKey(1, per_minute.to_bits(), cap.to_bits(), 0)
            }
            Ageing::Exponential { doubling_ms, cap } => {
                AgeingClassKey(2, doubling_ms, cap.to_bits(), 0)
            }
            Ageing::Step {
                every_ms,
                increment,
                cap,
            } => AgeingClassKey(3, every_ms, increment.to_bits(), cap.to_bits()),
        }
    }

    /// The largest boost this function ever gives.
    pub fn cap(&self) -> f64 {
        match *self {
            Ageing::None => 0.0,
            Ageing::Linear { per_minute, cap } => {
                if per_minute > 0.0 {
                    cap
                } else {
                    0.0
                }
            }
            Ageing::Exponential { cap, .. } => cap,
            Ageing::Step { increment, cap, .. } => {
                if increment > 0.0 {
                    cap
                } else {
                    0.0
                }
            }
        }
    }

    /// The priority added after waiting `wait` ms.
    pub fn boost(&self, wait: Millis) -> f64 {
        let boost = match *self {
            Ageing::None => 0.0,
            Ageing::Linear { per_minute, cap } => (per_minute * wait as f64 / 60_000.0).min(cap),
            Ageing::Exponential { doubling_ms, cap } => {
                let doublings = wait as f64 / doubling_ms as f64;
                // 2^x - 1 overflows to infinity for huge waits; the cap bounds it anyway.
                (doublings.exp2() - 1.0).min(cap)
            }
            Ageing::Step {
                every_ms,
                increment,
                cap,
            } => ((wait / every_ms) as f64 * increment).min(cap),
        };
        boost.max(0.0)
    }

    /// The shortest wait after which `boost(wait) >= target`, or `None` if it never gets
    /// there. Exact on the integer millisecond grid, whatever the float rounding.
    pub fn wait_to_reach(&self, target: f64) -> Option<Millis> {
        if target <= 0.0 {
            return Some(0);
        }
        if target > self.cap() {
            return None;
        }
        let estimate: f64 = match *self {
            Ageing::None => return None,
            Ageing::Linear { per_minute, .. } => target * 60_000.0 / per_minute,
            Ageing::Exponential { doubling_ms, .. } => (target + 1.0).log2() * doubling_ms as f64,
            Ageing::Step {
                every_ms,
                increment,
                ..
            } => (target / increment).ceil() * every_ms as f64,
        };
        if !estimate.is_finite() || estimate >= u64::MAX as f64 / 2.0 {
            return None;
        }
        let mut wait = estimate.ceil().max(0.0) as Millis;
        // The float inverse can be off by a step or two either way; walk to the exact answer.
        while wait > 0 && self.boost(wait - 1) >= target {
            wait -= 1;
        }
        let mut guard = 0;
        while self.boost(wait) < target {
            wait += 1;
            guard += 1;
            if guard > 1_000_000 {
                return None;
            }
        }
        Some(wait)
    }
}

/// Remembers answers of [`Ageing::wait_to_reach`] by ageing number and target. A lane's level
/// timer asks it for every occupied bucket at every re-key, and the questions repeat: the
/// targets are level boundaries less a bucket's base score, a handful of values. With 1M
/// tasks queued, lanes hold tasks in most of their buckets and the exact inverse was a fifth
/// of a lifecycle's instructions. Direct-mapped: a clash only costs a recomputation.
#[derive(Debug, Clone)]
pub(crate) struct WaitMemo {
    entries: Box<[WaitMemoEntry]>,
}

#[derive(Debug, Clone, Copy)]
struct WaitMemoEntry {
    /// `u32::MAX` while the entry is empty.
    ageing: u32,
    target_bits: u64,
    /// `u64::MAX` for "never": `wait_to_reach` gives up long before.
    wait: Millis,
}

const WAIT_MEMO_ENTRIES: usize = 256;

impl Default for WaitMemo {
    fn default() -> Self {
        let empty = WaitMemoEntry {
            ageing: u32::MAX,
            target_bits: 0,
            wait: 0,
        };
        WaitMemo {
            entries: vec![empty; WAIT_MEMO_ENTRIES].into_boxed_slice(),
        }
    }
}

impl WaitMemo {
    /// `ageing.wait_to_reach(target)`, where `number` names `ageing` (equal numbers, equal
    /// ageing functions).
    pub fn wait_to_reach(&mut self, number: u32, ageing: &Ageing, target: f64) -> Option<Millis> {
        let target_bits = target.to_bits();
        let mixed =
            (target_bits ^ u64::from(number).rotate_right(8)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = (mixed >> (u64::BITS - WAIT_MEMO_ENTRIES.trailing_zeros())) as usize;
        let entry = &mut self.entries[slot];
        if entry.ageing != number || entry.target_bits != target_bits {
            *entry = WaitMemoEntry {
                ageing: number,
                target_bits,
                wait: ageing.wait_to_reach(target).unwrap_or(u64::MAX),
            };
        }
        (entry.wait != u64::MAX).then_some(entry.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_reaches_its_cap_and_stays() {
        let a = Ageing::Linear {
            per_minute: 2.0,
            cap: 5.0,
        };
        assert_eq!(a.boost(0), 0.0);
        assert_eq!(a.boost(60_000), 2.0);
        assert_eq!(a.boost(10 * 60_000), 5.0);
        assert_eq!(a.wait_to_reach(4.0), Some(120_000));
        assert_eq!(a.wait_to_reach(5.5), None);
    }

    #[test]
    fn exponential_doubles() {
        let a = Ageing::Exponential {
            doubling_ms: 1_000,
            cap: 100.0,
        };
        assert_eq!(a.boost(1_000), 1.0);
        assert_eq!(a.boost(3_000), 7.0);
        assert_eq!(a.wait_to_reach(7.0), Some(3_000));
    }

    #[test]
    fn step_moves_one_increment_per_period() {
        let a = Ageing::Step {
            every_ms: 500,
            increment: 1.0,
            cap: 3.0,
        };
        assert_eq!(a.boost(499), 0.0);
        assert_eq!(a.boost(500), 1.0);
        assert_eq!(a.boost(5_000), 3.0);
        assert_eq!(a.wait_to_reach(2.0), Some(1_000));
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = Ageing::Exponential {
            doubling_ms: 0,
            cap: 1.0,
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("doubling_ms"), "{err}");
        let err = Ageing::Linear {
            per_minute: f64::NAN,
            cap: 1.0,
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("per_minute"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn the_memo_answers_as_the_function_does(
            per_minute in 0.01f64..100.0,
            cap in 0.0f64..50.0,
            targets in proptest::collection::vec(-2.0f64..60.0, 1..50),
        ) {
            // Two ageing numbers that share memo entries' targets must not mix answers.
            let ageings = [Ageing::None, Ageing::Linear { per_minute, cap }];
            let mut memo = WaitMemo::default();
            for (i, target) in targets.iter().enumerate() {
                let number = (i % 2) as u32;
                let a = &ageings[number as usize];
                proptest::prop_assert_eq!(memo.wait_to_reach(number, a, *target), a.wait_to_reach(*target));
                proptest::prop_assert_eq!(memo.wait_to_reach(number, a, *target), a.wait_to_reach(*target));
            }
        }

        #[test]
        fn wait_to_reach_is_the_exact_inverse(per_minute in 0.01f64..100.0, cap in 0.0f64..50.0, target in 0.0f64..60.0) {
            let a = Ageing::Linear { per_minute, cap };
            match a.wait_to_reach(target) {
                Some(w) => {
                    proptest::prop_assert!(a.boost(w) >= target);
                    if w > 0 { proptest::prop_assert!(a.boost(w - 1) < target); }
                }
                None => proptest::prop_assert!(target > cap),
            }
        }
    }
}
