//! Dispatch policies: which eligible task a free slot gets.
//!
//! A policy does not walk the queue itself (that would cost O(n) per decision); it gives the
//! dispatch index the pieces it orders by:
//! - a task's **score** = `base_score(priority) + ageing.boost(wait)`, where the ageing is the
//!   policy's choice (`ageing_for`);
//! - a **level** = `level_of(score + group_bonus)`: higher levels go first;
//! - inside a level, optionally the group **furthest below its fair share** (least decayed
//!   usage per unit of weight), then the oldest head task;
//! - optionally **share tiers**: a group already running its weighted share of the pool
//!   waits while a group below its share has work, and borrows slots only when no such group
//!   does (the work-conserving fallback).
//!
//! Every policy is work-conserving and respects hard group caps and pool slots: those are
//! enforced by the core, not by the policy.

use serde::{Deserialize, Serialize};

use crate::ageing::Ageing;

/// The names a driver may choose from, e.g. from a `--policy` flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    #[default]
    Handyman,
    Multifactor,
    StrictPriority,
    Fifo,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Handyman,
        PolicyKind::Multifactor,
        PolicyKind::StrictPriority,
        PolicyKind::Fifo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Handyman => "handyman",
            PolicyKind::Multifactor => "multifactor",
            PolicyKind::StrictPriority => "strict-priority",
            PolicyKind::Fifo => "fifo",
        }
    }

    /// Builds the policy object.
    pub fn build(self) -> Box<dyn Policy> {
        Box::new(self.built_in())
    }

    /// The policy as the core holds it.
    pub(crate) fn built_in(self) -> BuiltInPolicy {
        match self {
            PolicyKind::Handyman => BuiltInPolicy::Handyman(HandymanPolicy),
            PolicyKind::Multifactor => BuiltInPolicy::Multifactor(MultifactorPolicy::default()),
            PolicyKind::StrictPriority => BuiltInPolicy::StrictPriority(StrictPriorityPolicy),
            PolicyKind::Fifo => BuiltInPolicy::Fifo(FifoPolicy),
        }
    }
}

/// One of the built-in policies, called without a virtual call: a lifecycle asks its policy
/// about a dozen questions, and through `dyn Policy` none of the answers (a `floor`, a
/// constant `true`) could be inlined into the code that asked.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BuiltInPolicy {
    Handyman(HandymanPolicy),
    Multifactor(MultifactorPolicy),
    StrictPriority(StrictPriorityPolicy),
    Fifo(FifoPolicy),
}

/// Evaluates `$call` with `$policy` bound to whichever policy `$self` holds.
macro_rules! delegate {
    ($self:ident, $policy:ident => $call:expr) => {
        match $self {
            BuiltInPolicy::Handyman($policy) => $call,
            BuiltInPolicy::Multifactor($policy) => $call,
            BuiltInPolicy::StrictPriority($policy) => $call,
            BuiltInPolicy::Fifo($policy) => $call,
        }
    };
}

impl Policy for BuiltInPolicy {
    fn kind(&self) -> PolicyKind {
        delegate!(self, p => p.kind())
    }
    fn ageing_for(&self, requested: Ageing) -> Ageing {
        delegate!(self, p => p.ageing_for(requested))
    }
    fn base_score(&self, priority: i32) -> f64 {
        delegate!(self, p => p.base_score(priority))
    }
    fn group_bonus(&self, decayed_usage_ms: f64, weight: u32) -> f64 {
        delegate!(self, p => p.group_bonus(decayed_usage_ms, weight))
    }
    fn level_of(&self, score: f64) -> i64 {
        delegate!(self, p => p.level_of(score))
    }
    fn level_start(&self, level: i64) -> f64 {
        delegate!(self, p => p.level_start(level))
    }
    fn orders_groups_by_share(&self) -> bool {
        delegate!(self, p => p.orders_groups_by_share())
    }
    fn uses_share_tiers(&self) -> bool {
        delegate!(self, p => p.uses_share_tiers())
    }
    fn starvation_bound(&self) -> &'static str {
        delegate!(self, p => p.starvation_bound())
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown policy {s:?}; expected one of: handyman, multifactor, strict-priority, fifo"
                )
            })
    }
}

/// What the dispatch index needs from a policy. See the module documentation.
pub trait Policy: std::fmt::Debug + Send + Sync {
    fn kind(&self) -> PolicyKind;
    /// The ageing applied to a task whose spec asks for `requested`.
    fn ageing_for(&self, requested: Ageing) -> Ageing;
    /// The static part of a task's score.
    fn base_score(&self, priority: i32) -> f64;
    /// Added to a group's best score before its level is taken. Must depend only on the
    /// group's journaled state (never on `now`), so that a replayed core decides the same.
    fn group_bonus(&self, _decayed_usage_ms: f64, _weight: u32) -> f64 {
        0.0
    }
    /// Maps a score to a level; higher levels are served first.
    fn level_of(&self, score: f64) -> i64 {
        score.floor() as i64
    }
    /// The lowest score of a level: the inverse of `level_of`.
    fn level_start(&self, level: i64) -> f64 {
        level as f64
    }
    /// Whether, inside a level, the group with least usage per weight goes first.
    fn orders_groups_by_share(&self) -> bool;
    /// Whether groups at or over their weighted share of a pool wait for groups below it.
    fn uses_share_tiers(&self) -> bool;
    /// The starvation bound this policy guarantees, in words.
    fn starvation_bound(&self) -> &'static str;
}

