//! L2 normalisation along one axis (`F.normalize(x, dim)`, eps 1e-12), the building block of the
//! normed (cosine) linear classifier.

use anyhow::Result;
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, grid_1d};
use crate::ops::reduce::split_dims;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// PyTorch's `F.normalize` default.
pub const EPS: f32 = 1e-12;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    _p0: u32,
    eps: f32,
    beta: f32,
    _p: [f32; 2],
}

/// `x / max(|x|_axis, eps)`.
pub fn l2_normalize(tape: &mut Tape, x: &Tensor, axis: usize) -> Result<Tensor> {
    let dims = split_dims(x.shape(), axis)?;
    let p = Params {
        outer: dims[0] as u32,
        len: dims[1] as u32,
        inner: dims[2] as u32,
        _p0: 0,
        eps: EPS,
        beta: 0.0,
        _p: [0.0; 2],
    };
    let gpu = tape.gpu().clone();
    let vectors = (dims[0] * dims[2]) as u32;
    let norms = Tensor::zeros(&gpu, &[vectors as usize], DType::F32)?;
    let y = tape.output(x.shape(), &[x])?;
    let fwd = Dispatch::build(
        &gpu,
        "normalize",
        "forward",
        &[x.read(), y.write(), norms.write()],
        bytemuck::bytes_of(&p),
        grid_1d(&gpu, vectors.div_ceil(64)),
    )?;
    let sy = y.clone();
    tape.push_unary("normalize", x, &y, vec![fwd], move |gpu, g, t| {
        let bp = Params {
            beta: t.beta(),
            ..p
        };
        Dispatch::build(
            gpu,
            "normalize",
            "backward",
            &[g.read(), sy.read(), norms.read(), t.tensor.write()],
            bytemuck::bytes_of(&bp),
            grid_1d(gpu, vectors.div_ceil(64)),
        )
    })?;
    Ok(y)
}

/// CPU references (f64).
pub mod reference {
    fn each(dims: [usize; 3], mut f: impl FnMut(Vec<usize>)) {
        let [o, l, i] = dims;
        for a in 0..o {
            for b in 0..i {
                f((0..l).map(|k| (a * l + k) * i + b).collect());
            }
        }
    }

    /// Forward.
    pub fn l2_normalize(x: &[f64], dims: [usize; 3], eps: f64) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        each(dims, |idx| {
            let n = idx
                .iter()
                .map(|&j| x[j] * x[j])
                .sum::<f64>()
                .sqrt()
                .max(eps);
            idx.iter().for_each(|&j| y[j] = x[j] / n);
        });
        y
    }

    /// Gradient for upstream `g`.
    pub fn l2_normalize_grad(x: &[f64], g: &[f64], dims: [usize; 3], eps: f64) -> Vec<f64> {
        let mut dx = vec![0.0; x.len()];
        each(dims, |idx| {
            let raw = idx.iter().map(|&j| x[j] * x[j]).sum::<f64>().sqrt();
            let n = raw.max(eps);
            let dot: f64 = if raw > eps {
                idx.iter().map(|&j| g[j] * x[j] / n).sum()
            } else {
                0.0
            };
            idx.iter()
                .for_each(|&j| dx[j] = (g[j] - x[j] / n * dot) / n);
        });
        dx
    }
}
