//! ZCA whitening matrix `W = Sigma^(-1/2)` from a GPU eigendecomposition (parallel round-robin
//! Jacobi, one workgroup per matrix, n <= 512), with the Daleckii–Krein backward
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

/// Jacobi sweeps at most (quadratic convergence: ~8 suffice in f32; once the off-diagonal mass
/// is below [`stop_ratio`] the remaining rounds return at once).
pub const MAX_SWEEPS: u32 = 15;
/// Largest matrix: a round's n / 2 rotations are one per invocation of a 256-wide workgroup.
pub const MAX_N: usize = 512;
/// Loop iterations one invocation may spend per dispatch. llvmpipe stops *every* loop of an
/// invocation once 65,535 iterations have run in one dispatch, summed over all its loops
/// (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS, shared by every loop of a shader), silently. That
/// cap, hit by the serial convergence check (n^2 iterations) plus the rotations, is why the
/// previous kernel converged only to 6e-3 at n = 240 and gave NaN (rounds and eigenvalue loop
/// skipped) at n >= 255. Half the cap leaves room for loop overhead the count below leaves out.
pub const LOOP_BUDGET: usize = 32_768;
/// Eigenvalues are clamped to at least this before `l^(-1/2)` (Sigma carries `+ eps I`).
pub const FLOOR: f32 = 1e-12;

/// Relative off-diagonal mass (sum of squares) below which an n x n matrix counts as diagonal:
/// f32 rounding leaves off-diagonal entries of ~eps |lambda|, i.e. a ratio of ~n eps^2, so a
/// fixed 1e-14 is never reached for n >= 100; this stops at ~(4 eps)^2 n.
pub fn stop_ratio(n: usize) -> f32 {
    let eps = f32::EPSILON as f64;
    (16.0 * eps * eps * n as f64) as f32
}

/// Rounds one `jacobi_rounds` dispatch runs: as many as keep every invocation's loop
/// iterations (convergence check, per round: the pair set-up, the half^2 block walk, the V
/// update; the eigenvalue copy) within [`LOOP_BUDGET`].
pub fn rounds_per_dispatch(n: usize) -> usize {
    let half = n.div_ceil(2);
    let fixed = (n * n).div_ceil(256) + 8 + n.div_ceil(256) + 4;
    let per_round = (half * half).div_ceil(256) + (n * half).div_ceil(256) + 2;
    (LOOP_BUDGET.saturating_sub(fixed) / per_round).max(1)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    groups: u32,
    n: u32,
    round_begin: u32,
    round_end: u32,
    beta: f32,
    floor: f32,
    stop: f32,
    _q: f32,
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
        round_begin: 0,
        round_end: 0,
        beta: 0.0,
        floor: FLOOR,
        stop: stop_ratio(n),
        _q: 0.0,
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
    // A sweep is m - 1 rounds (m = n rounded up to even); n = 1 still needs one dispatch for
    // its eigenvalue.
    let rounds = (MAX_SWEEPS as usize * (n + n % 2 - 1)).max(1);
    let chunk = rounds_per_dispatch(n);
    for begin in (0..rounds).step_by(chunk) {
        let part = Params {
            round_begin: begin as u32,
            round_end: (begin + chunk).min(rounds) as u32,
            ..p
        };
        fwd.push(Dispatch::build(
            &gpu,
            "eigen",
            "jacobi_rounds",
            &bind,
            bytemuck::bytes_of(&part),
            [g as u32, 1, 1],
        )?);
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
                v.extend(matmul::dispatch(gpu, &u, dw, &t1, true, false, 1.0, 0.0)?);
                v.extend(matmul::dispatch(gpu, &t1, &u, &t2, false, false, 1.0, 0.0)?);
                v.push(Dispatch::build(
                    gpu,
                    "eigen",
                    "kmul",
                    &[t2.read(), lam.read(), t1.write()],
                    bytemuck::bytes_of(&p),
                    grid_1d(gpu, total.div_ceil(256)),
                )?);
                v.extend(matmul::dispatch(gpu, &u, &t1, &t2, false, false, 1.0, 0.0)?);
                v.extend(matmul::dispatch(
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
            Ok(crate::tape::launches(v))
        }),
    )?;
    Ok(w)
}
