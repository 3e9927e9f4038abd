//! 2-D convolution (NCHW, OIHW weights, zero padding, no bias): forward, input gradient (dgrad)
//! and weight gradient (wgrad). Forward and dgrad use the direct kernels of
//! [`super::conv_direct`] where the adapter allows them, else (and wgrad always) the tiled
//! implicit GEMMs of `shaders/conv2d.wgsl`.

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, Gpu};
use crate::ops::{conv_direct, reduce};
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

const TN: usize = 64;
const TK: usize = 16;
/// wgrad splits K until at least this many workgroups run (enough for a multi-core CPU or a
/// small GPU; a large GPU still gets >= 64 busy workgroups).
pub const WGRAD_MIN_WORKGROUPS: usize = 64;
/// ...but each split keeps at least this many K values, so partial sums stay worth writing.
const WGRAD_MIN_CHUNK: usize = 256;
/// ...and at most this many: an invocation runs ~2 loop iterations per K value, and llvmpipe
/// silently stops an invocation's loops after 65,535 in total per dispatch (benches/NOTES.md);
/// the 7x7 stem of ResNet-10 at 224 px has K = 802,816.
const WGRAD_MAX_CHUNK: usize = 16_384;

/// Shapes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
    /// Channel groups (1: a plain convolution): group g maps input channels
    /// `g*cin/groups..` to output channels `g*cout/groups..`.
    pub groups: usize,
}

impl ConvGeom {
    /// Geometry of `x: [B, Cin, H, W]` convolved with `w: [Cout, Cin, KH, KW]`.
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        Self::new_grouped(x, w, stride, pad, 1)
    }

    /// Geometry of a grouped convolution: `w: [Cout, Cin / groups, KH, KW]`.
    pub fn new_grouped(
        x: &[usize],
        w: &[usize],
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<Self> {
        let (&[batch, cin, h, wd], &[cout, wcin, kh, kw]) = (x, w) else {
            bail!("conv2d: input must be [B, C, H, W] and weight [O, I, KH, KW], got {x:?}, {w:?}");
        };
        if groups == 0 || cin % groups != 0 || cout % groups != 0 {
            bail!("conv2d: {groups} groups must divide the {cin} input and {cout} output channels");
        }
        if cin / groups != wcin {
            bail!(
                "conv2d: input has {cin} channels in {groups} group(s), weight expects {wcin} per group"
            );
        }
        if stride == 0 || kh == 0 || kw == 0 {
            bail!("conv2d: stride and kernel size must be positive");
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd} (pad {pad})");
        }
        Ok(Self {
            batch,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride,
            pad,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (wd + 2 * pad - kw) / stride + 1,
            groups,
        })
    }

    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.cin / self.groups
    }

    /// Output channels per group.
    pub fn cout_g(&self) -> usize {
        self.cout / self.groups
    }

    /// The weight's shape `[Cout, Cin / groups, KH, KW]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin_g(), self.kh, self.kw]
    }

    /// Output shape `[B, Cout, OH, OW]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, self.cout, self.oh, self.ow]
    }

    /// Multiply-adds x 2 of the forward (dgrad and wgrad cost the same).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.cout * self.oh * self.ow * self.cin_g() * self.kh * self.kw) as f64
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    m: u32,
    n: u32,
    k: u32,
    kchunk: u32,
    splits: u32,
    alpha: f32,
    beta: f32,
    groups: u32,
    _p: f32,
}

/// Which product of the implicit GEMM a launch computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward = 0,
    Dgrad = 1,
    Wgrad = 2,
}

impl ConvGeom {
    /// (M, N, K) of the implicit GEMM for `mode`, per group (workgroup z picks the group).
    pub fn gemm(&self, mode: Mode) -> (usize, usize, usize) {
        let khw = self.kh * self.kw;
        let (ci, co) = (self.cin_g(), self.cout_g());
        match mode {
            Mode::Forward => (co, self.batch * self.oh * self.ow, ci * khw),
            Mode::Dgrad => (ci, self.batch * self.h * self.w, co * khw),
            Mode::Wgrad => (co, ci * khw, self.batch * self.oh * self.ow),
        }
    }

