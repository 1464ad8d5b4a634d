//! The arguments of every subcommand, clap derive: doc comments are the help. Values left
//! unset fall back to the config file, then to the built-in paper settings (`settings`).

use super::values::{DTypeArg, MaxBad, Phases, ProbeKind, Shard};
use crate::model::bucket::Bucket;
use crate::model::dispatch::AttentionKernel;
use crate::model::shapes::Shape;
use crate::model::DeviceChoice;
use crate::rank::normalize::{CamNorm, HmgNorm};
use crate::rank::recipe::{Fuse, RecipeName};
use crate::rank::selection::Method;
use crate::rank::terms::{CamTerm, HmgTerm};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Field of each --data line that holds its label.
    #[arg(long, value_name = "NAME", default_value = "label")]
    pub label_field: String,
    /// Label values that count as positive, comma-separated (JSON text for non-strings:
    /// true, 1). For a probe set: far,far-multi,diffuse.
    #[arg(
        long,
        value_name = "VALUES",
        value_delimiter = ',',
        default_value = "true"
    )]
    pub positive: Vec<String>,
    /// Kept fractions at which precision is reported, comma-separated.
    #[arg(
        long,
        value_name = "R",
        value_delimiter = ',',
        default_value = "0.1,0.3,0.5"
    )]
    pub ratios: Vec<f64>,
    /// Upper edges of the length bands (|S| in tokens), comma-separated.
    #[arg(
        long,
        value_name = "TOKENS",
        value_delimiter = ',',
        default_value = "2048,4096"
    )]
    pub bands: Vec<usize>,
    /// Also write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw roc.png and precision.png into this folder.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ProbeArgs {
    /// Plain-text documents: files, or folders of .txt files. First line: the title;
    /// blank lines separate paragraphs.
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    pub docs: Vec<PathBuf>,
    /// The scoring model (folder, .gguf or hub id): its tokenizer measures every length
    /// and its BOS counts against the window.
    #[arg(long, value_name = "MODEL")]
    pub long_model: String,
    /// tokenizer.json overriding the model's own [default: the model's own].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Where the probe set goes (JSONL, LongAlign shape, with "label" and the passages'
    /// token spans).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Samples to make (kinds in turn).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub n: usize,
    /// Seed: the same seed, documents and tokenizer give the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shortest context in tokens.
    #[arg(long, value_name = "TOKENS", default_value_t = 1024)]
    pub min_tokens: usize,
    /// Longest context in tokens.
    #[arg(long, value_name = "TOKENS", default_value_t = 8192)]
    pub max_tokens: usize,
    /// Model A's window W (score's --short-window): near passages lie inside it.
    #[arg(long, value_name = "W", default_value_t = 512)]
    pub window: usize,
    /// Far passages end at least this many tokens before the end of the context.
    #[arg(long, value_name = "TOKENS", default_value_t = 768)]
    pub gap: usize,
    /// far-multi passages lie at least this many tokens apart.
    #[arg(long, value_name = "TOKENS", default_value_t = 256)]
    pub spread: usize,
    /// Most tokens of one document in a context.
    #[arg(long, value_name = "TOKENS", default_value_t = 700)]
    pub doc_tokens: usize,
    /// Kinds to make, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "far,far-multi,diffuse,near,none"
    )]
    pub kinds: Vec<ProbeKind>,
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Model shape, built with random weights directly on the device.
    #[arg(long, value_enum, default_value = "llama2-7b")]
    pub shape: Shape,
    /// Context lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16384,65536")]
    pub ctx: Vec<usize>,
    /// Response tokens per sample.
    #[arg(long, default_value_t = 512)]
    pub resp: usize,
    /// Instruction (mid) tokens per sample.
    #[arg(long, default_value_t = 64)]
    pub mid: usize,
    /// Segment length L.
    #[arg(long, default_value_t = 128)]
    pub segment_len: usize,
    /// Segment passes timed per context length, at least: whole batches of a sample of
    /// that context (ctx / L segments, at most 500), batched as `score` batches them.
    #[arg(long, default_value_t = 32)]
    pub segments: usize,
    /// Most tokens in one batched segment pass [default: what `gateau score` picks on the
    /// device: half of what the free memory after the model holds, at most 65,536].
    #[arg(long, value_name = "TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Timed repetitions.
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Untimed runs before the timed ones (kernel compilation, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Compute dtype [default: bf16 on CUDA, f32 on CPU].
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Kernel for the causal attention outputs on CUDA with bf16/f16 (as in `score`).
    #[arg(long, value_enum, value_name = "KERNEL", default_value = "auto")]
    pub attention: AttentionKernel,
    /// Attention length buckets of the full passes (as in `score`): auto, 0 (off) or a
    /// multiple of N tokens. Every timed run repeats one length, so this times the padding's
    /// cost, not the graphs it saves.
    #[arg(long, value_name = "TOKENS", default_value = "auto")]
    pub bucket: Bucket,
    /// Also write the JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// After the timed runs, one more run per phase with every op timed between device
    /// synchronizations: where the time goes, per op.
    #[arg(long)]
    pub profile: bool,
    /// Also time the segment passes of small samples with this many segments each: one
    /// sample per batch, then packed across samples (what `score --pack-below` does).
    /// 0: skip.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub small_segments: usize,
    #[command(flatten)]
    pub mix: super::mix_args::MixArgs,
}

