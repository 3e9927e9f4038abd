//! ZCA whitening matrix `W = Sigma^(-1/2)` from a GPU eigendecomposition (cyclic Jacobi, one
//! workgroup per matrix, n <= 128), with the Daleckii–Krein backward
//! `dSigma = U (K o (U^T dW U)) U^T`. K's divided differences of `f(l) = l^(-1/2)` are evaluated
//! in closed form, `-1 / (sqrt(l_i) sqrt(l_j) (sqrt(l_i) + sqrt(l_j)))`, which has no eigenvalue
//! gap in a denominator: the backward stays finite when eigenvalues coincide. Kernels:
//! `shaders/eigen.wgsl`.

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, grid_1d};
use crate::ops::matmul;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// Jacobi sweeps, one dispatch each (quadratic convergence: ~8 suffice for n = 64 in f32;
/// converged sweeps return at once).
pub const MAX_SWEEPS: u32 = 15;
/// Largest matrix the Jacobi kernel is verified for. Known defect: on llvmpipe, n = 240 converged
/// only to 6e-3 and n >= 255 produced NaN (n <= 200 agree with f64 to 4e-5); not yet explained.
pub const MAX_N: usize = 128;
/// Rotations per dispatch at most: llvmpipe cut short a dispatch of 32k rotations (~65k
/// barriers); 8k leaves a wide margin and costs only a few more launches.
pub const ROTATIONS_PER_DISPATCH: usize = 8192;
/// Eigenvalues are clamped to at least this before `l^(-1/2)` (Sigma carries `+ eps I`).
pub const FLOOR: f32 = 1e-12;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    groups: u32,
    n: u32,
    row_begin: u32,
    row_end: u32,
    beta: f32,
    floor: f32,
    _q: [f32; 2],
}

/// `Sigma^(-1/2)` of each symmetric positive-definite matrix of `sigma: [G, n, n]`.
pub fn zca_eigen(tape: &mut Tape, sigma: &Tensor) -> Result<Tensor> {
    let &[g, n, n2] = sigma.shape() else {
        bail!("zca_eigen: expected [G, n, n], got {:?}", sigma.shape());
    };
    if n != n2 || n == 0 {
        bail!(
            "zca_eigen: matrices must be square, got {:?}",
            sigma.shape()
        );
    }
    if n > MAX_N {
        bail!(
            "the eigen whitening method handles groups of at most {MAX_N} channels, got {n}: \
             use --whiten-group {MAX_N} (or smaller), or the default Newton-Schulz method"
        );
    }
    let gpu = tape.gpu().clone();
    let p = Params {
        groups: g as u32,
        n: n as u32,
        row_begin: 0,
        row_end: n as u32,
        beta: 0.0,
        floor: FLOOR,
        _q: [0.0; 2],
    };
    let work = Tensor::zeros(&gpu, &[g, n, n], DType::F32)?;
    let u = Tensor::zeros(&gpu, &[g, n, n], DType::F32)?;
    let lam = Tensor::zeros(&gpu, &[g, n], DType::F32)?;
    let w = tape.output(&[g, n, n], &[sigma])?;
    let bind = [sigma.read(), work.write(), u.write(), lam.write()];
    let mut fwd = vec![Dispatch::build(
        &gpu,
        "eigen",
        "jacobi_init",
        &bind,
        bytemuck::bytes_of(&p),
        [g as u32, 1, 1],
    )?];
    // Pivot rows per dispatch so that one dispatch holds at most ~ROTATIONS_PER_DISPATCH
    // rotations.
    let rows = (ROTATIONS_PER_DISPATCH / n.max(1)).clamp(1, n);
    for _ in 0..MAX_SWEEPS {
        for begin in (0..n.saturating_sub(1)).step_by(rows) {
            let part = Params {
                row_begin: begin as u32,
                row_end: (begin + rows).min(n) as u32,
                ..p
            };
            fwd.push(Dispatch::build(
                &gpu,
                "eigen",
                "jacobi_sweep",
                &bind,
                bytemuck::bytes_of(&part),
                [g as u32, 1, 1],
            )?);
        }
    }
    let total = (g * n * n) as u32;
    fwd.push(Dispatch::build(
        &gpu,
        "eigen",
        "zca",
        &[u.read(), lam.read(), w.write()],
        bytemuck::bytes_of(&p),
        grid_1d(&gpu, total.div_ceil(256)),
    )?);
    tape.push(
        "whiten",
        vec![sigma.clone()],
        &w,
        fwd,
        Box::new(move |gpu, dw, gin| {
            let mut v = Vec::new();
            if let Some(t) = &gin[0] {
                let shape = [g, n, n];
                let t1 = Tensor::zeros(gpu, &shape, DType::F32)?;
                let t2 = Tensor::zeros(gpu, &shape, DType::F32)?;
                // t1 = U^T dW; t2 = t1 U; t1 = K o t2; t2 = U t1; dSigma (+)= t2 U^T
                v.push(matmul::dispatch(gpu, &u, dw, &t1, true, false, 1.0, 0.0)?);
                v.push(matmul::dispatch(gpu, &t1, &u, &t2, false, false, 1.0, 0.0)?);
                v.push(Dispatch::build(
                    gpu,
                    "eigen",
                    "kmul",
                    &[t2.read(), lam.read(), t1.write()],
                    bytemuck::bytes_of(&p),
                    grid_1d(gpu, total.div_ceil(256)),
                )?);
                v.push(matmul::dispatch(gpu, &u, &t1, &t2, false, false, 1.0, 0.0)?);
                v.push(matmul::dispatch(
                    gpu,
                    &t2,
                    &u,
                    &t.tensor,
                    false,
                    true,
                    1.0,
                    t.beta(),
                )?);
            }
            Ok(v)
        }),
    )?;
    Ok(w)
}
