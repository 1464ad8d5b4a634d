//! Ranking: the normalizations of the spec, the per-sample terms a score can be built
//! from, the recipes that combine them, and the methods (GATEAU and baselines) that order
//! the samples.

pub mod normalize;
pub mod recipe;
pub mod selection;
pub mod terms;
