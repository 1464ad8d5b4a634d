//! `gateau score --dry-run`: token counts of every pass against a count made here by hand
//! (the byte-level test tokenizer: one token per byte), and the time estimate against the
//! rates it prints.

use crate::common::*;
use crate::smollm2::root;
use serde_json::{json, Value};

const HEAD: &str = "### Input:\n";
const W: usize = 48;
const L: usize = 16;
const MAX_SEGMENTS: usize = 3;
const MAX_LEN: usize = 400;

/// (|S|, truncated, window, alone, segments, segment length).
type Hand = (usize, bool, usize, usize, usize, usize);

/// What one sample's passes are by hand: (|S|, truncated, window, alone, segments, seg len).
fn hand(c: &str, x: &str, y: &str) -> Option<Hand> {
    let mid = format!("\n\n### Instruction:\n{x}\n\n### Response:\n").len();
    let (head, resp) = (HEAD.len(), y.len());
    let fixed = 1 + head + mid + resp;
    if fixed > MAX_LEN {
        return None;
    }
    let ctx = c.len().min(MAX_LEN - fixed);
    let s = fixed + ctx;
    // Window: BOS + the last (W - 1 - resp) prompt tokens + resp.
    let prompt = head + ctx + mid;
    let window = 1 + (W - 1 - resp).min(prompt) + resp;
    let segments = (ctx / L).min(MAX_SEGMENTS);
    Some((
        s,
        c.len() > ctx,
        window,
        1 + resp,
        segments,
        1 + head + L + mid + resp,
    ))
}

