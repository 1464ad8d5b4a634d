//! `gateau score --limit`, `score --data -` (standard input) and `select --out -`
//! (standard output) through the binary.

use crate::common::*;
use crate::score_cli::{score, Fixture};
use gateau::records::ScoreRecord;
use std::io::Write;
use std::process::Stdio;

fn lines_of(path: &std::path::Path) -> Vec<u64> {
    read_jsonl::<ScoreRecord>(path)
        .iter()
        .map(|r| r.line)
        .collect()
}

#[test]
fn limit_scores_the_first_pending_and_resume_continues() {
    let f = Fixture::new(6);
    let out = f.path("scores.jsonl");
    let mut a = f.args(&out);
    a.extend(["--limit".into(), "2".into()]);
    let o = score(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines_of(&out), [0, 1]);
    // Pending now excludes the kept lines: the next 2.
    a.push("--resume".into());
    assert!(score(&a).status.success());
    assert_eq!(lines_of(&out), [0, 1, 2, 3]);
    // No limit: the rest; the records match a run without --limit.
    let mut b = f.args(&out);
    b.push("--resume".into());
    assert!(score(&b).status.success());
    assert_eq!(lines_of(&out), [0, 1, 2, 3, 4, 5]);
    let all = f.path("all.jsonl");
    assert!(score(&f.args(&all)).status.success());
    let (x, y) = (
        read_jsonl::<ScoreRecord>(&out),
        read_jsonl::<ScoreRecord>(&all),
    );
    for (r, s) in x.iter().zip(&y) {
        assert_eq!((r.line, r.ppl_long, r.cas), (s.line, s.ppl_long, s.cas));
    }
    // Within a shard: the shard's first pending lines.
    let sh = f.path("shard.jsonl");
    let mut c = f.args(&sh);
    c.extend(["--shard".into(), "1/2".into(), "--limit".into(), "2".into()]);
    assert!(score(&c).status.success());
    assert_eq!(lines_of(&sh), [1, 3]);
    let mut z = f.args(&f.path("z.jsonl"));
    z.extend(["--limit".into(), "0".into()]);
    let o = score(&z);
    assert!(
        !o.status.success() && stderr(&o).contains("--limit"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn score_reads_standard_input() {
    let f = Fixture::new(4);
    let from_file = f.path("file.jsonl");
    assert!(score(&f.args(&from_file)).status.success());
    let out = f.path("stdin.jsonl");
    let args: Vec<String> = f
        .args(&out)
        .into_iter()
        .map(|a| if a == p(&f.data) { "-".to_string() } else { a })
        .collect();
    assert!(args.iter().any(|a| a == "-"));
    let bytes = std::fs::read(&f.data).unwrap();
    let spool_dir = f.path("tmp");
    std::fs::create_dir(&spool_dir).unwrap();
    let piped = |args: &[String]| {
        let mut child = gateau()
            .env("TMPDIR", &spool_dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    // Two lines, then the same bytes again with --resume: the rest.
    let mut first = args.clone();
    first.extend(["--limit".into(), "2".into()]);
    piped(&first);
    assert_eq!(lines_of(&out), [0, 1]);
    let mut rest = args.clone();
    rest.push("--resume".into());
    piped(&rest);
    // The temporary copies are gone.
    assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
    let (x, y) = (
        read_jsonl::<ScoreRecord>(&out),
        read_jsonl::<ScoreRecord>(&from_file),
    );
    assert_eq!(x.len(), 4);
    for (r, s) in x.iter().zip(&y) {
        assert_eq!(
            (r.line, &r.line_hash, r.ppl_long),
            (s.line, &s.line_hash, s.ppl_long)
        );
    }
    // Without --out: an error naming the flag.
    let no_out: Vec<&str> = [
        "score",
        "--data",
        "-",
        "--long-model",
        p(&f.model),
        "--short-window",
        "48",
    ]
    .to_vec();
    let o = gateau()
        .args(&no_out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--out"), "{}", stderr(&o));
}

#[test]
fn select_writes_standard_output() {
    let f = Fixture::new(5);
    let scores = f.path("scores.jsonl");
    assert!(score(&f.args(&scores)).status.success());
    let o = gateau()
        .current_dir(f.dir.path())
        .args([
            "select",
            "--data",
            p(&f.data),
            "--scores",
            p(&scores),
            "--top",
            "3",
            "--out",
            "-",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!f.path("-").exists(), "no file named -");
    let input = std::fs::read_to_string(&f.data).unwrap();
    let input: Vec<&str> = input.lines().collect();
    let got = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(got.lines().count(), 3);
    assert!(got.lines().all(|l| input.contains(&l)), "{got}");
    assert!(got.ends_with('\n'));
    // The same bytes as a file --out, in the same order; the summary on stderr.
    let sel = f.path("sel.jsonl");
    let o2 = run(&[
        "select",
        "--data",
        p(&f.data),
        "--scores",
        p(&scores),
        "--top",
        "3",
        "--out",
        p(&sel),
        "--quiet",
    ]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert_eq!(std::fs::read(&sel).unwrap(), o.stdout);
    assert!(stderr(&o).contains("standard output"), "{}", stderr(&o));
}
