//! Length buckets for the attention of single-sequence passes (`--bucket`): cuDNN builds
//! an execution graph for every new sequence length (about 65 ms on the H100), and every
//! sample brings new lengths. Padding a pass's attention call up to a bucket length makes
//! the graphs of one bucket serve every sample that falls in it.
//!
//! Only the attention call is padded: q, k and v get zero rows appended after the last
//! position (after RoPE, at the sample's own length), the kernel runs on the bucket length,
//! and its output is cut back to the real rows. Under causal attention a real row attends
//! only to earlier positions, so the appended rows change none of its inputs; projections,
//! norms, RoPE (dynamic NTK included), the attention capture, logits and NLL all run at the
//! real length, exactly as without buckets. The bucket comes from the pass's own length
//! only, so no record depends on the samples before it.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Under auto, buckets are never finer than this many tokens.
pub const AUTO_MIN_STEP: usize = 128;

/// Under auto, a length is rounded up to a multiple of its largest power of two over this:
/// at most 1/64 (1.6%) of padding, and 64 bucket lengths per doubling of the length.
pub const AUTO_STEPS_PER_OCTAVE: usize = 64;

/// `--bucket`: how single-sequence passes round their attention length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bucket {
    /// Only passes whose attention runs on a cuDNN graph, at [`auto_step`] granularity.
    #[default]
    Auto,
    /// Never (`--bucket 0`).
    Off,
    /// Every single-sequence pass, to a multiple of this many tokens, whatever the kernel.
    Tokens(usize),
}

/// The granularity auto rounds a pass of `t` tokens to: `max(128, 2^floor(log2 t) / 64)`.
pub fn auto_step(t: usize) -> usize {
    let pow2 = match t {
        0 => 1,
        t => 1usize << (usize::BITS - 1 - t.leading_zeros()),
    };
    (pow2 / AUTO_STEPS_PER_OCTAVE).max(AUTO_MIN_STEP)
}

/// `t` rounded up to a multiple of `step` (`t` itself for a step of 0 or 1).
pub fn round_up(t: usize, step: usize) -> usize {
    match step {
        0 | 1 => t,
        s => t.div_ceil(s) * s,
    }
}

impl Bucket {
    /// The attention length of a single-sequence pass of `t` tokens; `graph(len)` says
    /// whether a pass of that length would run on a cuDNN graph (auto pads only those).
    pub fn padded(self, t: usize, graph: impl Fn(usize) -> bool) -> usize {
        match self {
            Bucket::Off => t,
            Bucket::Tokens(step) => round_up(t, step),
            Bucket::Auto => {
                let len = round_up(t, auto_step(t));
                match graph(len) {
                    true => len,
                    false => t,
                }
            }
        }
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bucket::Auto => f.write_str("auto"),
            Bucket::Off => f.write_str("0"),
            Bucket::Tokens(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Bucket {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Bucket::Auto),
            "0" | "off" => Ok(Bucket::Off),
            n => match n.parse::<usize>() {
                Ok(n) => Ok(Bucket::Tokens(n)),
                Err(_) => Err(format!(
                    "`{s}`: expected auto, 0 (off) or a number of tokens"
                )),
            },
        }
    }
}

