//! Scenario files: pools, groups, task kinds, arrival processes and faults, in TOML.
//!
//! Errors name the file, the line and the key: serde errors carry the span of the bad value,
//! and validation errors carry a key path that [`locate`] finds in the parsed document.

use std::fmt;
use std::path::Path;

use handyman_core::{Ageing, Backoff, GroupConfig, Millis, PolicyKind, TimeoutMode};
use serde::{Deserialize, Serialize};

/// A parsed and validated scenario. See `sim/README.md` for the reference of every key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    /// Length of the safety phase: arrivals and faults happen in it.
    pub duration_ms: Millis,
    /// After the safety phase, every task must be terminal within this bound.
    #[serde(default = "default_liveness")]
    pub liveness_ms: Millis,
    /// A task waiting longer than this counts as starved (a metric, not an invariant).
    #[serde(default = "default_starvation")]
    pub starvation_threshold_ms: Millis,
    /// If set, an invariant: no task waits in the queue longer than this (declare it only
    /// for scenarios whose tasks all age to the top level).
    #[serde(default)]
    pub max_wait_ms: Option<Millis>,
    /// Multiplies every count of the workload (pipelines, rates, burst sizes).
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub policy: PolicyKind,
    #[serde(default = "default_grace")]
    pub interrupt_grace_ms: Millis,
    #[serde(default = "default_half_life")]
    pub share_half_life_ms: Millis,
    /// Width of the windows of the fairness and queue-length metrics.
    #[serde(default = "default_window")]
    pub window_ms: Millis,
    pub pools: Vec<PoolSpec>,
    #[serde(default)]
    pub default_group: Option<GroupConfig>,
    #[serde(default)]
    pub groups: Vec<NamedGroup>,
    pub kinds: Vec<KindSpec>,
    pub workload: Vec<Workload>,
    #[serde(default)]
    pub faults: Faults,
    /// `check` draws its own fault mix per seed (swarm testing) unless this is false, in
    /// which case it uses `[faults]` as written (shrunk scenarios are written that way).
    #[serde(default = "yes")]
    pub swarm: bool,
}

fn yes() -> bool {
    true
}

fn default_liveness() -> Millis {
    86_400_000
}
fn default_starvation() -> Millis {
    600_000
}
fn one() -> f64 {
    1.0
}
fn default_grace() -> Millis {
    5_000
}
fn default_half_life() -> Millis {
    3_600_000
}
fn default_window() -> Millis {
    600_000
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    pub slots: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedGroup {
    pub name: String,
    #[serde(default = "one_u32")]
    pub weight: u32,
    #[serde(default = "max_u32")]
    pub cap: u32,
    #[serde(default = "one_u32")]
    pub floor: u32,
}

fn one_u32() -> u32 {
    1
}
fn max_u32() -> u32 {
    u32::MAX
}

/// A task type: its handler's behaviour and its limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    pub name: String,
    #[serde(default = "default_pool")]
    pub pool: String,
    pub duration: Duration,
    /// Probability that an attempt ends in a transient (retryable) error.
    #[serde(default)]
    pub transient_p: f64,
    /// Probability that an attempt ends in a fatal error.
    #[serde(default)]
    pub fatal_p: f64,
    #[serde(default = "default_runtime")]
    pub max_runtime_ms: Millis,
    #[serde(default)]
    pub on_timeout: TimeoutMode,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub ageing: Ageing,
    #[serde(default)]
    pub backoff: Backoff,
}

fn default_pool() -> String {
    "default".into()
}
fn default_runtime() -> Millis {
    3_600_000
}
fn default_retries() -> u32 {
    3
}

/// How long a handler works on a task (its total work; "continue" tasks spread it over
/// several attempts).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum Duration {
    Fixed {
        ms: Millis,
    },
    /// Lognormal with this median and shape, clamped to `[min_ms, max_ms]`.
    Lognormal {
        median_ms: f64,
        sigma: f64,
        #[serde(default = "one_ms")]
        min_ms: Millis,
        #[serde(default = "max_ms")]
        max_ms: Millis,
    },
    /// One of these values, uniformly.
    Empirical {
        ms: Vec<Millis>,
    },
}

fn one_ms() -> Millis {
    1
}
fn max_ms() -> Millis {
    Millis::MAX / 4
}

