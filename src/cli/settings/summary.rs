//! The settings line: one short, human line per run, of resolved values only (dtype as
//! bf16, device as cuda:0, the attention kernel picked), each value that is not gateau's
//! own default followed by where it came from: (flag), (config FILE), (built-in). With
//! `--verbose`, the full resolved settings follow as one JSON line.

use super::{
    CompareSettings, EvalSettings, InspectSettings, Keep, RankSettings, ReportSettings,
    ScoreSettings, SelectSettings, ShortSpec,
};
use crate::cli::Phases;
use crate::model::bucket::Bucket;
use crate::model::dispatch::Dispatch;
use crate::rank::recipe::value_name;
use crate::rank::selection::Method;
use crate::rank::terms::{CamTerm, HmgTerm};
use candle_core::{DType, Device, DeviceLocation};

/// A compute dtype as `--dtype` spells it: bf16, f16, f32.
pub fn dtype_name(d: DType) -> &'static str {
    d.as_str()
}

/// An opened device as `--device` spells it: cpu, cuda:N.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The settings line, and with `--verbose` the full resolved settings as JSON after it.
pub fn with_json<T: serde::Serialize>(line: String, verbose: bool, cmd: &str, s: &T) -> String {
    match verbose {
        true => format!("{line}\ngateau {cmd}: settings {}", super::describe(s)),
        false => line,
    }
}

impl ScoreSettings {
    /// `gateau score: long ..., short ..., max-len ..., ...` for the run on `device` (one
    /// name, or several workers') in `dtype`, with the CUDA attention kernel resolved
    /// (None on the CPU, where there is no choice). A kernel choice that needs more words
    /// (auto's split between kernels, why cuDNN is not used) gets a line of its own.
    pub fn settings_line(
        &self,
        device: &str,
        dtype: DType,
        attention: Option<&Dispatch>,
    ) -> String {
        let n = |k: &str| self.sources.note(k);
        let mut parts = vec![format!("long {}{}", self.long_model, n("long_model"))];
        parts.push(match &self.short {
            ShortSpec::Window(w) => format!("short window {w}{}", n("short")),
            ShortSpec::Model {
                location,
                rope_theta,
            } => {
                let rope = rope_theta
                    .map(|t| format!(", rope theta {t}{}", n("short_rope_theta")))
                    .unwrap_or_default();
                format!("short {location}{}{rope}", n("short"))
            }
        });
        if let Some(t) = &self.tokenizer {
            parts.push(format!("tokenizer {}{}", t.display(), n("tokenizer")));
        }
        parts.push(format!("max-len {}{}", self.max_len, n("max_len")));
        let (l, m) = (n("segment_len"), n("max_segments"));
        parts.push(match l == m {
            true => format!("segment {} x {}{l}", self.segment_len, self.max_segments),
            false => format!("segment {}{l} x {}{m}", self.segment_len, self.max_segments),
        });
        let dtype = match crate::cli::DTypeArg::is_fp8(self.dtype) {
            true => "fp8",
            false => dtype_name(dtype),
        };
        parts.push(format!("{dtype}{} on {device}{}", n("dtype"), n("device")));
        let mut detail = String::new();
        if let Some(d) = attention {
            let k = d.current().to_string();
            parts.push(format!("attention {k}{}", n("attention")));
            if d.describe() != k {
                detail = format!("\ngateau score: attention {}", d.describe());
            }
        }
        if let Some(b) = self.max_batch_tokens {
            parts.push(format!("batch {b} tokens{}", n("max_batch_tokens")));
        }
        if let Some(b) = self.pack_below {
            parts.push(format!("pack-below {b}{}", n("pack_below")));
        }
        if self.bucket != Bucket::Auto {
            parts.push(format!("bucket {}{}", self.bucket, n("bucket")));
        }
        if self.phases != Phases::Auto {
            parts.push(format!("phases {}{}", value_name(self.phases), n("phases")));
        }
        let template = self.sources.get("template");
        if self.chat.is_some() {
            parts.push(format!("template chat{}", template.note()));
        } else if !matches!(template, super::provenance::Source::BuiltIn) {
            parts.push(format!("template plain{}", template.note()));
        }
        for (on, name, key) in [
            (self.with_ifd, "with-ifd", "with_ifd"),
            (self.token_nll, "token-nll", "token_nll"),
        ] {
            if on {
                parts.push(format!("{name}{}", n(key)));
            }
        }
        if let Some(sh) = self.shard {
            parts.push(format!("shard {}/{}", sh.index, sh.count));
        }
        if self.resume {
            parts.push("resume".into());
        }
        let line = format!("gateau score: {}{detail}", parts.join(", "));
        with_json(line, self.verbose, "score", self)
    }
}