impl Serialize for Bucket {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bucket::Tokens(n) => s.serialize_u64(*n as u64),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Bucket {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(usize),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Ok(Bucket::Off),
            Raw::N(n) => Ok(Bucket::Tokens(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What bucketing did in one model's passes (logging only; it changes no number).
#[derive(Debug, Default)]
pub struct BucketStats {
    passes: AtomicU64,
    padded: AtomicU64,
    real_tokens: AtomicU64,
    pad_tokens: AtomicU64,
    lengths: Mutex<std::collections::BTreeSet<usize>>,
}

impl BucketStats {
    /// Counts one single-sequence pass of `t` tokens whose attention ran on `len`.
    pub fn record(&self, t: usize, len: usize) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        if len > t {
            self.padded.fetch_add(1, Ordering::Relaxed);
            self.pad_tokens
                .fetch_add((len - t) as u64, Ordering::Relaxed);
        }
        self.real_tokens.fetch_add(t as u64, Ordering::Relaxed);
        if let Ok(mut l) = self.lengths.lock() {
            l.insert(len);
        }
    }

    /// `N of M single-sequence passes padded (+X tokens, Y%), K attention lengths`, or
    /// None when no pass was padded.
    pub fn summary(&self) -> Option<String> {
        let padded = self.padded.load(Ordering::Relaxed);
        if padded == 0 {
            return None;
        }
        let pad = self.pad_tokens.load(Ordering::Relaxed);
        let real = self.real_tokens.load(Ordering::Relaxed).max(1);
        let lengths = self.lengths.lock().map_or(0, |l| l.len());
        Some(format!(
            "{padded} of {} single-sequence passes padded (+{pad} attention tokens, {:.2}%), \
             {lengths} attention lengths",
            self.passes.load(Ordering::Relaxed),
            100.0 * pad as f64 / real as f64
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dispatch::{AttentionKernel, BatchPlan, Dispatch};

    /// Worked by hand: 2^13 = 8192 / 64 = 128; 2^14 / 64 = 256; 2^15 / 64 = 512.
    #[test]
    fn auto_rounds_to_a_64th_of_the_octave() {
        assert_eq!(auto_step(1), 128);
        assert_eq!(auto_step(8191), 128, "4096 / 64 = 64, floored at 128");
        assert_eq!(auto_step(8192), 128);
        assert_eq!(auto_step(16383), 128);
        assert_eq!(auto_step(16384), 256);
        assert_eq!(auto_step(20000), 256);
        assert_eq!(auto_step(40000), 512);
        assert_eq!(auto_step(65536), 1024);
        let on = |_: usize| true;
        assert_eq!(Bucket::Auto.padded(8192, on), 8192);
        assert_eq!(Bucket::Auto.padded(8193, on), 8320); // 65 x 128
        assert_eq!(Bucket::Auto.padded(20000, on), 20224); // 79 x 256
        assert_eq!(Bucket::Auto.padded(40000, on), 40448); // 79 x 512
        assert_eq!(Bucket::Auto.padded(65535, on), 65536); // 64 x 1024
        assert_eq!(Bucket::Auto.padded(20000, |_| false), 20000);
        // The graph test sees the bucket length, not the pass's own.
        assert_eq!(Bucket::Auto.padded(8150, |n| n >= 8192), 8192);
        assert_eq!(Bucket::Off.padded(20000, on), 20000);
        assert_eq!(Bucket::Tokens(64).padded(100, |_| false), 128);
        assert_eq!(Bucket::Tokens(64).padded(128, on), 128);
        assert_eq!(Bucket::Tokens(1).padded(100, on), 100);
    }

    /// Never more than 1/64 of padding from 8k tokens on, and 64 lengths per octave.
    #[test]
    fn auto_waste_and_shapes_are_bounded() {
        let mut lengths = std::collections::BTreeSet::new();
        for t in 8192..65536 {
            let p = Bucket::Auto.padded(t, |_| true);
            assert!(p >= t && (p - t) * 64 < t, "{t} -> {p}");
            lengths.insert(p);
        }
        // 8192 itself, then 64 new lengths per octave up to 65536.
        assert_eq!(lengths.len(), 3 * 64 + 1);
    }

    /// Auto pads single sequences whose padded length runs on cuDNN, and nothing where the
    /// layer outputs do not come from a fused kernel (the CPU) or for batches.
    #[test]
    fn auto_pads_only_cudnn_graph_passes() {
        let none = BatchPlan::none();
        let d = Dispatch::auto_cudnn();
        assert_eq!(d.attention_len(1, 8193, &none, true), 8320);
        assert_eq!(d.attention_len(1, 8193, &none, false), 8193);
        assert_eq!(d.attention_len(2, 8193, &none, true), 8193);
        // Under 8,192 tokens auto runs flash attention where it is built in.
        let short = match cfg!(feature = "flash-attn") {
            true => 4000,
            false => 4096,
        };
        assert_eq!(d.attention_len(1, 4000, &none, true), short);
        let fixed = Dispatch::auto_cudnn().with_bucket(Bucket::Tokens(64));
        assert_eq!(fixed.attention_len(1, 100, &none, false), 128);
        assert_eq!(fixed.attention_len(3, 100, &none, false), 100);
        let off = Dispatch::auto_cudnn().with_bucket(Bucket::Off);
        assert_eq!(off.attention_len(1, 8193, &none, true), 8193);
        let cpu = Dispatch::resolve(AttentionKernel::Auto).unwrap();
        if cpu.current() == AttentionKernel::Chunked {
            assert_eq!(cpu.attention_len(1, 20000, &none, true), 20000);
        }
        assert_eq!(Dispatch::chunked().bucket(), Bucket::Off);
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("auto".parse::<Bucket>(), Ok(Bucket::Auto));
        assert_eq!("0".parse::<Bucket>(), Ok(Bucket::Off));
        assert_eq!("512".parse::<Bucket>(), Ok(Bucket::Tokens(512)));
        assert!("x".parse::<Bucket>().is_err());
        for b in [Bucket::Auto, Bucket::Off, Bucket::Tokens(64)] {
            assert_eq!(b.to_string().parse::<Bucket>(), Ok(b));
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(serde_json::from_str::<Bucket>(&json).unwrap(), b, "{json}");
        }
        assert_eq!(serde_json::from_str::<Bucket>("0").unwrap(), Bucket::Off);
    }
}
