//! The report's alpha sweep, score-against-rank plot, log ticks and rank base, on the
//! hand-made records of `reports` (every expected selection is worked out here).

use crate::common::*;
use crate::reports::{args, case, hmp_cas, png_pixels, softmax};
use gateau::report::json::Summary;
use serde_json::Value;
use std::collections::BTreeSet;

/// The top `k` lines of the six records when ordered by `score` (ties: lower line first).
fn top(score: &[f64], k: usize) -> BTreeSet<u64> {
    let mut i: Vec<usize> = (0..score.len()).collect();
    i.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    i[..k].iter().map(|&x| x as u64).collect()
}

/// Eq. 6 at `alpha`, written out again from the hand-computed HMP and CAS.
fn eq6(alpha: f64) -> Vec<f64> {
    let (hmp, cas) = hmp_cas();
    let (a, b) = (softmax(&hmp), softmax(&cas));
    a.iter()
        .zip(b)
        .map(|(x, y)| alpha * x + (1.0 - alpha) * y)
        .collect()
}

fn read_summary(dir: &std::path::Path) -> Summary {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn alpha_sweep_overlap_and_precision_by_hand() {
    let c = case(false);
    let dir = c.dir.path().join("rep");
    let o = run(&args(
        &c,
        "report",
        &[
            "--alpha",
            "0.8",
            "--ratio",
            "0.5",
            "--label-field",
            "source",
            "--positive",
            "a",
            "--out",
            p(&dir),
        ],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o)); // line 6 is bad
    let s = read_summary(&dir);
    let w = &s.alpha_sweep;
    assert_eq!((w.alpha, w.k), (0.8, 3));
    let alphas: Vec<f64> = w.points.iter().map(|p| p.alpha).collect();
    assert_eq!(
        alphas,
        (0..=10).map(|i| i as f64 / 10.0).collect::<Vec<_>>()
    );
    let (hmp, cas) = hmp_cas();
    let own = top(&eq6(0.8), 3);
    // Alpha 1 ranks by the HMG term alone, alpha 0 by the CAM term alone (softmax keeps
    // the order), the rest by Eq. 6.
    let by_alpha = |a: f64| {
        if a == 1.0 {
            top(&hmp, 3)
        } else if a == 0.0 {
            top(&cas, 3)
        } else {
            top(&eq6(a), 3)
        }
    };
    // Label "source": a on even lines.
    let even = |sel: &BTreeSet<u64>| sel.iter().filter(|l| *l % 2 == 0).count() as f64 / 3.0;
    for pt in &w.points {
        let sel = by_alpha(pt.alpha);
        let shared = sel.intersection(&own).count() as f64;
        let union = sel.union(&own).count() as f64;
        assert_eq!(pt.overlap, Some(shared / 3.0), "alpha {}", pt.alpha);
        assert_eq!(pt.jaccard, Some(shared / union), "alpha {}", pt.alpha);
        assert_eq!(pt.precision, Some(even(&sel)), "alpha {}", pt.alpha);
    }
    assert_eq!(w.points[8].overlap, Some(1.0));
    assert_eq!((w.positives, w.precision), (Some(3), Some(even(&own))));
    // The two ends differ from the run's selection on these records.
    assert!(
        by_alpha(0.0) != own || by_alpha(1.0) != own,
        "the case checks nothing"
    );
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("## Alpha sweep"), "{md}");
    assert!(md.contains("| 0.8 (this run) | 1.0000 | 1.0000 |"), "{md}");
    assert!(md.contains("![alpha_sweep.png](alpha_sweep.png)"), "{md}");
    // alpha_sweep.png: overlap (blue), Jaccard (green), precision (orange), own alpha (red).
    let (w_px, h_px, px) = png_pixels(&dir.join("alpha_sweep.png"));
    assert_eq!((w_px, h_px), (1000, 700));
    for colour in [[70, 110, 180], [40, 160, 90], [230, 120, 20], [200, 20, 20]] {
        assert!(
            px.iter().filter(|c| **c == colour).count() > 50,
            "{colour:?}"
        );
    }
    let size = std::fs::metadata(dir.join("alpha_sweep.png"))
        .unwrap()
        .len();
    assert!(size > 10_000, "{size} bytes");
    // score_rank.png: both kinds of point and the cut; ppl_short_long.png: the y = x line.
    let (_, _, px) = png_pixels(&dir.join("score_rank.png"));
    for colour in [[70, 110, 180], [230, 120, 20], [200, 20, 20]] {
        assert!(px.contains(&colour), "{colour:?}");
    }
    assert!(std::fs::metadata(dir.join("score_rank.png")).unwrap().len() > 10_000);
    let (_, _, px) = png_pixels(&dir.join("ppl_short_long.png"));
    assert!(px.iter().filter(|c| **c == [110, 110, 130]).count() > 100);
}

#[test]
fn ranks_are_one_based_and_select_notes_reach_summary_md() {
    let c = case(false);
    // Flat attention in every record: the paper recipe's CAM term draws a note.
    let flat: String = std::fs::read_to_string(&c.scores)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if v.get("seg_attn").is_some() {
                v["seg_attn"] = serde_json::json!([0.5, 0.5]);
            }
            v.to_string() + "\n"
        })
        .collect();
    std::fs::write(&c.scores, flat).unwrap();
    let (out, rep, dir) = (
        c.dir.path().join("sel.jsonl"),
        c.dir.path().join("report.json"),
        c.dir.path().join("rep"),
    );
    let mut a = args(
        &c,
        "select",
        &[
            "--ratio",
            "0.5",
            "--out",
            p(&out),
            "--report",
            p(&rep),
            "--report-dir",
            p(&dir),
        ],
    );
    a.retain(|x| *x != "-q");
    let o = run(&a);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    let samples = report["samples"].as_array().unwrap();
    let ranks: Vec<u64> = samples
        .iter()
        .map(|s| s["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, (1..=6).collect::<Vec<u64>>());
    let selected: Vec<bool> = samples
        .iter()
        .map(|s| s["selected"].as_bool().unwrap())
        .collect();
    assert_eq!(selected, [true, true, true, false, false, false]);
    // The terminal's first row is rank 1 too, the line report.json ranks first.
    let err = stderr(&o);
    let first = samples[0]["line"].as_u64().unwrap();
    let row = err
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(
        row.split_whitespace().nth(1),
        Some(first.to_string().as_str())
    );
    // Every note select printed is in summary.md.
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    let notes: Vec<&str> = err
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("note: "))
        .collect();
    assert!(!notes.is_empty(), "{err}");
    for n in notes {
        assert!(md.contains(&format!("- {n}")), "{n}\n{md}");
    }
    let s = read_summary(&dir);
    assert_eq!(s.alpha_sweep.points[8].overlap, Some(1.0));
    assert_eq!(s.alpha_sweep.label_field, None);
    assert!(s.alpha_sweep.points.iter().all(|p| p.precision.is_none()));
}
