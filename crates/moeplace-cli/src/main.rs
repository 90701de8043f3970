//! The `moeplace` command: a thin layer over moeplace-core (the domain) and
//! moeplace-formats (files). Each subcommand lives in its own file under `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster_args;
mod cmd;
mod evaluate;
mod input;
mod model_args;
mod output;

/// Plan where Mixture-of-Experts experts live, which get replicas and where requests
/// are served, from your own routing traces; then prove the plan on held-out traffic.
///
/// Typical flow: `moeplace profile TRACE -o stats.json` to characterise traces and
/// save mergeable statistics, `moeplace plan` to place experts, `moeplace eval` to
/// replay held-out traces against plans side by side.
#[derive(Parser)]
#[command(name = "moeplace", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Profile(cmd::profile::Args),
    Merge(cmd::merge::Args),
    Convert(cmd::convert::Args),
    Plan(cmd::plan::Args),
    Placers(cmd::placers::Args),
    Eval(cmd::eval::Args),
    Export(cmd::export::Args),
    Demo(cmd::demo::Args),
    Synth(cmd::synth::Args),
    Split(cmd::split::Args),
}

/// On SIGINT, SIGTERM or SIGHUP, removes the temporary files of unfinished outputs,
/// then ends the process as the signal would have (earlier outputs stay as they were).
fn remove_temporary_files_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    let _ = std::thread::Builder::new().name("moeplace-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            moeplace_formats::atomic::remove_temporary_files();
            let _ = signal_hook::low_level::emulate_default_handler(sig);
            std::process::exit(128 + sig);
        }
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    remove_temporary_files_on_signals();
    let result = match cli.command {
        Command::Profile(a) => cmd::profile::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Placers(a) => cmd::placers::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Split(a) => cmd::split::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
