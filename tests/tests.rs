//! gateau's integration tests: one binary, one module per area.

mod bench_cli;
mod bench_mix;
mod bucket;
mod chat_template;
mod common;
mod dry_run;
mod families;
mod families_gguf;
mod forward;
mod fp8;
mod gguf;
mod help;
mod hub;
mod layout;
mod naive;
mod packing;
mod report_sweep;
mod reports;
mod score_cli;
mod score_io;
mod select_cli;
mod selection_quality;
mod smollm2;
mod spec_ref;
mod trust;
mod trust_readers;