impl RankSettings {
    /// What ranks the samples and how many are kept, with where each value came from:
    /// only the values the method uses (alpha with gateau, the norms with paper terms).
    pub fn ranking_phrase(&self) -> String {
        let n = |k: &str| self.sources.note(k);
        let keep = match self.keep {
            Keep::Ratio(r) => format!("ratio {r}"),
            Keep::Top(t) => format!("top {t}"),
        };
        let mut parts = vec![
            keep + &n("keep"),
            format!("method {}{}", self.method.name(), n("method")),
        ];
        let uses_recipe = matches!(self.method, Method::Gateau | Method::Hmg | Method::Cam);
        if uses_recipe {
            let src = self
                .sources
                .first_set(&["hmg_term", "cam_term", "fuse", "recipe"]);
            parts.push(format!("recipe {}{}", self.recipe.describe(), src.note()));
        }
        if self.method == Method::Gateau {
            parts.push(format!("alpha {}{}", self.alpha, n("alpha")));
        }
        if uses_recipe && self.method != Method::Cam && self.recipe.hmg == HmgTerm::Paper {
            let v = value_name(self.hmg_norm);
            parts.push(format!("hmg-norm {v}{}", n("hmg_norm")));
        }
        if uses_recipe && self.method != Method::Hmg && self.recipe.cam == CamTerm::Paper {
            let v = value_name(self.cam_norm);
            parts.push(format!("cam-norm {v}{}", n("cam_norm")));
        }
        if !matches!(self.sources.get("scores"), super::provenance::Source::Flag) {
            let files: Vec<String> = self
                .scores
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            parts.push(format!("scores {}{}", files.join(" "), n("scores")));
        }
        parts.join(", ")
    }

    /// `gateau CMD: <ranking>`.
    pub fn settings_line(&self, cmd: &str) -> String {
        format!("gateau {cmd}: {}", self.ranking_phrase())
    }

    /// `, -> PATH (source)` for an output path that was not given as a flag.
    fn output_phrase(&self, path: &std::path::Path) -> String {
        match self.sources.get("out") {
            super::provenance::Source::Flag => String::new(),
            s => format!(" -> {}{}", path.display(), s.note()),
        }
    }
}

impl SelectSettings {
    pub fn settings_line(&self) -> String {
        let mut line = self.rank.settings_line("select");
        if self.keep_order {
            line += ", keep-order";
        }
        line += &self.rank.output_phrase(&self.out);
        with_json(line, self.rank.verbose, "select", self)
    }
}

impl ReportSettings {
    pub fn settings_line(&self) -> String {
        let line = self.rank.settings_line("report") + &self.rank.output_phrase(&self.out);
        with_json(line, self.rank.verbose, "report", self)
    }
}

impl InspectSettings {
    pub fn settings_line(&self) -> String {
        let line = format!("{}, id {}", self.rank.settings_line("inspect"), self.id);
        with_json(line, self.rank.verbose, "inspect", &self.rank)
    }
}

impl CompareSettings {
    pub fn settings_line(&self) -> String {
        with_json(
            self.rank.settings_line("compare"),
            self.rank.verbose,
            "compare",
            self,
        )
    }
}

impl EvalSettings {
    pub fn settings_line(&self) -> String {
        let line = format!(
            "{}, positive {}={}",
            self.rank.settings_line("eval"),
            self.label_field,
            self.positive.join(",")
        );
        with_json(line, self.rank.verbose, "eval", self)
    }
}