/// One arrival process.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub arrival: Arrival,
    /// Names of the kinds its tasks are drawn from.
    pub kinds: Vec<String>,
    /// Relative weights of `kinds` (uniform if absent).
    #[serde(default)]
    pub kind_weights: Vec<f64>,
    /// The group of poisson and burst tasks.
    #[serde(default)]
    pub group: Option<String>,
    /// Overrides the kind's priority.
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub start_ms: Millis,
    /// Defaults to the scenario's `duration_ms`.
    #[serde(default)]
    pub end_ms: Option<Millis>,
    /// Poisson: mean arrivals per minute.
    #[serde(default)]
    pub per_minute: f64,
    /// Burst: times of the bursts.
    #[serde(default)]
    pub at_ms: Vec<Millis>,
    /// Burst: tasks per burst.
    #[serde(default)]
    pub count: u32,
    /// Pipelines: how many (each is its own group, `<group_prefix><n>`).
    #[serde(default)]
    pub pipelines: u32,
    #[serde(default = "default_prefix")]
    pub group_prefix: String,
    /// Pipelines: classes of job counts, drawn by weight.
    #[serde(default)]
    pub jobs: Vec<JobClass>,
    /// Pipelines: the first pipeline has exactly this many jobs (the seed's largest).
    #[serde(default)]
    pub largest: Option<u32>,
    /// Pipelines: schedule intervals to choose from, and their weights.
    #[serde(default)]
    pub every_ms: Vec<Millis>,
    #[serde(default)]
    pub every_weights: Vec<f64>,
    /// Pipelines: settings of each pipeline's group.
    #[serde(default)]
    pub group_config: Option<GroupConfig>,
    /// Pipelines: `none`, or `binlog-first` (a binlog task, then the jobs after it).
    #[serde(default)]
    pub dag: Dag,
    #[serde(default)]
    pub binlog_kind: Option<String>,
    /// Probability that a task is submitted a second time (same dedup key).
    #[serde(default)]
    pub duplicate_p: f64,
    /// Probability that a task is cancelled some time after its submit.
    #[serde(default)]
    pub cancel_p: f64,
    #[serde(default = "default_cancel_after")]
    pub cancel_after_ms: Millis,
}

