//! The forward pass against the plain-loop reference on tiny random models.

use crate::common::*;
use candle_core::DType;
use gateau::checkpoint::{self as model, ModelSpec};

fn load(dir: &std::path::Path, theta: Option<f64>) -> model::LoadedModel {
    let spec = ModelSpec {
        location: p(dir).to_string(),
        tokenizer: None,
        rope_theta: theta,
    };
    model::load(&spec, &cpu(DType::F32)).unwrap()
}

fn tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    std::iter::once(BOS)
        .chain((1..n).map(|_| r.below(256) as u32))
        .collect()
}

/// Logits within 1e-5 of their row's scale (max |logit|; f32 round-off is uniform across a
/// row, so element-wise relative error is meaningless near zero), attention mass within 1e-5
/// relative (floor 1e-4, well under the mass a key receives in these models).
fn check_against_naive(heads: usize, kv: usize, tied: bool, sharded: bool, split: bool) {
    let dir = tmp();
    let tiny = Tiny::random(7 + heads as u64 + kv as u64, heads, kv, tied);
    tiny.write(dir.path(), sharded);
    let mut m = load(dir.path(), None);
    m.llama.set_split_attention(split);
    // Long enough to cross several attention chunks would need > 16 rows; the chunking
    // itself is unit-tested, here we use a sequence with a long scored tail.
    let seq = tokens(3, 97);
    let from = 60;
    let naive = tiny.naive(&seq, tiny.rope_theta);
    let logits = m.llama.scored_logits(&seq, from).unwrap();
    for (i, row) in logits.iter().enumerate() {
        let want_row = &naive.logits[from - 1 + i];
        let scale = want_row.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (v, (&got, &want)) in row.iter().zip(want_row).enumerate() {
            let err = (got as f64 - want).abs() / scale;
            assert!(
                err <= 1e-5,
                "logit row {i} token {v}: {got} vs {want} (row scale {scale})"
            );
        }
    }
    let out = m
        .llama
        .forward(std::slice::from_ref(&seq), from, true)
        .unwrap();
    let mass = &out.attention.as_ref().unwrap()[0];
    let want = naive.mass(from);
    assert_eq!(mass.len(), want.len());
    let total: f64 = mass.iter().map(|&x| x as f64).sum();
    assert!((total - 1.0).abs() < 1e-5, "mass sums to {total}");
    for (j, (&g, &w)) in mass.iter().zip(&want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1e-4);
        assert!(err <= 1e-5, "mass at key {j}: {g} vs {w}");
    }
    // Perplexity of the scored tail against the reference logits.
    let nll = &out.nll[0];
    for (a, b) in nll.iter().zip(naive.nll(&seq, from)) {
        assert!(
            (*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0),
            "nll {a} vs {b}"
        );
    }
    let ppl = gateau::score::passes::ppl(nll);
    assert_rel(ppl, naive.ppl(&seq, from), 1e-5, "response perplexity");
}

/// The layout the flash-attention build uses: layer outputs from `fused_causal` in
/// `[B, T, H, hd]`, the capture on the side (on the CPU the fused call is the chunked one).
#[test]
fn split_attention_path_matches_naive() {
    check_against_naive(4, 2, false, false, true);
}

#[test]
fn multi_head_tied_matches_naive() {
    check_against_naive(4, 4, true, false, false);
}

#[test]
fn grouped_query_untied_sharded_matches_naive() {
    check_against_naive(4, 2, false, true, false);
}

#[test]
fn rope_theta_override_changes_numbers_as_the_reference_does() {
    let dir = tmp();
    let tiny = Tiny::random(11, 4, 2, true);
    tiny.write(dir.path(), false);
    let m = load(dir.path(), Some(2_000_000.0));
    let seq = tokens(5, 40);
    let got = m
        .llama
        .forward(std::slice::from_ref(&seq), 20, false)
        .unwrap();
    let want = tiny.naive(&seq, 2_000_000.0);
    let ppl = gateau::score::passes::ppl(&got.nll[0]);
    assert_rel(ppl, want.ppl(&seq, 20), 1e-5, "ppl with theta 2e6");
    let plain = tiny.naive(&seq, tiny.rope_theta).ppl(&seq, 20);
    assert!(rel(ppl, plain) > 1e-4, "the override must matter");
}

