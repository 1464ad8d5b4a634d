//! Chat-template mode (spec section 2b, `--template chat`): the prompt is the tokenizer's
//! own chat template rendered with minijinja as transformers renders it (`trim_blocks`,
//! `lstrip_blocks`, `loop_controls`, Python string methods, `raise_exception`), with
//! `messages` = [system turn] + [user turn U], `add_generation_prompt = true` and the
//! tokenizer's `bos_token` / `eos_token`. A leading BOS string is removed (BOS is added as
//! the token), and the context `c` is cut out of the rendering where U begins:
//! `head` = the text before it, `mid` = the text after it. Where the template files are
//! found is [`crate::checkpoint::chat_template`].

use crate::input::template::{tokenize, tokenize_pieces, Template, TokenizeError, Tokens};
use crate::input::Sample;
use anyhow::{anyhow, bail, Result};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokenizers::Tokenizer;

/// `--template`: how the prompt around the context is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// "### Input:" + context + "### Instruction:" + instruction + "### Response:" (spec
    /// section 2; the strings of the config's "template" object).
    #[default]
    Plain,
    /// The tokenizer's own chat template (tokenizer_config.json "chat_template", else
    /// chat_template.jinja beside tokenizer.json, else GGUF tokenizer.chat_template) with
    /// the sample's system and user turns and the generation prompt (spec section 2b).
    Chat,
}

/// The config file's "template": "plain", "chat", or the plain template's strings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = "\"plain\", \"chat\", or an object {\"head\", \"instruction_prefix\", \
                 \"response_prefix\"}"
)]
pub enum TemplateSetting {
    Kind(TemplateKind),
    Strings(Template),
}

impl TemplateSetting {
    pub fn kind(&self) -> TemplateKind {
        match self {
            Self::Kind(k) => *k,
            Self::Strings(_) => TemplateKind::Plain,
        }
    }

    /// The plain template's strings (the defaults unless the config gave them).
    pub fn strings(&self) -> Template {
        match self {
            Self::Kind(_) => Template::default(),
            Self::Strings(t) => t.clone(),
        }
    }
}

/// A compiled chat template with the tokenizer's special-token strings.
#[derive(Clone)]
pub struct ChatTemplate {
    /// Where the template came from (a file and key), named in every error.
    pub name: String,
    /// The template source.
    pub text: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// In settings logs: where the template came from, not its text.
impl Serialize for ChatTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("chat_template", &self.name)?;
        m.serialize_entry("bos_token", &self.bos_token)?;
        m.serialize_entry("eos_token", &self.eos_token)?;
        m.end()
    }
}

/// The prompt text around the context: `P = head + ctx + mid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pieces {
    pub head: String,
    pub ctx: String,
    pub mid: String,
}

const NAME: &str = "chat_template";

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// The user turn U of a sample: as written (conversation shapes), else
/// `c + "\n\n" + x` (just `x` when `c` is "").
pub fn user_turn(sample: &Sample) -> String {
    match &sample.user {
        Some(u) => u.clone(),
        None if sample.context.is_empty() => sample.instruction.clone(),
        None => format!("{}\n\n{}", sample.context, sample.instruction),
    }
}

impl ChatTemplate {
    /// Compiles `text`; `name` says where it came from.
    pub fn new(
        name: &str,
        text: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| anyhow!("chat template {name}: {e}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, text.to_string())
            .map_err(|e| {
                anyhow!(
                    "chat template {name} is not a valid Jinja template: {e}; fix the \
                     template, or score with --template plain"
                )
            })?;
        Ok(Self {
            name: name.to_string(),
            text: text.to_string(),
            bos_token,
            eos_token,
            env: Arc::new(env),
        })
    }

    /// The template rendered with `messages` = [system] + [user], the generation prompt on.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String> {
        let turn = |role: &str, content: &str| {
            Value::from_pairs([
                ("role", Value::from(role)),
                ("content", Value::from(content)),
            ])
        };
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(turn("system", s));
        }
        messages.push(turn("user", user));
        let mut ctx = vec![
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(true)),
        ];
        if let Some(b) = &self.bos_token {
            ctx.push(("bos_token", Value::from(b.as_str())));
        }
        if let Some(e) = &self.eos_token {
            ctx.push(("eos_token", Value::from(e.as_str())));
        }
        let t = self
            .env
            .get_template(NAME)
            .map_err(|e| anyhow!("chat template {}: {e}", self.name))?;
        t.render(Value::from_pairs(ctx)).map_err(|e| {
            anyhow!(
                "chat template {} failed to render: {e}; fix the template, or score with \
                 --template plain",
                self.name
            )
        })
    }

    /// The prompt pieces of a user turn `user` whose context is `context` (a prefix of it).
    pub fn pieces(&self, system: Option<&str>, user: &str, context: &str) -> Result<Pieces> {
        if !user.starts_with(context) {
            bail!("the context is not the start of the user turn (a gateau bug)");
        }
        let rendered = self.render(system, user)?;
        let p = strip_bos(&rendered, self.bos_token.as_deref());
        let starts: Vec<usize> = p.match_indices(user).map(|(i, _)| i).collect();
        let pos = match starts.as_slice() {
            [] => bail!(
                "chat template {}: its rendering does not contain the user turn verbatim (the \
                 template changes the content, e.g. trims or escapes it), so the context \
                 cannot be placed; score with --template plain, or edit the template to \
                 write message['content'] unchanged",
                self.name
            ),
            [one] => *one,
            many => self.where_content_goes(system, p, many)?,
        };
        Ok(Pieces {
            head: p[..pos].to_string(),
            ctx: context.to_string(),
            mid: p[pos + context.len()..].to_string(),
        })
    }

    /// Of several occurrences of U in `p` (a system turn repeating it), the one where the
    /// template writes the user content: found by rendering a marker in its place.
    fn where_content_goes(&self, system: Option<&str>, p: &str, starts: &[usize]) -> Result<usize> {
        const MARK: &str = "\u{E000}gateau-user-turn\u{E001}";
        let marked = self.render(system, MARK)?;
        let m = strip_bos(&marked, self.bos_token.as_deref());
        m.find(MARK)
            .filter(|&k| starts.contains(&k) && p[..k] == m[..k])
            .ok_or_else(|| {
                anyhow!(
                    "chat template {}: the user turn occurs {} times in the rendering and \
                     the one the template wrote cannot be told apart; score with \
                     --template plain",
                    self.name,
                    starts.len()
                )
            })
    }

    /// A sample's prompt pieces (spec section 2b).
    pub fn sample_pieces(&self, sample: &Sample) -> Result<Pieces> {
        self.pieces(
            sample.system.as_deref(),
            &user_turn(sample),
            &sample.context,
        )
    }
}

