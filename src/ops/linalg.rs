//! Small ops on stacks of matrices that channel whitening is built from: `reshape` (a view),
//! `swap01` (exchange the first two axes), `trace`, `add_identity` (`alpha X + diag I`) and
//! `scale_pow` (`X * s^power` per matrix). Kernels: `shaders/linalg.wgsl`.

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, Gpu, grid_1d};
use crate::ops::elementwise;
use crate::tape::Tape;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    d0: u32,
    d1: u32,
    d2: u32,
    _p: u32,
    alpha: f32,
    beta: f32,
    power: f32,
    diag: f32,
}

fn params(d: [usize; 3], alpha: f32, beta: f32, power: f32, diag: f32) -> Params {
    Params {
        d0: d[0] as u32,
        d1: d[1] as u32,
        d2: d[2] as u32,
        _p: 0,
        alpha,
        beta,
        power,
        diag,
    }
}

#[allow(clippy::too_many_arguments)] // kernel, three buffers, parameters and grid
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    x: &Tensor,
    s: &Tensor,
    y: &Tensor,
    p: Params,
    threads: usize,
    wg: u32,
) -> Result<Dispatch> {
    Dispatch::build(
        gpu,
        "linalg",
        entry,
        &[x.read(), s.read(), y.write()],
        bytemuck::bytes_of(&p),
        grid_1d(gpu, (threads as u32).div_ceil(wg)),
    )
}

/// The same values under another shape (no copy forward; the backward copies the gradient).
pub fn reshape(tape: &mut Tape, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if shape.iter().product::<usize>() != x.numel() {
        bail!(
            "reshape: {:?} has {} values, not {shape:?}",
            x.shape(),
            x.numel()
        );
    }
    let y = Tensor::view(
        x.storage().clone(),
        x.offset(),
        shape,
        x.dtype(),
        x.requires_grad(),
    )?;
    tape.push_unary("reshape", x, &y, Vec::new(), |gpu, g, t| {
        let flat = Tensor::view(
            g.storage().clone(),
            g.offset(),
            t.tensor.shape(),
            g.dtype(),
            false,
        )?;
        elementwise::dispatch(gpu, "scale", &flat, &flat, &t.tensor, 1.0, t.beta(), 0)
    })?;
    Ok(y)
}

/// `[A, B, C] -> [B, A, C]`.
pub fn swap01(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let &[a, b, c] = x.shape() else {
        bail!("swap01: expected a 3-D tensor, got {:?}", x.shape());
    };
    let y = tape.output(&[b, a, c], &[x])?;
    let n = x.numel();
    let fwd = launch(
        tape.gpu(),
        "swap01",
        x,
        x,
        &y,
        params([a, b, c], 1.0, 0.0, 0.0, 0.0),
        n,
        256,
    )?;
    tape.push_unary("linalg", x, &y, vec![fwd], move |gpu, g, t| {
        let p = params([b, a, c], 1.0, t.beta(), 0.0, 0.0);
        launch(gpu, "swap01", g, g, &t.tensor, p, n, 256)
    })?;
    Ok(y)
}

fn square_stack(op: &str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape() {
        [g, r, c] if r == c => Ok((*g, *r)),
        s => bail!("{op}: expected [G, n, n], got {s:?}"),
    }
}

/// Trace of each matrix: `[G, n, n] -> [G]`.
pub fn trace(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let (g, n) = square_stack("trace", x)?;
    let t = tape.output(&[g], &[x])?;
    let fwd = launch(
        tape.gpu(),
        "trace",
        x,
        x,
        &t,
        params([g, n, 0], 1.0, 0.0, 0.0, 0.0),
        g,
        64,
    )?;
    tape.push_unary("linalg", x, &t, vec![fwd], move |gpu, dt, gx| {
        let p = params([g, n, 0], 1.0, gx.beta(), 0.0, 0.0);
        launch(gpu, "trace_back", dt, dt, &gx.tensor, p, g * n * n, 256)
    })?;
    Ok(t)
}

/// `alpha * X + diag * I` for each matrix of `[G, n, n]`.
pub fn add_identity(tape: &mut Tape, x: &Tensor, alpha: f32, diag: f32) -> Result<Tensor> {
    let (g, n) = square_stack("add_identity", x)?;
    let y = tape.output(x.shape(), &[x])?;
    let p = params([g, n, 0], alpha, 0.0, 0.0, diag);
    let fwd = launch(tape.gpu(), "add_identity", x, x, &y, p, g * n * n, 256)?;
    tape.push_unary("linalg", x, &y, vec![fwd], move |gpu, dy, t| {
        elementwise::dispatch(gpu, "scale", dy, dy, &t.tensor, alpha, t.beta(), 0)
    })?;
    Ok(y)
}

/// `X[g] * s[g]^power` for `X: [G, ...]`, `s: [G]` (positive; a trace).
pub fn scale_pow(tape: &mut Tape, x: &Tensor, s: &Tensor, power: f32) -> Result<Tensor> {
    let g = *x.shape().first().unwrap_or(&0);
    if s.shape() != [g] || g == 0 {
        bail!(
            "scale_pow: s must be [{g}] for x {:?}, got {:?}",
            x.shape(),
            s.shape()
        );
    }
    let per = x.numel() / g;
    let y = tape.output(x.shape(), &[x, s])?;
    let p = params([g, per, 0], 1.0, 0.0, power, 0.0);
    let fwd = launch(tape.gpu(), "scale_pow", x, s, &y, p, g * per, 256)?;
    let (sx, ss) = (x.clone(), s.clone());
    tape.push(
        "linalg",
        vec![x.clone(), s.clone()],
        &y,
        vec![fwd],
        Box::new(move |gpu, dy, gin| {
            let mut v = Vec::new();
            if let Some(t) = &gin[0] {
                let p = params([g, per, 0], 1.0, t.beta(), power, 0.0);
                v.push(launch(
                    gpu,
                    "scale_pow",
                    dy,
                    &ss,
                    &t.tensor,
                    p,
                    g * per,
                    256,
                )?);
            }
            if let Some(t) = &gin[1] {
                let p = params([g, per, 0], 1.0, t.beta(), power, 0.0);
                v.push(Dispatch::build(
                    gpu,
                    "linalg",
                    "scale_pow_ds",
                    &[sx.read(), ss.read(), dy.read(), t.tensor.write()],
                    bytemuck::bytes_of(&p),
                    grid_1d(gpu, (g as u32).div_ceil(64)),
                )?);
            }
            Ok(crate::tape::launches(v))
        }),
    )?;
    Ok(y)
}
