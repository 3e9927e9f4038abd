//! Elementwise ops: add, add_row (bias broadcast), mul, scale, relu.

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use super::expect_shape;
use crate::gpu::{Dispatch, Gpu, grid_1d};
use crate::ops::reduce;
use crate::tape::Tape;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    alpha: f32,
    beta: f32,
}

/// Record `out = beta * out + f(a, b)` for kernel `entry` of `elementwise.wgsl`.
#[allow(clippy::too_many_arguments)] // mirrors the kernel's parameter block one to one
pub fn dispatch(
    gpu: &Gpu,
    entry: &'static str,
    a: &Tensor,
    b: &Tensor,
    out: &Tensor,
    alpha: f32,
    beta: f32,
    cols: u32,
) -> Result<Dispatch> {
    let n = out.numel() as u32;
    // f16 tensors: offsets of vec4<f16> need 8 bytes; 16 (the f32 rule) covers it.
    // Four elements per invocation when every operand splits into aligned vec4 (one storage
    // access per four elements: on llvmpipe each access is a loop over the SIMD lanes).
    let vec4 = VEC4_ENTRIES
        .iter()
        .find(|(e, _)| *e == entry)
        .map(|(_, e4)| *e4);
    let aligned = [a, b, out].iter().all(|t| t.offset() % 16 == 0);
    let (entry, per) = match vec4 {
        Some(e4) if n.is_multiple_of(4) && aligned => (e4, 4),
        _ => (entry, 1),
    };
    let p = Params {
        n: n / per,
        cols: cols.max(1),
        alpha,
        beta,
    };
    if a.dtype() != b.dtype() {
        bail!("{entry}: operands of two element types, {a:?} and {b:?}");
    }
    Dispatch::build(
        gpu,
        crate::shaders::typed("elementwise", a.dtype(), out.dtype())?,
        entry,
        &[a.read(), b.read(), out.write()],
        bytemuck::bytes_of(&p),
        grid_1d(gpu, (n / per).div_ceil(256)),
    )
}

/// Kernels with a vec4 twin in `elementwise.wgsl`.
const VEC4_ENTRIES: [(&str, &str); 5] = [
    ("add", "add4"),
    ("mul", "mul4"),
    ("scale", "scale4"),
    ("relu", "relu4"),
    ("relu_backward", "relu_backward4"),
];

/// `a + b` (same shapes).
pub fn add(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    expect_shape("add", "b", b, a.shape())?;
    let out = tape.output(a.shape(), &[a, b])?;
    let fwd = dispatch(tape.gpu(), "add", a, b, &out, 1.0, 0.0, 0)?;
    tape.push(
        "elementwise",
        vec![a.clone(), b.clone()],
        &out,
        vec![fwd],
        Box::new(|gpu, g, gin| {
            let mut v = Vec::new();
            for t in gin.iter().flatten() {
                v.push(dispatch(gpu, "scale", g, g, &t.tensor, 1.0, t.beta(), 0)?);
            }
            Ok(crate::tape::launches(v))
        }),
    )?;
    Ok(out)
}

/// `a + b` with `a: [rows, cols]` and `b: [cols]` broadcast along rows (a bias).
pub fn add_row(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let Some(&cols) = a.shape().last() else {
        bail!("add_row: a must have at least one axis");
    };
    expect_shape("add_row", "b", b, &[cols])?;
    let rows = a.numel() / cols.max(1);
    let out = tape.output(a.shape(), &[a, b])?;
    let fwd = dispatch(tape.gpu(), "add_row", a, b, &out, 1.0, 0.0, cols as u32)?;
    tape.push(
        "elementwise",
        vec![a.clone(), b.clone()],
        &out,
        vec![fwd],
        Box::new(move |gpu, g, gin| {
            let mut v = Vec::new();
            if let Some(t) = &gin[0] {
                v.push(dispatch(gpu, "scale", g, g, &t.tensor, 1.0, t.beta(), 0)?);
            }
            if let Some(t) = &gin[1] {
                v.push(reduce::sum_dispatch(
                    gpu,
                    g,
                    &t.tensor,
                    [1, rows, cols],
                    1.0,
                    t.beta(),
                )?);
            }
            Ok(crate::tape::launches(v))
        }),
    )?;
    Ok(out)
}

