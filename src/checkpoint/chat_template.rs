//! Where a model's chat template and special-token strings are read from (spec section
//! 2b): tokenizer_config.json's `chat_template` beside tokenizer.json (the `--tokenizer`
//! file's folder when one is given, else the model folder or hub snapshot), else a
//! `chat_template.jinja` beside it, else the GGUF key `tokenizer.chat_template`.
//! `bos_token` / `eos_token` are tokenizer_config.json's when it names them, else the
//! tokens of the model's BOS / EOS ids.

use super::{describe_model, gguf::GgufFile, ModelSpec};
use crate::input::chat::ChatTemplate;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A tokenizer_config.json special token: a string, or an AddedToken `{"content": ..}`.
fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// tokenizer_config.json's "chat_template": a string, or a list of {name, template} (the
/// one named "default").
pub fn config_template(v: &Value, file: &Path) -> Result<Option<String>> {
    let f = file.display();
    match v.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(n))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
            };
            match named("default") {
                Some(t) => Ok(Some(t.to_string())),
                None => {
                    let names: Vec<&str> = list
                        .iter()
                        .filter_map(|t| t.get("name").and_then(Value::as_str))
                        .collect();
                    bail!(
                        "{f}: \"chat_template\" lists templates {names:?} but none named \
                         \"default\"; put the one to score with in a chat_template.jinja \
                         beside it, or use --template plain"
                    )
                }
            }
        }
        Some(_) => bail!("{f}: \"chat_template\" must be a string or a list of templates"),
    }
}

/// The chat template of `spec`'s tokenizer, compiled and checked on a probe sample.
pub fn for_model(spec: &ModelSpec) -> Result<ChatTemplate> {
    let files = super::model_files(spec)?;
    let gguf = files
        .first()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .cloned();
    let dir: Option<PathBuf> = match (&spec.tokenizer, &gguf) {
        (Some(t), _) => t.parent().map(Path::to_path_buf),
        (None, Some(_)) => None,
        (None, None) => files
            .first()
            .and_then(|c| c.parent())
            .map(Path::to_path_buf),
    };
    let mut looked = Vec::new();
    let mut found: Option<(String, String)> = None;
    let mut tok_config: Option<Value> = None;
    if let Some(dir) = &dir {
        let cfg_file = dir.join("tokenizer_config.json");
        if cfg_file.is_file() {
            let text = std::fs::read_to_string(&cfg_file)
                .with_context(|| format!("cannot read {}", cfg_file.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", cfg_file.display()))?;
            if let Some(t) = config_template(&v, &cfg_file)? {
                found = Some((format!("{} (\"chat_template\")", cfg_file.display()), t));
            }
            tok_config = Some(v);
        }
        looked.push(format!("\"chat_template\" in {}", cfg_file.display()));
        let jinja = dir.join("chat_template.jinja");
        if found.is_none() && jinja.is_file() {
            let t = std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?;
            found = Some((jinja.display().to_string(), t));
        }
        looked.push(jinja.display().to_string());
    }
    let g = gguf.as_deref().map(GgufFile::open).transpose()?;
    if let Some(g) = &g {
        if found.is_none() {
            if let Some(t) = g.string_key("tokenizer.chat_template")? {
                found = Some((
                    format!("{} (GGUF tokenizer.chat_template)", g.path.display()),
                    t.to_string(),
                ));
            }
        }
        looked.push(format!(
            "GGUF key tokenizer.chat_template in {}",
            g.path.display()
        ));
    }
    let Some((name, text)) = found else {
        bail!(
            "--template chat: model {} has no chat template (looked for {}); add one there, \
             or score with --template plain",
            spec.location,
            looked.join(", ")
        );
    };
    let (cfg, tok) = describe_model(spec)?;
    let by_id = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let special = |key: &str, id: Option<u32>| match tok_config.as_ref().and_then(|c| c.get(key)) {
        Some(v) => token_string(v),
        None => by_id(id),
    };
    let eos_id = match &g {
        Some(g) => g.u32_of("tokenizer.ggml.eos_token_id")?,
        None => hf_eos_id(files.first())?,
    };
    let t = ChatTemplate::new(
        &name,
        &text,
        special("bos_token", cfg.bos_token_id),
        special("eos_token", eos_id),
    )?;
    // Fail before any output is written, not on the first sample.
    t.pieces(
        None,
        "gateau probe context\n\ngateau probe question?",
        "gateau probe context\n\n",
    )
    .map_err(|e| anyhow!("{e:#} (checked on a probe user turn)"))?;
    Ok(t)
}

/// config.json's `eos_token_id` (the first of a list).
fn hf_eos_id(config: Option<&PathBuf>) -> Result<Option<u32>> {
    let Some(path) = config else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let id = match v.get("eos_token_id") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_u64),
        Some(x) => x.as_u64(),
        None => None,
    };
    Ok(id.and_then(|i| u32::try_from(i).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn special_tokens_are_strings_or_added_tokens() {
        assert_eq!(token_string(&json!("<s>")).as_deref(), Some("<s>"));
        assert_eq!(
            token_string(&json!({"content": "</s>", "lstrip": false})).as_deref(),
            Some("</s>")
        );
        assert_eq!(token_string(&Value::Null), None);
    }

    #[test]
    fn named_templates_use_the_default_one() {
        let f = Path::new("tokenizer_config.json");
        let v = json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        assert_eq!(config_template(&v, f).unwrap().as_deref(), Some("D"));
        assert_eq!(config_template(&json!({}), f).unwrap(), None);
        let e = config_template(
            &json!({"chat_template": [{"name": "rag", "template": "R"}]}),
            f,
        )
        .unwrap_err();
        assert!(e.to_string().contains("none named \"default\""), "{e}");
    }
}
