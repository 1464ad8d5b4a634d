//! A model's cos/sin tables on its device, kept across passes. Computing them took a
//! 64k-token full pass 0.2 s of host time (4M f64 angles) while the GPU waited: about 5% of
//! the pass, 10% at 16k. Except under dynamic NTK, a table row depends on its position alone
//! ([`super::rope::Rope::rows`]), so the first `t` rows of the longest tables so far are the
//! tables of a `t`-token pass, bit for bit: no pass depends on which passes came before.

use super::config::ModelConfig;
use super::rope::tables_for;
use candle_core::{Device, Result, Tensor};
use std::sync::Mutex;

/// Rows are added in steps of this many positions, so a run of growing lengths extends the
/// tables a few times and not at every sample.
const STEP: usize = 4096;

/// The f32 `[n, head_dim / 2]` cos and sin of positions `0..n` (n grows as needed).
#[derive(Default)]
pub struct RopeCache {
    rows: Mutex<Option<(Tensor, Tensor)>>,
}

impl RopeCache {
    /// cos and sin `[T, head_dim / 2]` for passes of these lengths laid end to end, positions
    /// restarting at 0 in each: what [`tables_for`] computes, from the kept rows.
    pub fn tables(
        &self,
        cfg: &ModelConfig,
        lens: &[usize],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let rope = cfg.rope();
        if rope.depends_on_length() {
            return tables_for(cfg, lens, device);
        }
        let need = lens.iter().copied().max().unwrap_or(0);
        let mut kept = self
            .rows
            .lock()
            .map_err(|_| candle_core::Error::Msg("RoPE table cache poisoned".into()))?;
        let have = match kept.as_ref() {
            Some((c, _)) => c.dim(0)?,
            None => 0,
        };
        if need > have {
            let to = need.next_multiple_of(STEP);
            let half = cfg.head_dim / 2;
            let (c, s) = rope.rows(have..to, to);
            let c = Tensor::from_vec(c, (to - have, half), device)?;
            let s = Tensor::from_vec(s, (to - have, half), device)?;
            *kept = Some(match kept.take() {
                None => (c, s),
                Some((c0, s0)) => (Tensor::cat(&[&c0, &c], 0)?, Tensor::cat(&[&s0, &s], 0)?),
            });
        }
        let Some((cos, sin)) = kept.as_ref() else {
            // No rows were needed: an empty pass.
            return tables_for(cfg, lens, device);
        };
        let prefix = |t: &Tensor| -> Result<Tensor> {
            match lens {
                [n] => t.narrow(0, 0, *n),
                _ => Tensor::cat(
                    &lens
                        .iter()
                        .map(|&n| t.narrow(0, 0, n))
                        .collect::<Result<Vec<_>>>()?,
                    0,
                ),
            }
        };
        Ok((prefix(cos)?, prefix(sin)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rope::{RopeScaling, YarnScaling};
    use crate::model::shapes::Shape;

    fn cfg(scaling: Option<RopeScaling>) -> ModelConfig {
        let mut c = Shape::Smollm2_135m.config();
        c.rope_scaling = scaling;
        c.max_position_embeddings = 64;
        c
    }

    fn host(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Kept rows equal fresh tables bit for bit, whatever came before: a short pass, a longer
    /// one that extends the rows past a step, packed spans, then the short pass again.
    #[test]
    fn kept_rows_are_the_fresh_tables_exactly() {
        let yarn = YarnScaling {
            factor: 4.0,
            original_max_position_embeddings: 64,
            attention_factor: 1.1,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        };
        for scaling in [
            None,
            Some(RopeScaling::Linear { factor: 2.0 }),
            Some(RopeScaling::Yarn(yarn)),
        ] {
            let c = cfg(scaling);
            let cache = RopeCache::default();
            for lens in [&[100][..], &[STEP + 37], &[5, STEP + 1000, 1], &[100]] {
                let (kc, ks) = cache.tables(&c, lens, &Device::Cpu).unwrap();
                let (fc, fs) = tables_for(&c, lens, &Device::Cpu).unwrap();
                assert_eq!(kc.dims(), fc.dims());
                assert_eq!(host(&kc), host(&fc), "{lens:?}");
                assert_eq!(host(&ks), host(&fs), "{lens:?}");
            }
            let kept = cache.rows.lock().unwrap();
            assert_eq!(kept.as_ref().unwrap().0.dim(0).unwrap(), 2 * STEP);
        }
    }

    /// Dynamic NTK's rows depend on the pass length, so its tables are never kept: a short
    /// pass after a long one gets its own frequencies.
    #[test]
    fn dynamic_tables_are_computed_for_each_pass() {
        let c = cfg(Some(RopeScaling::Dynamic { factor: 2.0 }));
        let long = c.max_position_embeddings * 3;
        let cache = RopeCache::default();
        let (l, _) = cache.tables(&c, &[long], &Device::Cpu).unwrap();
        let (s, _) = cache.tables(&c, &[10], &Device::Cpu).unwrap();
        assert!(cache.rows.lock().unwrap().is_none());
        let (fresh, _) = tables_for(&c, &[10], &Device::Cpu).unwrap();
        assert_eq!(host(&s), host(&fresh));
        // Row 1 of the long pass differs (its base was scaled), so a kept prefix would be wrong.
        let half = c.head_dim / 2;
        assert_ne!(host(&l)[half..2 * half], host(&s)[half..2 * half]);
    }
}
