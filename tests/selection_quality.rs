//! Selection quality: `gateau eval` on hand-worked records, the default recipe through
//! `select` on hand-made score files, and the probe generator's determinism and labels.

use crate::common::{p, run, stderr};
use serde_json::{json, Value};
use std::path::Path;

fn e(x: f64) -> f64 {
    x.exp()
}

/// A scored record with everything the recipes read.
fn record(line: u64, ps: f64, pl: f64, seg_ln: [f64; 4]) -> Value {
    json!({
        "id": format!("s{line}"), "line": line, "status": "ok",
        "n_tokens": 600 + line, "n_ctx": 512, "n_resp": 10, "truncated": false,
        "ppl_short": ps, "ppl_long": pl,
        "seg_ppl": seg_ln.iter().map(|&v| e(v)).collect::<Vec<_>>(),
        "seg_attn": [0.001, 0.002, 0.001, 0.003],
        "cas": 0.5,
        // Model A reads the last 200 context tokens: segments 0 and 1 lie beyond it.
        "seg_start": [0, 128, 256, 384], "seg_len": 128, "ctx_short": 200,
    })
}

fn write_case(dir: &Path, recs: &[Value], labels: &[&str]) -> (String, String) {
    let data = dir.join("data.jsonl");
    let scores = dir.join("scores.jsonl");
    let mut d = String::new();
    for (i, l) in labels.iter().enumerate() {
        d += &json!({"id": format!("s{i}"), "context": "c", "instruction": "x",
                     "response": "y", "label": l})
        .to_string();
        d.push('\n');
    }
    let s: String = recs.iter().map(|r| r.to_string() + "\n").collect();
    std::fs::write(&data, d).unwrap();
    std::fs::write(&scores, s).unwrap();
    (
        data.to_str().unwrap().to_string(),
        scores.to_str().unwrap().to_string(),
    )
}

