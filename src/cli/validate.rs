//! Checks of numeric flags, run by each subcommand before it loads a model or reads data,
//! so a bad value fails at once, naming the flag: `--clip-low -1: must be in [0, 1)`.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

use crate::{Error, Result};

/// The error for `flag` given `value`, which breaks `rule`.
pub fn bad(flag: &str, value: impl Display, rule: impl Display) -> Error {
    Error::InvalidInput(format!("{flag} {value}: {rule}"))
}

/// `value >= min` (counts where fewer than `min` means nothing).
pub fn at_least<T: PartialOrd + Display>(flag: &str, value: T, min: T) -> Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(bad(flag, value, format!("must be at least {min}")))
    }
}

/// Like `at_least`, for a flag that may be absent.
pub fn at_least_opt<T: PartialOrd + Display>(flag: &str, value: Option<T>, min: T) -> Result<()> {
    value.map_or(Ok(()), |v| at_least(flag, v, min))
}

/// A finite number inside `range` (NaN and ±inf fail every range). Generic so an f32 flag
/// prints as typed (`0.3`, not `0.30000001192092896`).
pub fn within<T: Into<f64> + Display + Copy>(
    flag: &str,
    value: T,
    range: impl RangeBounds<f64>,
) -> Result<()> {
    let x: f64 = value.into();
    if x.is_finite() && range.contains(&x) {
        Ok(())
    } else {
        Err(bad(flag, value, format!("must be in {}", describe(&range))))
    }
}

/// A finite number, any sign.
pub fn finite<T: Into<f64> + Display + Copy>(flag: &str, value: T) -> Result<()> {
    within(flag, value, ..)
}

/// A finite number ≥ 0.
pub fn non_negative<T: Into<f64> + Display + Copy>(flag: &str, value: T) -> Result<()> {
    within(flag, value, 0.0..)
}

/// A finite number > 0.
pub fn positive<T: Into<f64> + Display + Copy>(flag: &str, value: T) -> Result<()> {
    within(flag, value, (Bound::Excluded(0.0), Bound::Unbounded))
}

/// `low <= high` for two flags that bound one quantity.
pub fn ordered<T: PartialOrd + Display>(
    low_flag: &str,
    low: T,
    high_flag: &str,
    high: T,
) -> Result<()> {
    if low <= high {
        Ok(())
    } else {
        Err(bad(
            low_flag,
            low,
            format!("must not exceed {high_flag} {high}"),
        ))
    }
}

/// `(0, 1]`: fractions where 0 means nothing.
pub const FRACTION: (Bound<f64>, Bound<f64>) = (Bound::Excluded(0.0), Bound::Included(1.0));

// The argument groups several subcommands flatten in.

impl super::ModelArgs {
    pub fn validate(&self) -> Result<()> {
        at_least_opt("--threads", self.threads, 1)
    }
}

impl super::KvMemoryArgs {
    /// The block size in MiB depends on the model, so "less than one block" is checked
    /// once it is loaded (`EngineConfig::with_kv_memory`); 0 never fits.
    pub fn validate(&self) -> Result<()> {
        at_least_opt("--kv-cache-mb", self.kv_cache_mb, 1)?;
        within(
            "--gpu-memory-utilization",
            self.gpu_memory_utilization,
            FRACTION,
        )
    }
}

impl super::CudaGraphArgs {
    pub fn validate(&self) -> Result<()> {
        // 0 would silently mean --enforce-eager.
        at_least("--max-graph-batch", self.max_graph_batch, 1)
    }
}

impl super::generate::SamplingArgs {
    /// The CLI's names for `SamplingParams::validate`'s rules (that one also checks the
    /// "sampling" objects of batch lines). `--max-new-tokens` is the executor's budget
    /// policy's to judge, not checked here.
    pub fn validate(&self) -> Result<()> {
        non_negative("--temperature", self.temperature)?;
        within("--top-p", self.top_p, FRACTION)?;
        within("--min-p", self.min_p, 0.0..=1.0)?;
        positive("--repetition-penalty", self.repetition_penalty)?;
        if self.stop.iter().any(String::is_empty) {
            return Err(bad("--stop", "\"\"", "must not be empty"));
        }
        Ok(())
    }
}

impl super::think::ExecutorArgs {
    /// `--organizer-tokens` and `--worker-tokens` are token budgets: the executor's policy
    /// decides what 0 means.
    pub fn validate(&self) -> Result<()> {
        at_least("--capacity", self.capacity, 1)?;
        non_negative("--temperature", self.temperature)?;
        at_least("--max-steps", self.max_steps, 1)?;
        self.kv.validate()
    }
}

impl super::batch::EngineArgs {
    pub fn validate(&self) -> Result<()> {
        at_least("--block-size", self.block_size, 1)?;
        at_least("--max-batched-tokens", self.max_batched_tokens, 1)?;
        at_least("--max-num-seqs", self.max_num_seqs, 1)?;
        self.kv.validate()
    }
}

/// `[0, 1)`, `(0, 1]`, `[0, ∞)`, …
fn describe(range: &impl RangeBounds<f64>) -> String {
    let low = match range.start_bound() {
        Bound::Included(x) => format!("[{x}"),
        Bound::Excluded(x) => format!("({x}"),
        Bound::Unbounded => "(-∞".into(),
    };
    let high = match range.end_bound() {
        Bound::Included(x) => format!("{x}]"),
        Bound::Excluded(x) => format!("{x})"),
        Bound::Unbounded => "∞)".into(),
    };
    format!("{low}, {high}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn messages_name_the_flag_the_value_and_the_rule() {
        assert_eq!(
            msg(within("--clip-low", -1.0, 0.0..1.0)),
            "invalid input: --clip-low -1: must be in [0, 1)"
        );
        assert_eq!(
            msg(within(
                "--tau",
                0.0,
                (Bound::Excluded(0.0), Bound::Included(1.0))
            )),
            "invalid input: --tau 0: must be in (0, 1]"
        );
        assert_eq!(
            msg(non_negative("--kl-coef", f64::NAN)),
            "invalid input: --kl-coef NaN: must be in [0, ∞)"
        );
        assert_eq!(
            msg(at_least("--samples", 0, 1)),
            "invalid input: --samples 0: must be at least 1"
        );
        assert_eq!(
            msg(ordered("--min-len", 9, "--max-len", 3)),
            "invalid input: --min-len 9: must not exceed --max-len 3"
        );
    }

    #[test]
    fn nan_and_infinities_fail_every_range_and_good_values_pass() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(finite("--x", x).is_err());
            assert!(finite("--x", x as f32).is_err());
            assert!(positive("--x", x).is_err());
            assert!(within("--x", x, ..).is_err());
        }
        assert!(positive("--lr", 0.0).is_err());
        assert!(positive("--lr", 1e-9).is_ok());
        assert_eq!(
            msg(non_negative("--clip-high", -0.3f32)),
            "invalid input: --clip-high -0.3: must be in [0, ∞)"
        );
        assert!(within("--clip-low", 0.0, 0.0..1.0).is_ok());
        assert!(within("--clip-low", 1.0, 0.0..1.0).is_err());
        assert!(at_least_opt("--limit", None, 1).is_ok());
        assert!(at_least_opt("--limit", Some(0), 1).is_err());
        assert!(ordered("--a", 3, "--b", 3).is_ok());
    }
}