#[test]
fn dry_run_counts_match_a_hand_count_and_time_adds_up() {
    let dir = tmp();
    let model = dir.path().join("long");
    Tiny::random(42, 4, 2, false).write(&model, false);
    // No weights are read: a broken weight file does not matter.
    std::fs::write(model.join("model.safetensors"), b"not weights").unwrap();
    let samples = [
        (
            "a",
            "river stone amber lantern orbit quiet meadow.",
            "q0?",
            "yes",
        ),
        (
            "b",
            &"copper signal harbor ".repeat(10)[..],
            "q1?",
            "an answer",
        ),
        ("c", &"velvet ember north ".repeat(60)[..], "q2?", "tide"),
        ("d", "ctx", "q3?", &"z".repeat(500)[..]),
    ];
    let mut lines: Vec<String> = samples
        .iter()
        .map(|(id, c, x, y)| {
            json!({"id": id, "instruction": x, "input": c, "output": y}).to_string()
        })
        .collect();
    lines.push("not json".into());
    lines.push(json!({"id": "a", "instruction": "q", "input": "c", "output": "o"}).to_string());
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let json_out = dir.path().join("dry.json");
    let (w, l, ms, ml) = (
        W.to_string(),
        L.to_string(),
        MAX_SEGMENTS.to_string(),
        MAX_LEN.to_string(),
    );
    let o = run(&[
        "score",
        "--data",
        p(&data),
        "--long-model",
        p(&model),
        "--short-window",
        &w,
        "--segment-len",
        &l,
        "--max-segments",
        &ms,
        "--max-len",
        &ml,
        "--with-ifd",
        "--device",
        "cpu",
        "--dry-run",
        "--json",
        p(&json_out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    eprintln!("{text}");
    assert!(text.contains("estimated time on one NVIDIA H200"), "{text}");
    // The rates' source is named, and it is a file of this repository.
    let from = text.find("docs/bench/").expect("the rates' source file");
    let to = from + text[from..].find(".jsonl").expect("a .jsonl file") + ".jsonl".len();
    assert!(
        root().join(&text[from..to]).is_file(),
        "{}",
        &text[from..to]
    );
    // No --out was made (nor its default name).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["data.jsonl", "dry.json", "long"]);

    let d: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    let counts = &d["counts"];
    assert_eq!(counts["lines"], 6);
    assert_eq!(counts["ready"], 3);
    assert_eq!(counts["skipped_too_long"], 1);
    assert_eq!(counts["bad"], 2, "not JSON, and a duplicate id");
    let hs: Vec<_> = samples.iter().map(|(_, c, x, y)| hand(c, x, y)).collect();
    assert!(hs[3].is_none());
    let ready: Vec<_> = hs.iter().flatten().collect();
    assert_eq!(
        counts["truncated"],
        ready.iter().filter(|h| h.1).count() as u64
    );
    assert_eq!(counts["truncated"], 1, "the fixture truncates sample c");
    assert_eq!(
        counts["tokens"],
        ready.iter().map(|h| h.0).sum::<usize>() as u64
    );
    assert_eq!(d["histogram"][0]["band"], "<2k");
    assert_eq!(d["histogram"][0]["samples"], 3);

    let phase = |name: &str| -> (u64, u64) {
        let p = d["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap_or_else(|| panic!("no phase {name}: {}", d["phases"]));
        (p["passes"].as_u64().unwrap(), p["tokens"].as_u64().unwrap())
    };
    let sum = |f: &dyn Fn(&Hand) -> usize| ready.iter().map(|h| f(h)).sum::<usize>() as u64;
    assert_eq!(
        phase("long full pass + attention capture"),
        (3, sum(&|h| h.0))
    );
    assert_eq!(phase("short window pass"), (3, sum(&|h| h.2)));
    assert_eq!(phase("response alone (IFD)"), (3, sum(&|h| h.3)));
    assert_eq!(
        phase("segment passes"),
        (sum(&|h| h.4), sum(&|h| h.4 * h.5))
    );
    assert_eq!(sum(&|h| h.4), 2 + 3 + 3, "45 / 16, then the cap of 3 twice");

    // The estimate is the sum of tokens / rate over the phases it prints.
    let mut total = 0.0;
    for p in d["phases"].as_array().unwrap() {
        let (tokens, rate, secs) = (
            p["tokens"].as_f64().unwrap(),
            p["tok_per_s"].as_f64().unwrap(),
            p["seconds"].as_f64().unwrap(),
        );
        assert!(rate > 0.0);
        assert_rel(tokens / rate, secs, 1e-9, "phase seconds");
        total += tokens / rate;
    }
    assert_rel(
        d["estimate"]["seconds"].as_f64().unwrap(),
        total,
        1e-9,
        "estimate",
    );
    assert_eq!(d["estimate"]["gpu"], "NVIDIA H200 (bf16, cuDNN attention)");
    assert_eq!(d["memory"]["phases"], "one");
    assert_eq!(d["memory"]["batch_tokens"], 65536);
}

#[test]
fn dry_run_json_needs_dry_run() {
    let o = run(&["score", "--json", "x.json", "--data", "d.jsonl"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--dry-run"), "{}", stderr(&o));
}

/// `--dtype fp8` holds an E4M3 twin of the long model's projections beside its bf16
/// weights; the memory plan counts one byte per projection weight more than bf16's. The
/// qwen3 fixture: 2 layers of q and o (64 x 64), k and v (32 x 64), gate, up and down
/// (128 x 64): 2 x (8192 + 4096 + 24576) = 73,728 bytes.
#[test]
fn the_fp8_memory_plan_counts_the_twin() {
    let dir = tmp();
    let fams = crate::families::families();
    let plan = |dtype: &str| -> Value {
        let json_out = dir.path().join(format!("{dtype}.json"));
        let o = run(&[
            "score",
            "--data",
            p(&fams.join("data.jsonl")),
            "--long-model",
            p(&fams.join("qwen3")),
            "--short-window",
            "96",
            "--dtype",
            dtype,
            "--dry-run",
            "--json",
            p(&json_out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
        d["memory"].clone()
    };
    let (b, f) = (plan("bf16"), plan("fp8"));
    assert_eq!(
        (b["dtype"].as_str(), f["dtype"].as_str()),
        (Some("bf16"), Some("fp8"))
    );
    let bytes = |m: &Value| m["one_phase_bytes"].as_u64().unwrap();
    assert_eq!(
        bytes(&f) - bytes(&b),
        2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)
    );
}