#[test]
fn eval_reports_auroc_and_precision_worked_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let flat = [3.0; 4];
    // ln(ppl_short / ppl_long): ln 4, 0, ln 2, 0, ln 2.5, ln 3.
    let recs: Vec<Value> = [
        (8.0, 2.0),
        (3.0, 3.0),
        (4.0, 2.0),
        (2.0, 2.0),
        (5.0, 2.0),
        (9.0, 3.0),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(a, b))| record(i as u64, a, b, flat))
    .collect();
    let labels = ["far", "none", "near", "far", "none", "diffuse"];
    let (data, scores) = write_case(dir.path(), &recs, &labels);
    let json_out = dir.path().join("eval.json");
    let plots = dir.path().join("plots");
    let o = run(&[
        "eval",
        "--data",
        &data,
        "--scores",
        &scores,
        "--positive",
        "far,diffuse",
        "--ratios",
        "0.5",
        "--json",
        p(&json_out),
        "--plots",
        p(&plots),
        "--ratio",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    let lr = v["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hmg log-ratio")
        .unwrap();
    // Positives {ln 4, 0, ln 3} against negatives {0, ln 2, ln 2.5}: 3 + 0.5 + 3 of 9 pairs.
    assert!((lr["auroc"].as_f64().unwrap() - 6.5 / 9.0).abs() < 1e-12);
    // Top ceil(0.5 * 6) = 3: ln 4 (far), ln 3 (diffuse), ln 2.5 (none).
    assert!((lr["precision"]["0.5"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    // far against none: {ln 4, 0} vs {0, ln 2.5}: 2 + 0.5 of 4 pairs.
    assert!((lr["pairs"]["far/none"].as_f64().unwrap() - 0.625).abs() < 1e-12);
    assert_eq!(v["n"], 6);
    assert_eq!(v["labels"]["none"], 2);
    // Every segment equally useful: the far gain is 0 for all -> AUROC 0.5 (all tied).
    let fg = v["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cam far-gain")
        .unwrap();
    assert_eq!(fg["auroc"].as_f64(), Some(0.5));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("recipe long-range (default)"), "{text}");
    for png in ["roc.png", "precision.png"] {
        let (w, h, colours) = crate::reports::png_pixels(&plots.join(png));
        assert_eq!((w, h), (1000, 700));
        // The first two palette colours (orange, blue) are drawn.
        assert!(colours.contains(&[230, 120, 20]) && colours.contains(&[70, 110, 180]));
    }
    // A label no sample has is refused, naming the values found.
    let o = run(&[
        "eval",
        "--data",
        &data,
        "--scores",
        &scores,
        "--positive",
        "deep",
        "--ratio",
        "0.5",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("diffuse, far, near, none"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn default_recipe_ranks_long_range_use_worked_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // ln seg_ppl; segments 0, 1 are beyond model A's window.
    let recs = vec![
        record(0, 8.0, 2.0, [3.0, 1.0, 3.0, 3.0]), // far gain 3 - 1 = 2
        record(1, 8.0, 2.0, [3.0, 3.0, 3.0, 0.5]), // best segment is near: far gain 0
        record(2, 3.0, 2.0, [0.5, 3.0, 3.0, 3.0]), // far gain 2.5
        record(3, 2.0, 2.0, [3.0; 4]),             // 0
    ];
    let (data, scores) = write_case(dir.path(), &recs, &["a", "b", "c", "d"]);
    let select = |extra: &[&str]| -> Value {
        let rep = dir.path().join("rep.json");
        let out = dir.path().join("sel.jsonl");
        let mut a = vec![
            "select",
            "--data",
            &data,
            "--scores",
            &scores,
            "--ratio",
            "0.5",
            "--out",
            p(&out),
            "--report",
            p(&rep),
            "--overwrite",
            "-q",
        ];
        a.extend_from_slice(extra);
        let o = run(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
    };
    let lines = |r: &Value| -> Vec<u64> {
        r["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["line"].as_u64().unwrap())
            .collect()
    };
    // HMG ranks: d 0, c 1/3, a = b 2.5/3; far-gain ranks: b = d 0.5/3, a 2/3, c 1.
    // alpha 0.8: a 0.8, b 0.7, c 0.4667, d 0.0333.
    let r = select(&["--alpha", "0.8"]);
    assert_eq!(lines(&r), vec![0, 1, 2, 3]);
    let s0 = &r["samples"][0];
    assert!((s0["score"].as_f64().unwrap() - 0.8).abs() < 1e-12);
    assert!((s0["hmp"].as_f64().unwrap() - 4f64.ln()).abs() < 1e-12);
    assert!((s0["cas"].as_f64().unwrap() - 2.0).abs() < 1e-12);
    // alpha keeps its meaning: at 0.5 the CAM part lifts c above b (0.667 vs 0.5).
    assert_eq!(lines(&select(&["--alpha", "0.5"])), vec![0, 2, 1, 3]);
    // Any segment's gain (recipe context): b's near segment counts (gain 2.5). Gain
    // ranks: d 0, a 1/3, b = c 2.5/3; alpha 0.5: b 0.833, a = c 0.583 (line order), d 0.
    let r = select(&["--alpha", "0.5", "--recipe", "context"]);
    assert_eq!(lines(&r), vec![1, 0, 2, 3]);
    assert!((r["samples"][0]["cas"].as_f64().unwrap() - 2.5).abs() < 1e-12);
    // Key tokens need per-token NLL: refused, naming the line and the fix.
    let o = run(&[
        "select",
        "--data",
        &data,
        "--scores",
        &scores,
        "--ratio",
        "0.5",
        "--recipe",
        "key-tokens",
        "--out",
        p(&dir.path().join("k.jsonl")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("line 0") && err.contains("--token-nll"),
        "{err}"
    );
}

/// Documents of made-up sentences (the labels' invariants do not depend on the text).
fn write_docs(dir: &Path) {
    let words: Vec<String> = (0..300)
        .map(|i| {
            let syl = [
                "ka", "lo", "mi", "ren", "sto", "vu", "del", "an", "por", "te",
            ];
            format!(
                "{}{}{}",
                syl[i % 10],
                syl[(i / 10) % 10],
                syl[(i / 100) % 10]
            )
        })
        .collect();
    let mut rng = crate::common::Rng::new(11);
    for d in 0..12 {
        let mut text = format!("Document {d} about {}\n\n", words[d * 7]);
        for _ in 0..10 {
            for _ in 0..4 {
                let n = 14 + rng.below(12);
                let mut s: Vec<String> = (0..n).map(|_| words[rng.below(300)].clone()).collect();
                let mut c = s[0].chars();
                s[0] = c.next().unwrap().to_uppercase().chain(c).collect();
                text += &(s.join(" ") + ". ");
            }
            text += "\n\n";
        }
        std::fs::write(dir.join(format!("{d:02}.txt")), text).unwrap();
    }
}

#[test]
fn probe_is_deterministic_and_its_labels_hold_by_construction() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    write_docs(&docs);
    let gguf = crate::smollm2::gguf();
    let make = |seed: &str, name: &str| -> Vec<u8> {
        let out = dir.path().join(name);
        let o = run(&[
            "probe",
            "--docs",
            p(&docs),
            "--long-model",
            p(gguf),
            "--out",
            p(&out),
            "--n",
            "10",
            "--seed",
            seed,
            "--min-tokens",
            "1024",
            "--max-tokens",
            "2048",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    let a = make("3", "a.jsonl");
    assert_eq!(a, make("3", "b.jsonl"), "same seed, same bytes");
    assert_ne!(a, make("4", "c.jsonl"), "another seed, another set");
    let spec = gateau::checkpoint::ModelSpec {
        location: p(gguf).into(),
        tokenizer: None,
        rope_theta: None,
    };
    let (cfg, tok) = gateau::checkpoint::describe_model(&spec).unwrap();
    let bos = usize::from(cfg.bos_token_id.is_some());
    let count = |t: &str| tok.encode(t, false).unwrap().get_ids().len();
    let mut kinds = std::collections::BTreeMap::new();
    for line in String::from_utf8(a).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let kind = v["label"].as_str().unwrap().to_string();
        *kinds.entry(kind.clone()).or_insert(0) += 1;
        let u = v["messages"][0]["content"].as_str().unwrap();
        let y = v["messages"][1]["content"].as_str().unwrap();
        // The reader's split (spec section 1): instruction after the last "\n\n".
        let x = &u[u.rfind("\n\n").unwrap() + 2..];
        let c = &u[..u.len() - x.len()];
        let enc = tok.encode(c, false).unwrap();
        let offs = enc.get_offsets();
        let n = offs.len();
        assert_eq!(v["n_ctx_tokens"].as_u64().unwrap() as usize, n);
        assert!((1024..=2048).contains(&n), "{n}");
        let span = |text: &str| {
            let at = c.find(text).unwrap();
            let first = offs.iter().position(|o| o.1 > at).unwrap();
            let end = offs.iter().rposition(|o| o.0 < at + text.len()).unwrap() + 1;
            (first, end)
        };
        let stated: Vec<(usize, usize)> = v["passages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                (
                    q["start"].as_u64().unwrap() as usize,
                    q["end"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        let mid = count(&format!("\n\n### Instruction:\n{x}\n\n### Response:\n"));
        let seen = 512usize.saturating_sub(bos + count(y) + mid);
        match kind.as_str() {
            "far" | "near" => {
                assert_eq!(c.matches(y).count(), 1, "the passage occurs once");
                let (a0, b0) = span(y);
                assert_eq!(stated, vec![(a0, b0)]);
                if kind == "far" {
                    assert!(
                        n - b0 >= 768 && b0 + seen <= n,
                        "far: ends {} before",
                        n - b0
                    );
                } else {
                    assert!(a0 >= n - seen, "near: inside the window");
                }
            }
            "far-multi" => {
                let parts: Vec<&str> = y.lines().collect();
                assert!((2..=3).contains(&parts.len()));
                let spans: Vec<(usize, usize)> = parts
                    .iter()
                    .map(|q| {
                        assert_eq!(c.matches(q).count(), 1);
                        span(q)
                    })
                    .collect();
                assert_eq!(stated, spans);
                for w in spans.windows(2) {
                    assert!(w[1].0 >= w[0].1 + 256, "far apart: {w:?}");
                }
                assert!(spans.iter().all(|s| n - s.1 >= 768));
            }
            "diffuse" => {
                let titles: Vec<&str> = y.lines().map(|l| l.split_once(". ").unwrap().1).collect();
                assert!(titles.len() >= 3);
                let mut last = 0;
                for t in titles {
                    let h = format!("## {t}\n");
                    assert_eq!(c.matches(&h).count(), 1);
                    let at = c.find(&h).unwrap();
                    assert!(at >= last, "titles in order");
                    last = at;
                }
            }
            "none" => {
                assert!(!c.contains(y));
                let w: Vec<&str> = y.split_whitespace().collect();
                assert!(w.windows(8).all(|r| !c.contains(&r.join(" "))));
            }
            other => panic!("unknown label {other}"),
        }
    }
    assert!(kinds.values().all(|&k| k == 2), "{kinds:?}");
}
