//! `--template chat` (spec section 2b): SmolLM2's own template (from its GGUF), an inline
//! Qwen-style ChatML template and the LLaMA-2 `[INST]` template, each against renderings
//! written by hand from the template's logic; the context tokens and segments against the
//! pieces tokenized independently; the template errors; and the flag and the config key
//! end to end through the binary.

use crate::common::*;
use crate::families::{families, score_args};
use crate::smollm2::gguf;
use gateau::checkpoint::{chat_template::for_model, describe_model, ModelSpec};
use gateau::input::chat::{tokenize_sample, ChatTemplate};
use gateau::input::template::{encode, Template};
use gateau::input::{parse_line, RawLine, Sample};
use gateau::records::ScoreRecord;
use std::path::Path;

/// transformers' LLaMA-2-chat template, as its tokenizer_config.json holds it.
const LLAMA2: &str = r#"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"#;

/// Qwen2.5's template without its tool branches: `{%-` / `{{-` whitespace control over
/// indented lines, a default system turn.
const QWEN: &str = r#"{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// Plain ChatML laid out on lines: right only with transformers' trim_blocks (the newline
/// after a block tag goes) and lstrip_blocks (the indentation before one goes).
const CHATML_LINES: &str = "  {% for message in messages %}\n<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n  {% endfor %}\n  {% if add_generation_prompt %}\n<|im_start|>assistant\n  {% endif %}\n";

fn sample(line: &str) -> Sample {
    parse_line(&RawLine {
        number: 0,
        bytes: line.as_bytes().to_vec(),
        offset: 0,
    })
    .unwrap()
}

fn gguf_spec() -> ModelSpec {
    ModelSpec {
        location: p(gguf()).into(),
        tokenizer: None,
        rope_theta: None,
    }
}

