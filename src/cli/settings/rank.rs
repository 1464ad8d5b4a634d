//! The settings of the subcommands that rank score records: which records, on which
//! input, ranked how, kept how many (select, report, inspect, compare, eval).

use super::provenance::{rank_sources, Origins, Sources};
use super::{load_config, need, positive, sibling, ConfigFile};
use crate::cli::{CommonArgs, MaxBad, RankArgs, ReportArgs, SelectArgs};
use crate::files::{check_new, check_outputs, Named};
use crate::rank::normalize::{CamNorm, HmgNorm};
use crate::rank::recipe::{Recipe, DEFAULT_RECIPE};
use crate::rank::selection::{Method, Ranking};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The files `gateau report` (and `select --report-dir`) writes into its folder.
pub const REPORT_FILES: [&str; 8] = [
    "summary.json",
    "summary.md",
    "score_hist.png",
    "hmp_cas.png",
    "ppl_short_long.png",
    "score_length.png",
    "score_rank.png",
    "alpha_sweep.png",
];

/// Which field of each --data line holds its label, and which values are positive
/// (`report --label-field`, as `eval` reads them).
#[derive(Debug, Clone, Serialize)]
pub struct LabelSpec {
    pub field: String,
    pub positive: Vec<String>,
}

/// How many samples `select` keeps.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    Ratio(f64),
    Top(usize),
}

impl Keep {
    /// `ceil(ratio * n)` with the spec's 1e-9 guard, or `min(top, n)`.
    pub fn count(&self, n: usize) -> usize {
        match *self {
            Keep::Ratio(r) => ((r * n as f64 - 1e-9).ceil().max(0.0) as usize).min(n),
            Keep::Top(t) => t.min(n),
        }
    }
}

/// Which scores, on which input, ranked how (select, report, inspect, compare).
#[derive(Debug, Clone, Serialize)]
pub struct RankSettings {
    pub data: PathBuf,
    pub scores: Vec<PathBuf>,
    pub keep: Keep,
    pub method: Method,
    pub alpha: f64,
    pub hmg_norm: HmgNorm,
    pub cam_norm: CamNorm,
    pub recipe: Recipe,
    pub strict: bool,
    pub max_bad: MaxBad,
    /// Rank the scored lines even when some lines have no record.
    pub allow_missing: bool,
    pub quiet: bool,
    /// Also log the resolved settings as JSON.
    #[serde(skip)]
    pub verbose: bool,
    /// The --config file read, if any.
    pub config: Option<PathBuf>,
    /// Where each value came from (flag, config, built-in), for the settings line.
    #[serde(skip)]
    pub sources: Sources,
}

impl RankSettings {
    pub fn ranking(&self) -> Ranking {
        Ranking {
            recipe: self.recipe,
            alpha: self.alpha,
            hmg_norm: self.hmg_norm,
            cam_norm: self.cam_norm,
        }
    }

    pub fn resolve(a: &RankArgs, common: &CommonArgs) -> Result<(Self, ConfigFile)> {
        let c = load_config(common.config.as_deref())?;
        let data = need(a.data.clone().or(c.data.clone()), "--data")?;
        let scores = if !a.scores.is_empty() {
            a.scores.clone()
        } else if let Some(s) = c.scores.clone().filter(|s| !s.is_empty()) {
            s
        } else {
            vec![sibling(&data, ".scores.jsonl")]
        };
        let keep = match (a.top, a.ratio) {
            (Some(t), _) => Keep::Top(t),
            (None, Some(r)) => Keep::Ratio(r),
            (None, None) => match (c.top, c.ratio) {
                (Some(t), _) => Keep::Top(t),
                (None, Some(r)) => Keep::Ratio(r),
                (None, None) => bail!("no --ratio or --top given"),
            },
        };
        if let Keep::Ratio(r) = keep {
            if !(0.0..=1.0).contains(&r) {
                bail!("--ratio must be in [0, 1], got {r}");
            }
        }
        let alpha = need(a.alpha.or(c.alpha), "--alpha")?;
        if !(0.0..=1.0).contains(&alpha) {
            bail!("--alpha must be in [0, 1], got {alpha}");
        }
        if !data.is_file() {
            bail!("--data {} does not exist or is not a file", data.display());
        }
        for s in &scores {
            if !s.is_file() {
                bail!(
                    "score file {} does not exist (run `gateau score --data {}` first, or \
                     pass --scores)",
                    s.display(),
                    data.display()
                );
            }
        }
        let origins = Origins::read(common.config.as_deref());
        let sources = rank_sources(a, &origins, c.top.is_some());
        let s = Self {
            data,
            scores,
            keep,
            method: a.method.or(c.method).unwrap_or(Method::Gateau),
            alpha,
            hmg_norm: a.hmg_norm.or(c.hmg_norm).unwrap_or(HmgNorm::Minmax),
            cam_norm: a.cam_norm.or(c.cam_norm).unwrap_or(CamNorm::Softmax),
            recipe: {
                let base = a.recipe.or(c.recipe).unwrap_or(DEFAULT_RECIPE).recipe();
                Recipe {
                    hmg: a.hmg_term.or(c.hmg_term).unwrap_or(base.hmg),
                    cam: a.cam_term.or(c.cam_term).unwrap_or(base.cam),
                    fuse: a.fuse.or(c.fuse).unwrap_or(base.fuse),
                }
            },
            strict: common.strict,
            max_bad: common.max_bad,
            allow_missing: a.allow_missing,
            quiet: common.quiet,
            verbose: common.verbose,
            config: common.config.clone(),
            sources,
        };
        Ok((s, c))
    }

