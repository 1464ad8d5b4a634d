//! Where a score record came from: the fingerprint of every setting that changes its
//! numbers (models by content, tokenizer, template, lengths, segments, dtype, gateau's
//! version) and the hash of the input line it scores. `score --resume` and the readers of
//! score files compare them, so records of other settings or another input never mix.
//!
//! The fingerprint is readable text, `key=value;key=value`, so a mismatch can name the
//! setting that differs. Models enter by content, not by path: the same weights under
//! another mount point (another node of a Slurm array) are the same model.

use crate::checkpoint::{self, ModelSpec};
use crate::cli::settings::{ScoreSettings, ShortSpec};
use crate::files::hash::{hex, xxh64, xxh64_reader, Xxh64};
use crate::input::RawLine;
use anyhow::{Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The hash of an input line as records carry it: its bytes without the line ending
/// (and without a byte-order mark on line 0).
pub fn line_hash(raw: &RawLine) -> String {
    raw.hash()
}

/// The settings behind a run's numbers, with the files they were read from.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub text: String,
    /// Every model and tokenizer file hashed (the run's inputs besides --data).
    pub files: Vec<PathBuf>,
}

/// One cached file hash: valid while the file keeps its size and modification time.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: u128,
    xxh64: String,
}

/// The folder gateau keeps caches in: $GATEAU_CACHE_DIR, else $XDG_CACHE_HOME/gateau, else
/// ~/.cache/gateau.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("GATEAU_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("gateau")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/gateau")))
}

fn cache_file() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("file-hashes.json"))
}

