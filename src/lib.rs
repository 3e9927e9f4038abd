//! longtail: GPU-native training of long-tailed image classifiers on wgpu compute shaders.
//!
//! Layout: [`gpu`] (device, buffers, kernel cache), [`tensor`], [`tape`] (autodiff), [`ops`] (one
//! file per op: forward, backward, CPU reference), [`params`] and [`optim`] (flat parameters, SGD),
//! [`step`] (a whole training step in one submission), [`verify`] (the op-checking harness),
//! [`bench`] (kernel benchmarks), [`models`].

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod gpu;
pub mod loss_scale;
pub mod losses;
pub mod models;
pub mod ops;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod peak;
pub mod plot;
pub mod replicas;
pub mod report;
pub mod rng;
pub mod rundir;
pub mod sampler;
pub mod schedule;
pub mod shaders;
pub mod step;
pub mod tape;
pub mod tensor;
pub mod train;
pub mod tune;
pub mod verify;
