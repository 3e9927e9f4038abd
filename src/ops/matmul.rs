//! Matrix multiply with optional transposes: `C = op(A) op(B)`.
//!
//! Kernels: `shaders/matmul.wgsl`, 64x64 output tiles per workgroup with K staged through
//! workgroup memory in slabs of 16 (8x8 register blocks per invocation, or 4x4 in the GPU-shaped
//! variant), and `shaders/matmul_subgroup.wgsli`, two rows x 16 columns per invocation with B
//! shared by subgroup broadcast (CPU-shaped). Transposes are override constants (one
//! specialised pipeline per combination).

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, Gpu};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Output tile edge of the kernel (rows and columns per workgroup).
pub const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    alpha: f32,
    beta: f32,
    k_begin: u32,
    k_end: u32,
    a_step: u32,
    pad: u32,
}

/// K values one launch covers at most. An invocation runs ~33 loop iterations per slab of 16 K
/// values, and llvmpipe silently stops an invocation's loops after 65,535 iterations in total
/// per dispatch (see benches/NOTES.md): a K of 65,536 came out 11 % short. Longer K is split
/// into launches that accumulate into C (beta = 1 after the first); 16,384 stays under ~34k.
pub const MAX_K_PER_LAUNCH: usize = 16_384;

/// `(M, N, K)` from 2-D shapes (or 3-D `[batch, rows, cols]` stacks) and transpose flags.
pub fn dims(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<(usize, usize, usize)> {
    let (a2, b2) = match (a, b) {
        ([_, _], [_, _]) => (a, b),
        ([ga, ..], [gb, ..]) if a.len() == 3 && b.len() == 3 && ga == gb => (&a[1..], &b[1..]),
        _ => bail!("matmul takes 2-D operands or 3-D stacks of equal batch, got {a:?} and {b:?}"),
    };
    let (m, ka) = if ta { (a2[1], a2[0]) } else { (a2[0], a2[1]) };
    let (kb, n) = if tb { (b2[1], b2[0]) } else { (b2[0], b2[1]) };
    if ka != kb {
        bail!("matmul: inner dimensions differ: op(A) is {m}x{ka}, op(B) is {kb}x{n}");
    }
    Ok((m, n, ka))
}

/// Number of stacked matrices (1 for 2-D operands).
fn batch_of(a: &[usize]) -> usize {
    if a.len() == 3 { a[0] } else { 1 }
}

/// Output shape of `op(A) op(B)`.
fn out_shape(a: &[usize], m: usize, n: usize) -> Vec<usize> {
    if a.len() == 3 {
        vec![a[0], m, n]
    } else {
        vec![m, n]
    }
}

/// Which kernel a matmul records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatAlgo {
    /// The adapter's tuner decides (see [`crate::tune`]).
    #[default]
    Auto,
    /// 8x8 invocations with 8x8 register blocks (`matmul`): fewest invocations, the fastest
    /// measured on llvmpipe.
    Block8,
    /// 16x16 invocations with 4x4 register blocks (`matmul16`): shaped for GPUs.
    Tile16,
    /// Two rows x 16 columns per invocation, B handed around by subgroup broadcast, no
    /// workgroup memory (`matmul_sg`): shaped for CPU adapters, where workgroup-memory reads
    /// are lane loops. Needs [`subgroups_ok`].
    Subgroup,
}

impl MatAlgo {
    /// The variant's name in tune caches and run records.
    pub fn name(self) -> &'static str {
        match self {
            MatAlgo::Auto => "auto",
            MatAlgo::Block8 => "b8",
            MatAlgo::Tile16 => "t16",
            MatAlgo::Subgroup => "sg",
        }
    }

    /// The variant named `s` (as in tune caches), or an error listing the names.
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "b8" => MatAlgo::Block8,
            "t16" => MatAlgo::Tile16,
            "sg" => MatAlgo::Subgroup,
            _ => bail!("unknown matmul variant {s:?} (b8, t16 or sg)"),
        })
    }
}