    fn params(&self, mode: Mode, kchunk: usize, splits: usize, beta: f32) -> Params {
        let (m, n, k) = self.gemm(mode);
        Params {
            batch: self.batch as u32,
            cin: self.cin as u32,
            h: self.h as u32,
            w: self.w as u32,
            cout: self.cout as u32,
            oh: self.oh as u32,
            ow: self.ow as u32,
            kh: self.kh as u32,
            kw: self.kw as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
            m: m as u32,
            n: n as u32,
            k: k as u32,
            kchunk: kchunk as u32,
            splits: splits as u32,
            alpha: 1.0,
            beta,
            groups: self.groups as u32,
            _p: 0.0,
        }
    }
}

/// Rows of the register block per invocation (tile height / 8) for a GEMM of `m` rows: the
/// largest of 2, 4, 8 that does not leave most of the tile empty.
/// wgrad stays at 4: its staging loads grow with the block and measured slower at 8
/// (benches/NOTES.md).
fn rows_per_invocation(m: usize, mode: Mode) -> usize {
    match m {
        0..=16 => 2,
        17..=32 => 4,
        _ if mode == Mode::Wgrad => 4,
        _ => 8,
    }
}

/// The gather table of `mode` (see `shaders/conv2d.wgsl`).
fn table(gpu: &Gpu, g: &ConvGeom, mode: Mode) -> Result<Tensor> {
    let mut t: Vec<i32> = Vec::new();
    let khw = g.kh * g.kw;
    // Per group: the kernels add the group's channel offsets.
    let chans = if mode == Mode::Dgrad {
        g.cout_g()
    } else {
        g.cin_g()
    };
    for c in 0..chans {
        for kh in 0..g.kh {
            for kw in 0..g.kw {
                let e = match mode {
                    Mode::Dgrad => [
                        (c * g.oh * g.ow) as i32,
                        kh as i32,
                        kw as i32,
                        (c * g.cin_g() * khw + kh * g.kw + kw) as i32,
                    ],
                    _ => [
                        (c * g.h * g.w + kh * g.w + kw) as i32,
                        kh as i32,
                        kw as i32,
                        0,
                    ],
                };
                t.extend_from_slice(&e);
            }
        }
    }
    let n = t.len();
    let tensor = Tensor::zeros(gpu, &[n], DType::U32)?;
    gpu.queue
        .write_buffer(tensor.buffer(), tensor.offset(), bytemuck::cast_slice(&t));
    Ok(tensor)
}

#[allow(clippy::too_many_arguments)] // one launch = geometry, mode, three buffers, split plan
fn launch(
    gpu: &Gpu,
    g: &ConvGeom,
    mode: Mode,
    a: &Tensor,
    b: &Tensor,
    dst: &Tensor,
    splits: usize,
    kchunk: usize,
    beta: f32,
) -> Result<Dispatch> {
    let (m, n, _) = g.gemm(mode);
    let rm = rows_per_invocation(m, mode);
    let p = g.params(mode, kchunk, splits, beta);
    let tab = table(gpu, g, mode)?;
    let entry = match mode {
        Mode::Forward => "conv_forward",
        Mode::Dgrad => "conv_dgrad",
        Mode::Wgrad => "conv_wgrad",
    };
    if a.dtype() != b.dtype() {
        bail!("conv2d: operands of two element types, {a:?} and {b:?}");
    }
    Dispatch::build_with(
        gpu,
        crate::shaders::typed("conv2d", a.dtype(), dst.dtype())?,
        entry,
        &[a.read(), b.read(), tab.read(), dst.write()],
        bytemuck::bytes_of(&p),
        [
            n.div_ceil(TN) as u32,
            m.div_ceil(8 * rm) as u32,
            (splits * g.groups) as u32,
        ],
        &[("RM", rm as f64)],
    )
}

