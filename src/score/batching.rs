//! Small samples share their segment passes. A sample whose segment sequences total fewer
//! than `--pack-below` tokens waits, after its full passes, until the waiting samples fill a
//! segment batch (`--max-batch-tokens`); their sequences, of different lengths, then run
//! packed into rows without padding ([`crate::model::Llama::forward_packed`]), so the
//! matrix products see as many rows as a large sample's batch would give them.
//!
//! The numbers are those of the sample run alone (each sequence attends only to itself);
//! only the moment a record is written changes.

use crate::model::Llama;
use crate::score::passes::{packed_ppl, Pending, SampleScores};
use anyhow::{Context, Result};

pub struct Packer<T> {
    below: usize,
    budget: usize,
    waiting: Vec<(u64, T, Pending)>,
    tokens: usize,
    /// Samples whose segment passes ran packed, and the packed forward passes.
    packed: usize,
    passes: usize,
}

impl<T> Packer<T> {
    /// Samples under `below` segment tokens wait (0: none does) until `budget` is reached.
    pub fn new(below: usize, budget: usize) -> Self {
        Self {
            below,
            budget,
            waiting: Vec::new(),
            tokens: 0,
            packed: 0,
            passes: 0,
        }
    }

    /// Runs the segment passes of the sample on `line` now, or keeps it for a packed pass.
    /// Returns the samples finished by this call: this one, a full pack, or none.
    pub fn add(
        &mut self,
        model: &Llama,
        line: u64,
        tag: T,
        p: Pending,
    ) -> Result<Vec<(T, SampleScores)>> {
        let n = p.segment_tokens();
        if n == 0 || n >= self.below {
            return Ok(vec![(tag, p.run_segments(model, self.budget)?)]);
        }
        self.tokens += n;
        self.waiting.push((line, tag, p));
        if self.tokens >= self.budget {
            self.flush(model)
        } else {
            Ok(Vec::new())
        }
    }

    /// Runs the waiting samples' segment passes packed together.
    pub fn flush(&mut self, model: &Llama) -> Result<Vec<(T, SampleScores)>> {
        let waiting = std::mem::take(&mut self.waiting);
        self.tokens = 0;
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let pending: Vec<&Pending> = waiting.iter().map(|w| &w.2).collect();
        let (seg_ppl, passes) = packed_ppl(model, &pending, self.budget).with_context(|| {
            let lines: Vec<String> = waiting.iter().map(|w| w.0.to_string()).collect();
            format!("segment passes packed for lines {}", lines.join(", "))
        })?;
        self.packed += waiting.len();
        self.passes += passes;
        Ok(waiting
            .into_iter()
            .zip(seg_ppl)
            .map(|((_, tag, p), ppl)| (tag, p.finish(ppl)))
            .collect())
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// What packing did, for the run's summary (None if nothing was packed).
    pub fn summary(&self) -> Option<String> {
        (self.packed > 0).then(|| {
            format!(
                "segment passes of {} small samples packed into {} forward passes",
                self.packed, self.passes
            )
        })
    }
}