    /// The files this run reads, named by their flags.
    pub fn inputs(&self) -> Vec<Named> {
        let mut v = vec![Named::new("--data", &self.data)];
        v.extend(self.scores.iter().map(|f| Named::new("--scores", f)));
        v.extend(self.config.iter().map(|f| Named::new("--config", f)));
        v
    }

    /// Refuses an output path that is one of the inputs.
    pub fn check_output(&self, out: &Path, flag: &str) -> Result<()> {
        check_outputs(&[Named::new(flag, out)], &self.inputs())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectSettings {
    #[serde(flatten)]
    pub rank: RankSettings,
    pub out: PathBuf,
    pub keep_order: bool,
    pub report: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
}

impl SelectSettings {
    pub fn resolve(a: &SelectArgs) -> Result<Self> {
        let (mut rank, c) = RankSettings::resolve(&a.rank, &a.common)?;
        let origins = Origins::read(a.common.config.as_deref());
        rank.sources.set("out", origins.of("out", a.out.is_some()));
        let out = a
            .out
            .clone()
            .or(c.out)
            .unwrap_or_else(|| sibling(&rank.data, ".selected.jsonl"));
        let report = a.report.clone().or(c.report);
        let report_dir = a.report_dir.clone().or(c.report_dir);
        // Every file select writes: none may be an input, another output, or (without
        // --overwrite) already there.
        // `--out -` is standard output: no file to check.
        let mut outputs = match out == Path::new("-") {
            true => Vec::new(),
            false => vec![Named::new("--out", &out)],
        };
        outputs.extend(report.iter().map(|r| Named::new("--report", r)));
        if let Some(dir) = &report_dir {
            outputs.extend(
                REPORT_FILES
                    .iter()
                    .map(|f| Named::new("--report-dir", dir.join(f))),
            );
        }
        check_outputs(&outputs, &rank.inputs())?;
        for o in &outputs {
            check_new(o, a.overwrite)?;
        }
        Ok(Self {
            rank,
            out,
            keep_order: a.keep_order,
            report,
            report_dir,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportSettings {
    #[serde(flatten)]
    pub rank: RankSettings,
    pub out: PathBuf,
    pub bins: usize,
    /// Labels for the alpha sweep's precision (`--label-field`), if given.
    pub labels: Option<LabelSpec>,
}

impl ReportSettings {
    pub fn resolve(a: &ReportArgs) -> Result<Self> {
        let (mut rank, c) = RankSettings::resolve(&a.rank, &a.common)?;
        let origins = Origins::read(a.common.config.as_deref());
        rank.sources
            .set("out", origins.of("report_dir", a.out.is_some()));
        let out = a
            .out
            .clone()
            .or(c.report_dir)
            .unwrap_or_else(|| sibling(&rank.data, ".report"));
        rank.check_output(&out, "--out")?;
        Ok(Self {
            rank,
            out,
            bins: positive(a.bins, "--bins")?,
            labels: a.label_field.clone().map(|field| LabelSpec {
                field,
                positive: a.positive.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_ceiling_is_exact() {
        assert_eq!(Keep::Ratio(0.3).count(10), 3);
        assert_eq!(Keep::Ratio(0.3).count(11), 4);
        assert_eq!(Keep::Ratio(0.0).count(11), 0);
        assert_eq!(Keep::Ratio(1.0).count(7), 7);
        assert_eq!(Keep::Top(5).count(3), 3);
    }
}