#[test]
fn batched_passes_equal_one_at_a_time() {
    let dir = tmp();
    Tiny::random(13, 4, 2, false).write(dir.path(), false);
    let m = load(dir.path(), None);
    let seqs: Vec<Vec<u32>> = (0..5).map(|s| tokens(100 + s, 50)).collect();
    let batched = m.llama.forward(&seqs, 30, true).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let one = m.llama.forward(std::slice::from_ref(s), 30, true).unwrap();
        for (a, b) in batched.nll[i].iter().zip(&one.nll[0]) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "seq {i}: {a} vs {b}"
            );
        }
        let (ma, mb) = (
            &batched.attention.as_ref().unwrap()[i],
            &one.attention.as_ref().unwrap()[0],
        );
        for (a, b) in ma.iter().zip(mb) {
            assert!((a - b).abs() <= 1e-6, "seq {i} mass: {a} vs {b}");
        }
    }
    // And the budgeted batching helper gives the same perplexities for any budget.
    let all = gateau::score::passes::batched_ppl(&m.llama, &seqs, 30, 1 << 20).unwrap();
    let small = gateau::score::passes::batched_ppl(&m.llama, &seqs, 30, 120).unwrap();
    for (a, b) in all.iter().zip(&small) {
        assert_rel(*a, *b, 1e-6, "batched_ppl with another budget");
    }
}

