//! gateau: pick the most valuable samples of long-context instruction data (GATEAU,
//! arXiv 2410.15633) with candle.
//!
//! The pipeline, one module per step: `data` (JSONL input) -> `template` (tokens) ->
//! `model` (LLaMA forward with attention capture) -> `passes` (HMG/CAM passes of a sample;
//! `pack` runs small samples' segment passes together) -> `record` (per-sample output) -> `selection` (dataset-level ranking, methods) ->
//! `analysis` (records read back and ranked) -> `report` / `summary` / `plots` (what a
//! selection looks like). `score`, `select`, `report` (in `summary`), `inspect`, `compare`
//! and `bench` drive the subcommands; `cli` and `settings` are the interface.

pub mod analysis;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod compare;
pub mod data;
pub mod eval;
pub mod files;
pub mod hash;
pub mod inspect;
pub mod memory;
pub mod model;
pub mod models;
pub mod output;
pub mod pack;
pub mod passes;
pub mod plots;
pub mod progress;
pub mod provenance;
pub mod rank;
pub mod record;
pub mod report;
pub mod score;
pub mod select;
pub mod settings;
pub mod short_pass;
pub mod summary;
pub mod template;
pub mod verify;
pub mod workers;

use anyhow::Result;
use clap::Parser;
use std::process::ExitCode;

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<ExitCode> {
    // clap exits 2 on usage errors; 2 means "finished with bad samples" here, so a usage
    // error is reported as the error it is (1).
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
    };
    match cli.command {
        cli::Command::Score(a) => score::run(settings::ScoreSettings::resolve(&a)?),
        cli::Command::Select(a) => select::run(settings::SelectSettings::resolve(&a)?),
        cli::Command::Report(a) => summary::run(settings::ReportSettings::resolve(&a)?),
        cli::Command::Inspect(a) => inspect::run(inspect::InspectSettings::resolve(&a)?),
        cli::Command::Compare(a) => compare::run(&a),
        cli::Command::Bench(a) => bench::run(settings::bench_settings(&a)?),
        cli::Command::Eval(a) => eval::run(settings::eval_settings(&a)?),
        cli::Command::Probe(a) => eval::probe::run(&a),
    }
}
