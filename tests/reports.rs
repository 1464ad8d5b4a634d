//! `report`, `inspect`, `compare` and `select --method` on hand-made score records (every
//! expected number is worked out here), and `score --with-ifd` against the reference
//! forward pass.

use crate::common::*;
use crate::score_cli::{score, Fixture};
use gateau::records::ScoreRecord;
use gateau::report::compare::Comparison;
use gateau::report::inspect::View;
use gateau::report::json::Summary;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// ppl_long, ppl_short, n_tokens, source, (seg_ppl, seg_attn) of the scored lines 0..6.
const LONG: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0];
const SHORT: [f64; 6] = [2.0, 5.0, 3.0, 8.0, 6.0, 10.0];
const ALONE: [f64; 6] = [0.5, 4.0, 1.0, 2.0, 10.0, 3.0];
const SEGS: [([f64; 2], [f64; 2]); 6] = [
    ([1.0, 2.0], [0.3, 0.1]),
    ([2.0, 2.0], [0.2, 0.2]),
    ([1.0, 4.0], [0.1, 0.5]),
    ([3.0, 1.0], [0.4, 0.0]),
    ([2.0, 5.0], [0.0, 0.1]),
    ([1.0, 1.5], [0.2, 0.3]),
];

pub struct Case {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub scores: PathBuf,
}

/// Six scored lines (sources a/b alternating), a bad seventh line.
pub fn case(with_alone: bool) -> Case {
    let dir = tmp();
    let data = dir.path().join("data.jsonl");
    let scores = dir.path().join("scores.jsonl");
    let mut d = String::new();
    let mut s = String::new();
    for i in 0..7u64 {
        let src = if i % 2 == 0 { "a" } else { "b" };
        d += &(json!({"id": format!("x{i}"), "source": src, "instruction": "q",
                      "input": "c", "output": "y"})
        .to_string()
            + "\n");
        let rec = if i == 6 {
            json!({"id": "x6", "line": 6, "status": "bad", "error": "empty response"})
        } else {
            let k = i as usize;
            let mut r = json!({"id": format!("x{i}"), "line": i, "status": "ok", "source": src,
                "n_tokens": 100 * (i + 1), "n_ctx": 50, "n_resp": 5, "truncated": false,
                "ppl_short": SHORT[k], "ppl_long": LONG[k],
                "seg_ppl": SEGS[k].0, "seg_attn": SEGS[k].1, "cas": null});
            if with_alone {
                r["ppl_alone"] = json!(ALONE[k]);
            }
            r
        };
        s += &(rec.to_string() + "\n");
    }
    std::fs::write(&data, d).unwrap();
    std::fs::write(&scores, s).unwrap();
    Case { dir, data, scores }
}

pub fn args<'a>(c: &'a Case, cmd: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    // These cases check the paper's Eq. 6 numbers, so they name its recipe.
    let mut a = vec![
        cmd,
        "--data",
        p(&c.data),
        "--scores",
        p(&c.scores),
        "-q",
        "--recipe",
        "paper",
    ];
    a.extend_from_slice(extra);
    a
}

pub fn softmax(x: &[f64]) -> Vec<f64> {
    let z: f64 = x.iter().map(|v| v.exp()).sum();
    x.iter().map(|v| v.exp() / z).collect()
}

/// HMP (min-max) and CAS (softmax, cosine) of the six records, written out again.
pub fn hmp_cas() -> (Vec<f64>, Vec<f64>) {
    let mm = |x: &[f64]| {
        let lo = x.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        x.iter().map(|v| (v - lo) / (hi - lo)).collect::<Vec<_>>()
    };
    let hmp = mm(&SHORT)
        .iter()
        .zip(mm(&LONG))
        .map(|(a, b)| a - b)
        .collect();
    let cas = SEGS
        .iter()
        .map(|(sp, sa)| {
            let (a, b) = (softmax(sp), softmax(sa));
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            dot / (n(&a) * n(&b))
        })
        .collect();
    (hmp, cas)
}