/// `a * b` (same shapes).
pub fn mul(tape: &mut Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    expect_shape("mul", "b", b, a.shape())?;
    let out = tape.output(a.shape(), &[a, b])?;
    let fwd = dispatch(tape.gpu(), "mul", a, b, &out, 1.0, 0.0, 0)?;
    let (sa, sb) = (a.clone(), b.clone());
    tape.push(
        "elementwise",
        vec![a.clone(), b.clone()],
        &out,
        vec![fwd],
        Box::new(move |gpu, g, gin| {
            let mut v = Vec::new();
            if let Some(t) = &gin[0] {
                v.push(dispatch(gpu, "mul", g, &sb, &t.tensor, 1.0, t.beta(), 0)?);
            }
            if let Some(t) = &gin[1] {
                v.push(dispatch(gpu, "mul", g, &sa, &t.tensor, 1.0, t.beta(), 0)?);
            }
            Ok(crate::tape::launches(v))
        }),
    )?;
    Ok(out)
}

/// `s * a`.
pub fn scale(tape: &mut Tape, a: &Tensor, s: f32) -> Result<Tensor> {
    let out = tape.output(a.shape(), &[a])?;
    let fwd = dispatch(tape.gpu(), "scale", a, a, &out, s, 0.0, 0)?;
    tape.push_unary("elementwise", a, &out, vec![fwd], move |gpu, g, t| {
        dispatch(gpu, "scale", g, g, &t.tensor, s, t.beta(), 0)
    })?;
    Ok(out)
}

/// `max(a, 0)`; the gradient at 0 is taken as 0 (PyTorch's choice).
pub fn relu(tape: &mut Tape, a: &Tensor) -> Result<Tensor> {
    let out = tape.output(a.shape(), &[a])?;
    let fwd = dispatch(tape.gpu(), "relu", a, a, &out, 1.0, 0.0, 0)?;
    let x = a.clone();
    tape.push_unary("elementwise", a, &out, vec![fwd], move |gpu, g, t| {
        dispatch(gpu, "relu_backward", g, &x, &t.tensor, 1.0, t.beta(), 0)
    })?;
    Ok(out)
}

/// CPU references (f64). Gradients take the upstream gradient `g` and return one per input.
pub mod reference {
    /// `a + b`
    pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x + y).collect()
    }
    /// Gradients of `add`.
    pub fn add_grad(g: &[f64]) -> (Vec<f64>, Vec<f64>) {
        (g.to_vec(), g.to_vec())
    }
    /// `a + b` with `b` broadcast along rows of length `b.len()`.
    pub fn add_row(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter()
            .enumerate()
            .map(|(i, x)| x + b[i % b.len()])
            .collect()
    }
    /// Gradients of `add_row`.
    pub fn add_row_grad(g: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>) {
        let mut gb = vec![0.0; cols];
        for (i, v) in g.iter().enumerate() {
            gb[i % cols] += v;
        }
        (g.to_vec(), gb)
    }
    /// `a * b`
    pub fn mul(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x * y).collect()
    }
    /// Gradients of `mul`.
    pub fn mul_grad(a: &[f64], b: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>) {
        (mul(g, b), mul(g, a))
    }
    /// `s * a`
    pub fn scale(a: &[f64], s: f64) -> Vec<f64> {
        a.iter().map(|x| s * x).collect()
    }
    /// `max(a, 0)`
    pub fn relu(a: &[f64]) -> Vec<f64> {
        a.iter().map(|x| x.max(0.0)).collect()
    }
    /// Gradient of `relu`.
    pub fn relu_grad(a: &[f64], g: &[f64]) -> Vec<f64> {
        a.iter()
            .zip(g)
            .map(|(x, d)| if *x > 0.0 { *d } else { 0.0 })
            .collect()
    }
}
