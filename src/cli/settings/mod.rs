//! Settings resolved once per run: built-in paper defaults (configs/paper.json), then the
//! user's config file, then flags. Validated here, logged by the caller. One file per
//! kind of subcommand; every driver receives its typed settings and nothing else.

mod config;
pub mod provenance;
mod rank;
mod score;
mod summary;
mod tools;

pub use config::{load_config, ConfigFile, PAPER_CONFIG};
pub use provenance::{Source, Sources};
pub use rank::{Keep, LabelSpec, RankSettings, ReportSettings, SelectSettings, REPORT_FILES};
pub use score::{parse_devices, ScoreSettings, ShortSpec};
pub use summary::{device_name, dtype_name};
pub use tools::{
    bench_settings, eval_settings, BenchSettings, CompareSettings, EvalSettings, InspectSettings,
    MixSource, ProbeRun, ProbeSettings,
};

use crate::cli::DTypeArg;
pub use crate::files::same_file;
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub(crate) fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.ok_or_else(|| {
        anyhow!(
            "no {flag} given: pass {flag} or set \"{}\" in a --config file",
            flag.trim_start_matches("--").replace('-', "_")
        )
    })
}

/// `data.jsonl` -> `data<suffix>` next to it.
pub fn sibling(data: &Path, suffix: &str) -> PathBuf {
    let stem = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".jsonl").unwrap_or(&stem).to_string();
    data.with_file_name(format!("{stem}{suffix}"))
}

pub(crate) fn positive(v: usize, flag: &str) -> Result<usize> {
    if v == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(v)
}

/// `--dtype`, defaulting to bf16 on CUDA and f32 on the CPU.
pub fn resolve_dtype(d: Option<DTypeArg>, device: &candle_core::Device) -> candle_core::DType {
    use candle_core::DType;
    match d {
        Some(DTypeArg::F32) => DType::F32,
        // fp8 keeps everything but the projections in bf16 (`Compute::fp8`).
        Some(DTypeArg::Bf16 | DTypeArg::Fp8) => DType::BF16,
        Some(DTypeArg::F16) => DType::F16,
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    }
}

/// The resolved settings as one JSON line (the settings lines are the human form; the
/// full JSON is what `select --report` and `summary.json` keep).
pub fn describe<T: Serialize>(s: &T) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling(Path::new("d/x.jsonl"), ".scores.jsonl"),
            PathBuf::from("d/x.scores.jsonl")
        );
    }
}
