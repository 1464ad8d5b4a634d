//! `gateau bench --mix` / `--lengths` on the CPU: one JSON line per sample and a total that
//! adds up, the built-in mix printed without a model, bad --lengths lines named by
//! file:line, and scripts/mix-table.py on hand-made lines (when python3 is there).

use crate::common::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn bench_mix_times_every_sample_of_a_lengths_file() {
    let dir = tmp();
    let lengths = dir.path().join("mix.txt");
    // --mid 8, L = 64: 200 tokens with a 16-token response leave 175 context tokens, 2
    // segments of 1 + 64 + 8 + 16 = 89 tokens; 300 / 24: 267, 4 segments of 97.
    std::fs::write(&lengths, "# tokens response\n200 16\n300 24\n").unwrap();
    let json = dir.path().join("mix.jsonl");
    let o = run(&[
        "bench",
        "--shape",
        "smollm2-135m",
        "--device",
        "cpu",
        "--lengths",
        p(&lengths),
        "--mid",
        "8",
        "--segment-len",
        "64",
        "--warmup",
        "0",
        "--json",
        p(&json),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = read_jsonl(&json);
    assert_eq!(lines.len(), 3);
    let (samples, total) = (&lines[..2], &lines[2]);
    let want = [(200, 16, 175, 2, 89), (300, 24, 267, 4, 97)];
    for (i, (r, w)) in samples.iter().zip(want).enumerate() {
        assert_eq!(r["phase"], "mix sample");
        assert_eq!(r["sample"], i + 1);
        assert_eq!(r["dtype"], "f32");
        assert_eq!(r["shape"], "smollm2-135m");
        assert_eq!(r["attention"], "chunked");
        let got = ["tokens", "resp", "ctx", "segments", "segment_tokens"].map(|k| r[k].clone());
        assert_eq!(
            got,
            [w.0, w.1, w.2, w.3, w.4].map(Value::from),
            "sample {}",
            i + 1
        );
        // Both full passes and every segment.
        assert_eq!(r["model_tokens"], 2 * w.0 + w.3 * w.4);
        let secs = r["seconds"].as_f64().unwrap();
        assert!(secs > 0.0);
        let rate = w.0 as f64 / secs;
        assert_rel(r["tokens_per_s"].as_f64().unwrap(), rate, 1e-9, "tokens/s");
    }
    let sum: f64 = samples.iter().map(|r| r["seconds"].as_f64().unwrap()).sum();
    assert_eq!(total["phase"], "mix total");
    assert_eq!(total["samples"], 2);
    assert_eq!(total["tokens"], 500);
    assert_eq!(total["dtype"], "f32");
    assert_eq!(total["lengths"], serde_json::json!([[200, 16], [300, 24]]));
    assert_rel(total["seconds"].as_f64().unwrap(), sum, 1e-12, "total");
    let per_hour = total["samples_per_hour"].as_f64().unwrap();
    assert_rel(per_hour, 3600.0 * 2.0 / sum, 1e-9, "samples per hour");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}, 2 samples", p(&lengths))),
        "{err}"
    );
    assert!(err.contains("samples per hour"), "{err}");
}

