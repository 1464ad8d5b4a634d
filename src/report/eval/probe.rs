//! `gateau probe`: a labeled probe set made from real text, seeded and deterministic.
//!
//! Each sample is a LongAlign line whose context is a run of documents (a title line and
//! paragraphs) and whose label says what the response needs:
//! - `far`: one passage copied from the context, ending at least `gap` tokens before its end;
//! - `far-multi`: two or three such passages, far apart, combined;
//! - `diffuse`: the titles of every document, in order (the answer is spread over the context);
//! - `near`: one passage lying inside the short window (model A reads it too);
//! - `none`: the answer comes from the instruction or needs no context at all.
//!
//! Token positions come from the scoring tokenizer itself, so the labels hold by
//! construction: every copied passage occurs exactly once in the context, at the stated
//! token span, and no run of eight words of a `none` answer occurs in the context.

use super::docs::sentences;
pub use super::docs::{load_docs, Doc, Rng};
use crate::input::template::Template;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

pub use crate::cli::ProbeKind as Kind;

pub use crate::cli::settings::{ProbeRun, ProbeSettings};

/// A context assembled from documents, with byte and token positions.
struct Assembled {
    text: String,
    titles: Vec<String>,
    /// Byte ranges of candidate passages (sentences) with the title of their document.
    sentences: Vec<std::ops::Range<usize>>,
    /// Token byte offsets of `text`.
    offsets: Vec<(usize, usize)>,
    doc_idx: Vec<usize>,
}

impl Assembled {
    fn n_tokens(&self) -> usize {
        self.offsets.len()
    }
    /// Token span `[first, last + 1)` covering a byte range.
    fn span(&self, r: &std::ops::Range<usize>) -> (usize, usize) {
        let first = self.offsets.partition_point(|o| o.1 <= r.start);
        let end = self.offsets.partition_point(|o| o.0 < r.end);
        (first, end)
    }
}

fn encode_offsets(tok: &Tokenizer, text: &str) -> Result<Vec<(usize, usize)>> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?
        .get_offsets()
        .to_vec())
}

fn count(tok: &Tokenizer, text: &str) -> Result<usize> {
    crate::input::template::encode(tok, text).map(|v| v.len())
}

/// Documents in random order, each cut to `doc_tokens`, until the context reaches
/// `target` tokens (estimated from per-paragraph counts, then measured exactly).
fn assemble(
    docs: &[Doc],
    para_tokens: &[Vec<usize>],
    exclude: &[usize],
    target: usize,
    s: &ProbeSettings,
    tok: &Tokenizer,
    rng: &mut Rng,
) -> Result<Assembled> {
    let mut order: Vec<usize> = (0..docs.len()).filter(|i| !exclude.contains(i)).collect();
    rng.shuffle(&mut order);
    let (mut text, mut titles, mut sents, mut doc_idx) =
        (String::new(), Vec::new(), Vec::new(), Vec::new());
    let mut est = 0;
    for &d in &order {
        if est >= target {
            break;
        }
        let doc = &docs[d];
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&format!("## {}\n", doc.title));
        titles.push(doc.title.clone());
        doc_idx.push(d);
        let mut in_doc = 0;
        for (p, n) in doc.paras.iter().zip(&para_tokens[d]) {
            if in_doc > 0 && (in_doc + n > s.doc_tokens || est + n > target) {
                break;
            }
            if in_doc > 0 {
                text.push('\n');
            }
            let base = text.len();
            sents.extend(
                sentences(p)
                    .into_iter()
                    .map(|r| r.start + base..r.end + base),
            );
            text.push_str(p);
            in_doc += n;
            est += n;
        }
    }
    // The reader's context keeps the "\n\n" before the instruction (spec section 1), and
    // the scorer encodes it whole: so are these offsets.
    text.push_str("\n\n");
    let offsets = encode_offsets(tok, &text)?;
    Ok(Assembled {
        text,
        titles,
        sentences: sents,
        offsets,
        doc_idx,
    })
}

fn occurrences(hay: &str, needle: &str) -> usize {
    hay.match_indices(needle).count()
}

/// Whether any run of 8 words of `answer` occurs in `ctx`.
fn shares_eight_words(ctx: &str, answer: &str) -> bool {
    let w: Vec<&str> = answer.split_whitespace().collect();
    w.len() >= 8 && w.windows(8).any(|run| ctx.contains(&run.join(" ")))
}

