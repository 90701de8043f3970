//! `moeplace placers`: what each placer does and the parameters it takes.

use anyhow::{bail, Result};
use moeplace_core::{dispatch, placers};

use crate::input::print_stdout;

/// List the placers (`plan --placer`) with what each does and the parameters it
/// takes (`plan --param KEY=VALUE`, defaults shown) and the settings `plan` tries
/// when it tunes, then the dispatchers (`eval --dispatcher`).
///
/// Examples:
///   moeplace placers              every placer and dispatcher
///   moeplace placers tacg+gesr    one placer
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this placer.
    #[arg(value_name = "NAME")]
    name: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let all = placers::registry();
    let chosen: Vec<_> = match &args.name {
        None => all.iter().collect(),
        Some(n) => match all.iter().find(|p| p.name() == n) {
            Some(p) => vec![p],
            None => {
                let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
                bail!("unknown placer {n:?} (known: {})", names.join(", "));
            }
        },
    };
    let mut out = String::new();
    for p in chosen {
        out.push_str(&format!("{}: {}\n", p.name(), p.about()));
        out.push_str(&format!("  served with: {}\n", p.serving().label()));
        let grid = p.tuning();
        if !grid.is_empty() {
            out.push_str(&format!("  tuned (plan --trace) over: {}\n", grid.describe()));
        }
        let params = p.params();
        if params.is_empty() {
            out.push_str("  (no parameters)\n");
        }
        let width = params.iter().map(|d| d.name.len() + d.default.len() + 1).max().unwrap_or(0);
        for d in params {
            let key = format!("{}={}", d.name, d.default);
            out.push_str(&format!("  --param {key:<width$}  {}\n", d.about));
        }
        out.push('\n');
    }
    if args.name.is_none() {
        out.push_str("Dispatchers (a plan names its own; eval --dispatcher NAME changes it):\n");
        for d in dispatch::registry(0) {
            out.push_str(&format!("  {:<8} {}\n", d.name(), d.about()));
            for p in d.params() {
                let key = format!("{}={}", p.name, p.default);
                out.push_str(&format!("    --dispatcher-param {key}  {}\n", p.about));
            }
        }
    }
    print_stdout(&out)
}
