//! Networks built from the ops.

pub mod mlp;
pub mod resnet;