/// Which kernels a convolution records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algo {
    /// The adapter's tuner decides among the variants that apply (see [`crate::tune`]).
    #[default]
    Auto,
    /// The direct kernels of [`conv_direct`] (weights or dY as 64 KiB uniform blocks): shaped
    /// for CPU adapters, where uniform loads are the cheap ones. Products they cannot run
    /// (kernel sizes, adapters without 64 KiB uniform bindings) take [`Algo::Gemm`].
    Direct,
    /// [`Algo::Direct`] with the operand a subgroup shares (weights, dY) read once per
    /// subgroup and broadcast (`shaders/conv_direct_subgroup.wgsli`), its wgrad reading dY
    /// from storage in one launch plus a reduction: adapters with subgroups of >= 8
    /// lanes ([`conv_direct::subgroups_ok`]).
    DirectSubgroup,
    /// [`Algo::DirectSubgroup`] reading its input windows through a texture mirror of the
    /// input ([`crate::gpu::TexMirror`], refreshed by a copy before the op): on llvmpipe without
    /// AVX-512 a texel fetch costs a fraction of a storage read. Forward, input gradient and
    /// the streaming weight gradient.
    DirectTexture,
    /// The workgroup-tiled implicit GEMMs (64 invocations, 8 x RM register blocks); wgrad
    /// splits K for >= [`WGRAD_MIN_WORKGROUPS`] workgroups, plus one reduction.
    Gemm,
    /// As [`Algo::Gemm`]; wgrad splits K for >= [`WGRAD_WIDE_WORKGROUPS`] workgroups (a GPU
    /// with 100+ compute units).
    GemmWide,
}

/// wgrad's split target of [`Algo::GemmWide`].
pub const WGRAD_WIDE_WORKGROUPS: usize = 1024;

impl Algo {
    /// The variant's name in tune caches and run records.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Auto => "auto",
            Algo::Direct => "direct",
            Algo::DirectSubgroup => "direct-sg",
            Algo::DirectTexture => "direct-tex",
            Algo::Gemm => "gemm",
            Algo::GemmWide => "gemm-wide",
        }
    }

    /// For the direct kernels, whether the subgroup variant; `None` for the others.
    pub fn direct(self) -> Option<bool> {
        match self {
            Algo::Direct => Some(false),
            Algo::DirectSubgroup | Algo::DirectTexture => Some(true),
            _ => None,
        }
    }

    /// Whether the direct kernels read their input through a texture mirror.
    pub fn texture(self) -> bool {
        self == Algo::DirectTexture
    }

    /// The variant named `s` (as in tune caches), or an error listing the names.
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "direct" => Algo::Direct,
            "direct-sg" => Algo::DirectSubgroup,
            "direct-tex" => Algo::DirectTexture,
            "gemm" => Algo::Gemm,
            "gemm-wide" => Algo::GemmWide,
            _ => bail!("unknown convolution variant {s:?}"),
        })
    }
}

impl Mode {
    /// The op's name in tune caches.
    pub fn op_name(self) -> &'static str {
        match self {
            Mode::Forward => "conv_fwd",
            Mode::Dgrad => "conv_dgrad",
            Mode::Wgrad => "conv_wgrad",
        }
    }
}

impl ConvGeom {
    /// The shape part of a tune key.
    pub fn key(&self) -> String {
        format!(
            "b{} {}x{}x{} -> {} k{}x{} s{} p{}",
            self.batch,
            self.cin,
            self.h,
            self.w,
            self.cout,
            self.kh,
            self.kw,
            self.stride,
            self.pad
        )
    }
}

/// The variants that can run the `mode` product of `g` here, heuristic favourite first: the
/// direct kernels where they apply (they won every measurement on llvmpipe), then the GEMMs.
pub fn candidates(gpu: &Gpu, g: &ConvGeom, mode: Mode) -> Vec<Algo> {
    candidates_for(gpu, g, mode, DType::F32)
}

