//! `gateau score` through the binary: numbers against the independent spec implementation,
//! bad input, resume, shards, strictness.

use crate::common::*;
use crate::spec_ref::{reference, RefShort};
use gateau::records::{ScoreRecord, Status};
use serde_json::json;
use std::path::{Path, PathBuf};

const SEG: usize = 16;

/// Random words for contexts and answers.
pub fn words(rng: &mut Rng, n: usize) -> String {
    const W: &[&str] = &[
        "river", "stone", "amber", "lantern", "orbit", "quiet", "meadow", "copper", "signal",
        "harbor", "velvet", "ember", "north", "tide", "cedar",
    ];
    (0..n)
        .map(|_| W[rng.below(W.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub long: Tiny,
    pub model: PathBuf,
    pub data: PathBuf,
    /// (context, instruction, response) of each good line, by line number.
    pub samples: Vec<(u64, String, String, String)>,
}

impl Fixture {
    pub fn new(n: usize) -> Self {
        let dir = tmp();
        let long = Tiny::random(42, 4, 2, false);
        let model = dir.path().join("long");
        long.write(&model, false);
        let mut rng = Rng::new(9);
        let mut lines = Vec::new();
        let mut samples = Vec::new();
        for i in 0..n {
            let nc = 6 + rng.below(14);
            let c = format!("{}\n\n", words(&mut rng, nc));
            let x = format!("question {i}?");
            let ny = 2 + rng.below(4);
            let y = words(&mut rng, ny);
            let line = if i % 2 == 0 {
                json!({"id": format!("s{i}"), "messages": [
                    {"role": "user", "content": format!("{c}{x}")},
                    {"role": "assistant", "content": y}]})
            } else {
                json!({"id": i, "instruction": x, "input": c, "output": y})
            };
            lines.push(line.to_string());
            samples.push((i as u64, c, x, y));
        }
        let data = dir.path().join("data.jsonl");
        std::fs::write(&data, lines.join("\n") + "\n").unwrap();
        Self {
            dir,
            long,
            model,
            data,
            samples,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Arguments for a window-mode CPU run writing to `out`.
    pub fn args<'a>(&'a self, out: &'a Path) -> Vec<String> {
        [
            "score",
            "--data",
            p(&self.data),
            "--out",
            p(out),
            "--long-model",
            p(&self.model),
            "--short-window",
            "48",
            "--segment-len",
            "16",
            "--max-len",
            "4096",
            "--device",
            "cpu",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

pub fn score(args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run(&a)
}

fn check_record(r: &ScoreRecord, want: &crate::spec_ref::RefScores) {
    let line = r.line;
    assert_eq!(r.status, Status::Ok, "line {line}: {:?}", r.error);
    assert_eq!(r.n_tokens, Some(want.n_tokens), "line {line} n_tokens");
    assert_eq!(r.n_ctx, Some(want.n_ctx), "line {line} n_ctx");
    assert_eq!(r.truncated, Some(want.truncated), "line {line} truncated");
    assert_rel(r.ppl_long.unwrap(), want.ppl_long, 1e-4, "ppl_long");
    assert_rel(r.ppl_short.unwrap(), want.ppl_short, 1e-4, "ppl_short");
    let (sp, sa) = (r.seg_ppl.as_ref().unwrap(), r.seg_attn.as_ref().unwrap());
    assert_eq!(sp.len(), want.seg_ppl.len(), "line {line} segments");
    for (a, b) in sp.iter().zip(&want.seg_ppl) {
        assert_rel(*a, *b, 1e-4, "seg_ppl");
    }
    for (a, b) in sa.iter().zip(&want.seg_attn) {
        assert_rel(*a, *b, 1e-4, "seg_attn");
    }
    match (r.cas.unwrap(), want.cas) {
        (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-5, "line {line} cas {a} vs {b}"),
        (a, b) => assert_eq!(a, b, "line {line} cas"),
    }
}

#[test]
fn window_mode_matches_the_spec_reference() {
    let f = Fixture::new(6);
    let out = f.path("scores.jsonl");
    let o = score(&f.args(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let recs: Vec<ScoreRecord> = read_jsonl(&out);
    assert_eq!(recs.len(), 6);
    for (r, (line, c, x, y)) in recs.iter().zip(&f.samples) {
        assert_eq!(r.line, *line);
        let want = reference(&f.long, &RefShort::Window(48), (c, x, y), SEG, 500, 4096);
        assert!(want.seg_ppl.len() >= 2, "fixture must give segments");
        check_record(r, &want);
    }
    assert_eq!(recs[0].id, json!("s0"));
    assert_eq!(recs[1].id, json!(1));
}

#[test]
fn separate_short_model_with_rope_override_and_truncation() {
    let f = Fixture::new(3);
    let short = Tiny::random(77, 4, 2, true);
    let short_dir = f.path("short");
    short.write(&short_dir, false);
    // Both models resident, and two phases (A over every sample, then B): the same numbers.
    for phases in ["one", "two"] {
        let out = f.path(&format!("scores-{phases}.jsonl"));
        let o = run(&[
            "score",
            "--data",
            p(&f.data),
            "--out",
            p(&out),
            "--long-model",
            p(&f.model),
            "--short-model",
            p(&short_dir),
            "--short-rope-theta",
            "2000000",
            "--segment-len",
            "16",
            "--max-segments",
            "3",
            "--max-len",
            "120",
            "--device",
            "cpu",
            "--phases",
            phases,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let recs: Vec<ScoreRecord> = read_jsonl(&out);
        let mut truncated = 0;
        for (r, (_, c, x, y)) in recs.iter().zip(&f.samples) {
            let want = reference(
                &f.long,
                &RefShort::Model(&short, 2_000_000.0),
                (c, x, y),
                SEG,
                3,
                120,
            );
            truncated += usize::from(want.truncated);
            check_record(r, &want);
        }
        assert_eq!(recs.len(), 3);
        let side = format!("{}.short-pass.jsonl", p(&out));
        assert!(
            !Path::new(&side).exists(),
            "the phase-one file is removed at the end"
        );
        assert!(truncated > 0, "the fixture must exercise truncation");
    }
}

#[test]
fn bad_input_is_reported_with_line_and_reason() {
    let f = Fixture::new(1);
    let good = std::fs::read_to_string(&f.data).unwrap();
    let long_resp = "x".repeat(300);
    let mut data = good.into_bytes();
    for l in [
        "{not json".to_string(),
        r#"{"instruction":"q","input":"ctx"}"#.into(),
        r#"{"instruction":"q","input":"ctx","output":""}"#.into(),
        r#"{"id":"noctx","instruction":"q","output":"fine"}"#.into(),
        r#"{"id":"short","instruction":"q","input":"tiny context","output":"fine"}"#.into(),
        format!(r#"{{"id":"big","instruction":"q","input":"c","output":"{long_resp}"}}"#),
    ] {
        data.extend(l.as_bytes());
        data.push(b'\n');
    }
    data.extend(b"{\"instruction\":\"q\",\"output\":\"\xff\xfe\"}\n");
    data.extend(b"{\"id\":\"s0\",\"instruction\":\"q\",\"input\":\"a b\",\"output\":\"dup\"}\n");
    data.extend(b"[1,2]\n\n");
    std::fs::write(&f.data, &data).unwrap();
    let out = f.path("scores.jsonl");
    let mut args = f.args(&out);
    args.retain(|a| a != "--quiet");
    let at = args.iter().position(|a| a == "--max-len").unwrap();
    args[at + 1] = "200".into();
    let o = score(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let recs: Vec<ScoreRecord> = read_jsonl(&out);
    let by: Vec<(u64, Status, String)> = recs
        .iter()
        .map(|r| {
            (
                r.line,
                r.status,
                r.error.clone().unwrap_or_else(|| r.warnings.join("; ")),
            )
        })
        .collect();
    let expect: &[(u64, Status, &str)] = &[
        (0, Status::Ok, ""),
        (1, Status::Bad, "malformed JSON"),
        (2, Status::Bad, "missing field \"output\""),
        (3, Status::Bad, "empty response"),
        (4, Status::Ok, "no context: cas is null"),
        (
            5,
            Status::Ok,
            "context of 12 tokens has 0 segment(s) of 16: cas is null",
        ),
        (6, Status::Skipped, "too long"),
        (7, Status::Bad, "invalid UTF-8 at byte 29"),
        (8, Status::Bad, "duplicate id \"s0\" (first on line 0)"),
        (9, Status::Bad, "expected a JSON object"),
        (10, Status::Bad, "empty line"),
    ];
    assert_eq!(by.len(), expect.len(), "{by:?}");
    for ((line, st, why), (el, est, ewhy)) in by.iter().zip(expect) {
        assert_eq!((line, st), (el, est), "{why}");
        assert!(
            why.starts_with(ewhy),
            "line {line}: {why:?} should start with {ewhy:?}"
        );
    }
    assert_eq!(recs[4].cas, Some(None), "no context: cas null");
    let err = stderr(&o);
    for line in [1, 2, 3, 6, 7, 8, 9, 10] {
        assert!(
            err.contains(&format!("line {line} ")),
            "stderr names line {line}:\n{err}"
        );
    }
    assert!(err.contains("7 bad"), "{err}");
    assert!(err.contains("1 skipped"), "{err}");
}

#[test]
fn strict_stops_at_the_first_bad_line() {
    let f = Fixture::new(2);
    let mut text = std::fs::read_to_string(&f.data).unwrap();
    text.insert_str(0, "{broken\n");
    std::fs::write(&f.data, text).unwrap();
    let out = f.path("scores.jsonl");
    let mut args = f.args(&out);
    args.push("--strict".into());
    let o = score(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("line 0") && err.contains("malformed JSON") && err.contains("--strict"),
        "{err}"
    );
}

pub fn by_line(recs: Vec<ScoreRecord>) -> std::collections::BTreeMap<u64, ScoreRecord> {
    let mut m = std::collections::BTreeMap::new();
    for r in recs {
        assert!(m.insert(r.line, r).is_none(), "a line appears twice");
    }
    m
}

/// `src`'s first three records and half of the fourth, as after a kill mid-write.
fn cut_mid_record(src: &Path, dst: &Path) {
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = &lines[3][..lines[3].len() / 2];
    let cut = format!("{}\n{}\n{}\n{half}", lines[0], lines[1], lines[2]);
    std::fs::write(dst, cut).unwrap();
}

#[test]
fn resume_after_a_cut_equals_an_uninterrupted_run() {
    let f = Fixture::new(6);
    let full = f.path("full.jsonl");
    assert!(score(&f.args(&full)).status.success());
    let part = f.path("part.jsonl");
    cut_mid_record(&full, &part);
    // Without --resume the file is protected.
    let o = score(&f.args(&part));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let mut args = f.args(&part);
    args.push("--resume".into());
    let o = score(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (by_line(read_jsonl(&full)), by_line(read_jsonl(&part)));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (l, r) in &a {
        let s = &b[l];
        assert_eq!(r.id, s.id);
        assert_rel(
            s.ppl_long.unwrap(),
            r.ppl_long.unwrap(),
            1e-9,
            "resumed ppl_long",
        );
        assert_rel(
            s.ppl_short.unwrap(),
            r.ppl_short.unwrap(),
            1e-9,
            "resumed ppl_short",
        );
        assert_eq!(
            s.seg_ppl.as_ref().unwrap().len(),
            r.seg_ppl.as_ref().unwrap().len()
        );
    }
}

#[test]
fn shards_union_equals_the_unsharded_run() {
    let f = Fixture::new(7);
    let full = f.path("full.jsonl");
    assert!(score(&f.args(&full)).status.success());
    let mut union = std::collections::BTreeMap::new();
    for i in 0..3 {
        let out = f.path(&format!("shard{i}.jsonl"));
        let mut args = f.args(&out);
        args.extend(["--shard".into(), format!("{i}/3")]);
        let o = score(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        for r in read_jsonl::<ScoreRecord>(&out) {
            assert_eq!(r.line % 3, i, "shard {i} holds line {}", r.line);
            assert!(union.insert(r.line, r).is_none());
        }
    }
    let full = by_line(read_jsonl(&full));
    assert_eq!(full.len(), union.len());
    for (l, r) in &full {
        assert_rel(
            union[l].ppl_long.unwrap(),
            r.ppl_long.unwrap(),
            1e-9,
            "shard ppl_long",
        );
        assert_eq!(union[l].cas, r.cas);
    }
}

#[test]
fn resume_still_catches_duplicates_of_kept_records() {
    let f = Fixture::new(4);
    let mut text = std::fs::read_to_string(&f.data).unwrap();
    // Line 4 is malformed (its fallback id 4 is no scored id), line 5 repeats line 0's id,
    // line 6 uses id 4.
    text.push_str(
        "{broken\n{\"id\":\"s0\",\"instruction\":\"q\",\"input\":\"a b\",\"output\":\"again\"}\n",
    );
    text.push_str("{\"id\":4,\"instruction\":\"q\",\"input\":\"a b\",\"output\":\"five\"}\n");
    std::fs::write(&f.data, text).unwrap();
    let full = f.path("full.jsonl");
    assert_eq!(score(&f.args(&full)).status.code(), Some(2));
    let kept: Vec<String> = std::fs::read_to_string(&full)
        .unwrap()
        .lines()
        .take(5)
        .map(String::from)
        .collect();
    let part = f.path("part.jsonl");
    std::fs::write(&part, kept.join("\n") + "\n").unwrap();
    let mut args = f.args(&part);
    args.push("--resume".into());
    assert_eq!(score(&args).status.code(), Some(2));
    let (a, b) = (by_line(read_jsonl(&full)), by_line(read_jsonl(&part)));
    for (l, r) in &a {
        assert_eq!((r.status, &r.error), (b[l].status, &b[l].error), "line {l}");
    }
    assert_eq!(
        a[&5].error.as_deref(),
        Some("duplicate id \"s0\" (first on line 0)")
    );
    assert_eq!(
        a[&6].status,
        Status::Ok,
        "id 4 is new: the malformed line 4 had no id"
    );
}

/// The same arguments with two CPU workers instead of `--device cpu`.
pub fn with_workers(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--device" {
            it.next();
            out.extend(["--devices".to_string(), "cpu,cpu".to_string()]);
        } else {
            out.push(a);
        }
    }
    out
}

fn assert_same_records(
    a: &std::collections::BTreeMap<u64, ScoreRecord>,
    b: &std::collections::BTreeMap<u64, ScoreRecord>,
) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (l, r) in a {
        let s = &b[l];
        assert_eq!(
            (&r.id, r.status, &r.error),
            (&s.id, s.status, &s.error),
            "line {l}"
        );
        if r.status == Status::Ok {
            assert_rel(s.ppl_long.unwrap(), r.ppl_long.unwrap(), 1e-9, "ppl_long");
            assert_rel(
                s.ppl_short.unwrap(),
                r.ppl_short.unwrap(),
                1e-9,
                "ppl_short",
            );
            assert_eq!(s.seg_ppl, r.seg_ppl, "line {l} seg_ppl");
            assert_eq!(s.cas, r.cas, "line {l} cas");
        }
    }
}

#[test]
fn cpu_workers_equal_one_device_longest_first_and_resumable() {
    let f = Fixture::new(7);
    let mut text = std::fs::read_to_string(&f.data).unwrap();
    // A malformed line, then a repeat of line 0's id: decided in line order by both runs.
    text.push_str(
        "{broken\n{\"id\":\"s0\",\"instruction\":\"q\",\"input\":\"a b\",\"output\":\"x\"}\n",
    );
    std::fs::write(&f.data, text).unwrap();
    let one = f.path("one.jsonl");
    assert_eq!(score(&f.args(&one)).status.code(), Some(2));
    let two = f.path("two.jsonl");
    let o = score(&with_workers(f.args(&two)));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let (a, b) = (by_line(read_jsonl(&one)), by_line(read_jsonl(&two)));
    assert_same_records(&a, &b);
    assert_eq!(
        a[&8].error.as_deref(),
        Some("duplicate id \"s0\" (first on line 0)")
    );
    // Bad lines are written by the pre-pass; scored ones follow, longest first.
    let order: Vec<ScoreRecord> = read_jsonl(&two);
    let scored: Vec<usize> = order
        .iter()
        .filter(|r| r.status == Status::Ok)
        .map(|r| r.n_tokens.unwrap())
        .collect();
    assert!(scored.len() >= 2, "{scored:?}");
    // Each worker's first job is one of the two longest, so the first record is too.
    let mut sorted = scored.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert!(scored[0] >= sorted[1], "not longest first: {scored:?}");
    // Cut mid-record; resume with the workers.
    let part = f.path("part.jsonl");
    cut_mid_record(&two, &part);
    let mut args = with_workers(f.args(&part));
    args.push("--resume".into());
    assert_eq!(score(&args).status.code(), Some(2));
    assert_same_records(&a, &by_line(read_jsonl(&part)));
}

/// `--attention` (flag or config key) naming a kernel this build lacks stops before any
/// output, naming the feature to build with; in a CPU build both fused kernels are missing.
#[test]
fn attention_kernels_missing_from_the_build_are_named() {
    let f = Fixture::new(1);
    let out = f.path("scores.jsonl");
    let config = f.path("cudnn.json");
    std::fs::write(&config, r#"{"attention": "cudnn"}"#).unwrap();
    let cases: [(&[&str], &str, bool); 3] = [
        (&["--attention", "cudnn"], "cudnn", cfg!(feature = "cudnn")),
        (
            &["--attention", "flash"],
            "flash-attn",
            cfg!(feature = "flash-attn"),
        ),
        (&["--config", p(&config)], "cudnn", cfg!(feature = "cudnn")),
    ];
    for (extra, feature, built) in cases {
        if built {
            continue;
        }
        let mut args = f.args(&out);
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = score(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        assert!(
            err.contains(&format!("--features {feature}")),
            "{extra:?}: {err}"
        );
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
}
