//! gateau's integration tests: one binary, one module per area.

mod common;
mod forward;
mod score_cli;
mod spec_ref;