/// [`candidates`] for activations of `dtype`: f16 runs the GEMMs only (the direct kernels are
/// f32, shaped for CPU adapters, where f16 storage buys nothing).
pub fn candidates_for(gpu: &Gpu, g: &ConvGeom, mode: Mode, dtype: DType) -> Vec<Algo> {
    let mut v = Vec::new();
    if g.groups == 1 && dtype == DType::F32 {
        if conv_direct::subgroups_ok(gpu) && conv_direct::applies(gpu, g, mode, true) {
            // Texture windows first on a CPU adapter: 0.33-0.84x the time of storage windows
            // at every ResNet-32 and quick-preset shape on llvmpipe with AVX2 (benches/NOTES.md,
            // session 14). On a GPU, storage reads are no loop: the tuner decides.
            let tex = conv_direct::texture_ok(gpu, g, mode);
            if tex && gpu.is_cpu() {
                v.push(Algo::DirectTexture);
            }
            v.push(Algo::DirectSubgroup);
            if tex && !gpu.is_cpu() {
                v.push(Algo::DirectTexture);
            }
        }
        if conv_direct::applies(gpu, g, mode, false) {
            v.push(Algo::Direct);
        }
    }
    v.push(Algo::Gemm);
    if mode == Mode::Wgrad && wgrad_splits_for(g, WGRAD_WIDE_WORKGROUPS) != wgrad_splits(g) {
        v.push(Algo::GemmWide);
    }
    v
}

/// The launches of `algo` for `mode` on scratch tensors of `g`'s shapes, ready to time.
pub fn scratch_case(gpu: &Gpu, g: &ConvGeom, mode: Mode, algo: Algo) -> Result<crate::bench::Case> {
    scratch_case_for(gpu, g, mode, algo, DType::F32)
}

/// [`scratch_case`] with activations (and the weight copy) of `dtype`; wgrad writes f32 (the
/// master gradient).
pub fn scratch_case_for(
    gpu: &Gpu,
    g: &ConvGeom,
    mode: Mode,
    algo: Algo,
    dtype: DType,
) -> Result<crate::bench::Case> {
    let xs = [g.batch, g.cin, g.h, g.w];
    let ws = g.weight_shape();
    let scratch = |shape: &[usize], dt: DType| crate::tune::scratch_as(gpu, shape, dt);
    let x = scratch(&xs, dtype)?;
    let w = scratch(
        &ws,
        if mode == Mode::Wgrad {
            DType::F32
        } else {
            dtype
        },
    )?;
    let y = scratch(&g.out_shape(), dtype)?;
    let d = match mode {
        Mode::Forward => forward_dispatches(gpu, g, &x, &w, &y, 0.0, algo)?,
        Mode::Dgrad => dgrad_dispatches(gpu, g, &y, &w, &x, 0.0, algo)?,
        Mode::Wgrad => wgrad_dispatches(gpu, g, &y, &x, &w, 0.0, algo)?,
    };
    let bytes = (x.byte_len() + w.byte_len() + y.byte_len()) as f64;
    Ok(crate::bench::Case::new(
        mode.op_name(),
        &g.key(),
        g.flops(),
        bytes,
        d,
        vec![x, w, y],
    ))
}

/// `algo`, or for [`Algo::Auto`] the tuner's choice among [`candidates`].
pub fn resolve(gpu: &Gpu, g: &ConvGeom, mode: Mode, algo: Algo) -> Result<Algo> {
    resolve_for(gpu, g, mode, algo, DType::F32)
}

