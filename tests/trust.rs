//! Outputs you can trust (issue 18), `gateau score` through the binary: records that know
//! their settings and input line, resumes that refuse to mix, one writer per output, inputs
//! never overwritten (hard links included), early failures that leave nothing, pipeline
//! exit codes and unreadable input. Every refusal is checked for its message and for the
//! files being left byte for byte as they were. The readers' side is in `trust_readers`.

use crate::common::*;
use crate::score_cli::{score, Fixture};
use gateau::files::hash::{hex, xxh64};
use gateau::records::{ScoreRecord, Status};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// `args` with `flag`'s value replaced (or the flag and value added).
pub fn set(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn bytes_of(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Asserts a failure (exit 1) whose message holds every piece of `want`.
pub fn refused(o: &std::process::Output, want: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for w in want {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    err
}

/// The first `n` records of `src` and half of the next one, as after a kill.
fn cut(src: &Path, dst: &Path, n: usize) {
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = &lines[n][..lines[n].len() / 2];
    std::fs::write(dst, format!("{}\n{half}", lines[..n].join("\n"))).unwrap();
}

#[test]
fn records_carry_fingerprint_line_hash_and_shard() {
    let f = Fixture::new(4);
    let out = f.path("s.jsonl");
    let o = score(&with(f.args(&out), &["--shard", "1/2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let data = std::fs::read_to_string(&f.data).unwrap();
    let lines: Vec<&str> = data.lines().collect();
    let recs: Vec<ScoreRecord> = read_jsonl(&out);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        let line = lines[r.line as usize].as_bytes();
        assert_eq!(r.line_hash.as_deref(), Some(hex(xxh64(line)).as_str()));
        assert_eq!(r.shard.as_deref(), Some("1/2"));
        let fp = r.fingerprint.as_deref().unwrap();
        for part in [
            "short=window:48",
            "segment_len=16",
            "max_segments=500",
            "max_len=4096",
            "dtype=f32",
            &format!("gateau={}", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(fp.contains(part), "{part} not in {fp}");
        }
    }
}

#[test]
fn resume_refuses_other_settings_and_leaves_the_file() {
    let f = Fixture::new(5);
    let full = f.path("full.jsonl");
    assert!(score(&f.args(&full)).status.success());
    let part = f.path("part.jsonl");
    cut(&full, &part, 2);
    let before = bytes_of(&part);
    let cases: [(&str, &str, &str); 3] = [
        (
            "--segment-len",
            "32",
            "segment_len differs (16 there, 32 here)",
        ),
        (
            "--short-window",
            "64",
            "short differs (window:48 there, window:64 here)",
        ),
        (
            "--max-segments",
            "4",
            "max_segments differs (500 there, 4 here)",
        ),
    ];
    for (flag, value, why) in cases {
        let args = with(set(f.args(&part), flag, value), &["--resume"]);
        refused(
            &score(&args),
            &["--resume", p(&part), "line 1", why, "--overwrite"],
        );
        assert_eq!(bytes_of(&part), before, "{flag} {value} changed the file");
    }
    // The same settings resume it.
    let o = score(&with(f.args(&part), &["--resume"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_jsonl::<ScoreRecord>(&part).len(), 5);
}

#[test]
fn resume_refuses_another_input_or_shard() {
    let f = Fixture::new(6);
    let full = f.path("full.jsonl");
    assert!(score(&f.args(&full)).status.success());
    let full_bytes = bytes_of(&full);
    // Same ids, edited context on line 1.
    let text = std::fs::read_to_string(&f.data).unwrap();
    let edited = f.path("edited.jsonl");
    std::fs::write(&edited, text.replacen("river", "RIVER", 1)).unwrap();
    let changed = text.lines().position(|l| l.contains("river")).unwrap();
    let o = score(&with(
        set(f.args(&full), "--data", p(&edited)),
        &["--resume"],
    ));
    refused(
        &o,
        &[
            &format!("scored input line {changed}"),
            "not the one scored (line hash",
            "--overwrite",
        ],
    );
    // A prefix of the input: the records of lines 3..6 name lines that do not exist.
    let short = f.path("short.jsonl");
    let head: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&short, head.join("\n") + "\n").unwrap();
    let o = score(&with(
        set(f.args(&full), "--data", p(&short)),
        &["--resume"],
    ));
    refused(&o, &["input line 3", "has only 3 lines", "another input"]);
    assert_eq!(bytes_of(&full), full_bytes);
    // Another shard's file.
    let s0 = f.path("s0.jsonl");
    assert!(score(&with(f.args(&s0), &["--shard", "0/2"]))
        .status
        .success());
    let s0_bytes = bytes_of(&s0);
    let o = score(&with(f.args(&s0), &["--shard", "1/2", "--resume"]));
    refused(&o, &["--shard 0/2", "--shard 1/2", "another shard's file"]);
    let o = score(&with(f.args(&s0), &["--resume"]));
    refused(&o, &["not sharded", "another shard's file"]);
    assert_eq!(bytes_of(&s0), s0_bytes);
}

/// Holds the lock of a file in this process, as a running `gateau score` does.
fn hold(path: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.try_lock().unwrap();
    f
}

/// Runs gateau, killing it (and failing) if it has not finished within `limit`: a run
/// that waits for a lock instead of failing must not hang the suite.
fn bounded(args: &[String], limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = gateau()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("gateau {args:?} still running after {limit:?}: it waited for the lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_writer_fails_at_once_naming_the_holder() {
    let f = Fixture::new(2);
    let out = f.path("s.jsonl");
    assert!(score(&f.args(&out)).status.success());
    let before = bytes_of(&out);
    let holder = format!("process {}", std::process::id());
    let lock = hold(&out);
    for extra in [&["--overwrite"][..], &["--resume"][..]] {
        let o = bounded(&with(f.args(&out), extra), Duration::from_secs(30));
        refused(&o, &["--out", p(&out), "is locked by", &holder]);
        assert_eq!(bytes_of(&out), before, "{extra:?} touched the locked file");
    }
    drop(lock);
    assert!(score(&with(f.args(&out), &["--overwrite"]))
        .status
        .success());
    // The phase-one side file is locked too; the run leaves no empty --out behind.
    let short = f.path("short");
    Tiny::random(77, 4, 2, true).write(&short, false);
    let out2 = f.path("two.jsonl");
    let side = f.path("two.jsonl.short-pass.jsonl");
    let lock = hold(&side);
    let mut args = f.args(&out2);
    args.retain(|a| a != "--short-window" && a != "48");
    let args = with(args, &["--short-model", p(&short), "--phases", "two"]);
    let o = bounded(&args, Duration::from_secs(30));
    refused(&o, &["phase-one file", p(&side), &holder]);
    assert!(!out2.exists(), "a refused run left {}", out2.display());
    drop(lock);
}

#[test]
fn outputs_that_are_inputs_are_refused_through_hard_links() {
    let f = Fixture::new(2);
    let data_before = bytes_of(&f.data);
    let link = f.path("link.jsonl");
    std::fs::hard_link(&f.data, &link).unwrap();
    let o = score(&with(f.args(&link), &["--overwrite"]));
    refused(&o, &["--out", "same file as --data", "hard link"]);
    assert_eq!(bytes_of(&f.data), data_before, "the input was touched");
    // select: --out, --report linked to --data or to a score file.
    let scores = f.path("s.jsonl");
    assert!(score(&f.args(&scores)).status.success());
    let score_link = f.path("scores-link.json");
    std::fs::hard_link(&scores, &score_link).unwrap();
    let scores_before = bytes_of(&scores);
    let sel = f.path("sel.jsonl");
    for (flag, path, input) in [
        ("--out", &link, "--data"),
        ("--report", &score_link, "--scores"),
    ] {
        let mut a = vec!["select", "--data", p(&f.data), "--scores", p(&scores)];
        a.extend(["--ratio", "0.5", "--overwrite", "-q"]);
        if flag == "--report" {
            a.extend(["--out", p(&sel)]);
        }
        a.extend([flag, p(path)]);
        refused(&run(&a), &[flag, &format!("same file as {input}")]);
    }
    assert_eq!(bytes_of(&f.data), data_before);
    assert_eq!(bytes_of(&scores), scores_before);
    assert!(!sel.exists());
}

#[test]
fn early_failures_leave_no_output() {
    let f = Fixture::new(2);
    let default_out = f.path("data.scores.jsonl");
    let mut args = f.args(&default_out);
    let at = args.iter().position(|a| a == "--out").unwrap();
    args.drain(at..at + 2);
    let o = score(&set(args.clone(), "--long-model", p(&f.path("nope"))));
    refused(&o, &["nope", "does not exist"]);
    let bad_tok = f.path("tok.json");
    std::fs::write(&bad_tok, "not a tokenizer").unwrap();
    let o = score(&with(args.clone(), &["--tokenizer", p(&bad_tok)]));
    refused(&o, &["tokenizer", p(&bad_tok)]);
    assert!(
        !default_out.exists(),
        "a failed run left {}",
        default_out.display()
    );
}

#[test]
fn exit_codes_follow_max_bad() {
    let f = Fixture::new(20);
    let mut text = std::fs::read_to_string(&f.data).unwrap();
    text.push_str("{broken\n");
    std::fs::write(&f.data, &text).unwrap();
    let out = f.path("s.jsonl");
    // 1 bad line of 21 is within the default 5%: exit 0, and said so.
    let mut args = f.args(&out);
    args.retain(|a| a != "--quiet");
    let o = score(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 of 21 lines were not usable samples: within --max-bad 5%"));
    let o = score(&with(f.args(&out), &["--overwrite", "--max-bad", "0"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = score(&with(f.args(&out), &["--overwrite", "--max-bad", "1"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = score(&with(f.args(&out), &["--overwrite", "--strict"]));
    refused(&o, &["line 20", "malformed JSON", "--strict"]);
}

#[test]
fn a_file_of_only_bad_lines_stops_with_one_message() {
    let f = Fixture::new(1);
    let lines: Vec<String> = (0..200)
        .map(|i| json!({"id": i, "mesages": [{"role": "user", "content": "q"}]}).to_string())
        .collect();
    std::fs::write(&f.data, lines.join("\n") + "\n").unwrap();
    let out = f.path("s.jsonl");
    let mut args = f.args(&out);
    args.retain(|a| a != "--quiet");
    let o = score(&args);
    let err = refused(
        &o,
        &[
            "the first 100 lines are bad",
            "\"mesages\" (100)",
            "\"id\" (100)",
            "Did you mean `messages` (for \"mesages\")?",
        ],
    );
    assert!(
        err.lines().count() <= 4,
        "one message, not a line per sample:\n{err}"
    );
    assert!(!out.exists());
    // Fewer lines than 100: all of them.
    std::fs::write(&f.data, "{broken\n[1]\n").unwrap();
    let o = score(&f.args(&out));
    refused(
        &o,
        &["all 2 lines are bad", "none of them is a JSON object"],
    );
}

#[test]
fn a_misspelled_alpaca_key_warns() {
    let f = Fixture::new(1);
    let line = json!({"id": "t", "instruction": "q", "inptu": "river stone\n\n", "output": "y"});
    let mut text = std::fs::read_to_string(&f.data).unwrap();
    text.push_str(&format!("{line}\n"));
    std::fs::write(&f.data, text).unwrap();
    let out = f.path("s.jsonl");
    let mut args = f.args(&out);
    args.retain(|a| a != "--quiet");
    let o = score(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let warn = "unknown key \"inptu\" ignored (did you mean \"input\"?)";
    assert!(stderr(&o).contains(warn), "{}", stderr(&o));
    let recs: Vec<ScoreRecord> = read_jsonl(&out);
    assert_eq!(recs[1].status, Status::Ok);
    assert_eq!(recs[1].warnings[0], warn);
}
