//! The dtype of a pass's attention heads on the split path: with bf16 weights they start
//! in f16 (11 significant bits against bf16's 8), and a pass whose heads leave f16's range
//! runs again in the compute dtype. A pass, not the model, decides: no later pass changes.

use anyhow::Result;
use candle_core::DType;

/// One pass with its attention heads first in `first` (f16 on the split path with bf16
/// weights), then, if `overflowed` says a layer's heads left f16's range, once more in
/// `compute`, calling `warn` before. Nothing is remembered: each pass starts in `first`,
/// so a record never depends on which passes came before it.
pub(super) fn heads_checked<T, O>(
    first: DType,
    compute: DType,
    pass: impl Fn(DType) -> Result<(T, Vec<O>)>,
    overflowed: impl Fn(&[O]) -> Result<bool>,
    warn: impl FnOnce(),
) -> Result<T> {
    let (out, overflow) = pass(first)?;
    if first == compute || !overflowed(&overflow)? {
        return Ok(out);
    }
    warn();
    Ok(pass(compute)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A pass that overflows in f16 runs again in bf16; the pass after it starts in f16
    /// again (the order of samples changes nothing); bf16 heads are never re-run.
    #[test]
    fn an_overflowing_pass_is_rerun_alone_and_later_passes_start_in_f16() {
        let runs = RefCell::new(Vec::new());
        // "Samples": 1 overflows in f16, 2 does not.
        let pass = |sample: u32| {
            let runs = &runs;
            move |dt: DType| {
                runs.borrow_mut().push((sample, dt));
                Ok(((sample, dt), vec![sample == 1 && dt == DType::F16]))
            }
        };
        let any = |o: &[bool]| Ok(o.iter().any(|&x| x));
        let warned = RefCell::new(0);
        let warn = || *warned.borrow_mut() += 1;
        let alone = heads_checked(DType::F16, DType::BF16, pass(2), any, warn).unwrap();
        let first = heads_checked(DType::F16, DType::BF16, pass(1), any, warn).unwrap();
        let after = heads_checked(DType::F16, DType::BF16, pass(2), any, warn).unwrap();
        assert_eq!(first, (1, DType::BF16), "the overflowing pass ends in bf16");
        assert_eq!(after, alone, "the next sample is scored as if alone");
        assert_eq!(after, (2, DType::F16));
        assert_eq!(
            *runs.borrow(),
            [
                (2, DType::F16),
                (1, DType::F16),
                (1, DType::BF16),
                (2, DType::F16)
            ]
        );
        assert_eq!(*warned.borrow(), 1);
        // Heads already in the compute dtype: one run, whatever the flags say.
        let one = heads_checked(
            DType::BF16,
            DType::BF16,
            |dt| Ok((dt, vec![true])),
            any,
            || panic!("no re-run to warn about"),
        );
        assert_eq!(one.unwrap(), DType::BF16);
    }
}
