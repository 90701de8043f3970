//! `moeplace placers`: what each placer does, the parameters it takes and its presets,
//! printed from the placers' own declarations.

use anyhow::{bail, Result};
use moeplace_core::dispatch;
use moeplace_core::params::{table_markdown, Level, Param};
use moeplace_core::placers::{self, Placer};

use crate::input::print_stdout;

/// List the placers (`plan --placer`) with what each does, how its plans are served,
/// its presets (`plan --preset NAME`), the parameters it takes (`plan --param
/// KEY=VALUE`, defaults shown; experimental ones marked) and the settings `plan` tries
/// when it tunes; then the dispatchers (`eval --dispatcher`) and their parameters.
///
/// Examples:
///   moeplace placers              every placer and dispatcher
///   moeplace placers tacg+gesr    one placer
///   moeplace placers --markdown   the reference page docs/PARAMETERS.md
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this placer.
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// Print the Markdown reference page (docs/PARAMETERS.md) instead.
    #[arg(long, conflicts_with = "name")]
    markdown: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.markdown {
        return print_stdout(&markdown());
    }
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
        for preset in p.presets() {
            out.push_str(&format!("  --preset {}: {} ({})\n", preset.name, preset.about, preset.settings()));
        }
        let grid = p.tuning();
        if !grid.is_empty() {
            out.push_str(&format!("  tuned (plan --trace) over: {}\n", grid.describe()));
        }
        let params = p.params();
        if params.is_empty() {
            out.push_str("  (no parameters)\n");
        }
        out.push_str(&param_lines("  --param", &params));
        out.push('\n');
    }
    if args.name.is_none() {
        out.push_str("Dispatchers (a plan names its own; eval --dispatcher NAME changes it):\n");
        for d in dispatch::registry(0) {
            out.push_str(&format!("  {:<8} {}\n", d.name(), d.about()));
            out.push_str(&param_lines("    --dispatcher-param", &d.params()));
        }
    }
    print_stdout(&out)
}

/// One line per parameter, `KEY=DEFAULT` aligned, experimental ones marked.
fn param_lines(prefix: &str, params: &[Param]) -> String {
    let key = |d: &Param| format!("{}={}", d.name, d.default_text());
    let width = params.iter().map(|d| key(d).len()).max().unwrap_or(0);
    let mut out = String::new();
    for d in params {
        let mark = if d.level == Level::Experimental { "[experimental] " } else { "" };
        out.push_str(&format!("{prefix} {:<width$}  {mark}{}\n", key(d), d.about));
    }
    out
}

/// docs/PARAMETERS.md: every placer's presets and parameters and every dispatcher's
/// parameters, from their declarations.
pub fn markdown() -> String {
    let mut s = String::from(
        "# Parameters\n\n\
         Every placer's presets and parameters, and every dispatcher's parameters, as the code declares\n\
         them. Written by `moeplace placers --markdown > docs/PARAMETERS.md`; a test fails when this page\n\
         and the code differ. `stable` parameters are worth setting and stay from release to release;\n\
         `experimental` ones may change or go.\n\n\
         Give a placer's parameters with `moeplace plan --param KEY=VALUE` (Python: `plan(..., params={...})`),\n\
         a preset with `moeplace plan --preset NAME` (Python: `plan(..., preset=NAME)`; parameters given\n\
         as well win over the preset's), and a dispatcher's with `moeplace eval --dispatcher-param KEY=VALUE`.\n",
    );
    for p in placers::registry() {
        s.push_str(&placer_markdown(p.as_ref()));
    }
    s.push_str("\n## Dispatchers\n");
    for d in dispatch::registry(0) {
        s.push_str(&format!("\n### `{}`\n\n{}\n", d.name(), d.about()));
        s.push_str(&params_markdown(&d.params()));
    }
    s
}

fn placer_markdown(p: &dyn Placer) -> String {
    let mut s = format!("\n## `{}`\n\n{}\n\nServed with: {}.\n", p.name(), p.about(), p.serving().label());
    let grid = p.tuning();
    if !grid.is_empty() {
        s.push_str(&format!("Tuned by `plan --trace` over: {}.\n", grid.describe()));
    }
    if !p.presets().is_empty() {
        s.push_str("\n| preset | for | sets |\n|---|---|---|\n");
        for preset in p.presets() {
            s.push_str(&format!("| `{}` | {} | `{}` |\n", preset.name, preset.about, preset.settings()));
        }
    }
    s.push_str(&params_markdown(&p.params()));
    s
}

/// The parameters' table, or a line saying there are none.
fn params_markdown(params: &[Param]) -> String {
    if params.is_empty() {
        "\nNo parameters.\n".to_string()
    } else {
        format!("\n{}", table_markdown(params))
    }
}
