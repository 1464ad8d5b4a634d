//! Small samples' segment passes packed together (`--pack-below`): the records equal those
//! of each sample run alone, whatever the batch budget, on one device or several.

use crate::common::*;
use crate::score_cli::{by_line, score, with_workers, Fixture};
use gateau::records::{ScoreRecord, Status};

fn run_with(f: &Fixture, name: &str, workers: bool, extra: &[&str]) -> (Vec<ScoreRecord>, String) {
    let out = f.path(name);
    let mut args: Vec<String> = f
        .args(&out)
        .into_iter()
        .filter(|a| a != "--quiet")
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    if workers {
        args = with_workers(args);
    }
    let o = score(&args);
    assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
    (read_jsonl(&out), stderr(&o))
}

#[test]
fn packed_segment_passes_equal_each_sample_alone() {
    let f = Fixture::new(9);
    let mut text = std::fs::read_to_string(&f.data).unwrap();
    text.push_str("{broken\n");
    std::fs::write(&f.data, text).unwrap();
    let (alone, log) = run_with(&f, "alone.jsonl", false, &["--pack-below", "0"]);
    assert!(!log.contains("packed into"), "{log}");
    let alone = by_line(alone);
    let scored = alone.values().filter(|r| r.status == Status::Ok).count();
    assert_eq!(scored, 9);
    let runs = [
        // Every sample waits until the end: one flush, records after the bad line's.
        (
            "end.jsonl",
            false,
            ["--pack-below", "1000000", "--max-batch-tokens", "1000000"],
        ),
        // Rows of a few sequences, flushes all along, samples split across rows.
        (
            "small.jsonl",
            false,
            ["--pack-below", "1000000", "--max-batch-tokens", "150"],
        ),
        (
            "workers.jsonl",
            true,
            ["--pack-below", "1000000", "--max-batch-tokens", "150"],
        ),
    ];
    for (name, workers, extra) in runs {
        let (recs, log) = run_with(&f, name, workers, &extra);
        if name == "end.jsonl" {
            assert_eq!(recs[0].status, Status::Bad, "the bad line comes first");
            assert_eq!(recs[0].line, 9);
            let msg = "segment passes of 9 small samples packed into 1 forward passes";
            assert!(log.contains(msg), "{log}");
        } else {
            assert!(log.contains("small samples packed into"), "{log}");
        }
        let got = by_line(recs);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            alone.keys().collect::<Vec<_>>()
        );
        for (l, a) in &alone {
            let g = &got[l];
            assert_eq!(
                (&g.id, g.status, &g.error),
                (&a.id, a.status, &a.error),
                "{name} {l}"
            );
            if a.status != Status::Ok {
                continue;
            }
            // The full passes do not change at all; the segment passes up to f32 order.
            assert_eq!(g.ppl_long, a.ppl_long, "{name} line {l}");
            assert_eq!(g.ppl_short, a.ppl_short, "{name} line {l}");
            assert_eq!(g.seg_attn, a.seg_attn, "{name} line {l}");
            let (gs, as_) = (g.seg_ppl.as_ref().unwrap(), a.seg_ppl.as_ref().unwrap());
            assert_eq!(gs.len(), as_.len(), "{name} line {l}");
            assert!(gs.len() >= 2, "line {l} has {} segments", gs.len());
            for (x, y) in gs.iter().zip(as_) {
                assert_rel(*x, *y, 1e-5, &format!("{name} line {l} seg_ppl"));
            }
            let (gc, ac) = (g.cas.unwrap().unwrap(), a.cas.unwrap().unwrap());
            assert!((gc - ac).abs() <= 1e-6, "{name} line {l} cas {gc} vs {ac}");
        }
    }
}
