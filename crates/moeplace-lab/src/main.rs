//! `moeplace-lab`: the experiments and benchmarks whose tables the docs quote. It
//! builds on the product's crates (moeplace-core, moeplace-formats); the product
//! never depends on it. Run it as `cargo run -p moeplace-lab -- experiment tacg` or
//! `cargo run --release -p moeplace-lab -- bench profile`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod experiment;
mod io;
mod requests_lab;

/// The moeplace lab: rerun the experiments and benchmarks behind the docs' tables.
#[derive(Parser)]
#[command(name = "moeplace-lab", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Bench(bench::Args),
    Experiment(experiment::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Experiment(a) => experiment::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