/// Makes the probe set: `n` LongAlign lines (as JSON values), kinds in turn.
pub fn generate(
    docs: &[Doc],
    tok: &Tokenizer,
    template: &Template,
    bos: bool,
    s: &ProbeSettings,
) -> Result<Vec<Value>> {
    if docs.len() < 6 {
        bail!(
            "--docs: {} usable documents; the probe needs at least 6 (a title line, then \
             paragraphs separated by blank lines)",
            docs.len()
        );
    }
    if s.min_tokens > s.max_tokens || s.kinds.is_empty() {
        bail!("--min-tokens must not exceed --max-tokens, and --kinds must name a kind");
    }
    let para_tokens: Vec<Vec<usize>> = docs
        .iter()
        .map(|d| d.paras.iter().map(|p| count(tok, p)).collect())
        .collect::<Result<_>>()?;
    let mut rng = Rng::new(s.seed);
    let mut out = Vec::with_capacity(s.n);
    for i in 0..s.n {
        let kind = s.kinds[i % s.kinds.len()];
        let mut made = None;
        for _attempt in 0..200 {
            // Log-uniform lengths: every doubling of the length gets as many samples.
            let (lo, hi) = (s.min_tokens as f64, s.max_tokens as f64);
            let target = (lo * (hi / lo).powf(rng.unit())) as usize;
            if let Some(v) = one(
                docs,
                &para_tokens,
                kind,
                target,
                i,
                tok,
                template,
                bos,
                s,
                &mut rng,
            )? {
                made = Some(v);
                break;
            }
        }
        match made {
            Some(v) => out.push(v),
            None => bail!(
                "probe: could not make a {} sample of {}-{} tokens from these documents in 200 \
                 tries (too few long documents or usable sentences?)",
                kind.name(),
                s.min_tokens,
                s.max_tokens
            ),
        }
    }
    Ok(out)
}

const COPY: [&str; 3] = [
    "Copy, word for word, the sentence of the document \"{t}\" that begins with \"{w}\".",
    "Quote exactly the sentence in \"{t}\" that starts \"{w}\".",
    "In the document titled \"{t}\", find the sentence beginning \"{w}\" and repeat it verbatim.",
];

fn copy_instruction(title: &str, sentence: &str, rng: &mut Rng) -> String {
    let w: Vec<&str> = sentence.split_whitespace().take(4).collect();
    COPY[rng.below(COPY.len())]
        .replace("{t}", title)
        .replace("{w}", &w.join(" "))
}