/// Whether this adapter runs [`MatAlgo::Subgroup`]: the `subgroups` feature and subgroups of
/// at least 8 lanes (lanes 0-7 each read one row of a B slab).
pub fn subgroups_ok(gpu: &Gpu) -> bool {
    gpu.has_subgroups() && gpu.summary.subgroup_min_size >= 8
}

/// The variants this adapter can run, heuristic favourite first (the subgroup kernel on CPU
/// adapters, where it measured fastest; the tuner decides elsewhere).
pub fn candidates(gpu: &Gpu) -> Vec<MatAlgo> {
    let mut v = vec![MatAlgo::Block8, MatAlgo::Tile16];
    if subgroups_ok(gpu) {
        if gpu.is_cpu() {
            v.insert(0, MatAlgo::Subgroup);
        } else {
            v.push(MatAlgo::Subgroup);
        }
    }
    v
}

/// Columns of C per invocation of [`MatAlgo::Subgroup`], and rows per workgroup (32
/// invocations of two rows).
const SG_COLS: usize = 16;
const SG_ROWS: usize = 64;

/// Record `C = alpha * op(A) op(B) + beta * C`: one launch, or one per [`MAX_K_PER_LAUNCH`]
/// values of K, the later ones adding to C. The kernel is the tuner's choice.
#[allow(clippy::too_many_arguments)] // mirrors the kernel's parameter block one to one
pub fn dispatch(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
) -> Result<Vec<Dispatch>> {
    dispatch_with(gpu, a, b, c, ta, tb, alpha, beta, MatAlgo::Auto)
}

/// [`dispatch`] with a choice of kernel.
#[allow(clippy::too_many_arguments)] // the parameter block plus the variant
pub fn dispatch_with(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
    algo: MatAlgo,
) -> Result<Vec<Dispatch>> {
    let (m, n, k) = dims(a.shape(), b.shape(), ta, tb)?;
    let algo = if algo == MatAlgo::Auto {
        let batch = batch_of(a.shape());
        let key = format!("b{batch} {m}x{n}x{k} ta{} tb{}", ta as u8, tb as u8);
        let names: Vec<&str> = candidates(gpu).iter().map(|v| v.name()).collect();
        let (ash, bsh) = (a.shape().to_vec(), b.shape().to_vec());
        let v = gpu.tuner.choose("matmul", &key, &names, &mut |v, best| {
            let (sa, sb) = (
                crate::tune::scratch(gpu, &ash)?,
                crate::tune::scratch(gpu, &bsh)?,
            );
            let sc = Tensor::zeros(gpu, &out_shape(&ash, m, n), crate::tensor::DType::F32)?;
            let d = dispatch_with(gpu, &sa, &sb, &sc, ta, tb, 1.0, 0.0, MatAlgo::from_name(v)?)?;
            let case = crate::bench::Case::new("matmul", &key, 0.0, 0.0, d, vec![sa, sb, sc]);
            Ok(Some(crate::tune::time_launches(gpu, &case, best)?))
        })?;
        MatAlgo::from_name(&v)?
    } else {
        algo
    };
    if algo == MatAlgo::Subgroup && !subgroups_ok(gpu) {
        bail!("matmul: the subgroup variant needs an adapter with subgroups of at least 8 lanes");
    }
    let (shader, entry, tile) = match algo {
        MatAlgo::Tile16 => ("matmul", "matmul16", [TILE, TILE]),
        MatAlgo::Subgroup => ("matmul_subgroup", "matmul_sg", [SG_COLS, SG_ROWS]),
        _ => ("matmul", "matmul", [TILE, TILE]),
    };
    let want = out_shape(a.shape(), m, n);
    if c.shape() != want.as_slice() {
        bail!("matmul: output must be {want:?}, got {:?}", c.shape());
    }
    let batch = batch_of(a.shape());
    let constants = [("TA", ta as u8 as f64), ("TB", tb as u8 as f64)];
    let mut out = Vec::new();
    let mut k_begin = 0;
    loop {
        let k_end = (k_begin + MAX_K_PER_LAUNCH).min(k);
        let p = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            batch: batch as u32,
            alpha,
            beta: if k_begin == 0 { beta } else { 1.0 },
            k_begin: k_begin as u32,
            k_end: k_end as u32,
            a_step: if ta { m as u32 } else { 1 },
            pad: 0,
        };
        let mut d = Dispatch::build_with(
            gpu,
            shader,
            entry,
            &[a.read(), b.read(), c.write()],
            bytemuck::bytes_of(&p),
            [
                n.div_ceil(tile[0]) as u32,
                m.div_ceil(tile[1]) as u32,
                batch as u32,
            ],
            &constants,
        )?;
        d.flops = 2.0 * (m * n * (k_end - k_begin) * batch) as f64;
        out.push(d);
        k_begin = k_end;
        if k_begin >= k {
            return Ok(out);
        }
    }
}