/// Options shared by every subcommand.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// JSON config file (see configs/); its keys are the long flag names with `_`.
    /// Built-in defaults are the paper's settings (configs/paper.json); flags win
    /// [default: none, the built-in paper config only].
    #[arg(long, value_name = "FILE", env = "GATEAU_CONFIG")]
    pub config: Option<PathBuf>,
    /// Make the first bad or skipped sample a fatal error (exit 1), and with `score` a
    /// `--max-len` beyond the long model's trained context.
    #[arg(long)]
    pub strict: bool,
    /// Most bad or skipped samples (and, in `select`, missing or duplicate ones) a finished
    /// run may report and still exit 0: a count (50) or a share of the lines read (5%).
    /// More exit 2.
    #[arg(long, value_name = "N|P%", default_value = "5%")]
    pub max_bad: MaxBad,
    /// No progress, settings or summary on stderr; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
    /// Also print every resolved setting as one JSON line after the settings line.
    #[arg(long, short, conflicts_with = "quiet")]
    pub verbose: bool,
}

/// Which models, on which device.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Models")]
pub struct ModelArgs {
    /// Long-window model B: a folder with config.json + safetensors + tokenizer.json, a
    /// .gguf file, or a Hugging Face hub id (read from the local cache when HF_HUB_OFFLINE=1).
    /// Without --long-model and --short-model (or a --config naming them), gateau scores
    /// with the paper's two 7B hub models: THUDM/LongAlign-7B-64k-base (long) and
    /// NousResearch/Llama-2-7b-hf (short, RoPE base 2000000)
    /// [default: THUDM/LongAlign-7B-64k-base (built-in paper config)].
    #[arg(long, value_name = "MODEL")]
    pub long_model: Option<String>,
    /// Short-window model A as a separate checkpoint (same forms as --long-model)
    /// [default: NousResearch/Llama-2-7b-hf (built-in paper config)].
    #[arg(long, value_name = "MODEL", conflicts_with = "short_window")]
    pub short_model: Option<String>,
    /// RoPE base for --short-model, so it can read the whole sample
    /// [default: 2000000 (built-in paper config)].
    #[arg(long, value_name = "THETA")]
    pub short_rope_theta: Option<f64>,
    /// Self-homologous mode: model A is model B reading only the last W tokens of the
    /// prompt before the response [default: off, model A is --short-model].
    #[arg(long, value_name = "W")]
    pub short_window: Option<usize>,
    /// tokenizer.json overriding the models' own tokenizer (GGUF metadata or folder)
    /// [default: the model's own].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Where the models run: auto (CUDA when built in and present, else CPU), cpu, cuda,
    /// cuda:N [default: auto].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceChoice>,
    /// Score on several devices at once: one worker per device in this process, each with
    /// its own copy of the models, samples handed out longest first; one output file.
    /// A comma-separated list (0,1,3 or cuda:0,cuda:1; cpu for a CPU worker) or `all`
    /// (every CUDA device) [default: one worker, on --device].
    #[arg(long, value_name = "LIST", conflicts_with = "device")]
    pub devices: Option<String>,
    /// Compute dtype of the weights and activations [default: bf16 on CUDA, f32 on CPU].
    /// Softmax, log-softmax, NLL and attention capture are f32 in every case.
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Kernel for the causal attention outputs on CUDA with bf16/f16 [default: auto].
    /// cuDNN is loaded at run time from libcudnn.so.9 on the library path, or the file
    /// named by $GATEAU_CUDNN_LIB.
    #[arg(long, value_enum, value_name = "KERNEL")]
    pub attention: Option<AttentionKernel>,
}

