//! Outputs you can trust (issue 18), the readers of score files through the binary:
//! `select` overwriting nothing, score files of other settings or another input refused by
//! every reader, missing shards and lines, fallback ids and the byte-order mark. Each
//! refusal is checked for its message and for the files being left as they were.

use crate::common::*;
use crate::score_cli::{score, Fixture};
use crate::trust::{bytes_of, refused, set, with};
use gateau::files::hash::{hex, xxh64};
use gateau::records::{ScoreRecord, Status};
use serde_json::json;
use std::path::Path;

#[test]
fn select_overwrites_nothing_without_overwrite() {
    let f = Fixture::new(4);
    let scores = f.path("s.jsonl");
    assert!(score(&f.args(&scores)).status.success());
    let (sel, rep, dir) = (f.path("sel.jsonl"), f.path("rep.json"), f.path("rd"));
    let s2 = f.path("sel2.jsonl");
    let base = |out: &Path, extra: &[&str]| {
        let mut a = vec!["select", "--data", p(&f.data), "--scores", p(&scores)];
        a.extend(["--ratio", "0.5", "-q", "--out", p(out)]);
        a.extend(extra);
        run(&a)
    };
    // --report naming --out: refused before anything is written.
    refused(
        &base(&sel, &["--report", p(&sel)]),
        &["--out", "--report", "are the same file"],
    );
    assert!(!sel.exists());
    let o = base(&sel, &["--report", p(&rep), "--report-dir", p(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = dir.join("summary.json");
    let files = [&sel, &rep, &summary];
    let kept: Vec<Vec<u8>> = files.iter().map(|p| bytes_of(p)).collect();
    let cases: [(&Path, &[&str], &str, &Path); 3] = [
        (&sel, &[], "--out", &sel),
        (&s2, &["--report", p(&rep)], "--report", &rep),
        (&s2, &["--report-dir", p(&dir)], "--report-dir", &summary),
    ];
    for (out, extra, flag, path) in cases {
        refused(
            &base(out, extra),
            &[flag, p(path), "already exists", "--overwrite"],
        );
    }
    let now: Vec<Vec<u8>> = files.iter().map(|p| bytes_of(p)).collect();
    assert_eq!(kept, now, "a refused select changed a file");
    assert!(!s2.exists());
    let o = base(&sel, &["--overwrite", "--report", p(&rep)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&sel).unwrap().lines().count(), 2);
}

#[test]
fn readers_refuse_mixed_score_files() {
    let f = Fixture::new(6);
    let (a, b) = (f.path("a.jsonl"), f.path("b.jsonl"));
    assert!(score(&with(f.args(&a), &["--shard", "0/2"]))
        .status
        .success());
    let other = with(set(f.args(&b), "--segment-len", "32"), &["--shard", "1/2"]);
    assert!(score(&other).status.success());
    let both = [p(&a), p(&b)];
    for cmd in ["select", "report", "compare", "inspect"] {
        let mut args = vec![cmd, "--data", p(&f.data), "--scores", both[0], both[1]];
        args.extend(["--ratio", "0.5", "-q"]);
        if cmd == "inspect" {
            args.extend(["--id", "s0"]);
        }
        refused(
            &run(&args),
            &[
                &format!("{} line 1", p(&a)),
                &format!("{} line 1", p(&b)),
                "segment_len differs (16 in the first, 32 in the second)",
            ],
        );
    }
    // Scores of another input whose lines and ids match (an edited context).
    let text = std::fs::read_to_string(&f.data).unwrap();
    let edited = f.path("edited.jsonl");
    std::fs::write(&edited, text.replacen("river", "RIVER", 1)).unwrap();
    let changed = text.lines().position(|l| l.contains("river")).unwrap();
    let full = f.path("full.jsonl");
    assert!(score(&set(f.args(&full), "--data", p(&edited)))
        .status
        .success());
    let sel = f.path("sel.jsonl");
    let o = run(&[
        "select",
        "--data",
        p(&f.data),
        "--scores",
        p(&full),
        "--ratio",
        "0.5",
        "--out",
        p(&sel),
        "-q",
    ]);
    refused(
        &o,
        &[
            &format!("is the record of input line {changed}"),
            "not the one scored",
        ],
    );
    assert!(!sel.exists());
}

#[test]
fn missing_shards_and_lines_are_errors_unless_allowed() {
    let f = Fixture::new(6);
    let s0 = f.path("data.scores.0-of-2.jsonl");
    assert!(score(&with(f.args(&s0), &["--shard", "0/2"]))
        .status
        .success());
    let sel = f.path("sel.jsonl");
    let select = |scores: &Path, extra: &[&str]| {
        let mut a = vec!["select", "--data", p(&f.data), "--scores", p(scores)];
        a.extend(["--ratio", "1", "--out", p(&sel), "-q"]);
        a.extend(extra);
        run(&a)
    };
    let missing = f.path("data.scores.1-of-2.jsonl");
    refused(
        &select(&s0, &[]),
        &[
            "3 of the 6 lines",
            "shard 1/2 has no records",
            p(&missing),
            "--allow-missing",
        ],
    );
    assert!(!sel.exists());
    // Allowed: the three scored lines, and exit 2 (3 of 6 missing is above 5%).
    let o = select(&s0, &["--allow-missing"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&sel).unwrap().lines().count(), 3);
    // An unfinished run: line ranges.
    let full = f.path("full.jsonl");
    assert!(score(&f.args(&full)).status.success());
    let part = f.path("part.jsonl");
    let text = std::fs::read_to_string(&full).unwrap();
    let first: Vec<&str> = text.lines().take(4).collect();
    std::fs::write(&part, first.join("\n") + "\n").unwrap();
    refused(
        &select(&part, &["--overwrite"]),
        &["2 of the 6 lines", "lines 4-5 have no record", "--resume"],
    );
}

#[test]
fn fallback_ids_never_duplicate_and_a_bom_is_not_line_0() {
    let f = Fixture::new(1);
    // Line 0: no id (fallback 0) and a BOM; line 1: "id": 0; line 2: "id": 0 again.
    let l1 =
        json!({"id": 0, "instruction": "q", "input": "river stone amber\n\n", "output": "one"});
    let l2 = json!({"id": 0, "instruction": "q", "input": "cedar tide\n\n", "output": "two"});
    let l0 = json!({"instruction": "q", "input": "north ember\n\n", "output": "zero"});
    let mut data = b"\xEF\xBB\xBF".to_vec();
    data.extend(format!("{l0}\n{l1}\n{l2}\n").as_bytes());
    std::fs::write(&f.data, &data).unwrap();
    let out = f.path("s.jsonl");
    let o = score(&f.args(&out));
    let recs: Vec<ScoreRecord> = read_jsonl(&out);
    let st: Vec<(u64, Status)> = recs.iter().map(|r| (r.line, r.status)).collect();
    assert_eq!(
        st,
        [(0, Status::Ok), (1, Status::Ok), (2, Status::Bad)],
        "{recs:?}"
    );
    assert_eq!(recs[0].id, json!(0));
    assert_eq!(
        recs[2].error.as_deref(),
        Some("duplicate id 0 (first on line 1)")
    );
    assert_eq!(o.status.code(), Some(2), "1 bad of 3: {}", stderr(&o));
    // The line hash of line 0 is that of the line without the BOM.
    assert_eq!(
        recs[0].line_hash.as_deref(),
        Some(hex(xxh64(l0.to_string().as_bytes())).as_str())
    );
    // select keeps lines 0 and 1, and writes line 0 without the BOM.
    let sel = f.path("sel.jsonl");
    let o = run(&[
        "select",
        "--data",
        p(&f.data),
        "--scores",
        p(&out),
        "--top",
        "5",
        "--keep-order",
        "--out",
        p(&sel),
        "--report",
        p(&f.path("r.json")),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&sel).unwrap(),
        format!("{l0}\n{l1}\n")
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("r.json")).unwrap()).unwrap();
    assert_eq!(rep["counts"]["duplicate_ids"], 0);
    assert_eq!(rep["counts"]["scored"], 2);
}
