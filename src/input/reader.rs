//! Streaming JSONL lines with their 0-based line numbers, raw bytes and byte offsets. A
//! UTF-8 byte-order mark at the start of the file is not part of line 0 (spec section 1).
//! Standard input (`--data -`) is spooled to a temporary file first: resume, shards and
//! `select` need line offsets and a file to read twice.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// One input line exactly as read, newline included when the file had one.
#[derive(Debug, Clone)]
pub struct RawLine {
    pub number: u64,
    pub bytes: Vec<u8>,
    /// Where `bytes` start in the file (3 for line 0 after a byte-order mark).
    pub offset: u64,
}

/// The UTF-8 byte-order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

impl RawLine {
    /// XXH64 of the line without its line ending, as 16 hex digits: what a score record
    /// keeps to show which line it scored.
    pub fn hash(&self) -> String {
        crate::files::hash::hex(crate::files::hash::xxh64(self.content()))
    }

    /// The line without its line ending (`\n` or `\r\n`).
    pub fn content(&self) -> &[u8] {
        let b = self.bytes.strip_suffix(b"\n").unwrap_or(&self.bytes);
        b.strip_suffix(b"\r").unwrap_or(b)
    }
}

pub struct LineReader {
    inner: BufReader<File>,
    next: u64,
    pos: u64,
    path: PathBuf,
}

impl LineReader {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            inner: BufReader::with_capacity(1 << 20, f),
            next: 0,
            pos: 0,
            path: path.to_path_buf(),
        })
    }
}

impl Iterator for LineReader {
    type Item = Result<RawLine>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut bytes = Vec::new();
        match self.inner.read_until(b'\n', &mut bytes) {
            Ok(0) => None,
            Ok(n) => {
                let number = self.next;
                let mut offset = self.pos;
                self.next += 1;
                self.pos += n as u64;
                if number == 0 && bytes.starts_with(BOM) {
                    bytes.drain(..BOM.len());
                    offset += BOM.len() as u64;
                }
                Some(Ok(RawLine {
                    number,
                    bytes,
                    offset,
                }))
            }
            Err(e) => Some(Err(e).with_context(|| {
                format!("{}: read error at line {}", self.path.display(), self.next)
            })),
        }
    }
}

/// Number of lines, counting a last line without newline; streams the file.
pub fn count_lines(path: &Path) -> Result<u64> {
    let mut r = BufReader::with_capacity(
        1 << 20,
        File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let mut n = 0u64;
    let mut last_newline = true;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        last_newline = buf.last() == Some(&b'\n');
        let len = buf.len();
        r.consume(len);
    }
    Ok(if last_newline { n } else { n + 1 })
}

/// Standard input copied to a temporary file, removed when this is dropped.
#[derive(Debug)]
pub struct Spool {
    pub path: PathBuf,
}

impl Spool {
    /// Copies all of standard input to a new file in the temporary folder ($TMPDIR).
    pub fn stdin() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("gateau-stdin-{}-{nanos}.jsonl", std::process::id()));
        let spool = Self { path };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&spool.path)
            .with_context(|| format!("--data -: cannot create {}", spool.path.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut f)
            .and_then(|_| std::io::Write::flush(&mut f))
            .with_context(|| {
                format!(
                    "--data -: cannot copy standard input to {} (set TMPDIR to a folder with room)",
                    spool.path.display()
                )
            })?;
        Ok(spool)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