/// [`resolve`] for activations of `dtype` (f16 tunes under its own key, among the GEMMs).
pub fn resolve_for(gpu: &Gpu, g: &ConvGeom, mode: Mode, algo: Algo, dtype: DType) -> Result<Algo> {
    let family = g.groups == 1 && dtype == DType::F32;
    let direct_ok = family && conv_direct::applies(gpu, g, mode, false);
    let sg_ok =
        family && conv_direct::subgroups_ok(gpu) && conv_direct::applies(gpu, g, mode, true);
    match algo {
        // An explicit choice of a family: the subgroup kernel where the texture reads cannot
        // run, the plain direct kernel where its subgroup variant cannot, the GEMM where
        // neither can.
        Algo::DirectTexture if !(sg_ok && conv_direct::texture_ok(gpu, g, mode)) => {
            return Ok(if sg_ok {
                Algo::DirectSubgroup
            } else if direct_ok {
                Algo::Direct
            } else {
                Algo::Gemm
            });
        }
        Algo::DirectSubgroup if !sg_ok => {
            return Ok(if direct_ok { Algo::Direct } else { Algo::Gemm });
        }
        Algo::Direct if !direct_ok => return Ok(Algo::Gemm),
        Algo::Auto => {}
        _ => return Ok(algo),
    }
    let cands = candidates_for(gpu, g, mode, dtype);
    let names: Vec<&str> = cands.iter().map(|a| a.name()).collect();
    let key = match dtype {
        DType::F16 => format!("{} f16", g.key()),
        _ => g.key(),
    };
    let v = gpu
        .tuner
        .choose(mode.op_name(), &key, &names, &mut |v, best| {
            let case = scratch_case_for(gpu, g, mode, Algo::from_name(v)?, dtype)?;
            Ok(Some(crate::tune::time_launches(gpu, &case, best)?))
        })?;
    Algo::from_name(&v)
}

/// Record `y = conv(x, w)` (`beta` = 1 adds into `y`).
pub fn forward_dispatches(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    beta: f32,
    algo: Algo,
) -> Result<Vec<Dispatch>> {
    let algo = resolve_for(gpu, g, Mode::Forward, algo, x.dtype())?;
    if algo.direct().is_some() {
        return conv_direct::forward(gpu, g, x, w, y, beta, algo)?
            .ok_or_else(|| anyhow::anyhow!("conv forward {}: no direct kernel fits", g.key()));
    }
    let (_, _, k) = g.gemm(Mode::Forward);
    Ok(vec![launch(
        gpu,
        g,
        Mode::Forward,
        w,
        x,
        y,
        1,
        k.max(1),
        beta,
    )?])
}

/// Record `dx (+)= conv_transpose(dy, w)`.
pub fn dgrad_dispatches(
    gpu: &Gpu,
    g: &ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    beta: f32,
    algo: Algo,
) -> Result<Vec<Dispatch>> {
    let algo = resolve_for(gpu, g, Mode::Dgrad, algo, dy.dtype())?;
    if algo.direct().is_some() {
        return conv_direct::dgrad(gpu, g, dy, w, dx, beta, algo)?
            .ok_or_else(|| anyhow::anyhow!("conv dgrad {}: no direct kernel fits", g.key()));
    }
    let (_, _, k) = g.gemm(Mode::Dgrad);
    Ok(vec![launch(
        gpu,
        g,
        Mode::Dgrad,
        w,
        dy,
        dx,
        1,
        k.max(1),
        beta,
    )?])
}

/// The split-K plan of wgrad ([`Algo::Gemm`]): (splits, K values per split).
pub fn wgrad_splits(g: &ConvGeom) -> (usize, usize) {
    wgrad_splits_for(g, WGRAD_MIN_WORKGROUPS)
}

/// The split-K plan of wgrad for at least `min_workgroups` workgroups (within the chunk
/// bounds): (splits, K values per split).
pub fn wgrad_splits_for(g: &ConvGeom, min_workgroups: usize) -> (usize, usize) {
    let (m, n, k) = g.gemm(Mode::Wgrad);
    let tiles = m.div_ceil(8 * rows_per_invocation(m, Mode::Wgrad)) * n.div_ceil(TN);
    let want = min_workgroups.div_ceil(tiles).max(1);
    let most = k.div_ceil(WGRAD_MIN_CHUNK).max(1);
    // ...and enough splits that no launch covers more than WGRAD_MAX_CHUNK values of K.
    let splits = want.min(most).max(k.div_ceil(WGRAD_MAX_CHUNK));
    let chunk = k.div_ceil(splits).div_ceil(TK) * TK;
    (k.div_ceil(chunk.max(1)).max(1), chunk.max(TK))
}