/// The default: aged priority picks the level; inside a level, the group furthest below its
/// fair share; inside the group, highest aged priority, then oldest.
#[derive(Debug, Clone, Copy, Default)]
pub struct HandymanPolicy;

impl Policy for HandymanPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Handyman
    }
    fn ageing_for(&self, requested: Ageing) -> Ageing {
        requested
    }
    fn base_score(&self, priority: i32) -> f64 {
        f64::from(priority)
    }
    fn orders_groups_by_share(&self) -> bool {
        true
    }
    fn uses_share_tiers(&self) -> bool {
        true
    }
    fn starvation_bound(&self) -> &'static str {
        "A task whose ageing can lift it to the highest level in use reaches that level after \
         `ageing.wait_to_reach(top - priority)`; from then on only tasks of its level that \
         are older than it, or belong to a group with less usage per weight, go before it. \
         Decayed usage of the groups served instead grows while its group's shrinks, so its \
         group is served within a bounded number of dispatches, and inside its group it is \
         the oldest of its level. A task whose ageing cannot reach the top level has no bound \
         while higher work keeps arriving."
    }
}

/// Slurm-like multifactor priority: a weighted sum of age, fair share and base priority.
///
/// `score = age_weight * min(wait / max_age, 1) + priority_weight * priority
///          + fairshare_weight * 2^(-usage / (weight * fairshare_unit_ms))`.
/// The fair-share term is refreshed when a group's usage is charged (at the end of each of
/// its attempts), much as Slurm recomputes priorities every `PriorityCalcPeriod`.
#[derive(Debug, Clone, Copy)]
pub struct MultifactorPolicy {
    pub age_weight: f64,
    pub max_age_ms: u64,
    pub priority_weight: f64,
    pub fairshare_weight: f64,
    /// Decayed usage per unit of weight that halves the fair-share factor.
    pub fairshare_unit_ms: f64,
    /// Score points per level: coarser levels mean fewer re-orderings as tasks age.
    pub level_width: f64,
}

impl Default for MultifactorPolicy {
    fn default() -> Self {
        MultifactorPolicy {
            age_weight: 1_000.0,
            max_age_ms: 3_600_000,
            priority_weight: 100.0,
            fairshare_weight: 1_000.0,
            fairshare_unit_ms: 600_000.0,
            level_width: 10.0,
        }
    }
}

impl Policy for MultifactorPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Multifactor
    }
    fn ageing_for(&self, _requested: Ageing) -> Ageing {
        Ageing::Linear {
            per_minute: self.age_weight * 60_000.0 / self.max_age_ms as f64,
            cap: self.age_weight,
        }
    }
    fn base_score(&self, priority: i32) -> f64 {
        self.priority_weight * f64::from(priority)
    }
    fn group_bonus(&self, decayed_usage_ms: f64, weight: u32) -> f64 {
        let per_weight = decayed_usage_ms / (f64::from(weight.max(1)) * self.fairshare_unit_ms);
        self.fairshare_weight * (-per_weight).exp2()
    }
    fn level_of(&self, score: f64) -> i64 {
        (score / self.level_width).floor() as i64
    }
    fn level_start(&self, level: i64) -> f64 {
        level as f64 * self.level_width
    }
    fn orders_groups_by_share(&self) -> bool {
        false
    }
    fn uses_share_tiers(&self) -> bool {
        true
    }
    fn starvation_bound(&self) -> &'static str {
        "The age term grows to `age_weight` after `max_age`; a task then outranks any newer \
         task of the same priority and fair-share factor. Tasks of a priority more than \
         `age_weight / priority_weight` points lower can starve while higher work arrives."
    }
}

/// Baseline: highest base priority first, then oldest; no ageing, no fair share.
#[derive(Debug, Clone, Copy, Default)]
pub struct StrictPriorityPolicy;

impl Policy for StrictPriorityPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::StrictPriority
    }
    fn ageing_for(&self, _requested: Ageing) -> Ageing {
        Ageing::None
    }
    fn base_score(&self, priority: i32) -> f64 {
        f64::from(priority)
    }
    fn orders_groups_by_share(&self) -> bool {
        false
    }
    fn uses_share_tiers(&self) -> bool {
        false
    }
    fn starvation_bound(&self) -> &'static str {
        "None: a low-priority task waits as long as higher-priority work keeps arriving."
    }
}

/// Baseline: oldest first, whatever the priority or group.
#[derive(Debug, Clone, Copy, Default)]
pub struct FifoPolicy;

impl Policy for FifoPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Fifo
    }
    fn ageing_for(&self, _requested: Ageing) -> Ageing {
        Ageing::None
    }
    fn base_score(&self, _priority: i32) -> f64 {
        0.0
    }
    fn orders_groups_by_share(&self) -> bool {
        false
    }
    fn uses_share_tiers(&self) -> bool {
        false
    }
    fn starvation_bound(&self) -> &'static str {
        "A task waits at most for the tasks queued before it in its pool (and the caps of \
         their groups): no newer task overtakes it unless its own group is at its cap."
    }
}
