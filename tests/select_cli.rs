//! `gateau select` on hand-made score records (the expected ranking is worked out here,
//! independently of the library), and end to end after `score`.

use crate::common::*;
use crate::score_cli::{score, Fixture};
use serde_json::{json, Value};

/// Eq. 6 written out again for the hand-made records below.
fn expected_scores(short: &[f64], long: &[f64], cas: &[f64], alpha: f64) -> Vec<f64> {
    let mm = |x: &[f64]| {
        let (lo, hi) = x
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(*v), h.max(*v))
            });
        x.iter().map(|v| (v - lo) / (hi - lo)).collect::<Vec<_>>()
    };
    let sm = |x: &[f64]| {
        let z: f64 = x.iter().map(|v| v.exp()).sum();
        x.iter().map(|v| v.exp() / z).collect::<Vec<_>>()
    };
    let hmp: Vec<f64> = mm(short).iter().zip(mm(long)).map(|(a, b)| a - b).collect();
    let (a, b) = (sm(&hmp), sm(cas));
    a.iter()
        .zip(b)
        .map(|(x, y)| alpha * x + (1.0 - alpha) * y)
        .collect()
}

struct Case {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    lines: Vec<String>,
}

fn ok(line: u64, id: &str, ps: f64, pl: f64, sp: &[f64], sa: &[f64]) -> Value {
    json!({"id": id, "line": line, "status": "ok", "n_tokens": 100 + line, "n_ctx": 50,
           "n_resp": 5, "truncated": false, "ppl_short": ps, "ppl_long": pl,
           "seg_ppl": sp, "seg_attn": sa, "cas": null})
}

/// Data: a, b, (bad), c, d (no final newline on d's line is added later), e (dup id), f (unscored).
fn case() -> Case {
    let dir = tmp();
    let lines: Vec<String> = ["a", "b", "bad", "c", "d", "a", "f"]
        .iter()
        .map(|id| {
            json!({"id": id, "instruction": "q", "input": "c", "output": format!("answer {id}")})
                .to_string()
        })
        .collect();
    let data = dir.path().join("data.jsonl");
    // The last line has no newline: a selected one must get one in the output.
    std::fs::write(&data, lines.join("\n")).unwrap();
    let recs = [
        ok(0, "a", 4.0, 2.0, &[1.0, 1.0], &[1.0, 1.0]),
        ok(1, "b", 2.0, 2.0, &[1.0, 3.0], &[3.0, 1.0]),
        json!({"id": "bad", "line": 2, "status": "bad", "error": "empty response"}),
        ok(3, "c", 3.0, 1.0, &[], &[]),
        ok(4, "d", 2.0, 4.0, &[2.0, 2.0], &[1.0, 3.0]),
    ];
    let shard0: Vec<String> = recs.iter().map(|r| r.to_string()).collect();
    std::fs::write(dir.path().join("s0.jsonl"), shard0.join("\n") + "\n").unwrap();
    // A second shard: line 5 repeats id "a"; line 6 has no record.
    let dup = ok(5, "a", 9.0, 1.0, &[1.0, 1.0], &[1.0, 1.0]);
    std::fs::write(dir.path().join("s1.jsonl"), dup.to_string() + "\n").unwrap();
    Case { dir, data, lines }
}

fn select(c: &Case, extra: &[&str]) -> (std::process::Output, String, Value) {
    let out = c.dir.path().join("sel.jsonl");
    let rep = c.dir.path().join("report.json");
    let s0 = c.dir.path().join("s0.jsonl");
    let s1 = c.dir.path().join("s1.jsonl");
    let mut args = vec![
        "select",
        "--data",
        p(&c.data),
        "--scores",
        p(&s0),
        p(&s1),
        "--out",
        p(&out),
        "--report",
        p(&rep),
        "--alpha",
        "0.8",
        "--hmg-norm",
        "minmax",
        "--cam-norm",
        "l1",
        "--recipe",
        "paper",
        "--quiet",
        // Line 6 has no record, and the helper writes the same files again and again.
        "--allow-missing",
        "--overwrite",
    ];
    args.extend(extra);
    let o = run(&args);
    let sel = std::fs::read_to_string(&out).unwrap_or_default();
    let report = std::fs::read_to_string(&rep)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(Value::Null);
    (o, sel, report)
}