/// Record `dw (+)= wgrad(dy, x)`: the direct kernel where it applies, else split-K GEMM
/// partials, then their sum.
pub fn wgrad_dispatches(
    gpu: &Gpu,
    g: &ConvGeom,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    beta: f32,
    algo: Algo,
) -> Result<Vec<Dispatch>> {
    let algo = resolve_for(gpu, g, Mode::Wgrad, algo, x.dtype())?;
    if algo.direct().is_some() {
        return conv_direct::wgrad(gpu, g, dy, x, dw, beta, algo)?
            .ok_or_else(|| anyhow::anyhow!("conv wgrad {}: no direct kernel fits", g.key()));
    }
    let (splits, chunk) = if algo == Algo::GemmWide {
        wgrad_splits_for(g, WGRAD_WIDE_WORKGROUPS)
    } else {
        wgrad_splits(g)
    };
    if splits == 1 {
        return Ok(vec![launch(
            gpu,
            g,
            Mode::Wgrad,
            dy,
            x,
            dw,
            1,
            chunk,
            beta,
        )?]);
    }
    let (m, n, _) = g.gemm(Mode::Wgrad);
    let mn = g.groups * m * n;
    let partial = Tensor::zeros(gpu, &[splits, mn], DType::F32)?;
    Ok(vec![
        launch(gpu, g, Mode::Wgrad, dy, x, &partial, splits, chunk, 0.0)?,
        reduce::sum_dispatch(gpu, &partial, dw, [1, splits, mn], 1.0, beta)?,
    ])
}

/// `conv2d(x, w)` with `stride` and zero padding `pad`.
pub fn conv2d(
    tape: &mut Tape,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    conv2d_with(tape, x, w, stride, pad, Algo::Auto)
}

/// [`conv2d`] with a choice of kernels.
pub fn conv2d_with(
    tape: &mut Tape,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    algo: Algo,
) -> Result<Tensor> {
    conv2d_grouped_with(tape, x, w, stride, pad, 1, algo)
}

/// A grouped convolution (`w: [Cout, Cin / groups, KH, KW]`, PyTorch's `groups`): the GEMM
/// kernels run every group in one launch (workgroup z), e.g. ResNeXt's 32 groups.
pub fn conv2d_grouped(
    tape: &mut Tape,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    groups: usize,
) -> Result<Tensor> {
    conv2d_grouped_with(tape, x, w, stride, pad, groups, Algo::Auto)
}

/// [`conv2d_grouped`] with a choice of kernels.
pub fn conv2d_grouped_with(
    tape: &mut Tape,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    groups: usize,
    algo: Algo,
) -> Result<Tensor> {
    let g = ConvGeom::new_grouped(x.shape(), w.shape(), stride, pad, groups)?;
    // f16 activations (`--precision f16`): forward and dgrad read an f16 copy of the weights,
    // made from the f32 master each step; wgrad writes the f32 master gradient.
    let wr = if x.dtype() != w.dtype() {
        let w16 = Tensor::zeros(tape.gpu(), w.shape(), x.dtype())?;
        let d = crate::ops::cast::dispatch(tape.gpu(), w, &w16, 0.0)?;
        tape.push_forward("conv", d);
        w16
    } else {
        w.clone()
    };
    let y = tape.output_as(&g.out_shape(), x.dtype(), &[x, w])?;
    let mut fwd = forward_dispatches(tape.gpu(), &g, x, &wr, &y, 0.0, algo)?;
    spread_flops(&mut fwd, g.flops());
    let (sx, sw) = (x.clone(), wr);
    tape.push(
        "conv",
        vec![x.clone(), w.clone()],
        &y,
        fwd,
        Box::new(move |gpu, dy, gin| {
            let mut v = Vec::new();
            if let Some(t) = &gin[0] {
                let mut d = dgrad_dispatches(gpu, &g, dy, &sw, &t.tensor, t.beta(), algo)?;
                spread_flops(&mut d, g.flops());
                v.extend(d);
            }
            if let Some(t) = &gin[1] {
                let mut d = wgrad_dispatches(gpu, &g, dy, &sx, &t.tensor, t.beta(), algo)?;
                spread_flops(&mut d, g.flops());
                v.extend(d);
            }
            Ok(crate::tape::launches(v))
        }),
    )?;
    Ok(y)
}