/// `op(A) op(B)` where `op` transposes when the flag is set; 3-D operands multiply matrix by
/// matrix along their first axis.
pub fn matmul(tape: &mut Tape, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    matmul_with(tape, a, b, ta, tb, MatAlgo::Auto)
}

/// [`matmul`] with a choice of kernel (forward and both gradients).
pub fn matmul_with(
    tape: &mut Tape,
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    algo: MatAlgo,
) -> Result<Tensor> {
    let (m, n, _) = dims(a.shape(), b.shape(), ta, tb)?;
    let c = tape.output(&out_shape(a.shape(), m, n), &[a, b])?;
    let fwd = dispatch_with(tape.gpu(), a, b, &c, ta, tb, 1.0, 0.0, algo)?;
    let (sa, sb) = (a.clone(), b.clone());
    tape.push(
        "matmul",
        vec![a.clone(), b.clone()],
        &c,
        fwd,
        Box::new(move |gpu, g, gin| {
            let mut v = Vec::new();
            if let Some(t) = &gin[0] {
                // dA = G op(B)^T, or its transpose when A was transposed.
                v.extend(if ta {
                    dispatch_with(gpu, &sb, g, &t.tensor, tb, true, 1.0, t.beta(), algo)?
                } else {
                    dispatch_with(gpu, g, &sb, &t.tensor, false, !tb, 1.0, t.beta(), algo)?
                });
            }
            if let Some(t) = &gin[1] {
                // dB = op(A)^T G, or its transpose when B was transposed.
                v.extend(if tb {
                    dispatch_with(gpu, g, &sa, &t.tensor, true, ta, 1.0, t.beta(), algo)?
                } else {
                    dispatch_with(gpu, &sa, g, &t.tensor, !ta, false, 1.0, t.beta(), algo)?
                });
            }
            Ok(crate::tape::launches(v))
        }),
    )?;
    Ok(c)
}

/// CPU references (f64).
pub mod reference {
    /// `op(A) op(B)` for row-major `a`, `b` with `op(A)` of `m x k` and `op(B)` of `k x n`.
    pub fn matmul(
        a: &[f64],
        b: &[f64],
        (m, n, k): (usize, usize, usize),
        ta: bool,
        tb: bool,
    ) -> Vec<f64> {
        let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        c
    }

    /// Gradients of [`matmul`] for upstream `g` (`m x n`), in the operands' stored layouts.
    pub fn matmul_grad(
        a: &[f64],
        b: &[f64],
        g: &[f64],
        (m, n, k): (usize, usize, usize),
        ta: bool,
        tb: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut ga = vec![0.0; m * k];
        let mut gb = vec![0.0; k * n];
        for i in 0..m {
            for j in 0..n {
                let gij = g[i * n + j];
                for p in 0..k {
                    let a_idx = if ta { p * m + i } else { i * k + p };
                    let b_idx = if tb { j * k + p } else { p * n + j };
                    ga[a_idx] += gij * b[b_idx];
                    gb[b_idx] += gij * a[a_idx];
                }
            }
        }
        (ga, gb)
    }
}
