//! Reductions: sum and mean over one axis.

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, Gpu, grid_1d};
use crate::tape::Tape;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    alpha: f32,
    beta: f32,
    _pad: [u32; 3],
}

fn params(dims: [usize; 3], alpha: f32, beta: f32) -> Params {
    Params {
        outer: dims[0] as u32,
        len: dims[1] as u32,
        inner: dims[2] as u32,
        alpha,
        beta,
        _pad: [0; 3],
    }
}

/// Sums of at most this many values go one invocation per output when there are at least
/// [`SHORT_MIN_OUTPUTS`] outputs (a workgroup of 256 per output would idle most of its lanes).
const SHORT_MAX_LEN: usize = 256;
/// ...enough outputs to fill a GPU with one invocation each. A CPU adapter takes the short path
/// for any count: its 256-lane workgroup runs the lanes one SIMD group after another and pays
/// 8 barriers per output (llvmpipe: a [64, 64] column mean, the whitening's, took ~0.85 ms with
/// a workgroup per output).
const SHORT_MIN_OUTPUTS: usize = 1024;

fn short_min_outputs(gpu: &Gpu) -> usize {
    if gpu.is_cpu() { 1 } else { SHORT_MIN_OUTPUTS }
}

/// Record `out[o, i] = beta * out[o, i] + alpha * sum_k x[o, k, i]` with `dims = [outer, len,
/// inner]`: one workgroup per output element, or one invocation per output for short sums over
/// many outputs (any number of outputs on a CPU adapter).
pub fn sum_dispatch(
    gpu: &Gpu,
    x: &Tensor,
    out: &Tensor,
    dims: [usize; 3],
    alpha: f32,
    beta: f32,
) -> Result<Dispatch> {
    let p = params(dims, alpha, beta);
    let outputs = dims[0] * dims[2];
    if dims[1] <= SHORT_MAX_LEN && outputs >= short_min_outputs(gpu) {
        return Dispatch::build(
            gpu,
            crate::shaders::typed("reduce", x.dtype(), out.dtype())?,
            "sum_short",
            &[x.read(), out.write()],
            bytemuck::bytes_of(&p),
            grid_1d(gpu, outputs.div_ceil(64) as u32),
        );
    }
    Dispatch::build(
        gpu,
        crate::shaders::typed("reduce", x.dtype(), out.dtype())?,
        "sum",
        &[x.read(), out.write()],
        bytemuck::bytes_of(&p),
        grid_1d(gpu, (dims[0] * dims[2]) as u32),
    )
}

/// Record `out[o, k, i] = beta * out[o, k, i] + alpha * x[o, i]` (the backward of a sum).
pub fn broadcast_dispatch(
    gpu: &Gpu,
    x: &Tensor,
    out: &Tensor,
    dims: [usize; 3],
    alpha: f32,
    beta: f32,
) -> Result<Dispatch> {
    let p = params(dims, alpha, beta);
    let n = (dims[0] * dims[1] * dims[2]) as u32;
    Dispatch::build(
        gpu,
        crate::shaders::typed("reduce", x.dtype(), out.dtype())?,
        "broadcast",
        &[x.read(), out.write()],
        bytemuck::bytes_of(&p),
        grid_1d(gpu, n.div_ceil(256)),
    )
}

/// Split a shape around `axis` into `[outer, len, inner]`.
pub fn split_dims(shape: &[usize], axis: usize) -> Result<[usize; 3]> {
    if axis >= shape.len() {
        bail!("axis {axis} out of range for shape {shape:?}");
    }
    Ok([
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    ])
}

fn reduce(tape: &mut Tape, x: &Tensor, axis: usize, mean: bool) -> Result<Tensor> {
    let dims = split_dims(x.shape(), axis)?;
    if dims[1] == 0 {
        bail!("reduce over an empty axis {axis} of {:?}", x.shape());
    }
    let mut shape = x.shape().to_vec();
    shape.remove(axis);
    let alpha = if mean { 1.0 / dims[1] as f32 } else { 1.0 };
    let out = tape.output(&shape, &[x])?;
    let fwd = sum_dispatch(tape.gpu(), x, &out, dims, alpha, 0.0)?;
    tape.push_unary("reduce", x, &out, vec![fwd], move |gpu, g, t| {
        broadcast_dispatch(gpu, g, &t.tensor, dims, alpha, t.beta())
    })?;
    Ok(out)
}

/// Sum over `axis` (the axis is removed).
pub fn sum(tape: &mut Tape, x: &Tensor, axis: usize) -> Result<Tensor> {
    reduce(tape, x, axis, false)
}

/// Mean over `axis` (the axis is removed).
pub fn mean(tape: &mut Tape, x: &Tensor, axis: usize) -> Result<Tensor> {
    reduce(tape, x, axis, true)
}

/// CPU references (f64).
pub mod reference {
    /// Sum (or mean) of `x` viewed as `[outer, len, inner]` over the middle axis.
    pub fn reduce(x: &[f64], dims: [usize; 3], mean: bool) -> Vec<f64> {
        let [o, l, i] = dims;
        let mut out = vec![0.0; o * i];
        for a in 0..o {
            for k in 0..l {
                for b in 0..i {
                    out[a * i + b] += x[(a * l + k) * i + b];
                }
            }
        }
        if mean {
            out.iter_mut().for_each(|v| *v /= l as f64);
        }
        out
    }
    /// Gradient of [`reduce`]: `g` broadcast along the reduced axis.
    pub fn reduce_grad(g: &[f64], dims: [usize; 3], mean: bool) -> Vec<f64> {
        let [o, l, i] = dims;
        let s = if mean { 1.0 / l as f64 } else { 1.0 };
        let mut out = vec![0.0; o * l * i];
        for a in 0..o {
            for k in 0..l {
                for b in 0..i {
                    out[(a * l + k) * i + b] = s * g[a * i + b];
                }
            }
        }
        out
    }
}