/// Launches of a convolution that only move or add up data (operand packing, the split-K
/// partial sums): they get no share of its multiply-adds.
const HELPER_ENTRIES: &[&str] = &["pack_weights", "pack_dy", "pack_dy_pad", "sum", "sum_short"];

/// Attribute an op's FLOPs to its launches for the step roofline and the per-launch listing
/// (`bench --model ... --launches`): evenly over the launches that do the multiply-adds, since
/// a direct convolution's phase classes and channel groups do not report their own share (an
/// approximation across phase classes; exact for one launch, and the op total is exact).
fn spread_flops(d: &mut [Dispatch], flops: f64) {
    let helper = |x: &Dispatch| HELPER_ENTRIES.contains(&x.kernel.entry);
    let n = d.iter().filter(|x| !helper(x)).count();
    for (i, x) in d.iter_mut().enumerate() {
        // Helpers only (no such op of ours): the first launch carries the total.
        let counts = if n == 0 { i == 0 } else { !helper(x) };
        x.flops = if counts { flops / n.max(1) as f64 } else { 0.0 };
    }
}

/// CPU references (f64).
pub mod reference {
    use super::ConvGeom;

    fn x_at(x: &[f64], g: &ConvGeom, b: usize, c: usize, ih: isize, iw: isize) -> Option<usize> {
        if ih < 0 || iw < 0 || ih as usize >= g.h || iw as usize >= g.w {
            return None;
        }
        Some(((b * g.cin + c) * g.h + ih as usize) * g.w + iw as usize).filter(|&i| i < x.len())
    }

    /// Visit every (output index, input index, weight index) triple of the convolution.
    fn each(g: &ConvGeom, x: &[f64], mut f: impl FnMut(usize, usize, usize)) {
        for b in 0..g.batch {
            for co in 0..g.cout {
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        let yi = ((b * g.cout + co) * g.oh + oh) * g.ow + ow;
                        let grp = co / g.cout_g();
                        for cj in 0..g.cin_g() {
                            let ci = grp * g.cin_g() + cj;
                            for kh in 0..g.kh {
                                for kw in 0..g.kw {
                                    let ih = (oh * g.stride + kh) as isize - g.pad as isize;
                                    let iw = (ow * g.stride + kw) as isize - g.pad as isize;
                                    if let Some(xi) = x_at(x, g, b, ci, ih, iw) {
                                        let wi = ((co * g.cin_g() + cj) * g.kh + kh) * g.kw + kw;
                                        f(yi, xi, wi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forward.
    pub fn conv2d(x: &[f64], w: &[f64], g: &ConvGeom) -> Vec<f64> {
        let mut y = vec![0.0; g.batch * g.cout * g.oh * g.ow];
        each(g, x, |yi, xi, wi| y[yi] += x[xi] * w[wi]);
        y
    }

    /// Gradients with respect to `x` and `w` for upstream `dy`.
    pub fn conv2d_grad(x: &[f64], w: &[f64], dy: &[f64], g: &ConvGeom) -> (Vec<f64>, Vec<f64>) {
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        each(g, x, |yi, xi, wi| {
            dx[xi] += dy[yi] * w[wi];
            dw[wi] += dy[yi] * x[xi];
        });
        (dx, dw)
    }
}