/// `p` without a leading BOS string.
fn strip_bos<'a>(p: &'a str, bos: Option<&str>) -> &'a str {
    match bos.filter(|b| !b.is_empty()) {
        Some(b) => p.strip_prefix(b).unwrap_or(p),
        None => p,
    }
}

/// Tokenizes a sample with the plain template, or with `chat` when given (spec sections
/// 2 and 2b): `Ok(Err(..))` is a sample-level problem, among them a chat template that
/// cannot write this sample's prompt (it raised, or changed the user turn); a template
/// that fails on every sample is refused when it is read ([`crate::checkpoint::chat_template`]).
pub fn tokenize_sample(
    tok: &Tokenizer,
    template: &Template,
    chat: Option<&ChatTemplate>,
    sample: &Sample,
    bos: Option<u32>,
    max_len: usize,
) -> Result<std::result::Result<Tokens, TokenizeError>> {
    match chat {
        None => tokenize(tok, template, sample, bos, max_len),
        Some(c) => match c.sample_pieces(sample) {
            Ok(p) => tokenize_pieces(tok, &p.head, &p.ctx, &p.mid, &sample.response, bos, max_len),
            Err(e) => Ok(Err(TokenizeError::Template(format!("{e:#}")))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn chatml() -> ChatTemplate {
        ChatTemplate::new("inline ChatML", CHATML, None, Some("<|im_end|>".into())).unwrap()
    }

    #[test]
    fn context_is_cut_where_the_user_turn_begins() {
        let p = chatml()
            .pieces(Some("Be brief."), "doc\n\nWhat?", "doc\n\n")
            .unwrap();
        assert_eq!(
            p.head,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        );
        assert_eq!(p.ctx, "doc\n\n");
        assert_eq!(p.mid, "What?<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn a_leading_bos_string_is_removed() {
        let t = ChatTemplate::new(
            "inline",
            "{{ bos_token }}[INST] {{ messages[0].content }} [/INST]",
            Some("<s>".into()),
            None,
        )
        .unwrap();
        let p = t.pieces(None, "c\n\nx", "c\n\n").unwrap();
        assert_eq!((p.head.as_str(), p.mid.as_str()), ("[INST] ", "x [/INST]"));
    }

    #[test]
    fn a_system_turn_repeating_the_user_turn_is_told_apart() {
        let p = chatml().pieces(Some("Q"), "Q", "").unwrap();
        assert_eq!(
            p.head,
            "<|im_start|>system\nQ<|im_end|>\n<|im_start|>user\n"
        );
        assert_eq!(p.mid, "Q<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn user_turn_of_the_flat_shapes() {
        let mut s = crate::input::parse_line(&crate::input::RawLine {
            number: 0,
            bytes: br#"{"instruction":"x","input":"c","output":"y"}"#.to_vec(),
            offset: 0,
        })
        .unwrap();
        assert_eq!(user_turn(&s), "c\n\nx");
        s.context.clear();
        assert_eq!(user_turn(&s), "x");
    }

    #[test]
    fn settings_values() {
        let k: TemplateSetting = serde_json::from_str("\"chat\"").unwrap();
        assert_eq!(k.kind(), TemplateKind::Chat);
        assert_eq!(k.strings(), Template::default());
        let s: TemplateSetting =
            serde_json::from_str(r#"{"head":"H","instruction_prefix":"I","response_prefix":"R"}"#)
                .unwrap();
        assert_eq!(
            (s.kind(), s.strings().head),
            (TemplateKind::Plain, "H".into())
        );
        let e = serde_json::from_str::<TemplateSetting>("\"chatml\"").unwrap_err();
        assert!(e.to_string().contains("\"plain\", \"chat\""), "{e}");
    }
}
