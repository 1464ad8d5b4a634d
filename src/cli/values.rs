//! The values of flags that are not plain numbers or paths: dtypes, `--max-bad`,
//! `--shard`, `--phases`, probe sample kinds.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeArg {
    /// f32 weights and activations.
    F32,
    /// bf16 weights and activations (f32 residual stream and accumulation).
    Bf16,
    /// f16 weights and activations (f32 residual stream and accumulation).
    F16,
    /// bf16, with the segment passes' projection and MLP GEMMs in FP8 (E4M3, per-token and
    /// per-channel scales, f32 accumulation); the full passes stay bf16, which keeps the
    /// ranking (docs/gpu.md). CUDA GPUs of compute capability 8.9 or later (on the CPU a
    /// slow simulation of the same arithmetic).
    Fp8,
}

impl DTypeArg {
    /// Whether this is `fp8` (bf16 with E4M3 projections).
    pub fn is_fp8(d: Option<DTypeArg>) -> bool {
        d == Some(DTypeArg::Fp8)
    }
}

/// `--phases`: both models resident, or one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phases {
    /// Two phases only when both models and a longest-sample pass do not fit on the GPU.
    Auto,
    /// Both models resident.
    One,
    /// The short model over every sample first, then the long model.
    Two,
}

/// What a probe sample's response needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    Far,
    FarMulti,
    Diffuse,
    Near,
    None,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 5] = [
        ProbeKind::Far,
        ProbeKind::FarMulti,
        ProbeKind::Diffuse,
        ProbeKind::Near,
        ProbeKind::None,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Far => "far",
            ProbeKind::FarMulti => "far-multi",
            ProbeKind::Diffuse => "diffuse",
            ProbeKind::Near => "near",
            ProbeKind::None => "none",
        }
    }
}

/// `--max-bad`: a count of samples, or a percentage of the lines read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxBad {
    Count(u64),
    Percent(f64),
}

impl std::str::FromStr for MaxBad {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not a limit: use a count (50) or a percentage (5%)");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| err())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(err());
                }
                Ok(Self::Percent(p))
            }
            None => s.trim().parse().map(Self::Count).map_err(|_| err()),
        }
    }
}

impl std::fmt::Display for MaxBad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl MaxBad {
    /// Whether `problems` of `lines` are within the limit.
    pub fn allows(&self, problems: u64, lines: u64) -> bool {
        match *self {
            Self::Count(n) => problems <= n,
            Self::Percent(p) => problems as f64 <= p / 100.0 * lines as f64 + 1e-9,
        }
    }

    /// 0 within the limit, else 2; what was tolerated or not is said on stderr.
    pub fn exit_code(&self, what: &str, problems: u64, lines: u64, quiet: bool) -> ExitCode {
        if problems == 0 {
            return ExitCode::SUCCESS;
        }
        let within = self.allows(problems, lines);
        if !quiet {
            eprintln!(
                "{what}: {problems} of {lines} lines were not usable samples: {} --max-bad {self}{}",
                if within { "within" } else { "more than" },
                if within { "" } else { " (exit status 2)" }
            );
        }
        if within {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        }
    }
}

/// `--shard I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not a shard: use I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(err)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| err())?,
            n.trim().parse().map_err(|_| err())?,
        );
        if count == 0 || index >= count {
            return Err(err());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    pub fn contains(&self, line: u64) -> bool {
        line % self.count == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_bad_counts_and_shares() {
        let five: MaxBad = "5%".parse().unwrap();
        assert!(five.allows(500, 10_000) && !five.allows(501, 10_000));
        assert!(!five.allows(1, 10), "5% of 10 lines is 0.5 samples");
        let n: MaxBad = "3".parse().unwrap();
        assert!(n.allows(3, 4) && !n.allows(4, 1000));
        assert!("x".parse::<MaxBad>().is_err() && "101%".parse::<MaxBad>().is_err());
    }

    #[test]
    fn shards_parse_and_partition() {
        let s: Shard = "1/3".parse().unwrap();
        assert!(s.contains(4) && !s.contains(3));
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1-3".parse::<Shard>().is_err());
    }
}
