//! Softmax cross-entropy with per-class weights, margins and logit offsets: one fused kernel
//! (`shaders/cross_entropy.wgsl`) for CE, class-weighted CE (DRW), LDAM and logit adjustment /
//! balanced softmax. The host builds the `[3, C]` class vector (see [`crate::losses`]); the
//! weighted mean follows PyTorch's `F.cross_entropy(weight=...)`.

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
    _p0: [u32; 2],
    scale: f32,
    beta: f32,
    _p1: [f32; 2],
}

/// Mean loss of `logits: [B, C]` against `labels: [B]` (u32) with the class vector
/// `cls = [weights; margins; offsets]` (`[3 * C]`) and logit scale `scale`:
/// `z' = scale * (z - margin_y e_y) + offset`, loss = weighted mean of `lse(z') - z'_y`.
/// Returns a `[1]` tensor. Labels must be `< C` (the data readers check them).
pub fn margin_cross_entropy(
    tape: &mut Tape,
    logits: &Tensor,
    labels: &Tensor,
    cls: &Tensor,
    scale: f32,
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
    if cls.numel() != 3 * classes {
        bail!(
            "cross_entropy: class vector must hold 3 x {classes} values, got {:?}",
            cls.shape()
        );
    }
    let gpu = tape.gpu().clone();
    let p = Params {
        rows: rows as u32,
        classes: classes as u32,
        _p0: [0; 2],
        scale,
        beta: 0.0,
        _p1: [0.0; 2],
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
            cls.read(),
            saved.write(),
            loss.write(),
        ],
        bytemuck::bytes_of(&p),
        [1, 1, 1],
    )?;
    let mut forward = vec![fwd];
    if tape.replication().devices > 1 {
        // The whole batch's weighted mean: add the sums over the devices, then divide (the
        // backward reads the summed weight).
        let sums = Tensor::view(
            saved.storage().clone(),
            saved.offset() + 4 * rows as u64,
            &[2],
            DType::F32,
            false,
        )?;
        tape.push_forward("loss", forward.pop().expect("the forward launch"));
        tape.push_collective(crate::tape::Collective::sum(vec![sums], 1.0));
        forward.push(Dispatch::build(
            &gpu,
            "cross_entropy",
            "loss_finish",
            &[saved.read(), loss.write()],
            bytemuck::bytes_of(&p),
            [1, 1, 1],
        )?);
    }
    let (z, y, c) = (logits.clone(), labels.clone(), cls.clone());
    tape.push_unary("loss", logits, &loss, forward, move |gpu, g, t| {
        let bp = Params {
            beta: t.beta(),
            ..p
        };
        Dispatch::build(
            gpu,
            "cross_entropy",
            "backward",
            &[
                z.read(),
                y.read(),
                c.read(),
                saved.read(),
                g.read(),
                t.tensor.write(),
            ],
            bytemuck::bytes_of(&bp),
            grid_1d(gpu, ((rows * classes) as u32).div_ceil(256)),
        )
    })?;
    Ok(loss)
}

/// Plain (optionally class-weighted) cross-entropy: weights from the host, no margins/offsets.
pub fn cross_entropy(
    tape: &mut Tape,
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&[f32]>,
) -> Result<Tensor> {
    let classes = *logits.shape().last().unwrap_or(&0);
    let mut cls = vec![1.0f32; classes];
    if let Some(w) = weights {
        if w.len() != classes {
            bail!("cross_entropy: {} weights for {classes} classes", w.len());
        }
        cls.copy_from_slice(w);
    }
    cls.resize(3 * classes, 0.0);
    let t = Tensor::from_f32(tape.gpu(), &[3 * classes], &cls)?;
    margin_cross_entropy(tape, logits, labels, &t, 1.0)
}

/// CPU references (f64).
pub mod reference {
    fn adjusted(z: &[f64], y: usize, cls: &[f64], scale: f64) -> Vec<f64> {
        let c = z.len();
        (0..c)
            .map(|j| scale * (z[j] - if j == y { cls[c + j] } else { 0.0 }) + cls[2 * c + j])
            .collect()
    }

    fn lse(row: &[f64]) -> f64 {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln()
    }

    /// Weighted-mean margin cross-entropy of row-major `z` (`[labels.len(), C]`) with
    /// `cls = [weights; margins; offsets]`.
    pub fn margin_cross_entropy(z: &[f64], labels: &[usize], cls: &[f64], scale: f64) -> f64 {
        let c = z.len() / labels.len();
        let (mut num, mut den) = (0.0, 0.0);
        for (i, &y) in labels.iter().enumerate() {
            let row = adjusted(&z[i * c..(i + 1) * c], y, cls, scale);
            num += cls[y] * (lse(&row) - row[y]);
            den += cls[y];
        }
        if den == 0.0 { 0.0 } else { num / den }
    }

    /// Gradient with respect to `z`, times the upstream scalar `g`.
    pub fn margin_cross_entropy_grad(
        z: &[f64],
        labels: &[usize],
        cls: &[f64],
        scale: f64,
        g: f64,
    ) -> Vec<f64> {
        let c = z.len() / labels.len();
        let den: f64 = labels.iter().map(|&y| cls[y]).sum();
        let mut out = vec![0.0; z.len()];
        if den == 0.0 {
            return out;
        }
        for (i, &y) in labels.iter().enumerate() {
            let row = adjusted(&z[i * c..(i + 1) * c], y, cls, scale);
            let l = lse(&row);
            for j in 0..c {
                let p = (row[j] - l).exp();
                out[i * c + j] = g * scale * cls[y] / den * (p - if j == y { 1.0 } else { 0.0 });
            }
        }
        out
    }

    /// Plain class-weighted cross-entropy.
    pub fn cross_entropy(z: &[f64], labels: &[usize], weights: Option<&[f64]>) -> f64 {
        margin_cross_entropy(z, labels, &plain(z.len() / labels.len(), weights), 1.0)
    }

    /// Gradient of [`cross_entropy`].
    pub fn cross_entropy_grad(
        z: &[f64],
        labels: &[usize],
        weights: Option<&[f64]>,
        g: f64,
    ) -> Vec<f64> {
        let c = z.len() / labels.len();
        margin_cross_entropy_grad(z, labels, &plain(c, weights), 1.0, g)
    }

    fn plain(c: usize, weights: Option<&[f64]>) -> Vec<f64> {
        let mut v = weights.map_or(vec![1.0; c], <[f64]>::to_vec);
        v.resize(3 * c, 0.0);
        v
    }
}
