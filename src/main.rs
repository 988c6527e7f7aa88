//! The `pec-milter` command line: parse it, run the command (`cli`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::dispatch(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pec-milter: {e:#}");
            ExitCode::from(2)
        }
    }
}
