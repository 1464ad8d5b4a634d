//! gateau: pick the most valuable samples of long-context instruction data (GATEAU,
//! arXiv 2410.15633) with candle.
//!
//! The tree is the pipeline. `input` (JSONL lines -> samples -> prompt tokens) ->
//! `checkpoint` (where weights, configs and tokenizers come from) -> `model` (the forward
//! of every family, on `kernels`' custom ops; the attention dispatch is a value it owns)
//! -> `score` (intake, the HMG/CAM passes, batching, workers, two-phase runs) ->
//! `records` (one per sample, with provenance, read back verified) -> `rank`
//! (normalizations, terms, recipes, methods) -> `report` (every writer after ranking:
//! select, summary and plots, inspect, compare, eval). `cli` turns arguments into each
//! subcommand's typed settings, resolved once; `files` keeps outputs safe; `bench` times
//! the passes.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod files;
pub mod input;
pub mod kernels;
pub mod model;
pub mod rank;
pub mod records;
pub mod report;
pub mod score;

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
        cli::Command::Score(a) => score::run(cli::settings::ScoreSettings::resolve(&a)?),
        cli::Command::Select(a) => report::select::run(cli::settings::SelectSettings::resolve(&a)?),
        cli::Command::Report(a) => {
            report::summary::run(cli::settings::ReportSettings::resolve(&a)?)
        }
        cli::Command::Inspect(a) => {
            report::inspect::run(report::inspect::InspectSettings::resolve(&a)?)
        }
        cli::Command::Compare(a) => {
            report::compare::run(cli::settings::CompareSettings::resolve(&a)?)
        }
        cli::Command::Bench(a) => bench::run(cli::settings::bench_settings(&a)?),
        cli::Command::Eval(a) => report::eval::run(cli::settings::eval_settings(&a)?),
        cli::Command::Probe(a) => report::eval::probe::run(cli::settings::ProbeRun::resolve(&a)?),
    }
}