#[test]
fn ranking_output_bytes_and_report() {
    let c = case();
    // CAS under l1: a 1, b 0.6, c null -> min 0.6, d cos([.5,.5],[.25,.75]) = 0.5/sqrt(0.5*0.625).
    let d_cas = 0.5 / (0.5f64 * 0.625).sqrt();
    let want = expected_scores(
        &[4.0, 2.0, 3.0, 2.0],
        &[2.0, 2.0, 1.0, 4.0],
        &[1.0, 0.6, 0.6, d_cas],
        0.8,
    );
    // Worked out: a 0.395, c 0.323, b 0.164, d 0.118.
    let (o, sel, rep) = select(&c, &["--ratio", "0.75"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "bad/missing/duplicate samples were reported: {}",
        stderr(&o)
    );
    assert_eq!(
        sel,
        format!("{}\n{}\n{}\n", c.lines[0], c.lines[3], c.lines[1])
    );
    let samples = rep["samples"].as_array().unwrap();
    let order: Vec<u64> = samples
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(order, vec![0, 3, 1, 4]);
    for (s, w) in samples.iter().zip([want[0], want[2], want[1], want[3]]) {
        assert!(
            (s["score"].as_f64().unwrap() - w).abs() < 1e-12,
            "{s} vs {w}"
        );
    }
    assert!((samples[3]["cas"].as_f64().unwrap() - d_cas).abs() < 1e-12);
    assert!(samples[1]["cas"].is_null(), "c had no segments");
    let counts = &rep["counts"];
    assert_eq!(counts["lines"], 7);
    assert_eq!(counts["scored"], 4);
    assert_eq!(counts["selected"], 3);
    assert_eq!(counts["bad"], 1);
    assert_eq!(counts["missing"], 1);
    assert_eq!(counts["duplicate_ids"], 1);
    assert_eq!(rep["bad"][0]["line"], 2);
    assert_eq!(rep["bad"][0]["reason"], "empty response");
    assert_eq!(rep["missing_lines"], json!([6]));
    assert_eq!(
        rep["duplicate_ids"][0],
        json!({"id": "a", "kept_line": 0, "dropped_lines": [5]})
    );
    assert!((rep["cutoff_score"].as_f64().unwrap() - want[1]).abs() < 1e-12);
}

#[test]
fn top_keep_order_and_missing_final_newline() {
    let c = case();
    let (_, sel, _) = select(&c, &["--top", "2", "--keep-order"]);
    assert_eq!(sel, format!("{}\n{}\n", c.lines[0], c.lines[3]));
    // All four: d (last line, no newline in the input) gets one.
    let (_, sel, _) = select(&c, &["--top", "10"]);
    assert_eq!(
        sel,
        format!(
            "{}\n{}\n{}\n{}\n",
            c.lines[0], c.lines[3], c.lines[1], c.lines[4]
        )
    );
    // ceil(0.3 * 4) = 2; ceil(0.5 * 4) = 2 exactly.
    for (r, n) in [("0.3", 2), ("0.5", 2), ("0.51", 3), ("0", 0)] {
        let (_, sel, _) = select(&c, &["--ratio", r]);
        assert_eq!(sel.lines().count(), n, "ratio {r}");
    }
}

#[test]
fn refuses_to_overwrite_inputs_and_strict_fails() {
    let c = case();
    let s0 = c.dir.path().join("s0.jsonl");
    let o = run(&[
        "select",
        "--data",
        p(&c.data),
        "--scores",
        p(&s0),
        "--out",
        p(&c.data),
        "--ratio",
        "0.5",
        "--alpha",
        "0.8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );
    let (o, _, _) = select(&c, &["--ratio", "0.5", "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--strict"), "{}", stderr(&o));
}

#[test]
fn design_card_command_works_with_a_config() {
    let f = Fixture::new(10);
    let scores = f.path("data.scores.jsonl");
    let o = score(&f.args(&scores));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = f.path("gateau.json");
    std::fs::write(&cfg, json!({"data": p(&f.data)}).to_string()).unwrap();
    let o = gateau()
        .args(["select", "--ratio", "0.3", "--alpha", "0.8"])
        .env("GATEAU_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let sel = std::fs::read_to_string(f.path("data.selected.jsonl")).unwrap();
    assert_eq!(sel.lines().count(), 3, "ceil(0.3 * 10)");
    let data = std::fs::read_to_string(&f.data).unwrap();
    for l in sel.lines() {
        assert!(
            data.lines().any(|d| d == l),
            "selected lines are input lines"
        );
    }
    let err = stderr(&o);
    assert!(err.contains("kept 3 of 10"), "{err}");
}