fn default_prefix() -> String {
    "p".into()
}
fn default_cancel_after() -> Millis {
    600_000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    Poisson,
    Burst,
    Pipelines,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dag {
    #[default]
    None,
    BinlogFirst,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobClass {
    pub weight: f64,
    pub min: u32,
    pub max: u32,
}

/// Fault probabilities and rates of the safety phase. All off by default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Per attempt: the worker crashes part-way (the host notices and reports it lost).
    pub worker_crash_p: f64,
    /// Mean time between host crashes (0: none).
    pub host_crash_every_ms: Millis,
    /// Per report: it never arrives.
    pub report_loss_p: f64,
    /// Per report: it arrives twice.
    pub report_dup_p: f64,
    /// Every report is delayed by up to this (reorders reports).
    pub report_delay_max_ms: Millis,
    /// Per report: it arrives very late (after the attempt's deadline and grace).
    pub report_late_p: f64,
    /// Per attempt: the worker gets stuck and never reports anything.
    pub stuck_worker_p: f64,
    /// Per attempt: the handler hangs past its time limit and ignores interrupts.
    pub hang_p: f64,
    /// Mean time between slow-pool episodes (0: none); an episode multiplies durations.
    pub slow_pool_every_ms: Millis,
    pub slow_factor: f64,
    /// Mean time between run-time changes of a pool's slots (0: none).
    pub slot_change_every_ms: Millis,
}

impl Faults {
    pub fn any(&self) -> bool {
        *self != Faults::default()
    }
}

/// A scenario error, with where it is.
#[derive(Debug, Clone)]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: path.display().to_string(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Scenario::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => {
                    let line = line_of(text, span.start);
                    (Some(line), key_on_line(text, line))
                }
                None => (None, None),
            };
            ScenarioError {
                file: file.to_string(),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Err((path, message)) = scenario.validate() {
            let line = locate(text, &path).map(|start| line_of(text, start));
            return Err(ScenarioError {
                file: file.to_string(),
                line,
                key: Some(path.join(".")),
                message,
            });
        }
        Ok(scenario)
    }

    /// Checks what serde cannot; the error names the key path (`kinds.3.transient_p`).
    fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let err = |path: &[&str], msg: String| -> Result<(), (Vec<String>, String)> {
            Err((path.iter().map(|s| s.to_string()).collect(), msg))
        };
        if self.duration_ms == 0 {
            return err(&["duration_ms"], "must be > 0".into());
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return err(&["scale"], format!("must be > 0, got {}", self.scale));
        }
        if self.window_ms == 0 {
            return err(&["window_ms"], "must be > 0".into());
        }
        if self.pools.is_empty() {
            return err(&["pools"], "at least one pool is needed".into());
        }
        for (i, k) in self.kinds.iter().enumerate() {
            let i = i.to_string();
            let p = |key: &'static str| vec!["kinds".to_string(), i.clone(), key.to_string()];
            let prob = |v: f64| (0.0..=1.0).contains(&v);
            if !prob(k.transient_p) {
                return Err((p("transient_p"), "must be a probability in [0, 1]".into()));
            }
            if !prob(k.fatal_p) || k.fatal_p + k.transient_p > 1.0 {
                return Err((
                    p("fatal_p"),
                    "must be in [0, 1] with transient_p + fatal_p <= 1".into(),
                ));
            }
            if k.max_runtime_ms == 0 {
                return Err((p("max_runtime_ms"), "must be > 0".into()));
            }
            if let Err(m) = k.ageing.validate() {
                return Err((p("ageing"), m));
            }
            if !self.pools.iter().any(|pool| pool.name == k.pool) {
                return Err((p("pool"), format!("no pool is named {:?}", k.pool)));
            }
            match &k.duration {
                Duration::Lognormal {
                    median_ms, sigma, ..
                } if !(median_ms.is_finite()
                    && *median_ms > 0.0
                    && sigma.is_finite()
                    && *sigma >= 0.0) =>
                {
                    return Err((p("duration"), "needs median_ms > 0 and sigma >= 0".into()));
                }
                Duration::Empirical { ms } if ms.is_empty() => {
                    return Err((p("duration"), "empirical `ms` must not be empty".into()));
                }
                _ => {}
            }
        }
        for (i, w) in self.workload.iter().enumerate() {
            let i = i.to_string();
            let p = |key: &'static str| vec!["workload".to_string(), i.clone(), key.to_string()];
            if w.kinds.is_empty() {
                return Err((p("kinds"), "must name at least one kind".into()));
            }
            for k in w.kinds.iter().chain(w.binlog_kind.iter()) {
                if !self.kinds.iter().any(|kind| &kind.name == k) {
                    return Err((p("kinds"), format!("no kind is named {k:?}")));
                }
            }
            if !w.kind_weights.is_empty() && w.kind_weights.len() != w.kinds.len() {
                return Err((p("kind_weights"), "needs one weight per kind".into()));
            }
            for (key, v) in [("duplicate_p", w.duplicate_p), ("cancel_p", w.cancel_p)] {
                if !(0.0..=1.0).contains(&v) {
                    return Err((p(key), "must be a probability in [0, 1]".into()));
                }
            }
            match w.arrival {
                Arrival::Poisson if !(w.per_minute.is_finite() && w.per_minute > 0.0) => {
                    return Err((
                        p("per_minute"),
                        "poisson arrivals need per_minute > 0".into(),
                    ))
                }
                Arrival::Burst if w.at_ms.is_empty() || w.count == 0 => {
                    return Err((p("at_ms"), "bursts need at_ms and count > 0".into()))
                }
                Arrival::Pipelines => {
                    if w.pipelines == 0 {
                        return Err((p("pipelines"), "must be > 0".into()));
                    }
                    if w.jobs.is_empty() {
                        return Err((p("jobs"), "needs at least one job class".into()));
                    }
                    if w.jobs.iter().any(|c| c.min == 0 || c.min > c.max) {
                        return Err((p("jobs"), "each class needs 1 <= min <= max".into()));
                    }
                    if w.every_ms.is_empty() || w.every_ms.contains(&0) {
                        return Err((p("every_ms"), "needs intervals > 0".into()));
                    }
                    if !w.every_weights.is_empty() && w.every_weights.len() != w.every_ms.len() {
                        return Err((p("every_weights"), "needs one weight per interval".into()));
                    }
                    if w.dag == Dag::BinlogFirst && w.binlog_kind.is_none() {
                        return Err((p("binlog_kind"), "dag = \"binlog-first\" needs it".into()));
                    }
                }
                _ => {}
            }
        }
        let f = &self.faults;
        for (key, v) in [
            ("worker_crash_p", f.worker_crash_p),
            ("report_loss_p", f.report_loss_p),
            ("report_dup_p", f.report_dup_p),
            ("report_late_p", f.report_late_p),
            ("stuck_worker_p", f.stuck_worker_p),
            ("hang_p", f.hang_p),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return err(&["faults", key], "must be a probability in [0, 1]".into());
            }
        }
        if f.slow_pool_every_ms > 0 && !(f.slow_factor.is_finite() && f.slow_factor >= 1.0) {
            return err(&["faults", "slow_factor"], "must be >= 1".into());
        }
        Ok(())
    }

    /// Sets a key from the command line (`--set key=value`), as if it were in the file.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let num = || -> Result<f64, String> {
            value
                .parse::<f64>()
                .map_err(|_| format!("--set {key}: {value:?} is not a number"))
        };
        let int = || -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("--set {key}: {value:?} is not a whole number"))
        };
        match key {
            "scale" => self.scale = num()?,
            "duration_ms" => self.duration_ms = int()?,
            "interrupt_grace_ms" => self.interrupt_grace_ms = int()?,
            "share_half_life_ms" => self.share_half_life_ms = int()?,
            "starvation_threshold_ms" => self.starvation_threshold_ms = int()?,
            "policy" => self.policy = value.parse()?,
            _ => {
                if let Some(pool) = key.strip_prefix("slots.") {
                    let slots = u32::try_from(int()?).map_err(|e| e.to_string())?;
                    match self.pools.iter_mut().find(|p| p.name == pool) {
                        Some(p) => p.slots = slots,
                        None => return Err(format!("--set {key}: no pool is named {pool:?}")),
                    }
                } else if let Some(field) = key.strip_prefix("group.") {
                    // The group settings of every pipeline workload and the default group.
                    let v = u32::try_from(int()?).map_err(|e| e.to_string())?;
                    let apply = |g: &mut GroupConfig| -> Result<(), String> {
                        match field {
                            "weight" => g.weight = v,
                            "cap" => g.cap = v,
                            "floor" => g.floor = v,
                            _ => return Err(format!("--set {key}: unknown group field")),
                        }
                        Ok(())
                    };
                    let mut dg = self.default_group.unwrap_or_default();
                    apply(&mut dg)?;
                    self.default_group = Some(dg);
                    for w in &mut self.workload {
                        if let Some(g) = &mut w.group_config {
                            apply(g)?;
                        }
                    }
                } else if let Some(field) = key.strip_prefix("faults.") {
                    let mut table =
                        toml::Table::try_from(self.faults_as_toml()).map_err(|e| e.to_string())?;
                    let v: toml::Value = if field.ends_with("_ms") {
                        toml::Value::Integer(int()? as i64)
                    } else {
                        toml::Value::Float(num()?)
                    };
                    if !table.contains_key(field) {
                        return Err(format!("--set {key}: unknown fault"));
                    }
                    table.insert(field.to_string(), v);
                    self.faults = table
                        .try_into()
                        .map_err(|e: toml::de::Error| e.to_string())?;
                } else {
                    return Err(format!(
                        "--set {key}: unknown key; settable: scale, duration_ms, interrupt_grace_ms, \
                         share_half_life_ms, starvation_threshold_ms, policy, slots.<pool>, \
                         group.weight|cap|floor, faults.<name>"
                    ));
                }
            }
        }
        self.validate()
            .map_err(|(path, m)| format!("--set {key}: {}: {m}", path.join(".")))
    }

    fn faults_as_toml(&self) -> toml::Value {
        toml::Value::try_from(&self.faults).unwrap_or(toml::Value::Table(Default::default()))
    }

    pub fn kind_index(&self, name: &str) -> Option<usize> {
        self.kinds.iter().position(|k| k.name == name)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// The key assigned on a line (`key = ...`), if any.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line - 1)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim().trim_start_matches('{').trim();
    (!key.is_empty() && !key.starts_with('#') && !key.starts_with('[')).then(|| {
        key.rsplit([',', '{'])
            .next()
            .unwrap_or(key)
            .trim()
            .to_string()
    })
}