/// Sequence lengths and batching.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Passes")]
pub struct PassArgs {
    /// Longest sample in tokens; longer contexts lose tokens from their start
    /// [default: 64000 (built-in paper config)].
    #[arg(long, value_name = "TOKENS")]
    pub max_len: Option<usize>,
    /// CAM segment length L in tokens [default: 128 (built-in paper config)].
    #[arg(long, value_name = "TOKENS")]
    pub segment_len: Option<usize>,
    /// Most segments per sample (evenly spaced when there are more)
    /// [default: 500 (built-in paper config)].
    #[arg(long, value_name = "N")]
    pub max_segments: Option<usize>,
    /// Most tokens in one batched segment pass [default: from the free GPU memory after
    /// loading the models, at most 65536; 16384 on the CPU].
    #[arg(long, value_name = "TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Samples whose segment passes total fewer tokens than this wait until such samples
    /// fill a segment batch, then run together (sequences packed without padding; the
    /// numbers do not change, their records come later). 0: never [default: 8192 on CUDA,
    /// 0 on the CPU].
    #[arg(long, value_name = "TOKENS")]
    pub pack_below: Option<usize>,
    /// Pad the attention of single-sequence passes (full, window, IFD; packed segments
    /// without flash-attn) at the end up to a bucket length, so that cuDNN graphs (about
    /// 65 ms per new length) serve every sample of a bucket; the records do not change
    /// (padding after the last position, under the causal mask). auto: only passes whose
    /// attention runs on a cuDNN graph, rounded to max(128, 2^floor(log2 T) / 64) tokens
    /// (at most 1.6% more); 0: never; N: to a multiple of N on any kernel [default: auto].
    #[arg(long, value_name = "TOKENS")]
    pub bucket: Option<Bucket>,
    /// auto: both models stay on the GPU when they and a --max-len pass fit, else two
    /// phases (the short model over every sample, then the long model); one; two
    /// [default: auto].
    #[arg(long, value_enum)]
    pub phases: Option<Phases>,
}

