//! Everything written after ranking: `gateau select` (the subset and its report), the
//! report.json types, `gateau report` (summary.md and plots), the notes both print,
//! `inspect`, `compare`, `eval` with its labeled probe sets, and the alpha sweep
//! (`sweep`). `analysis` reads score records back and ranks them for all of these.

pub mod analysis;
pub mod compare;
pub mod eval;
pub mod inspect;
pub mod json;
pub mod notes;
pub mod plots;
pub mod select;
pub mod summary;
pub mod sweep;
pub mod sweep_plot;
