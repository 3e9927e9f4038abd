//! Differentiable ops. Each file holds one op family: the functions that record its forward on a
//! [`crate::tape::Tape`], its backward builder, and its f64 CPU reference (`*_ref`), which the
//! verification harness ([`crate::verify`]) compares against.

pub mod all_reduce;
pub mod batchnorm;
pub mod cast;
pub mod conv2d;
pub mod conv_direct;
pub mod cross_entropy;
pub mod eigen;
pub mod elementwise;
pub mod linalg;
pub mod linear;
pub mod matmul;
pub mod normalize;
pub mod pool;
pub mod reduce;
pub mod shortcut;
pub mod whiten;

use anyhow::{Result, bail};

use crate::tensor::Tensor;

/// Fail unless `t` has exactly `shape`.
pub(crate) fn expect_shape(op: &str, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        bail!(
            "{op}: {what} must have shape {shape:?}, got {:?}",
            t.shape()
        );
    }
    Ok(())
}
