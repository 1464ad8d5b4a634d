//! Device memory planning for `gateau score`: the segment batch budget picked from free
//! memory, and whether both models and a longest-sample pass fit at once (otherwise the
//! run goes in two phases: the short model over every sample, then the long model).

use crate::model::ModelConfig;

const GIB: u64 = 1 << 30;
/// One attention chunk's f32 scores on a GPU (512M elements), plus the logits chunk.
const ATTENTION_WORKSPACE: u64 = 2 * GIB + (128 << 20);
/// CUDA context, cuBLAS workspace, allocator slack.
const MARGIN: u64 = 2 * GIB;
/// The batch budget on the CPU, and the most a GPU default grows to (larger batches do
/// not raise matmul efficiency further).
pub const CPU_BATCH_TOKENS: usize = 16384;
pub const MAX_BATCH_TOKENS: usize = 65536;

pub use crate::cli::Phases;

/// The f32 copy of the output head a forward pass makes (see `Llama::head32`).
pub fn head_bytes(cfg: &ModelConfig) -> u64 {
    (cfg.vocab_size * cfg.hidden_size * 4) as u64
}

/// Default `--max-batch-tokens`: half of what the free memory (after the models) holds at
/// `activation_bytes_per_token`, in [1024, 65536] and a multiple of 1024; the CPU default
/// without a device figure.
pub fn default_batch_tokens(cfg: &ModelConfig, width: u64, free: Option<u64>) -> usize {
    let Some(free) = free else {
        return CPU_BATCH_TOKENS;
    };
    let usable = free.saturating_sub(ATTENTION_WORKSPACE + MARGIN + head_bytes(cfg)) / 2;
    let tokens = (usable / cfg.activation_bytes_per_token(width).max(1)) as usize;
    (tokens.clamp(1024, MAX_BATCH_TOKENS) / 1024) * 1024
}

/// Below this many segment tokens a sample's segment passes wait to be packed with other
/// small samples' on a GPU: under about 8k rows a 7B model's matrix products no longer keep
/// an H100 busy. On the CPU the rate does not depend on the rows, so nothing waits.
pub const GPU_PACK_BELOW: usize = 8192;

pub fn default_pack_below(device: &candle_core::Device) -> usize {
    if device.is_cpu() {
        0
    } else {
        GPU_PACK_BELOW
    }
}

/// Bytes the weights of `cfg` take in a `width`-byte dtype (norms are kept in f32, a
/// rounding error here).
pub fn weight_bytes(cfg: &ModelConfig, width: u64) -> u64 {
    cfg.param_count() * width
}

/// Bytes of the E4M3 twin that `--dtype fp8` holds beside a model's 16-bit weights: one
/// byte per projection weight (the per-channel scales add 4 bytes per output row, left out).
pub fn fp8_twin_bytes(cfg: &ModelConfig) -> u64 {
    let (d, f) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let q = (cfg.num_heads * cfg.head_dim) as u64;
    let kv = (cfg.num_kv_heads * cfg.head_dim) as u64;
    cfg.num_layers as u64 * (2 * d * q + 2 * d * kv + 3 * d * f)
}

/// Bytes a run holding `models` needs for one pass of `max_len` tokens through the first.
pub fn needed(models: &[&ModelConfig], width: u64, max_len: usize) -> u64 {
    let weights: u64 = models.iter().map(|c| weight_bytes(c, width)).sum();
    let act = models
        .iter()
        .map(|c| c.activation_bytes_per_token(width))
        .max()
        .unwrap_or(0);
    let head = models.iter().map(|c| head_bytes(c)).max().unwrap_or(0);
    weights + act * max_len as u64 + head + ATTENTION_WORKSPACE + MARGIN
}

pub fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Shape;

    #[test]
    fn an_fp8_twin_is_one_byte_per_projection_weight() {
        // LLaMA-2-7B: 32 layers of q, k, v, o (4096 x 4096 each) and gate, up, down
        // (4096 x 11008 each): 6.48 GB, the embedding and head not included.
        let c7 = Shape::Llama2_7b.config();
        assert_eq!(fp8_twin_bytes(&c7), 6_476_005_376);
        // LLaMA-3-8B's k and v are 1024 wide (8 KV heads of 128), its MLP 14336.
        let c8 = Shape::Llama3_8b.config();
        let layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336;
        assert_eq!(fp8_twin_bytes(&c8), 32 * layer);
    }

    #[test]
    fn two_7b_models_at_64k_fit_an_80_gb_h100_one_13b_pair_does_not() {
        let c7 = Shape::Llama2_7b.config();
        let need = needed(&[&c7, &c7], 2, 64000);
        // 2 x 13.5 GB weights + 64k x 181 KB activations + workspace: about 44 GB.
        assert!(
            need > 35_000_000_000 && need < 45_000_000_000,
            "{}",
            gb(need)
        );
        let c13 = Shape::Llama2_13b.config();
        assert!(needed(&[&c13, &c13], 2, 64000) > 60_000_000_000);
    }

    #[test]
    fn batch_budget_follows_free_memory() {
        let c = Shape::Llama2_7b.config();
        assert_eq!(default_batch_tokens(&c, 2, None), CPU_BATCH_TOKENS);
        // Nothing usable: the floor.
        assert_eq!(default_batch_tokens(&c, 2, Some(GIB)), 1024);
        // 40 GB free: (40 - 4.1) / 2 GB over 180,736 bytes a token, capped at 64k.
        let per = c.activation_bytes_per_token(2);
        assert_eq!(
            per,
            8 * 4096 + 4 * 3 * 4096 + 2 * (4096 + 3 * 4096 + 3 * 11008)
        );
        let head = 32000 * 4096 * 4;
        let want =
            (((40 * GIB - ATTENTION_WORKSPACE - MARGIN - head) / 2 / per) as usize / 1024) * 1024;
        assert_eq!(
            default_batch_tokens(&c, 2, Some(40 * GIB)),
            want.min(MAX_BATCH_TOKENS)
        );
        assert_eq!(
            default_batch_tokens(&c, 2, Some(400 * GIB)),
            MAX_BATCH_TOKENS
        );
    }
}
