//! One module per subcommand: each has an `Args` struct (clap derive) and a `run` function.

pub mod build;
pub mod completions;
pub mod ext;
pub mod inspect;
pub mod log;
pub mod predict;
pub mod vm;