#[test]
fn the_built_in_mix_prints_without_a_model() {
    let o = run(&["bench", "--mix", "longalign", "--print", "lengths"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let mix: Vec<(usize, usize)> = text
        .lines()
        .map(|l| {
            let f: Vec<usize> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (f[0], f[1])
        })
        .collect();
    assert_eq!(mix.len(), 20, "the default --mix-samples");
    assert!(mix
        .iter()
        .all(|&(t, r)| (8192..65536).contains(&t) && r < t));
    // Printed as a --lengths file, the mix reads back as itself.
    let dir = tmp();
    let file = dir.path().join("mix.txt");
    std::fs::write(&file, &text).unwrap();
    let again = run(&["bench", "--lengths", p(&file), "--print", "lengths"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);

    let o = run(&[
        "bench",
        "--mix",
        "longalign",
        "--mix-samples",
        "8",
        "--print",
        "torch-args",
        "--anchor-points",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let args = String::from_utf8(o.stdout).unwrap();
    assert_eq!(args.lines().count(), 3, "{args}");
    assert!(args
        .lines()
        .all(|l| l.starts_with("--ctx ") && l.ends_with(" --mid 64 --seg-len 128")));
}

#[test]
fn a_bad_lengths_line_is_an_error_naming_file_and_line() {
    let dir = tmp();
    let file = dir.path().join("mix.txt");
    std::fs::write(&file, "16384 512\n\n16384 five\n").unwrap();
    let o = run(&["bench", "--device", "cpu", "--lengths", p(&file)]);
    assert_eq!(o.status.code(), Some(1));
    let want = format!("{}:3: RESPONSE \"five\"", p(&file));
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
}

/// scripts/mix-table.py on two gateau runs and torch lines at two points, against figures
/// computed by hand (skipped without python3).
#[test]
fn mix_table_assembles_torch_per_sample_from_its_phase_rates() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: mix-table.py not checked");
        return;
    }
    let dir = tmp();
    // Torch at T = 1000 (response 110) and 4000 (440): eager full rates 1000 and 250 tok/s
    // (1e6 / T), compiled slower; the capture's extra over the eager full pass 0.5 s and
    // 8 s, i.e. 0.5 / (110 x 1000) per response row and key at both; segment rates 1000
    // eager, 2500 compiled.
    let phases = |ctx: usize, resp: usize, compiled: bool, t: usize, s: [f64; 3], ts: usize| {
        let base = serde_json::json!({"ctx": ctx, "resp": resp, "compiled": compiled});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v.to_string()
        };
        [
            with(serde_json::json!({"phase": "full pass (no capture)", "tokens": t, "seconds": s[0]})),
            with(serde_json::json!({"phase": "long full pass + attention capture", "tokens": t, "seconds": s[1]})),
            with(serde_json::json!({"phase": "segment passes (batch 4)", "tokens": 4 * ts, "seconds": s[2], "seq": ts, "nseq": 4})),
        ]
        .join("\n")
    };
    let torch = [
        phases(879, 110, false, 1000, [1.0, 1.5, 0.884], 221),
        phases(879, 110, true, 1000, [2.0, 1.6, 0.3536], 221),
        phases(3549, 440, false, 4000, [16.0, 24.0, 2.204], 551),
        phases(3549, 440, true, 4000, [40.0, 25.0, 0.8816], 551),
    ]
    .join("\n");
    // Sample 1 is the first point: 1 + 1.5 + 8 x 221 / 2500 = 3.2072 s. Sample 2, T = 2000,
    // r = 220: full 2000 / 500 = 4, capture 4 + 0.5 / 110000 x 220 x 2000 = 6, segments
    // 17 x 331 / 2500 = 2.2508: 12.2508 s. Torch: 15.458 s, 7200 / 15.458 = 465.8 per hour.
    let gateau = |dtype: &str, secs: [f64; 2]| {
        let s = [(1000, 110, 8, 221), (2000, 220, 17, 331)];
        let mut lines: Vec<String> = s
            .iter()
            .zip(secs)
            .enumerate()
            .map(|(i, (&(t, r, n, ts), sec))| {
                serde_json::json!({"phase": "mix sample", "mix": "m.txt", "sample": i + 1,
                    "shape": "llama2-7b", "dtype": dtype, "attention": "cudnn", "tokens": t,
                    "resp": r, "segments": n, "segment_tokens": ts, "seconds": sec})
                .to_string()
            })
            .collect();
        lines.push(
            serde_json::json!({"phase": "mix total", "attention": "cudnn", "samples": 2})
                .to_string(),
        );
        lines.join("\n") + "\n"
    };
    let files = [
        ("bf16.jsonl", gateau("bf16", [1.0, 4.0])),
        ("fp8.jsonl", gateau("fp8", [0.5, 2.0])),
        ("torch.jsonl", torch + "\n"),
    ];
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/mix-table.py"));
    for (name, text) in &files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        cmd.arg(path);
    }
    let o = cmd.arg("--per-sample").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    for row in [
        "| gateau bf16 (attention cudnn) | 5.00 | 2.500 | 1440.0 | 600 | 3.09x |",
        "| gateau fp8 (attention cudnn) | 2.50 | 1.250 | 2880.0 | 1,200 | 6.18x |",
        "| 15.46 | 7.729 | 465.8 | 194 | 1.00x |",
        "| 1 | 1,000 | 110 | 8 | 1.000 | 0.500 | 3.207 |",
        "| 2 | 2,000 | 220 | 17 | 4.000 | 2.000 | 12.251 |",
    ] {
        assert!(out.contains(row), "{row} not in:\n{out}");
    }
    assert!(
        !out.contains("held"),
        "every sample within the measured lengths:\n{out}"
    );
}
