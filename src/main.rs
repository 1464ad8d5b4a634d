//! The `gateau` binary: everything lives in the library; errors print with their causes.

use std::process::ExitCode;

fn main() -> ExitCode {
    match gateau::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gateau: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