#[allow(clippy::too_many_arguments)]
fn one(
    docs: &[Doc],
    para_tokens: &[Vec<usize>],
    kind: Kind,
    target: usize,
    i: usize,
    tok: &Tokenizer,
    template: &Template,
    bos: bool,
    s: &ProbeSettings,
    rng: &mut Rng,
) -> Result<Option<Value>> {
    // `none` answers come from a document kept out of the context.
    let outside = rng.below(docs.len());
    let exclude = if kind == Kind::None {
        vec![outside]
    } else {
        vec![]
    };
    let c = assemble(docs, para_tokens, &exclude, target, s, tok, rng)?;
    let n = c.n_tokens();
    if n < s.min_tokens || n > s.max_tokens {
        return Ok(None);
    }
    // The context as the reader will cut it: U = ctx + "\n\n" + instruction.
    let title_of = |r: &std::ops::Range<usize>| {
        let before = c.text[..r.start].rfind("## ").unwrap_or(0);
        let line_end = c.text[before..]
            .find('\n')
            .map_or(c.text.len(), |e| before + e);
        c.text[before + 3..line_end].to_string()
    };
    let unique = |r: &std::ops::Range<usize>| occurrences(&c.text, &c.text[r.clone()]) == 1;
    let (instruction, response, spans): (String, String, Vec<(usize, usize)>) = match kind {
        Kind::Far | Kind::Near => {
            // Near passages must lie inside what model A reads: W minus BOS, mid and resp.
            let cands: Vec<&std::ops::Range<usize>> = c
                .sentences
                .iter()
                .filter(|r| unique(r))
                .filter(|r| {
                    let (a, b) = c.span(r);
                    match kind {
                        Kind::Far => n - b >= s.gap,
                        _ => n - a + 64 <= s.window / 2,
                    }
                })
                .collect();
            if cands.is_empty() {
                return Ok(None);
            }
            let r = cands[rng.below(cands.len())].clone();
            let sent = c.text[r.clone()].to_string();
            (
                copy_instruction(&title_of(&r), &sent, rng),
                sent,
                vec![c.span(&r)],
            )
        }
        Kind::FarMulti => {
            let k = 2 + rng.below(2);
            let mut cands: Vec<std::ops::Range<usize>> = c
                .sentences
                .iter()
                .filter(|r| unique(r) && n - c.span(r).1 >= s.gap)
                .cloned()
                .collect();
            rng.shuffle(&mut cands);
            let mut picked: Vec<std::ops::Range<usize>> = Vec::new();
            for r in cands {
                let (a, b) = c.span(&r);
                if picked.iter().all(|p| {
                    let (pa, pb) = c.span(p);
                    a >= pb + s.spread || pa >= b + s.spread
                }) {
                    picked.push(r);
                }
                if picked.len() == k {
                    break;
                }
            }
            if picked.len() < k {
                return Ok(None);
            }
            picked.sort_by_key(|r| r.start);
            let parts: Vec<String> = picked
                .iter()
                .map(|r| {
                    let w: Vec<&str> = c.text[r.clone()].split_whitespace().take(4).collect();
                    format!("\"{}\" (in \"{}\")", w.join(" "), title_of(r))
                })
                .collect();
            let instruction = format!(
                "Copy, word for word and in this order, the sentences that begin with {}. Put \
                 each on its own line.",
                parts.join(", then ")
            );
            let response = picked
                .iter()
                .map(|r| c.text[r.clone()].to_string())
                .collect::<Vec<_>>()
                .join("\n");
            (
                instruction,
                response,
                picked.iter().map(|r| c.span(r)).collect(),
            )
        }
        Kind::Diffuse => {
            if c.titles.len() < 3 {
                return Ok(None);
            }
            let titles_unique = c
                .titles
                .iter()
                .all(|t| occurrences(&c.text, &format!("## {t}\n")) == 1);
            if !titles_unique {
                return Ok(None);
            }
            let instruction = [
                "List the titles of all the documents above, in the order they appear, one per line.",
                "Which documents does the text contain? Give every title, in order, one per line.",
            ][rng.below(2)]
            .to_string();
            let response = c
                .titles
                .iter()
                .enumerate()
                .map(|(k, t)| format!("{}. {t}", k + 1))
                .collect::<Vec<_>>()
                .join("\n");
            let spans = c
                .titles
                .iter()
                .map(|t| {
                    let at = c.text.find(&format!("## {t}\n")).unwrap_or(0) + 3;
                    c.span(&(at..at + t.len()))
                })
                .collect();
            (instruction, response, spans)
        }
        Kind::None => {
            if rng.below(3) == 0 {
                let a = 10 + rng.below(80);
                let b = a + 12 + rng.below(20);
                let response = (a..=b)
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    format!("Write the whole numbers from {a} to {b}, separated by commas."),
                    response,
                    vec![],
                )
            } else {
                let d = &docs[outside];
                let sents: Vec<String> = d
                    .paras
                    .iter()
                    .flat_map(|p| sentences(p).into_iter().map(|r| p[r].to_string()))
                    .collect();
                if sents.is_empty() {
                    return Ok(None);
                }
                let sent = sents[rng.below(sents.len())].clone();
                if c.text.contains(&sent) || shares_eight_words(&c.text, &sent) {
                    return Ok(None);
                }
                (
                    format!("Repeat the following sentence exactly: {sent}"),
                    sent,
                    vec![],
                )
            }
        }
    };
    // The window's view, measured with the scoring template: far passages must lie
    // before it, near ones inside it.
    let mid = count(
        tok,
        &format!(
            "{}{}{}",
            template.instruction_prefix, instruction, template.response_prefix
        ),
    )?;
    let resp = count(tok, &response)?;
    let seen = s.window.saturating_sub(usize::from(bos) + resp + mid);
    let fits = match kind {
        Kind::Near => spans.iter().all(|&(a, _)| a >= n.saturating_sub(seen)),
        Kind::Far | Kind::FarMulti => spans.iter().all(|&(_, b)| b + seen <= n && n - b >= s.gap),
        Kind::Diffuse => spans.first().is_some_and(|&(_, b)| b + seen <= n),
        Kind::None => true,
    };
    if !fits || instruction.contains("\n\n") {
        return Ok(None);
    }
    let user = format!("{}{}", c.text, instruction);
    let docs_used: Vec<&str> = c.doc_idx.iter().map(|&d| docs[d].title.as_str()).collect();
    Ok(Some(json!({
        "id": format!("probe-{i:05}"),
        "label": kind.name(),
        "n_ctx_tokens": n,
        "passages": spans.iter().map(|&(a, b)| json!({"start": a, "end": b, "gap": n - b})).collect::<Vec<_>>(),
        "documents": docs_used,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": response},
        ],
    })))
}

/// Runs `gateau probe`.
pub fn run(r: ProbeRun) -> Result<std::process::ExitCode> {
    let docs = load_docs(&r.docs)?;
    let (cfg, tok) = crate::checkpoint::describe_model(&r.model)?;
    let s = &r.make;
    let lines = generate(
        &docs,
        &tok,
        &Template::default(),
        cfg.bos_token_id.is_some(),
        s,
    )?;
    let tmp = r.out.with_extension("partial");
    let mut text = String::new();
    for v in &lines {
        text.push_str(&serde_json::to_string(v)?);
        text.push('\n');
    }
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &r.out)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), r.out.display()))?;
    eprintln!(
        "gateau probe: {} samples from {} documents -> {}",
        lines.len(),
        docs.len(),
        r.out.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