#[derive(Debug, Args, Clone)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Input JSONL: LongAlign {"messages": [...]}, Alpaca {"instruction","input","output"}
    /// or {"context","instruction","response"}; one sample per line. `-` reads standard
    /// input (copied to a temporary file first; then --out is required) [default: the
    /// config's "data"; required without one].
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Output JSONL of score records [default: DATA with .scores.jsonl, or
    /// .scores.I-of-N.jsonl with --shard; no default for --data -].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Score only the first N pending samples (pending: in the --shard and not already
    /// kept by --resume) [default: all]. A later run with --resume and a larger --limit,
    /// or none, continues after them.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Load no weights and score nothing: read and tokenize --data with the models'
    /// tokenizers and print the length histogram, truncations and skips, the tokens of
    /// each pass, the memory plan and the time estimated on an H200 (from measured
    /// rates). Counts every pending line of the --shard within --limit (records kept for
    /// --resume are not read). Needs no --out and writes none.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: also write its summary as JSON to this file.
    #[arg(long, value_name = "FILE", requires = "dry_run")]
    pub json: Option<PathBuf>,
    /// Score only lines with line % N == I (0-based), for N processes, GPUs or a Slurm
    /// array sharing one input [default: every line].
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Continue an interrupted run: keep the records already in --out (a half-written last
    /// line is discarded) and score only the rest.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace an existing --out instead of refusing to run.
    #[arg(long)]
    pub overwrite: bool,
    /// Also compute ppl_alone, the long model's perplexity of the response with nothing
    /// before it but BOS (one short pass per sample), for `select --method ifd`.
    #[arg(long)]
    pub with_ifd: bool,
    /// Also keep the per-token response NLL of both models in every record (`nll_short`,
    /// `nll_long`; about 20 bytes per response token), for `select --hmg-term key-share`
    /// and `key-gain` (LongPPL-style key tokens).
    #[arg(long)]
    pub token_nll: bool,
    /// How the prompt around each sample's context is written [default: plain, or the
    /// config's "template"].
    #[arg(long, value_enum, value_name = "NAME")]
    pub template: Option<crate::input::chat::TemplateKind>,
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub passes: PassArgs,
}

/// Which scores, on which input, ranked how: shared by select, report, inspect, compare.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Ranking")]
pub struct RankArgs {
    /// Score files from `gateau score` (several for shards) [default: DATA's .scores.jsonl].
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub scores: Vec<PathBuf>,
    /// The input JSONL the scores were computed on [default: the config's "data"; required
    /// without one].
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Fraction of the scored samples to keep: ceil(ratio x n)
    /// [default: 0.3 (built-in paper config)].
    #[arg(long, value_name = "R", conflicts_with = "top")]
    pub ratio: Option<f64>,
    /// Keep exactly this many samples (or all scored ones, if fewer) [default: off, --ratio
    /// decides].
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// What ranks the samples: gateau (Eq. 6), hmg (alpha = 1), cam (alpha = 0), ppl
    /// (highest ppl_long first) or ifd (highest ppl_long / ppl_alone first; needs
    /// `gateau score --with-ifd`) [default: gateau].
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// Weight of HMG against CAM: score = alpha softmax(HMP) + (1 - alpha) softmax(CAS)
    /// [default: 0.8 (built-in paper config)].
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,
    /// Normalization of the perplexities across the dataset before HMP = N(short) - N(long)
    /// [default: minmax (built-in paper config)].
    #[arg(long, value_enum)]
    pub hmg_norm: Option<HmgNorm>,
    /// Normalization of segment perplexities and attention within a sample before CAS
    /// [default: softmax (built-in paper config)].
    #[arg(long, value_enum)]
    pub cam_norm: Option<CamNorm>,
    /// How GATEAU's score is built: score = alpha F(HMG term) + (1 - alpha) F(CAM term).
    /// long-range: ranks of ln(ppl_short / ppl_long) and of how much the most useful
    /// segment beyond model A's window lowers the response's perplexity (measured best on
    /// labeled data); context: the same with the most useful segment anywhere; paper: the
    /// paper's Eq. 6 as written (softmax of HMP and CAS); key-tokens: LongPPL key tokens
    /// (needs `score --token-nll`) [default: long-range].
    #[arg(long, value_enum, value_name = "NAME")]
    pub recipe: Option<RecipeName>,
    /// Replace the recipe's HMG term [default: the recipe's].
    #[arg(long, value_enum, value_name = "TERM")]
    pub hmg_term: Option<HmgTerm>,
    /// Replace the recipe's CAM term [default: the recipe's].
    #[arg(long, value_enum, value_name = "TERM")]
    pub cam_term: Option<CamTerm>,
    /// Replace the recipe's dataset-wide scale F of both terms [default: the recipe's].
    #[arg(long, value_enum, value_name = "F")]
    pub fuse: Option<Fuse>,
    /// Go on when lines of --data have no score record (a shard file not given, a score
    /// run not finished): rank the scored lines only. Without it, that is an error.
    #[arg(long)]
    pub allow_missing: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SelectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Where the selected lines go [default: DATA with .selected.jsonl]. `-`: standard
    /// output (byte for byte; the summary and notes then go to stderr only).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the selected lines in input order instead of score order.
    #[arg(long)]
    pub keep_order: bool,
    /// JSON report: counts, score statistics, cut-off, every bad or skipped sample, and the
    /// full resolved settings [default: none].
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Also write the plots and summary of `gateau report` into this folder [default: none].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// Replace an existing --out, --report or --report-dir summary instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ReportArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Folder for the PNG plots, summary.json and summary.md [default: DATA with .report].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Bins of the score histogram.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub bins: usize,
    /// Field of each --data line that holds its label: adds the precision of every alpha
    /// to the alpha sweep (as `gateau eval --label-field`) [default: none, no precision].
    #[arg(long, value_name = "NAME")]
    pub label_field: Option<String>,
    /// Label values that count as positive, comma-separated (JSON text for non-strings).
    #[arg(
        long,
        value_name = "VALUES",
        value_delimiter = ',',
        default_value = "true"
    )]
    pub positive: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct InspectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rank: RankArgs,
    /// The sample's id as in the data (a number or a string; JSON text such as "\"7\""
    /// picks the string 7 over the number 7).
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// Draw the segment view into this PNG [default: none, the terminal view].
    #[arg(long, value_name = "FILE.png")]
    pub out: Option<PathBuf>,
    /// Print the sample's numbers as one JSON object instead of the terminal view.
    #[arg(long)]
    pub json: bool,
    /// The scoring model (as in `score`): its tokenizer cuts the context into the
    /// segments, so their text can be shown [default: THUDM/LongAlign-7B-64k-base (built-in
    /// paper config); with a config's "long_model": null, segments are shown by number only].
    #[arg(long, value_name = "MODEL")]
    pub long_model: Option<String>,
    /// tokenizer.json overriding the model's own [default: the model's own].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// The template the scores were made with (as in `score`) [default: the config's].
    #[arg(long, value_enum, value_name = "NAME")]
    pub template: Option<crate::input::chat::TemplateKind>,
}

#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Also write the table as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}
