//! One module per subcommand: its arguments (clap) and its `run`.

pub mod bench;
pub mod convert;
pub mod merge;
pub mod profile;
