//! The probe set's raw material: plain-text documents (a title, then paragraphs), the
//! sentences that make good passages, and a small seedable generator.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// One source document: a title and its paragraphs.
#[derive(Debug, Clone)]
pub struct Doc {
    pub title: String,
    pub paras: Vec<String>,
}

/// Reads documents from text files (or folders of `.txt` files, in name order): the first
/// non-empty line is the title, blank lines separate paragraphs, lines within a paragraph
/// are joined with spaces.
pub fn load_docs(paths: &[PathBuf]) -> Result<Vec<Doc>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list --docs {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "txt"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read --docs {}", f.display()))?;
        if let Some(d) = parse_doc(&text) {
            docs.push(d);
        }
    }
    Ok(docs)
}

fn parse_doc(text: &str) -> Option<Doc> {
    let mut blocks: Vec<String> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        let l = line.trim();
        if l.is_empty() {
            if !cur.is_empty() {
                blocks.push(cur.join(" "));
                cur.clear();
            }
        } else {
            cur.push(l);
        }
    }
    let mut it = blocks.into_iter();
    let title = it.next()?;
    // Underlines and rules ("*****", "-----") and double blank runs carry no text.
    let paras: Vec<String> = it
        .filter(|p| p.chars().filter(|c| c.is_alphabetic()).count() * 2 > p.len())
        .map(|p| p.replace("\n\n", "\n"))
        .collect();
    let title: String = title.chars().take(80).collect();
    (!paras.is_empty()).then_some(Doc { title, paras })
}

/// SplitMix64: small, seedable, the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Splits a paragraph into sentences that make good passages: mostly words, 12-60 words.
pub fn sentences(p: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = p.as_bytes();
    for i in 0..b.len() {
        let end_here = (b[i] == b'.' || b[i] == b'?' || b[i] == b'!')
            && (i + 1 == b.len() || b[i + 1] == b' ');
        if end_here {
            let s = p[start..=i].trim_start();
            let off = start + (p[start..=i].len() - s.len());
            let words = s.split_whitespace().count();
            let letters = s.chars().filter(|c| c.is_alphabetic() || *c == ' ').count();
            if (12..=60).contains(&words)
                && letters * 10 >= s.chars().count() * 9
                && s.starts_with(|c: char| c.is_uppercase())
            {
                out.push(off..i + 1);
            }
            start = i + 1;
        }
    }
    out
}