fn order(report: &Value) -> Vec<u64> {
    report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect()
}

fn select_order(c: &Case, method: &str) -> Vec<u64> {
    let out = c.dir.path().join(format!("sel-{method}.jsonl"));
    let rep = c.dir.path().join(format!("rep-{method}.json"));
    let a = args(
        c,
        "select",
        &[
            "--method",
            method,
            "--ratio",
            "0.5",
            "--out",
            p(&out),
            "--report",
            p(&rep),
        ],
    );
    let o = run(&a);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o)); // line 6 is bad
    order(&serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap())
}

#[test]
fn each_method_ranks_by_its_own_numbers() {
    let c = case(true);
    // ppl: highest ppl_long first.
    assert_eq!(select_order(&c, "ppl"), vec![5, 4, 3, 2, 1, 0]);
    // ifd = long / alone: 2, 0.5, 3, 2, 0.5, 3 -> 2 (3), 5 (3), 0 (2), 3 (2), 1, 4.
    assert_eq!(select_order(&c, "ifd"), vec![2, 5, 0, 3, 1, 4]);
    let (hmp, cas) = hmp_cas();
    let by = |v: &[f64]| {
        let mut idx: Vec<u64> = (0..6).collect();
        idx.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]).then(a.cmp(&b)));
        idx
    };
    // hmg and cam: softmax is monotone, so their order is that of HMP and CAS.
    assert_eq!(select_order(&c, "hmg"), by(&hmp));
    assert_eq!(select_order(&c, "cam"), by(&cas));
    let (sh, sc) = (softmax(&hmp), softmax(&cas));
    let g: Vec<f64> = (0..6).map(|i| 0.8 * sh[i] + 0.2 * sc[i]).collect();
    assert_eq!(select_order(&c, "gateau"), by(&g));
    // Without ppl_alone, ifd names the fix.
    let c = case(false);
    let o = run(&args(&c, "select", &["--method", "ifd"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--with-ifd"), "{}", stderr(&o));
}

/// Width, height and every RGB pixel of a PNG.
pub fn png_pixels(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let px = buf[..info.buffer_size()]
        .chunks(ch)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

#[test]
fn report_writes_the_numbers_it_plots() {
    let c = case(false);
    let dir = c.dir.path().join("rep");
    let o = run(&args(
        &c,
        "report",
        &[
            "--method",
            "ppl",
            "--ratio",
            "0.5",
            "--bins",
            "4",
            "--out",
            p(&dir),
        ],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let s: Summary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (s.counts.scored, s.counts.selected, s.counts.bad),
        (6, 3, 1)
    );
    // ppl: score = ppl_long; top 3 are 9, 5, 4 -> cut-off 4.
    assert_eq!(s.cutoff_score, Some(4.0));
    // Bins of width 2 over [1, 9]: {1, 2}, {3, 4}, {5}, {9}; selected 4, 5, 9.
    assert_eq!(s.histogram.edges, vec![1.0, 3.0, 5.0, 7.0, 9.0]);
    assert_eq!(s.histogram.counts, vec![2, 2, 1, 1]);
    assert_eq!(s.histogram.selected, vec![0, 1, 1, 1]);
    // Quantiles of ppl_long [1, 2, 3, 4, 5, 9] by linear interpolation.
    let q = &s.stats["ppl_long"];
    assert_eq!(
        (q.min, q.p25, q.median, q.p75, q.max),
        (1.0, 2.25, 3.5, 4.75, 9.0)
    );
    assert!((q.mean - 4.0).abs() < 1e-12);
    // Lengths: selected lines 3, 4, 5 (400, 500, 600) vs 0, 1, 2 (100, 200, 300).
    assert_eq!(s.length.selected.mean, 500.0);
    assert_eq!(s.length.rejected.mean, 200.0);
    assert_eq!(s.length.mean_ratio, Some(2.5));
    let src: Vec<(String, usize, usize)> = s
        .sources
        .iter()
        .map(|x| (x.source.clone(), x.scored, x.selected))
        .collect();
    assert_eq!(src, vec![("a".into(), 3, 1), ("b".into(), 3, 2)]);
    // Pearson of HMP and CAS, computed here.
    let (hmp, cas) = hmp_cas();
    let m = |v: &[f64]| v.iter().sum::<f64>() / 6.0;
    let (mh, mc) = (m(&hmp), m(&cas));
    let cov: f64 = (0..6).map(|i| (hmp[i] - mh) * (cas[i] - mc)).sum();
    let vh: f64 = hmp.iter().map(|x| (x - mh).powi(2)).sum();
    let vc: f64 = cas.iter().map(|x| (x - mc).powi(2)).sum();
    let want = cov / (vh * vc).sqrt();
    assert!((s.hmp_cas.pearson.unwrap() - want).abs() < 1e-9);
    assert_eq!(s.hmp_cas.n, 6);
    // Six plots, each a PNG of the stated size; the five of the samples hold the selected
    // and rejected colours (the alpha sweep's are checked in report_sweep).
    let names: Vec<&str> = s.plots.iter().map(|x| x.file.as_str()).collect();
    assert_eq!(
        names,
        [
            "score_hist.png",
            "hmp_cas.png",
            "ppl_short_long.png",
            "score_length.png",
            "score_rank.png",
            "alpha_sweep.png"
        ]
    );
    assert_eq!(names, gateau::cli::settings::REPORT_FILES[2..]);
    for plot in s.plots.iter().filter(|p| p.file != "alpha_sweep.png") {
        assert_eq!((plot.points, plot.selected_points), (6, 3), "{}", plot.file);
        let (w, h, px) = png_pixels(&dir.join(&plot.file));
        assert_eq!((w, h), (plot.width, plot.height));
        let sel = px.iter().filter(|c| **c == [230, 120, 20]).count();
        let rej = px.iter().filter(|c| **c == [70, 110, 180]).count();
        assert!(
            sel > 0 && rej > 0,
            "{}: {sel} selected, {rej} rejected pixels",
            plot.file
        );
    }
    let (_, _, hist) = png_pixels(&dir.join("score_hist.png"));
    assert!(hist.contains(&[200, 20, 20]), "the cut line is drawn");
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("| b | 3 | 2 | 66.7% |"), "{md}");
    assert!(md.contains("drifts toward longer samples"), "{md}");
}

#[test]
fn select_report_dir_equals_report() {
    let c = case(false);
    let dir = c.dir.path().join("from-select");
    let out = c.dir.path().join("sel.jsonl");
    let o = run(&args(
        &c,
        "select",
        &["--ratio", "0.5", "--out", p(&out), "--report-dir", p(&dir)],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let dir2 = c.dir.path().join("from-report");
    run(&args(&c, "report", &["--ratio", "0.5", "--out", p(&dir2)]));
    let read = |d: &Path| -> Summary {
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap()
    };
    let (a, b) = (read(&dir), read(&dir2));
    assert_eq!(a.histogram, b.histogram);
    assert_eq!(a.counts, b.counts);
    assert_eq!(a.cutoff_score, b.cutoff_score);
    // The selection written is the summary's: three lines.
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
}

#[test]
fn inspect_shows_the_records_numbers() {
    let c = case(false);
    let o = run(&args(
        &c,
        "inspect",
        &["--id", "x3", "--json", "--ratio", "0.5"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: View = serde_json::from_slice(&o.stdout).unwrap();
    let (hmp, cas) = hmp_cas();
    assert_eq!((v.line, v.scored), (3, 6));
    assert!((v.hmp.unwrap() - hmp[3]).abs() < 1e-12);
    assert!((v.cas.unwrap() - cas[3]).abs() < 1e-12);
    assert_eq!((v.ppl_short, v.ppl_long), (Some(8.0), Some(4.0)));
    let (is, att) = (softmax(&SEGS[3].0), softmax(&SEGS[3].1));
    assert_eq!(v.segments.len(), 2);
    for (i, s) in v.segments.iter().enumerate() {
        assert_eq!((s.seg_ppl, s.seg_attn), (SEGS[3].0[i], SEGS[3].1[i]));
        assert!((s.is - is[i]).abs() < 1e-12 && (s.att - att[i]).abs() < 1e-12);
    }
    // Its rank is its position in select's report.
    let rep = c.dir.path().join("r.json");
    let out = c.dir.path().join("s.jsonl");
    run(&args(
        &c,
        "select",
        &["--ratio", "0.5", "--out", p(&out), "--report", p(&rep)],
    ));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    let pos = order(&r).iter().position(|&l| l == 3).unwrap();
    assert_eq!(v.rank, Some(pos + 1));
    assert_eq!(v.selected, pos < 3);
    // The terminal view and the PNG.
    let o = run(&args(&c, "inspect", &["--id", "x3"]));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains(&format!("rank {} of 6", pos + 1)), "{text}");
    // Importance is high where seg_ppl is low: IS's bars upside down.
    assert!(
        text.contains("importance ▁█") && text.contains("attention  █▁"),
        "{text}"
    );
    let png = c.dir.path().join("x3.png");
    let o = run(&args(&c, "inspect", &["--id", "x3", "--out", p(&png)]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_pixels(&png).0, 1000);
    // A bad sample is shown with its reason (exit 2); an unknown id is an error.
    let o = run(&args(&c, "inspect", &["--id", "x6"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8(o.stdout)
        .unwrap()
        .contains("empty response"));
    let o = run(&args(&c, "inspect", &["--id", "nope"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no sample with id nope"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn compare_tabulates_jaccard_by_hand() {
    let c = case(true);
    let json_out = c.dir.path().join("cmp.json");
    let o = run(&args(
        &c,
        "compare",
        &["--ratio", "0.5", "--json", p(&json_out)],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let cmp: Comparison =
        serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(cmp.methods, ["gateau", "hmg", "cam", "ppl", "ifd"]);
    assert_eq!((cmp.n, cmp.k), (6, 3));
    // ppl picks {5, 4, 3}, ifd picks {2, 5, 0}: one shared of five.
    let (ppl, ifd) = (3, 4);
    assert!((cmp.jaccard[ppl][ifd] - 0.2).abs() < 1e-12);
    for i in 0..5 {
        assert_eq!(cmp.jaccard[i][i], 1.0);
    }
    // Without ppl_alone, ifd is left out and says why.
    let c = case(false);
    let o = run(&args(&c, "compare", &["--ratio", "0.5"]));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("left out: ifd"), "{text}");
}

#[test]
fn with_ifd_matches_the_reference_forward() {
    let f = Fixture::new(3);
    let out = f.path("scores.jsonl");
    let mut a = f.args(&out);
    a.push("--with-ifd".into());
    let o = score(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs: Vec<ScoreRecord> = read_jsonl(&out);
    for (r, (_, _, _, y)) in recs.iter().zip(&f.samples) {
        // [BOS] + resp; every response token scored.
        let s: Vec<u32> = [vec![BOS], bytes(y)].concat();
        let want = f.long.naive(&s, f.long.rope_theta).ppl(&s, 1);
        assert_rel(r.ppl_alone.unwrap(), want, 1e-4, "ppl_alone");
    }
    // Without the flag the field is absent.
    let out2 = f.path("plain.jsonl");
    assert!(score(&f.args(&out2)).status.success());
    let plain: Vec<ScoreRecord> = read_jsonl(&out2);
    assert!(plain.iter().all(|r| r.ppl_alone.is_none()));
}