/// Sequences of different lengths packed into one row: each sequence's NLL equals the
/// plain-loop reference on that sequence alone (positions restart, no attention across),
/// in both attention layouts; and a bad request names what is wrong.
#[test]
fn packed_sequences_match_naive_one_by_one() {
    let dir = tmp();
    let tiny = Tiny::random(17, 4, 2, false);
    tiny.write(dir.path(), false);
    let mut m = load(dir.path(), None);
    let seqs: Vec<(Vec<u32>, usize)> = [(40, 25), (23, 7), (61, 1), (40, 39), (5, 2)]
        .iter()
        .enumerate()
        .map(|(i, &(n, from))| (tokens(200 + i as u64, n), from))
        .collect();
    let req: Vec<(&[u32], usize)> = seqs.iter().map(|(t, f)| (t.as_slice(), *f)).collect();
    for split in [false, true] {
        m.llama.set_split_attention(split);
        let got = m.llama.forward_packed(&req).unwrap();
        assert_eq!(got.len(), seqs.len());
        for (i, ((seq, from), nll)) in seqs.iter().zip(&got).enumerate() {
            let want = tiny.naive(seq, tiny.rope_theta).nll(seq, *from);
            assert_eq!(nll.len(), want.len(), "seq {i}");
            for (a, b) in nll.iter().zip(&want) {
                assert!(
                    (*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "split {split} seq {i}: {a} vs {b}"
                );
            }
        }
    }
    let err = m.llama.forward_packed(&[(&seqs[0].0, 40)]).unwrap_err();
    assert!(format!("{err:#}").contains("1..40"), "{err:#}");
    assert!(m.llama.forward_packed(&[]).is_err());
}

#[test]
fn missing_weight_file_names_it() {
    let dir = tmp();
    Tiny::random(1, 4, 4, true).write(dir.path(), true);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let spec = ModelSpec {
        location: p(dir.path()).to_string(),
        tokenizer: None,
        rope_theta: None,
    };
    let err = model::load(&spec, &cpu(DType::F32)).err().unwrap();
    assert!(
        format!("{err:#}").contains("model-00002-of-00002.safetensors"),
        "{err:#}"
    );
}

/// bf16 weights on the split path (the GPU's; on the CPU its fused call is the chunked
/// kernel): the heads go to attention in f16, closer to the f32 reference than bf16 heads;
/// a head beyond f16's range turns them off for the model and the pass runs again, giving
/// exactly what bf16 heads give.
#[test]
fn bf16_weights_attend_in_f16_and_fall_back_on_overflow() {
    let to_bf16 = |tiny: &mut Tiny| {
        for (v, _) in tiny.w.values_mut() {
            for x in v.iter_mut() {
                *x = half::bf16::from_f32(*x).to_f32();
            }
        }
    };
    let load16 = |tiny: &Tiny| {
        let dir = tmp();
        tiny.write(dir.path(), false);
        let spec = ModelSpec {
            location: p(dir.path()).to_string(),
            tokenizer: None,
            rope_theta: None,
        };
        let mut m = model::load(&spec, &cpu(DType::BF16)).unwrap();
        m.llama.set_split_attention(true);
        m
    };
    let mut tiny = Tiny::random(29, 4, 2, false);
    // Weights exact in bf16: the f32 reference runs the very same model.
    to_bf16(&mut tiny);
    let (seq, from) = (tokens(3, 97), 60);
    let want = tiny.naive(&seq, tiny.rope_theta).nll(&seq, from);
    let mut m = load16(&tiny);
    let mut err = |heads16: bool| {
        m.llama.set_f16_heads(heads16);
        let got = m
            .llama
            .forward(std::slice::from_ref(&seq), from, true)
            .unwrap();
        let e = got.nll[0]
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .sum::<f64>()
            / want.len() as f64;
        (e, got)
    };
    let (e16, _) = err(true);
    let (e_bf16, _) = err(false);
    assert!(e_bf16 < 0.05, "bf16 heads: mean |nll error| {e_bf16}");
    assert!(e16 < e_bf16, "f16 heads {e16} vs bf16 heads {e_bf16}");

    // Queries of layer 0 a million times larger: beyond f16, well within bf16.
    let (q, _) = tiny
        .w
        .get_mut("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    q.iter_mut().for_each(|x| *x *= 1048576.0);
    let m = load16(&tiny);
    assert!(m.llama.f16_heads());
    let got = m
        .llama
        .forward(std::slice::from_ref(&seq), from, true)
        .unwrap();
    assert!(
        m.llama.f16_heads(),
        "an overflow re-runs its own pass only: the next one starts in f16 again"
    );
    let mut plain = load16(&tiny);
    plain.llama.set_f16_heads(false);
    let want = plain
        .llama
        .forward(std::slice::from_ref(&seq), from, true)
        .unwrap();
    assert!(got.nll[0].iter().all(|x| x.is_finite()));
    assert_eq!(got.nll, want.nll);
    assert_eq!(got.attention, want.attention);
}

/// A sample whose f16 heads overflow leaves no trace: the sample after it gets exactly the
/// record it gets when scored alone (f16 heads), not the bf16-heads one. The model is made
/// so that one token's queries leave f16's range in layer 0: its embedding is a unit
/// vector along coordinate 0, every other token has 0 there, and the query weights read
/// coordinate 0 a million times over.
#[test]
fn an_f16_overflow_changes_nothing_for_the_samples_after_it() {
    const HOT: u32 = 7;
    let mut tiny = Tiny::random(31, 4, 2, false);
    let d = tiny.hidden;
    let (e, _) = tiny.w.get_mut("model.embed_tokens.weight").unwrap();
    for (row, v) in e.chunks_mut(d).enumerate() {
        if row as u32 == HOT {
            v.iter_mut().for_each(|x| *x = 0.0);
            v[0] = 1.0;
        } else {
            v[0] = 0.0;
        }
    }
    let (q, _) = tiny
        .w
        .get_mut("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    for row in q.chunks_mut(d) {
        row[0] = 0.5 * 1048576.0;
    }
    for (v, _) in tiny.w.values_mut() {
        for x in v.iter_mut() {
            *x = half::bf16::from_f32(*x).to_f32();
        }
    }
    let dir = tmp();
    tiny.write(dir.path(), false);
    let spec = ModelSpec {
        location: p(dir.path()).to_string(),
        tokenizer: None,
        rope_theta: None,
    };
    let load = |f16: bool| {
        let mut m = model::load(&spec, &cpu(DType::BF16)).unwrap();
        m.llama.set_split_attention(true);
        m.llama.set_f16_heads(f16);
        m
    };
    let hot: Vec<u32> = tokens(5, 80)
        .into_iter()
        .map(|t| if t == HOT { 8 } else { t })
        .collect();
    let mut hot = hot;
    hot[40] = HOT;
    let cold: Vec<u32> = tokens(6, 90)
        .into_iter()
        .map(|t| if t == HOT { 9 } else { t })
        .collect();
    let run = |m: &gateau::checkpoint::LoadedModel, seq: &Vec<u32>| {
        m.llama
            .forward(std::slice::from_ref(seq), 50, true)
            .unwrap()
    };
    let alone = run(&load(true), &cold);
    let bf16_heads = run(&load(false), &cold);
    assert_ne!(
        alone.nll, bf16_heads.nll,
        "f16 and bf16 heads must differ here, or the test could not tell them apart"
    );
    let m = load(true);
    let first = run(&m, &hot);
    assert!(first.nll[0].iter().all(|x| x.is_finite()));
    assert_eq!(
        first.nll,
        run(&load(false), &hot).nll,
        "the overflowing pass ran in bf16"
    );
    let after = run(&m, &cold);
    assert_eq!(
        after.nll, alone.nll,
        "the next sample is scored as if alone"
    );
    assert_eq!(after.attention, alone.attention);
}
