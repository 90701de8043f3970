//! One module per subcommand: its arguments (clap) and its `run`.

pub mod convert;
pub mod demo;
pub mod eval;
pub mod export;
pub mod merge;
pub mod placers;
pub mod plan;
pub mod profile;
pub mod split;
pub mod synth;
