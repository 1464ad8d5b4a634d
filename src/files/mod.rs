//! Files gateau writes, kept apart from the files it reads: identity by device and inode
//! (a hard link or a second path to an input is still the input), outputs that must not
//! coincide, existing outputs that are replaced only when asked, an exclusive lock per
//! output naming the holder, and atomic replacement.

pub mod hash;

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// What a path names: an existing file by (device, inode), else the absolute path it would
/// be created at (so two spellings of a file not yet there still compare equal).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    Inode(u64, u64),
    Path(PathBuf),
}

fn lexical_absolute(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn identity(p: &Path) -> Identity {
    if let Ok(m) = std::fs::metadata(p) {
        return Identity::Inode(m.dev(), m.ino());
    }
    // Not there yet: its folder may exist under another spelling (a symlink, `..`).
    let abs = lexical_absolute(p);
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => match dir.canonicalize() {
            Ok(d) => Identity::Path(d.join(name)),
            Err(_) => Identity::Path(abs),
        },
        _ => Identity::Path(abs),
    }
}

/// Whether two paths name one file (the same inode, or the same place to create one).
pub fn same_file(a: &Path, b: &Path) -> bool {
    identity(a) == identity(b)
}

/// A file the run reads or writes, with the flag that named it (for messages).
#[derive(Debug, Clone)]
pub struct Named {
    pub flag: String,
    pub path: PathBuf,
}

impl Named {
    pub fn new(flag: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            flag: flag.into(),
            path: path.into(),
        }
    }
}

/// Refuses an output that is one of the inputs, or that another output also names.
pub fn check_outputs(outputs: &[Named], inputs: &[Named]) -> Result<()> {
    for (i, o) in outputs.iter().enumerate() {
        for input in inputs {
            if same_file(&o.path, &input.path) {
                bail!(
                    "{} {} is the same file as {} {} (the same path, a link or a hard link \
                     to it); refusing to overwrite an input: choose another {}",
                    o.flag,
                    o.path.display(),
                    input.flag,
                    input.path.display(),
                    o.flag
                );
            }
        }
        for other in &outputs[..i] {
            if same_file(&o.path, &other.path) {
                bail!(
                    "{} {} and {} {} are the same file: one would replace the other; give \
                     them different paths",
                    other.flag,
                    other.path.display(),
                    o.flag,
                    o.path.display()
                );
            }
        }
    }
    Ok(())
}

/// Refuses to replace an existing output unless `overwrite`.
pub fn check_new(o: &Named, overwrite: bool) -> Result<()> {
    if !overwrite && std::fs::symlink_metadata(&o.path).is_ok() {
        bail!(
            "{} {} already exists: pass --overwrite to replace it, or choose another {}",
            o.flag,
            o.path.display(),
            o.flag
        );
    }
    Ok(())
}

/// The pid holding a lock on `f`, from the kernel's lock table (Linux's /proc/locks lists
/// each flock with its owner and the device:inode it is on).
fn lock_holder(f: &File) -> Option<u32> {
    let m = f.metadata().ok()?;
    let d = m.dev();
    // glibc's major()/minor() split of a dev_t.
    let major = ((d >> 8) & 0xfff) | ((d >> 32) & 0xffff_f000);
    let minor = (d & 0xff) | ((d >> 12) & 0xffff_ff00);
    let want = format!("{major:02x}:{minor:02x}:{}", m.ino());
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let at = f.iter().position(|x| *x == "FLOCK")?;
        // "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END"
        (f.get(at + 4) == Some(&want.as_str()))
            .then(|| f.get(at + 3)?.parse().ok())
            .flatten()
    })
}

/// Takes the exclusive lock of an output for as long as `f` stays open; another process
/// holding it is an error naming the file, that process and `flag` as the way out.
pub fn lock(f: &File, o: &Named, flag: &str) -> Result<()> {
    match f.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            let who = match lock_holder(f) {
                Some(pid) => format!("process {pid}"),
                None => "another process".to_string(),
            };
            bail!(
                "{} {} is locked by {who}, another gateau run writing it; wait for it to \
                 finish (or stop it), or choose another {flag}",
                o.flag,
                o.path.display(),
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {} {}", o.flag, o.path.display()))
        }
    }
}

/// Writes `path` through a temporary file beside it, renamed into place once complete, so
/// a reader (or a crash) never sees half of it.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.partial", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write(&mut f)?;
        f.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_and_spellings_are_one_file() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.jsonl");
        std::fs::write(&a, "x\n").unwrap();
        let b = d.path().join("b.jsonl");
        std::fs::hard_link(&a, &b).unwrap();
        assert!(same_file(&a, &b));
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(same_file(&sub.join("../a.jsonl"), &a));
        assert!(same_file(&sub.join("../new"), &d.path().join("new")));
        assert!(!same_file(&a, &d.path().join("new")));
        let out = [Named::new("--out", &b)];
        let err = check_outputs(&out, &[Named::new("--data", &a)]).unwrap_err();
        assert!(format!("{err}").contains("hard link"), "{err}");
    }

    #[test]
    fn a_held_lock_names_its_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("o");
        let first = File::create(&p).unwrap();
        let o = Named::new("--out", &p);
        lock(&first, &o, "--out").unwrap();
        let second = File::open(&p).unwrap();
        let err = format!("{}", lock(&second, &o, "--out").unwrap_err());
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        lock(&second, &o, "--out").unwrap();
    }
}
