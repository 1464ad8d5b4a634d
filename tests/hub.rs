//! Hub ids resolved offline from a local hf-hub cache (HF_HOME), as on a node without
//! internet; a missing model gives one clear error.

use crate::common::*;
use crate::score_cli::Fixture;
use gateau::record::ScoreRecord;

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
