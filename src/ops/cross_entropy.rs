//! Softmax cross-entropy with integer labels and optional per-class weights (weighted mean, as
//! PyTorch's `F.cross_entropy(weight=...)`).

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, grid_1d};
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    has_weights: u32,
    _pad: u32,
    beta: f32,
    _p: [f32; 3],
}

/// Mean cross-entropy of `logits: [B, C]` against `labels: [B]` (u32), with optional
/// `weights: [C]`. Returns a `[1]` tensor.
///
/// Labels must be `< C`: callers validate them on the host (the data readers do).
pub fn cross_entropy(
    tape: &mut Tape,
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    let &[rows, classes] = logits.shape() else {
        bail!(
            "cross_entropy: logits must be [B, C], got {:?}",
            logits.shape()
        );
    };
    if classes == 0 || rows == 0 {
        bail!("cross_entropy: empty logits {:?}", logits.shape());
    }
    if labels.dtype() != DType::U32 || labels.shape() != [rows] {
        bail!(
            "cross_entropy: labels must be u32 [{rows}], got {:?} {:?}",
            labels.dtype(),
            labels.shape()
        );
    }
    let gpu = tape.gpu().clone();
    let w = match weights {
        Some(w) => {
            if w.shape() != [classes] {
                bail!(
                    "cross_entropy: weights must be [{classes}], got {:?}",
                    w.shape()
                );
            }
            w.clone()
        }
        None => Tensor::zeros(&gpu, &[1], DType::F32)?,
    };
    let p = Params {
        rows: rows as u32,
        classes: classes as u32,
        has_weights: weights.is_some() as u32,
        _pad: 0,
        beta: 0.0,
        _p: [0.0; 3],
    };
    let saved = Tensor::zeros(&gpu, &[rows + 2], DType::F32)?;
    let loss = tape.output(&[1], &[logits])?;
    let fwd = Dispatch::build(
        &gpu,
        "cross_entropy",
        "forward",
        &[
            logits.read(),
            labels.read(),
            w.read(),
            saved.write(),
            loss.write(),
        ],
        bytemuck::bytes_of(&p),
        [1, 1, 1],
    )?;
    let (z, y) = (logits.clone(), labels.clone());
    tape.push(
        "loss",
        vec![logits.clone()],
        &loss,
        vec![fwd],
        Box::new(move |gpu, g, gin| {
            let mut v = Vec::new();
            if let Some(t) = &gin[0] {
                let bp = Params {
                    beta: t.beta(),
                    ..p
                };
                v.push(Dispatch::build(
                    gpu,
                    "cross_entropy",
                    "backward",
                    &[
                        z.read(),
                        y.read(),
                        w.read(),
                        saved.read(),
                        g.read(),
                        t.tensor.write(),
                    ],
                    bytemuck::bytes_of(&bp),
                    grid_1d(gpu, ((rows * classes) as u32).div_ceil(256)),
                )?);
            }
            Ok(v)
        }),
    )?;
    Ok(loss)
}

/// CPU references (f64).
pub mod reference {
    fn lse(row: &[f64]) -> f64 {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln()
    }

    /// Weighted-mean cross-entropy of row-major `z` (`[labels.len(), classes]`).
    pub fn cross_entropy(z: &[f64], labels: &[usize], weights: Option<&[f64]>) -> f64 {
        let c = z.len() / labels.len();
        let (mut num, mut den) = (0.0, 0.0);
        for (i, &y) in labels.iter().enumerate() {
            let row = &z[i * c..(i + 1) * c];
            let w = weights.map_or(1.0, |w| w[y]);
            num += w * (lse(row) - row[y]);
            den += w;
        }
        if den == 0.0 { 0.0 } else { num / den }
    }

    /// Gradient of [`cross_entropy`] with respect to `z`, times the upstream scalar `g`.
    pub fn cross_entropy_grad(
        z: &[f64],
        labels: &[usize],
        weights: Option<&[f64]>,
        g: f64,
    ) -> Vec<f64> {
        let c = z.len() / labels.len();
        let den: f64 = labels.iter().map(|&y| weights.map_or(1.0, |w| w[y])).sum();
        let mut out = vec![0.0; z.len()];
        if den == 0.0 {
            return out;
        }
        for (i, &y) in labels.iter().enumerate() {
            let row = &z[i * c..(i + 1) * c];
            let l = lse(row);
            let w = weights.map_or(1.0, |w| w[y]);
            for j in 0..c {
                let p = (row[j] - l).exp();
                out[i * c + j] = g * w / den * (p - if j == y { 1.0 } else { 0.0 });
            }
        }
        out
    }
}
