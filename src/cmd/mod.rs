//! One module per subcommand: each has an `Args` struct (clap derive) and a `run` function.

pub mod audit;
pub mod build;
pub mod completions;
pub mod eventlog;
pub mod inspect;
pub mod predict;
pub mod verify;
