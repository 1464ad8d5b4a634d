//! `--help` states every effective default (the built-in paper config's values checked
//! against configs/paper.json, read here on its own), and the settings lines are short,
//! resolved and say where each value came from.

use crate::common::*;
use crate::score_cli::Fixture;
use serde_json::{json, Value};

fn paper() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/paper.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The help text of `flag` in `help` (the lines from its own to the next option's), on one
/// line.
fn option_help(help: &str, flag: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        let t = line.trim_start();
        // An option's own line: indented by at most 6 (continuations are indented more).
        if t.starts_with('-') && line.len() - t.len() <= 6 {
            let names: Vec<&str> = t.split_whitespace().take(2).collect();
            inside = names.iter().any(|n| n.trim_end_matches(',') == flag);
        }
        if inside {
            out.push(t);
        }
    }
    assert!(!out.is_empty(), "{flag} not in the help:\n{help}");
    out.join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The default an option's help states as the built-in config's.
fn stated_built_in(help: &str, flag: &str) -> String {
    let h = option_help(help, flag);
    let end = h
        .find(" (built-in paper config)]")
        .unwrap_or_else(|| panic!("{flag}: no built-in default stated: {h}"));
    let start = h[..end].rfind("[default: ").unwrap() + "[default: ".len();
    h[start..end].to_string()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn help(sub: &str) -> String {
    let o = run(&[sub, "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn score_and_select_help_state_the_built_in_defaults() {
    let paper = paper();
    let score = help("score");
    for key in [
        "max_len",
        "segment_len",
        "max_segments",
        "long_model",
        "short_model",
        "short_rope_theta",
    ] {
        let flag = format!("--{}", key.replace('_', "-"));
        assert_eq!(
            stated_built_in(&score, &flag),
            text(&paper[key]),
            "score {flag}"
        );
    }
    // A bare `gateau score --data x` means the paper's two hub models: the help names them.
    let long = option_help(&score, "--long-model");
    for model in ["long_model", "short_model"] {
        assert!(long.contains(paper[model].as_str().unwrap()), "{long}");
    }
    assert!(option_help(&score, "--device").contains("[default: auto]"));
    let select = help("select");
    for key in ["ratio", "alpha", "hmg_norm", "cam_norm"] {
        let flag = format!("--{}", key.replace('_', "-"));
        assert_eq!(
            stated_built_in(&select, &flag),
            text(&paper[key]),
            "select {flag}"
        );
    }
}

/// The one settings line of a run: the first stderr line starting with `prefix`.
fn settings_line(o: &std::process::Output, prefix: &str) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in\n{err}"))
        .to_string();
    for debug in [
        "null", "Cpu", "Cuda", "F32", "BF16", "Some(", "None", "{", "\"",
    ] {
        assert!(!line.contains(debug), "{debug:?} in {line}");
    }
    assert!(line.len() < 200, "{} characters: {line}", line.len());
    line
}

#[test]
fn settings_lines_are_short_resolved_and_sourced() {
    let f = Fixture::new(4);
    let scores = f.path("scores.jsonl");
    let cfg = f.path("c.json");
    std::fs::write(&cfg, json!({"max_segments": 400, "alpha": 0.5}).to_string()).unwrap();
    let mut args: Vec<String> = f.args(&scores);
    args.retain(|a| a != "--quiet");
    args.extend(["--config".into(), p(&cfg).into()]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let line = settings_line(&run(&a), "gateau score: long ");
    let from_cfg = format!(" (config {})", p(&cfg));
    for want in [
        "short window 48 (flag)",
        "max-len 4096 (flag)",
        &format!("segment 16 (flag) x 400{from_cfg}"),
        "f32 on cpu (flag)",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }

    let out = f.path("sel.jsonl");
    let sel = run(&[
        "select",
        "--data",
        p(&f.data),
        "--scores",
        p(&scores),
        "--out",
        p(&out),
        "--top",
        "2",
        "--config",
        p(&cfg),
    ]);
    let line = settings_line(&sel, "gateau select: ");
    for want in [
        "top 2 (flag)",
        "method gateau",
        &format!("alpha 0.5{from_cfg}"),
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    // --verbose adds the full resolved settings as JSON.
    let o = run(&[
        "select",
        "--data",
        p(&f.data),
        "--scores",
        p(&scores),
        "--out",
        p(&out),
        "--top",
        "2",
        "--overwrite",
        "--verbose",
    ]);
    let err = stderr(&o);
    let json = err
        .lines()
        .find_map(|l| l.strip_prefix("gateau select: settings "));
    let json: Value = serde_json::from_str(json.unwrap_or_else(|| panic!("{err}"))).unwrap();
    assert_eq!(json["keep"], json!({"top": 2}), "{json}");
    // Built-in values say so; gateau's own defaults go unmarked.
    let rep = run(&["report", "--data", p(&f.data), "--scores", p(&scores)]);
    let line = settings_line(&rep, "gateau report: ");
    assert!(line.contains("ratio 0.3 (built-in)"), "{line}");
    assert!(line.contains("method gateau,"), "{line}");
}