fn read_cache() -> BTreeMap<String, Cached> {
    cache_file()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Saves the cache, dropping files that are gone; a cache that cannot be written only
/// costs a re-hash next time.
fn write_cache(cache: &BTreeMap<String, Cached>) {
    let Some(path) = cache_file() else { return };
    let live: BTreeMap<&String, &Cached> = cache
        .iter()
        .filter(|(k, _)| Path::new(k).exists())
        .collect();
    let Ok(text) = serde_json::to_vec(&live) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = crate::files::write_atomic(&path, |f| {
        use std::io::Write;
        Ok(f.write_all(&text)?)
    });
}

/// XXH64 of a file's content, from the cache when its size and mtime are unchanged.
fn file_hash(path: &Path, cache: &mut BTreeMap<String, Cached>) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = path
        .canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned();
    if let Some(c) = cache.get(&key) {
        if c.size == meta.len() && c.mtime_ns == mtime_ns {
            return Ok(c.xxh64.clone());
        }
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let h = hex(xxh64_reader(std::io::BufReader::new(f))
        .with_context(|| format!("cannot read {}", path.display()))?);
    cache.insert(
        key,
        Cached {
            size: meta.len(),
            mtime_ns,
            xxh64: h.clone(),
        },
    );
    Ok(h)
}

/// A model's content hash: its files by name and content (so a moved folder hashes the
/// same), with the files themselves.
fn model_hash(
    spec: &ModelSpec,
    cache: &mut BTreeMap<String, Cached>,
) -> Result<(String, Vec<PathBuf>)> {
    let mut files = checkpoint::model_files(spec)?;
    files.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    let mut h = Xxh64::new(0);
    for f in &files {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        h.update(format!("{name}={}\n", file_hash(f, cache)?).as_bytes());
    }
    Ok((hex(h.digest()), files))
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

/// The run's dtype as `--dtype` spells it, with `fp8` named by what it computes: bf16 full
/// passes and E4M3 segment passes with per-row scales. Files of the earlier fp8 (E4M3 in
/// every pass, per-tensor scales) said `fp8`; their records are other numbers, so they do
/// not resume into these.
fn run_dtype(s: &ScoreSettings, dtype: DType) -> &'static str {
    match crate::cli::DTypeArg::is_fp8(s.dtype) {
        true => "fp8-segments",
        false => dtype_name(dtype),
    }
}

impl Fingerprint {
    /// The fingerprint of `s` computed in `dtype` (hashes every model file, or takes the
    /// cached hash of an unchanged one).
    pub fn of(s: &ScoreSettings, dtype: DType) -> Result<Self> {
        let mut cache = read_cache();
        let (long, mut files) = model_hash(&s.long_spec(), &mut cache)?;
        let short = match &s.short {
            ShortSpec::Window(w) => format!("window:{w}"),
            ShortSpec::Model {
                location,
                rope_theta,
            } => {
                let spec = ModelSpec {
                    location: location.clone(),
                    tokenizer: s.tokenizer.clone(),
                    rope_theta: *rope_theta,
                };
                let (h, f) = model_hash(&spec, &mut cache)?;
                files.extend(f);
                match rope_theta {
                    Some(t) => format!("model:{h},rope_theta:{t}"),
                    None => format!("model:{h}"),
                }
            }
        };
        let tokenizer = match &s.tokenizer {
            Some(t) => {
                files.push(t.clone());
                file_hash(t, &mut cache)?
            }
            None => "model".into(),
        };
        write_cache(&cache);
        let template = match &s.chat {
            Some(c) => {
                let t = format!("chat:{:?}:{:?}:{}", c.bos_token, c.eos_token, c.text);
                hex(xxh64(t.as_bytes()))
            }
            None => hex(xxh64(serde_json::to_string(&s.template)?.as_bytes())),
        };
        let parts = [
            ("gateau", env!("CARGO_PKG_VERSION").to_string()),
            ("long", long),
            ("short", short),
            ("tokenizer", tokenizer),
            ("template", template),
            ("max_len", s.max_len.to_string()),
            ("segment_len", s.segment_len.to_string()),
            ("max_segments", s.max_segments.to_string()),
            ("dtype", run_dtype(s, dtype).to_string()),
            ("with_ifd", s.with_ifd.to_string()),
        ];
        let text = parts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        Ok(Self { text, files })
    }
}

/// The first setting two fingerprints disagree on: (key, value in a, value in b).
pub fn first_difference(a: &str, b: &str) -> Option<(String, String, String)> {
    let parse = |t: &str| -> Vec<(String, String)> {
        t.split(';')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect()
    };
    let (pa, pb) = (parse(a), parse(b));
    let get = |p: &[(String, String)], k: &str| {
        p.iter()
            .find(|(x, _)| x == k)
            .map_or("(none)".to_string(), |(_, v)| v.clone())
    };
    let mut keys: Vec<&String> = pa.iter().map(|(k, _)| k).collect();
    keys.extend(
        pb.iter()
            .map(|(k, _)| k)
            .filter(|k| !pa.iter().any(|(x, _)| x == *k)),
    );
    keys.into_iter().find_map(|k| {
        let (va, vb) = (get(&pa, k), get(&pb, k));
        (va != vb).then(|| (k.clone(), va, vb))
    })
}

/// "--segment-len: 16 there, 32 here"-style words for a fingerprint difference, or for a
/// record that has none (written by a gateau before fingerprints).
pub fn describe_difference(theirs: Option<&str>, ours: &str) -> String {
    let Some(theirs) = theirs else {
        return "it has no fingerprint (written by a gateau older than fingerprints), so its \
                settings are unknown"
            .into();
    };
    match first_difference(theirs, ours) {
        Some((k, a, b)) => format!("{k} differs ({a} there, {b} here)"),
        None => "fingerprints differ".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_setting() {
        let a = "gateau=0.1.0;max_len=10;segment_len=16";
        let b = "gateau=0.1.0;max_len=10;segment_len=32";
        assert_eq!(
            first_difference(a, b),
            Some(("segment_len".into(), "16".into(), "32".into()))
        );
        assert_eq!(first_difference(a, a), None);
        assert_eq!(
            describe_difference(Some(a), b),
            "segment_len differs (16 there, 32 here)"
        );
    }

    #[test]
    fn line_hash_ignores_the_line_ending_only() {
        let raw = |b: &[u8]| RawLine {
            number: 1,
            bytes: b.to_vec(),
            offset: 0,
        };
        assert_eq!(line_hash(&raw(b"{}\n")), line_hash(&raw(b"{}\r\n")));
        assert_eq!(line_hash(&raw(b"{}")), hex(xxh64(b"{}")));
        assert_ne!(line_hash(&raw(b"{} \n")), line_hash(&raw(b"{}\n")));
    }
}
