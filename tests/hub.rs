//! Hub ids resolved offline from a local hf-hub cache (HF_HOME, HF_HUB_CACHE), as on a node
//! without internet, or after a failing mirror (HF_ENDPOINT); a missing model gives one
//! clear error.

use crate::common::*;
use crate::score_cli::Fixture;
use gateau::records::ScoreRecord;

#[test]
fn hub_id_from_the_offline_cache_equals_the_folder() {
    let f = Fixture::new(2);
    let home = f.path("hf");
    let repo = home.join("hub").join("models--acme--tiny-llama");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    f.long.write(&repo.join("snapshots").join(commit), false);

    let by_folder = f.path("folder.jsonl");
    assert!(crate::score_cli::score(&f.args(&by_folder))
        .status
        .success());
    let by_hub = f.path("hub.jsonl");
    let mut args = f.args(&by_hub);
    let at = args.iter().position(|a| a == "--long-model").unwrap();
    args[at + 1] = "acme/tiny-llama".into();
    let o = gateau().args(&args).env("HF_HOME", &home).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b): (Vec<ScoreRecord>, Vec<ScoreRecord>) =
        (read_jsonl(&by_folder), read_jsonl(&by_hub));
    assert_eq!(a, b);

    args[at + 1] = "acme/absent".into();
    let out_at = args.iter().position(|a| a == "--out").unwrap();
    args[out_at + 1] = p(&f.path("absent.jsonl")).to_string();
    let o = gateau().args(&args).env("HF_HOME", &home).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("acme/absent")
            && err.contains("not in the local hub cache")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

/// HF_HUB_CACHE names the cache itself (no `hub` below it); an unreachable HF_ENDPOINT
/// (a mirror that is down) falls back to that cache with a warning.
#[test]
fn hub_cache_variable_and_fallback_from_a_failing_endpoint() {
    let f = Fixture::new(2);
    let cache = f.path("cache");
    let repo = cache.join("models--acme--tiny-llama");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    f.long.write(&repo.join("snapshots").join(commit), false);
    let by_folder = f.path("folder.jsonl");
    assert!(crate::score_cli::score(&f.args(&by_folder))
        .status
        .success());
    let out_at = |args: &mut Vec<String>, name: &str| {
        let at = args.iter().position(|a| a == "--out").unwrap();
        args[at + 1] = p(&f.path(name)).to_string();
    };
    let mut args = f.args(&f.path("offline.jsonl"));
    let at = args.iter().position(|a| a == "--long-model").unwrap();
    args[at + 1] = "acme/tiny-llama".into();
    let o = gateau()
        .args(&args)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HOME", f.path("elsewhere"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let a: Vec<ScoreRecord> = read_jsonl(&by_folder);
    assert_eq!(a, read_jsonl::<ScoreRecord>(&f.path("offline.jsonl")));

    out_at(&mut args, "fallback.jsonl");
    args.retain(|a| a != "--quiet");
    let o = gateau()
        .args(&args)
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HUB_CACHE", &cache)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_TOKEN", "hf_test")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: cannot reach the Hugging Face hub for acme/tiny-llama")
            && err.contains("using the copy of acme/tiny-llama in the local hub cache"),
        "{err}"
    );
    assert_eq!(a, read_jsonl::<ScoreRecord>(&f.path("fallback.jsonl")));
}