/// Byte offset of the value at `path` (keys, and array indices as numbers).
pub fn locate(text: &str, path: &[String]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut span = root.span();
    let mut table: Option<&DeTable> = Some(root.get_ref());
    let mut value: Option<&DeValue> = None;
    for seg in path {
        if let Some(t) = table {
            let (_, v) = t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == seg.as_str())?;
            span = v.span();
            value = Some(v.get_ref());
        } else if let Some(DeValue::Array(arr)) = value {
            let i: usize = seg.parse().ok()?;
            let v = arr.get(i)?;
            span = v.span();
            value = Some(v.get_ref());
        } else {
            return Some(span.start);
        }
        table = value.and_then(|v| v.as_table());
    }
    Some(span.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
duration_ms = 1000
[[pools]]
name = "default"
slots = 2
[[kinds]]
name = "a"
duration = { dist = "fixed", ms = 10 }
[[workload]]
arrival = "burst"
kinds = ["a"]
at_ms = [0]
count = 3
"#;

    #[test]
    fn a_minimal_scenario_parses() {
        let s = Scenario::parse("t.toml", MIN).unwrap();
        assert_eq!(s.pools[0].slots, 2);
    }

    #[test]
    fn a_type_error_names_the_line_and_the_key() {
        let text = MIN.replace("slots = 2", "slots = \"two\"");
        let e = Scenario::parse("t.toml", &text).unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.key.as_deref(), Some("slots"), "{e}");
    }

    #[test]
    fn a_validation_error_names_the_line_and_the_key() {
        let text = MIN.replace("name = \"a\"\n", "name = \"a\"\ntransient_p = 1.5\n");
        let e = Scenario::parse("t.toml", &text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("kinds.0.transient_p"), "{e}");
        assert_eq!(e.line, Some(8), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let text = MIN.replace("slots = 2", "slots = 2\nslot = 3");
        let e = Scenario::parse("t.toml", &text).unwrap_err();
        assert!(e.to_string().contains("slot"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
    }
}