const SMOL_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn smollm2_gguf_template_renders_chatml_with_its_default_system_turn() {
    let t = for_model(&gguf_spec()).unwrap();
    assert!(
        t.name.ends_with("(GGUF tokenizer.chat_template)"),
        "{}",
        t.name
    );
    assert!(t.name.contains("SmolLM2-135M-Instruct"), "{}", t.name);
    // SmolLM2's BOS (id 1) is <|im_start|>, its EOS (id 2) <|im_end|>.
    assert_eq!(t.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(t.eos_token.as_deref(), Some("<|im_end|>"));
    let want = format!(
        "{SMOL_SYSTEM}<|im_start|>user\nThe doc.\n\nWhat?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.render(None, "The doc.\n\nWhat?").unwrap(), want);
    assert_eq!(
        t.render(Some("Be brief."), "Q").unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // The rendering starts with the BOS string: it goes, BOS comes back as the token.
    let p = t.pieces(None, "The doc.\n\nWhat?", "The doc.\n\n").unwrap();
    assert_eq!(
        p.head,
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\n"
    );
    assert_eq!(p.ctx, "The doc.\n\n");
    assert_eq!(p.mid, "What?<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn smollm2_context_tokens_and_segments_sit_where_the_pieces_put_them() {
    let spec = gguf_spec();
    let t = for_model(&spec).unwrap();
    let (cfg, tok) = describe_model(&spec).unwrap();
    let c = "Alpha beta gamma delta. Epsilon zeta eta theta. Iota kappa lambda mu.\n\n";
    let s = sample(&format!(
        r#"{{"messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":{}}},{{"role":"assistant","content":"Kappa."}}]}}"#,
        serde_json::to_string(&format!("{c}Which letter follows iota?")).unwrap()
    ));
    let got = tokenize_sample(
        &tok,
        &Template::default(),
        Some(&t),
        &s,
        cfg.bos_token_id,
        4096,
    )
    .unwrap()
    .unwrap();
    // The pieces by hand, tokenized on their own.
    let head = encode(&tok, "system\nBe brief.<|im_end|>\n<|im_start|>user\n").unwrap();
    let ctx = encode(&tok, c).unwrap();
    let mid = encode(
        &tok,
        "Which letter follows iota?<|im_end|>\n<|im_start|>assistant\n",
    )
    .unwrap();
    let resp = encode(&tok, "Kappa.").unwrap();
    assert_eq!(cfg.bos_token_id, Some(1));
    assert_eq!(
        (&got.head, &got.ctx, &got.mid, &got.resp),
        (&head, &ctx, &mid, &resp)
    );
    let full = got.full();
    assert_eq!(full[0], 1);
    // <|im_end|> and <|im_start|> are single special tokens inside head and mid.
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert!(head.contains(&2) && head.contains(&1) && mid.contains(&2));
    let at = got.ctx_start();
    assert_eq!(at, 1 + head.len());
    assert_eq!(&full[at..at + ctx.len()], &ctx[..]);
    assert_eq!(tok.decode(&full[at..at + ctx.len()], false).unwrap(), c);
    assert_eq!(got.resp_start(), 1 + head.len() + ctx.len() + mid.len());
    // A segment: BOS + head + its slice of the context + mid + resp.
    let seg = got.segment(2, 5);
    let want: Vec<u32> = [&[1][..], &head, &ctx[2..7], &mid, &resp].concat();
    assert_eq!(seg, want);
    // Truncation cuts the start of the context only.
    let short = tokenize_sample(
        &tok,
        &Template::default(),
        Some(&t),
        &s,
        Some(1),
        full.len() - 3,
    )
    .unwrap()
    .unwrap();
    assert!(short.truncated);
    assert_eq!(short.ctx, ctx[3..].to_vec());
    assert_eq!((&short.head, &short.mid), (&head, &mid));
}

#[test]
fn qwen_chatml_template_writes_its_default_system_turn() {
    let t = ChatTemplate::new("inline Qwen", QWEN, None, Some("<|im_end|>".into())).unwrap();
    assert_eq!(
        t.render(None, "doc\n\nQ?").unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
         assistant.<|im_end|>\n<|im_start|>user\ndoc\n\nQ?<|im_end|>\n<|im_start|>assistant\n"
    );
    let p = t.pieces(Some("Sys."), "doc\n\nQ?", "doc\n\n").unwrap();
    assert_eq!(
        p.head,
        "<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\n"
    );
    assert_eq!(p.mid, "Q?<|im_end|>\n<|im_start|>assistant\n");
    // No BOS string (Qwen has none): nothing is stripped.
    let lines = ChatTemplate::new("inline ChatML lines", CHATML_LINES, None, None).unwrap();
    assert_eq!(
        lines.render(Some("S"), "U").unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn llama2_inst_template_with_and_without_a_system_turn() {
    let t = ChatTemplate::new(
        "inline LLaMA-2",
        LLAMA2,
        Some("<s>".into()),
        Some("</s>".into()),
    )
    .unwrap();
    assert_eq!(
        t.render(None, "doc\n\nQ?").unwrap(),
        "<s>[INST] doc\n\nQ? [/INST]"
    );
    assert_eq!(
        t.render(Some("Be brief."), "doc\n\nQ?").unwrap(),
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\ndoc\n\nQ? [/INST]"
    );
    let p = t.pieces(None, "doc\n\nQ?", "doc\n\n").unwrap();
    assert_eq!((p.head.as_str(), p.mid.as_str()), ("[INST] ", "Q? [/INST]"));
    let p = t.pieces(Some("Be brief."), "doc\n\nQ?", "doc\n\n").unwrap();
    assert_eq!(p.head, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n");
    assert_eq!(p.mid, "Q? [/INST]");
    // Alpaca / explicit shapes: U = c + "\n\n" + x; no context: U = x, everything in mid.
    let s = sample(r#"{"instruction":"Q?","input":"doc","output":"A."}"#);
    let p = t.sample_pieces(&s).unwrap();
    assert_eq!(
        (p.head.as_str(), p.ctx.as_str(), p.mid.as_str()),
        ("[INST] ", "doc", "\n\nQ? [/INST]")
    );
    let s = sample(r#"{"instruction":"Q?","output":"A."}"#);
    let p = t.sample_pieces(&s).unwrap();
    assert_eq!(
        (p.head.as_str(), p.ctx.as_str(), p.mid.as_str()),
        ("[INST] ", "", "Q? [/INST]")
    );
}

#[test]
fn a_rendering_without_the_user_turn_verbatim_names_the_template() {
    let t = ChatTemplate::new("inline LLaMA-2", LLAMA2, Some("<s>".into()), None).unwrap();
    // LLaMA-2's template strips the content: a user turn ending in a newline is not in P.
    let e = t
        .pieces(None, "doc\n\nQ?\n", "doc\n\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("chat template inline LLaMA-2"), "{e}");
    assert!(e.contains("does not contain the user turn verbatim"), "{e}");
    assert!(e.contains("--template plain"), "{e}");
    // A template file that changes every content fails when the model's template is read,
    // naming its file.
    let dir = tmp();
    let folder = fixture_with_template(dir.path(), "{{ messages[-1]['content'] | upper }}");
    let e = for_model(&folder_spec(&folder)).unwrap_err();
    let e = format!("{e:#}");
    let file = folder.join("tokenizer_config.json");
    assert!(
        e.contains(&format!(
            "chat template {} (\"chat_template\")",
            file.display()
        )),
        "{e}"
    );
    assert!(e.contains("does not contain the user turn verbatim"), "{e}");
}

#[test]
fn raise_exception_and_a_missing_template_are_errors_that_say_where() {
    let t = ChatTemplate::new(
        "inline strict",
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ messages[0]['content'] }}",
        None,
        None,
    )
    .unwrap();
    assert_eq!(t.render(None, "U").unwrap(), "U");
    let e = t.render(Some("S"), "U").unwrap_err().to_string();
    assert!(
        e.contains("chat template inline strict") && e.contains("System role not supported"),
        "{e}"
    );
    let e = ChatTemplate::new("inline broken", "{% for m in messages %}", None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chat template inline broken is not a valid Jinja template"),
        "{e}"
    );
    // The mistral fixture's tokenizer_config.json has no "chat_template".
    let folder = families().join("mistral");
    let e = for_model(&folder_spec(&folder)).unwrap_err().to_string();
    assert!(e.contains("has no chat template"), "{e}");
    assert!(
        e.contains("chat_template.jinja") && e.contains("--template plain"),
        "{e}"
    );
}

#[test]
fn chat_template_jinja_beside_the_tokenizer_is_the_fallback() {
    let dir = tmp();
    let folder = fixture_with_template(dir.path(), "unused");
    // No "chat_template" key: the .jinja file is read.
    std::fs::write(
        folder.join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>"}"#,
    )
    .unwrap();
    std::fs::write(folder.join("chat_template.jinja"), LLAMA2).unwrap();
    let t = for_model(&folder_spec(&folder)).unwrap();
    assert_eq!(
        t.name,
        folder.join("chat_template.jinja").display().to_string()
    );
    assert_eq!(
        (t.bos_token.as_deref(), t.eos_token.as_deref()),
        (Some("<s>"), Some("</s>"))
    );
    assert_eq!(t.render(None, "x").unwrap(), "<s>[INST] x [/INST]");
}

fn folder_spec(folder: &Path) -> ModelSpec {
    ModelSpec {
        location: p(folder).into(),
        tokenizer: None,
        rope_theta: None,
    }
}

/// A copy of the mistral fixture (BOS <s>) whose tokenizer_config.json holds `template`.
fn fixture_with_template(dir: &Path, template: &str) -> std::path::PathBuf {
    let from = families().join("mistral");
    let to = dir.join("mistral-chat");
    std::fs::create_dir_all(&to).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
        "eos_token": "</s>", "add_bos_token": false, "chat_template": template
    });
    std::fs::write(to.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    to
}

fn score(folder: &Path, extra: &[&str]) -> Vec<ScoreRecord> {
    let dir = tmp();
    let out = dir.path().join("scores.jsonl");
    let mut args = score_args(folder, &families().join("data.jsonl"), &out);
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    read_jsonl(&out)
}

#[test]
fn template_chat_through_the_binary_equals_the_plain_template_spelling_the_same_prompt() {
    let dir = tmp();
    let folder = fixture_with_template(dir.path(), LLAMA2);
    // LLaMA-2 renders "<s>[INST] " + c + x + " [/INST]": with BOS stripped that is the
    // plain template with head "[INST] ", no instruction prefix, response prefix " [/INST]".
    let plain = dir.path().join("plain.json");
    std::fs::write(
        &plain,
        r#"{"template": {"head": "[INST] ", "instruction_prefix": "", "response_prefix": " [/INST]"}}"#,
    )
    .unwrap();
    let chat_cfg = dir.path().join("chat.json");
    std::fs::write(&chat_cfg, r#"{"template": "chat"}"#).unwrap();
    let by_flag = score(&folder, &["--template", "chat"]);
    let by_config = score(&folder, &["--config", p(&chat_cfg)]);
    let by_plain = score(&folder, &["--config", p(&plain)]);
    let default = score(&folder, &[]);
    assert_eq!(by_flag.len(), 4);
    for ((a, b), (c, d)) in by_flag
        .iter()
        .zip(&by_config)
        .zip(by_plain.iter().zip(&default))
    {
        assert!(a.ppl_long.is_some(), "{:?}", a.error);
        for other in [b, c] {
            assert_eq!(a.n_tokens, other.n_tokens);
            assert_eq!(a.n_ctx, other.n_ctx);
            assert_eq!(a.ppl_long, other.ppl_long);
            assert_eq!(a.ppl_short, other.ppl_short);
            assert_eq!(a.seg_ppl, other.seg_ppl);
            assert_eq!(a.seg_attn, other.seg_attn);
        }
        // The fingerprint names the template: the chat runs agree, the plain one differs
        // (so --resume never mixes them).
        let template_of = |r: &ScoreRecord| {
            let f = r.fingerprint.clone().unwrap_or_default();
            f.split(';')
                .find(|kv| kv.starts_with("template="))
                .map(String::from)
        };
        assert!(template_of(a).is_some());
        assert_eq!(template_of(a), template_of(b));
        assert_ne!(template_of(a), template_of(c));
        // The default stays the plain "### Input:" template: other prompt, other numbers.
        assert_eq!(a.n_ctx, d.n_ctx);
        assert_ne!(a.n_tokens, d.n_tokens);
    }
    // A model without a chat template is refused before anything is written.
    let out = dir.path().join("none.jsonl");
    let mut args = score_args(
        &families().join("mistral"),
        &families().join("data.jsonl"),
        &out,
    );
    args.extend(["--template".to_string(), "chat".to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&a);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("has no chat template"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn a_sample_the_template_cannot_write_is_a_bad_sample_naming_the_template() {
    let dir = tmp();
    // Gemma-style: no system role; LLaMA-3-style: the content trimmed.
    let folder = fixture_with_template(
        dir.path(),
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ bos_token }}[INST] {{ messages[-1]['content'] | trim }} [/INST]",
    );
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"id":"ok","instruction":"Q?","input":"doc","output":"A."}"#,
            "\n",
            r#"{"id":"trimmed","instruction":"Q?\n","input":"doc","output":"A."}"#,
            "\n",
            r#"{"id":"system","conversations":[{"from":"system","value":"S"},{"from":"human","value":"doc\n\nQ?"},{"from":"gpt","value":"A."}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("o.jsonl");
    let mut args = score_args(&folder, &data, &out);
    args.extend(["--template", "chat", "--max-bad", "2"].map(String::from));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Vec<ScoreRecord> = read_jsonl(&out);
    assert_eq!(r.len(), 3);
    assert!(r[0].ppl_long.is_some(), "{:?}", r[0].error);
    let file = folder.join("tokenizer_config.json").display().to_string();
    for (bad, why) in [(&r[1], "verbatim"), (&r[2], "System role not supported")] {
        let e = bad.error.as_deref().unwrap_or_default();
        assert!(
            bad.ppl_long.is_none() && e.contains(&file) && e.contains(why),
            "{e}"
        );
    }
}
