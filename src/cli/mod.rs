//! Subcommands of the binary.

pub mod bench;
pub mod mlp;
pub mod report;
pub mod train;
pub mod tune;
