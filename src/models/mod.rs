//! Networks built from the ops.

pub mod mlp;
