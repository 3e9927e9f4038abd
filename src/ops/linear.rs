//! Classifier layers: `linear` (PyTorch `nn.Linear`, weight `[out, in]`, bias `[out]`) and the
//! normed linear of LDAM (`NormedLinear`: weight `[in, out]`, `F.normalize(x, dim=1) @
//! F.normalize(w, dim=0)`, no bias), both composed from recorded ops.

use anyhow::{Result, bail};

use crate::ops::{elementwise, matmul, normalize};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// `x w^T + b` for `x: [B, in]`, `w: [out, in]`, `b: [out]`.
pub fn linear(tape: &mut Tape, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if x.shape().len() != 2 || w.shape().len() != 2 || x.shape()[1] != w.shape()[1] {
        bail!(
            "linear: x must be [B, in] and w [out, in], got {:?}, {:?}",
            x.shape(),
            w.shape()
        );
    }
    let y = matmul::matmul(tape, x, w, false, true)?;
    match b {
        Some(b) => elementwise::add_row(tape, &y, b),
        None => Ok(y),
    }
}

/// Cosine logits `normalize(x, 1) @ normalize(w, 0)` for `x: [B, in]`, `w: [in, out]`.
pub fn normed_linear(tape: &mut Tape, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.shape().len() != 2 || w.shape().len() != 2 || x.shape()[1] != w.shape()[0] {
        bail!(
            "normed_linear: x must be [B, in] and w [in, out], got {:?}, {:?}",
            x.shape(),
            w.shape()
        );
    }
    let xn = normalize::l2_normalize(tape, x, 1)?;
    let wn = normalize::l2_normalize(tape, w, 0)?;
    matmul::matmul(tape, &xn, &wn, false, false)
}
