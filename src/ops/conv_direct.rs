//! The direct convolution kernels of `conv2d` (`shaders/conv_direct.wgsl`): forward and input
//! gradient with the weights packed into 64 KiB uniform blocks, each invocation accumulating 16
//! output channels of 4-8 pixels; the weight gradient of 3x3 kernels (`shaders/conv_wgrad.wgsl`)
//! with dY packed into such blocks or streamed and shared through subgroup broadcasts, each
//! invocation accumulating all 9 taps of 16 output channels for one input channel.
//!
//! Why a second kernel family: on llvmpipe every storage or workgroup-memory read is a loop over
//! the SIMD lanes, while a uniform-buffer read is a single gather. Reading the small operand as
//! uniforms and sharing each storage read among many multiply-adds cuts the cost per
//! multiply-add several-fold against the tiled GEMMs of `conv2d.wgsl` (benches/NOTES.md has the
//! numbers). The input gradient of a stride-s convolution runs as s^2 phase classes with their
//! own taps, so it skips the zeros of the upsampled gradient.
//!
//! Used when the adapter allows a 64 KiB uniform binding (Vulkan's usual limit; the WebGPU
//! minimum is 16 KiB); otherwise `conv2d` keeps the GEMM kernels. On a large GPU these launches
//! are small (a few hundred to a few thousand invocations for wgrad): the split is tuned for
//! llvmpipe and not yet measured on real hardware.

use anyhow::Result;
use bytemuck::{Pod, Zeroable};

use super::conv2d::ConvGeom;
use crate::gpu::{Access, Binding, Dispatch, Gpu, GpuBuffer, can_mirror, grid_1d};
use std::sync::Arc;

/// Bytes of one uniform weight block (the binding size the shader declares).
const BLOCK_BYTES: u64 = 65536;
/// f32 weights per block.
const BLOCK_FLOATS: usize = (BLOCK_BYTES / 4) as usize;
/// Tap rows per launch the shader's parameter block can hold.
const MAX_ROWS: usize = 64;
/// Input values one tap-row window of the shader may use (`Win`, `wn` <= 21).
const MAX_WINDOW: usize = 21;
/// Output channels per invocation and per uniform block column.
const CO: usize = 16;
// `pack_weights` runs one invocation per CO values of a block.
const _: () = assert!(BLOCK_FLOATS.is_multiple_of(CO));
/// Output pixels per invocation (at least; 8 where rows are long enough and the window fits).
const PX: usize = 4;
/// Invocations per workgroup (the shader's `@workgroup_size`).
const WG: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    nch: u32,
    src_c: u32,
    src_h: u32,
    src_w: u32,
    dst_c: u32,
    dst_h: u32,
    dst_w: u32,
    chan0: u32,
    o0: u32,
    o_end: u32,
    ni: u32,
    nj: u32,
    istride: u32,
    ostride: u32,
    oy0: u32,
    ox0: u32,
    nrows: u32,
    khw: u32,
    jgroups: u32,
    beta: f32,
    _p: [f32; 3],
    rows: [[i32; 4]; MAX_ROWS],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PackParams {
    co: u32,
    cch: u32,
    khw: u32,
    nchunks: u32,
    o_total: u32,
    c_total: u32,
    so: u32,
    sc: u32,
    blocks: u32,
    _p: [u32; 3],
}

/// How one direct convolution splits into uniform blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Output-channel groups of 16 (one block column each).
    pub groups: usize,
    /// Input channels per block.
    pub cch: usize,
    /// Input-channel chunks (blocks per group).
    pub chunks: usize,
}

impl Plan {
    /// The plan for `outs` output and `ins` input channels with `khw` taps whose widest tap row
    /// needs a window of `window` input values, or `None` when the adapter cannot bind a 64 KiB
    /// uniform block or the kernel does not fit the shader.
    pub fn new(gpu: &Gpu, outs: usize, ins: usize, khw: usize, window: usize) -> Option<Self> {
        if gpu.limits.max_uniform_buffer_binding_size < BLOCK_BYTES
            || window > MAX_WINDOW
            || CO * khw > BLOCK_FLOATS
        {
            return None;
        }
        let cch = (BLOCK_FLOATS / (CO * khw)).min(ins).max(1);
        Some(Self {
            groups: outs.div_ceil(CO),
            cch,
            chunks: ins.div_ceil(cch),
        })
    }

    fn blocks(&self) -> usize {
        self.groups * self.chunks
    }
}

/// One phase class of a launch: its output sub-grid and the tap rows that reach it, each of
/// `kr` taps over consecutive input columns.
struct Class {
    ni: usize,
    nj: usize,
    oy0: usize,
    ox0: usize,
    kr: usize,
    rows: Vec<[i32; 4]>,
}

/// The packed weights: a storage buffer also bindable as uniform blocks.
fn pack(
    gpu: &Gpu,
    w: &crate::tensor::Tensor,
    plan: &Plan,
    g: &ConvGeom,
    transpose: bool,
) -> Result<(Arc<GpuBuffer>, Dispatch)> {
    let khw = g.kh * g.kw;
    let blocks = plan.blocks();
    let buf = Arc::new(GpuBuffer::new(
        gpu,
        "conv weights (uniform blocks)",
        blocks as u64 * BLOCK_BYTES,
        wgpu::BufferUsages::UNIFORM,
    )?);
    let (o_total, c_total, so, sc) = if transpose {
        (g.cin, g.cout, khw, g.cin * khw)
    } else {
        (g.cout, g.cin, g.cin * khw, khw)
    };
    let pp = PackParams {
        co: CO as u32,
        cch: plan.cch as u32,
        khw: khw as u32,
        nchunks: plan.chunks as u32,
        o_total: o_total as u32,
        c_total: c_total as u32,
        so: so as u32,
        sc: sc as u32,
        blocks: blocks as u32,
        _p: [0; 3],
    };
    // One invocation per CO values (shaders/conv_direct.wgsl, `pack_weights`).
    let total = (blocks * BLOCK_FLOATS / CO).div_ceil(WG) as u32;
    let d = Dispatch::build(
        gpu,
        "conv_direct",
        "pack_weights",
        &[
            w.read(),
            Binding {
                access: Access::ReadWrite,
                buffer: &buf,
                offset: 0,
                size: buf.size(),
                half: false,
                tex: None,
            },
        ],
        bytemuck::bytes_of(&pp),
        grid_1d(gpu, total),
    )?;
    Ok((buf, d))
}

/// Where a direct launch set reads and writes: `src` [batch, C, H, W] convolved into `dst`
/// [batch, C', H', W'], output pixel (i, j) of a class reading input pixels from
/// (i, j) * `istride` and landing at (i, j) * `ostride` + the class's offset.
struct Grid<'a> {
    src: &'a crate::tensor::Tensor,
    dst: &'a crate::tensor::Tensor,
    src_chw: [usize; 3],
    dst_chw: [usize; 3],
    istride: usize,
    ostride: usize,
    /// The subgroup variant of the kernel ([`subgroups_ok`]).
    sg: bool,
    /// Read the input windows through the input's texture mirror (`shaders/conv_direct_wint.wgsli`;
    /// with `sg` only).
    tex: bool,
}

/// The block plan of a launch set, or `None` when the direct kernel cannot run it.
fn fits(
    gpu: &Gpu,
    g: &ConvGeom,
    outs: usize,
    ins: usize,
    istride: usize,
    classes: &[Class],
) -> Option<Plan> {
    // Kernels taller than the parameter block's tap rows take the GEMM path.
    if classes.iter().any(|c| c.rows.len() > MAX_ROWS) {
        return None;
    }
    let window = classes
        .iter()
        .map(|c| (PX - 1) * istride + c.kr)
        .max()
        .unwrap_or(0);
    Plan::new(gpu, outs, ins, g.kh * g.kw, window)
}

/// Whether the direct kernel (`sg`: its subgroup variant, which also needs [`subgroups_ok`])
/// applies to the `mode` product of `g` on this adapter (the tuner lists it as a candidate
/// only then).
pub fn applies(gpu: &Gpu, g: &ConvGeom, mode: super::conv2d::Mode, sg: bool) -> bool {
    use super::conv2d::Mode;
    match mode {
        Mode::Forward => fits(gpu, g, g.cout, g.cin, g.stride, &[forward_class(g)]).is_some(),
        Mode::Dgrad => fits(gpu, g, g.cin, g.cout, 1, &dgrad_classes(g)).is_some(),
        Mode::Wgrad if sg => streams(gpu, g),
        Mode::Wgrad => WgradPlan::new(gpu, g).is_some(),
    }
}

/// Whether the texture-window variant applies to the `mode` product of `g` (forward and input
/// gradient; the input is mirrored whole, so it must fill whole texels and fit the adapter's
/// texture size). Its tensor's alignment is checked when recording: a misaligned view reads
/// from storage instead.
pub fn texture_ok(gpu: &Gpu, g: &ConvGeom, mode: super::conv2d::Mode) -> bool {
    use super::conv2d::Mode;
    let fits = |values| crate::gpu::mirror_fits(gpu, values);
    let (x, y) = (g.batch * g.cin * g.h * g.w, g.batch * g.cout * g.oh * g.ow);
    match mode {
        Mode::Forward => fits(x),
        Mode::Dgrad => fits(y),
        // The streaming kernel with X and dY through their mirrors.
        Mode::Wgrad => streams(gpu, g) && fits(x) && fits(y),
    }
}

/// Pack `w` (transposed for dgrad) and record the launches of every class, or `None` when the
/// plan for the widest tap-row window does not fit.
fn record(
    gpu: &Gpu,
    g: &ConvGeom,
    w: &crate::tensor::Tensor,
    transpose: bool,
    grid: &Grid<'_>,
    classes: &[Class],
    beta: f32,
) -> Result<Option<Vec<Dispatch>>> {
    let Some(plan) = fits(
        gpu,
        g,
        grid.dst_chw[0],
        grid.src_chw[0],
        grid.istride,
        classes,
    ) else {
        return Ok(None);
    };
    let khw = g.kh * g.kw;
    let (weights, pack) = pack(gpu, w, &plan, g, transpose)?;
    let mut out = vec![pack];
    let mirror = if grid.tex {
        Some(gpu.mirrors.get(gpu, grid.src)?)
    } else {
        None
    };
    let mut copied = false;
    let (src_chw, dst_chw, istride) = (grid.src_chw, grid.dst_chw, grid.istride);
    let batch = g.batch;
    for class in classes {
        if class.ni == 0 || class.nj == 0 {
            continue;
        }
        let mut rows = [[0i32; 4]; MAX_ROWS];
        rows[..class.rows.len()].copy_from_slice(&class.rows);
        let nine = nine_taps(class, batch, plan.cch);
        // 8 pixels per invocation halve the uniform reads per multiply-add (A/B on llvmpipe:
        // see benches/NOTES.md); rows of 4 or fewer keep 4. The nine-tap body also takes 16 at stride 1
        // where that leaves no more pixels idle (rows of 9-16, 25-32, ...): a window of 18 values is 6 vec4 reads for 16
        // pixels instead of 4 for 8, and a tap's weights serve twice the pixels.
        let px = if nine
            && istride == 1
            && (class.nj % 16 == 0 || class.nj % 16 > 8)
            && 15 + class.kr <= MAX_WINDOW
        {
            16
        } else if class.nj >= 5 && 7 * istride + class.kr <= MAX_WINDOW {
            // Rows of 5-7 pixels too: 8 pixels cover them with as many idle ones as two
            // groups of 4, and halve the weight reads (the 7x7 maps of 28x28 images).
            8
        } else {
            PX
        };
        let jgroups = class.nj.div_ceil(px);
        let v4 = !grid.tex && vec4_windows(grid.src, src_chw[2], class);
        let o4 = vec4_stores(grid.dst, dst_chw[2], grid.ostride, class);
        let mut constants = vec![
            ("KR", class.kr.max(1) as f64),
            ("IS", istride as f64),
            ("PX", px as f64),
        ];
        if v4 {
            constants.push(("XA", first_column(class).rem_euclid(4) as f64));
        }
        let invocations = batch * class.ni * jgroups;
        for group in 0..plan.groups {
            for chunk in 0..plan.chunks {
                let chan0 = chunk * plan.cch;
                let p = Params {
                    batch: batch as u32,
                    nch: plan.cch.min(src_chw[0] - chan0) as u32,
                    src_c: src_chw[0] as u32,
                    src_h: src_chw[1] as u32,
                    src_w: src_chw[2] as u32,
                    dst_c: dst_chw[0] as u32,
                    dst_h: dst_chw[1] as u32,
                    dst_w: dst_chw[2] as u32,
                    chan0: chan0 as u32,
                    o0: (group * CO) as u32,
                    o_end: ((group + 1) * CO).min(dst_chw[0]) as u32,
                    ni: class.ni as u32,
                    nj: class.nj as u32,
                    istride: istride as u32,
                    ostride: grid.ostride as u32,
                    oy0: class.oy0 as u32,
                    ox0: class.ox0 as u32,
                    nrows: class.rows.len() as u32,
                    khw: khw as u32,
                    jgroups: jgroups as u32,
                    beta: if chunk == 0 { beta } else { 1.0 },
                    _p: [0.0; 3],
                    rows,
                };
                let block = (group * plan.chunks + chunk) as u64 * BLOCK_BYTES;
                let src = match &mirror {
                    Some(m) => grid.src.mirrored(m),
                    None => grid.src.read(),
                };
                let name = if grid.tex {
                    shader_tex(o4, nine)
                } else {
                    shader(grid.sg, v4, o4, nine)
                };
                let mut d = Dispatch::build_with(
                    gpu,
                    name,
                    "conv_direct",
                    &[
                        src,
                        Binding {
                            access: Access::Uniform,
                            buffer: &weights,
                            offset: block,
                            size: BLOCK_BYTES,
                            half: false,
                            tex: None,
                        },
                        grid.dst.write(),
                    ],
                    bytemuck::bytes_of(&p),
                    grid_1d(gpu, invocations.div_ceil(WG) as u32),
                    &constants,
                )?;
                // One refresh of the mirror per op: the launches between only write `dst`.
                if copied {
                    d.skip_copies();
                }
                copied |= d.has_copies();
                out.push(d);
            }
        }
    }
    Ok(Some(out))
}

/// The forward's one class: every output pixel, a tap row per kernel row.
fn forward_class(g: &ConvGeom) -> Class {
    let pad = g.pad as i32;
    Class {
        ni: g.oh,
        nj: g.ow,
        oy0: 0,
        ox0: 0,
        kr: g.kw,
        rows: (0..g.kh)
            .map(|ky| [ky as i32 - pad, -pad, (ky * g.kw) as i32, 1])
            .collect(),
    }
}

/// The input-gradient's phase classes (stride^2 of them) with the taps that reach each.
fn dgrad_classes(g: &ConvGeom) -> Vec<Class> {
    let (s, pad) = (g.stride as i32, g.pad as i32);
    // Input row y = s*i + py takes kernel row ky when (y + pad - ky) is a multiple of s: it
    // reads gradient row i + (py + pad - ky) / s. The same holds for columns, where the taps
    // of a class read consecutive gradient columns, in the order of decreasing kx.
    let reach = |phase: usize, k: usize| -> Vec<usize> {
        (0..k)
            .filter(|&kk| (phase as i32 + pad - kk as i32).rem_euclid(s) == 0)
            .collect()
    };
    let off = |phase: usize, kk: usize| (phase as i32 + pad - kk as i32).div_euclid(s);
    let mut classes = Vec::new();
    for py in 0..g.stride.min(g.h) {
        for px in 0..g.stride.min(g.w) {
            let kxs = reach(px, g.kw);
            let rows = match kxs.last() {
                None => Vec::new(),
                Some(&kx_max) => reach(py, g.kh)
                    .into_iter()
                    .map(|ky| {
                        [
                            off(py, ky),
                            off(px, kx_max),
                            (ky * g.kw + kx_max) as i32,
                            -s,
                        ]
                    })
                    .collect(),
            };
            classes.push(Class {
                ni: (g.h - py).div_ceil(g.stride),
                nj: (g.w - px).div_ceil(g.stride),
                oy0: py,
                ox0: px,
                kr: kxs.len(),
                rows,
            });
        }
    }
    classes
}

/// Whether this adapter runs the subgroup variant (`shaders/conv_direct_subgroup.wgsli`): it
/// needs the `subgroups` feature and subgroups of at least 8 lanes (its weight-gradient kernel
/// broadcasts from lanes 0 to 7).
pub fn subgroups_ok(gpu: &Gpu) -> bool {
    gpu.has_subgroups() && gpu.summary.subgroup_min_size >= 8
}

/// Multiply-adds of one direct launch from which the nine-taps-per-accumulator body (`tap9`,
/// shaders `conv_direct*_r3`) is used for a 3x3 kernel's three tap rows of three. It runs
/// ~10-30 % faster on llvmpipe (benches/NOTES.md, sessions 12-13) but compiles ~0.9 s longer
/// per pipeline (1-2 s with 16 pixels; pipelines compile on a thread per core), and llvmpipe
/// keeps no compiled pipelines between processes: at ~30 GFLOP/s a launch of 2^25
/// multiply-adds takes ~2 ms, so the saving repays the compile within a few hundred steps,
/// while small launches (tests, toy shapes) keep the loop over tap rows. 2^25 takes in the
/// quick preset's 14x14 stage (batch 64), where 16-pixel invocations made the kernels
/// 0.55-0.8x the time.
const NINE_TAPS_MIN_MACS: usize = 1 << 25;

/// Whether a launch of `class` (`batch` images, `cch` input channels per launch) takes `tap9`.
fn nine_taps(class: &Class, batch: usize, cch: usize) -> bool {
    let macs = batch * class.ni * class.nj * CO * cch * 9;
    class.kr == 3 && class.rows.len() == 3 && macs >= NINE_TAPS_MIN_MACS
}

/// The shader of the plain (`sg` false) or the subgroup variant, with scalar or (`v4`) aligned
/// vec4 reads of the input windows, scalar or (`o4`, only with `v4`) aligned vec4 stores, and
/// the loop over tap rows or (`nine`) the nine-tap body.
fn shader(sg: bool, v4: bool, o4: bool, nine: bool) -> &'static str {
    match (sg, v4, o4 && v4, nine) {
        (false, false, _, false) => "conv_direct",
        (false, false, _, true) => "conv_direct_r3",
        (false, true, false, false) => "conv_direct_v4",
        (false, true, false, true) => "conv_direct_v4_r3",
        (false, true, true, false) => "conv_direct_v4o4",
        (false, true, true, true) => "conv_direct_v4o4_r3",
        (true, false, _, false) => "conv_direct_subgroup",
        (true, false, _, true) => "conv_direct_subgroup_r3",
        (true, true, false, false) => "conv_direct_subgroup_v4",
        (true, true, false, true) => "conv_direct_subgroup_v4_r3",
        (true, true, true, false) => "conv_direct_subgroup_v4o4",
        (true, true, true, true) => "conv_direct_subgroup_v4o4_r3",
    }
}

/// The texture-window shader (subgroup weights), with scalar or (`o4`) aligned vec4 stores and
/// the loop over tap rows or (`nine`) the nine-tap body.
fn shader_tex(o4: bool, nine: bool) -> &'static str {
    match (o4, nine) {
        (false, false) => "conv_direct_subgroup_t",
        (false, true) => "conv_direct_subgroup_t_r3",
        (true, false) => "conv_direct_subgroup_to4",
        (true, true) => "conv_direct_subgroup_to4_r3",
    }
}

/// Whether a launch of `class` may store its output as aligned vec4 along the row
/// (`shaders/conv_direct_out4.wgsli`): the class is the whole grid (output stride 1, column 0:
/// no phase class of a strided input gradient), its rows and valid pixels are a multiple of 4
/// (a pixel quad of an invocation is then wholly inside or outside), and the tensor is 16-byte
/// aligned. Taken only together with vec4 windows, which every such launch of ours also
/// allows, to keep the number of shaders down.
fn vec4_stores(dst: &crate::tensor::Tensor, dst_w: usize, ostride: usize, class: &Class) -> bool {
    ostride == 1
        && class.ox0 == 0
        && dst_w.is_multiple_of(4)
        && class.nj.is_multiple_of(4)
        && dst.offset().is_multiple_of(16)
}

/// Whether a launch of `class` may read its input windows as aligned vec4
/// (`shaders/conv_direct_win4.wgsli`): rows of a multiple of 4 values in a 16-byte aligned
/// tensor, and one column offset for all its tap rows (so the window's alignment is a
/// constant of the launch). A class without taps (a stride-2 1x1 dgrad's odd pixels) reads
/// nothing and may take either.
fn vec4_windows(src: &crate::tensor::Tensor, src_w: usize, class: &Class) -> bool {
    src_w.is_multiple_of(4)
        && src.offset().is_multiple_of(16)
        && class.rows.iter().all(|r| r[1] == first_column(class))
}

/// The column offset of a class's first tap row (0 for a class without taps).
fn first_column(class: &Class) -> i32 {
    class.rows.first().map_or(0, |r| r[1])
}

/// Record `y (+)= conv(x, w)` with the direct kernel `algo` (plain, subgroup: see
/// [`subgroups_ok`], or texture windows: see [`texture_ok`]), or `None` when [`Plan`] says it
/// does not fit.
pub fn forward(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &crate::tensor::Tensor,
    w: &crate::tensor::Tensor,
    y: &crate::tensor::Tensor,
    beta: f32,
    algo: super::conv2d::Algo,
) -> Result<Option<Vec<Dispatch>>> {
    let (sg, tex) = (algo.direct() == Some(true), algo.texture());
    let class = forward_class(g);
    let grid = Grid {
        src: x,
        dst: y,
        src_chw: [g.cin, g.h, g.w],
        dst_chw: [g.cout, g.oh, g.ow],
        istride: g.stride,
        ostride: 1,
        sg: sg || tex,
        tex: tex && can_mirror(gpu, x),
    };
    record(gpu, g, w, false, &grid, &[class], beta)
}

/// Record `dx (+)= conv_transpose(dy, w)` with the direct kernel `algo` (as [`forward`]),
/// one launch set per phase class, or `None` when [`Plan`] says it does not fit.
pub fn dgrad(
    gpu: &Gpu,
    g: &ConvGeom,
    dy: &crate::tensor::Tensor,
    w: &crate::tensor::Tensor,
    dx: &crate::tensor::Tensor,
    beta: f32,
    algo: super::conv2d::Algo,
) -> Result<Option<Vec<Dispatch>>> {
    let (sg, tex) = (algo.direct() == Some(true), algo.texture());
    let classes = dgrad_classes(g);
    let grid = Grid {
        src: dy,
        dst: dx,
        src_chw: [g.cout, g.oh, g.ow],
        dst_chw: [g.cin, g.h, g.w],
        istride: 1,
        ostride: g.stride,
        sg: sg || tex,
        tex: tex && can_mirror(gpu, dy),
    };
    record(gpu, g, w, true, &grid, &classes, beta)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct WgParams {
    cin: u32,
    h: u32,
    w: u32,
    oh: u32,
    pad: u32,
    rpi: u32,
    nrg: u32,
    co0: u32,
    cout: u32,
    nimg: u32,
    first: u32,
    b0: u32,
    owp: u32,
    d0: u32,
    dimg: u32,
    drow: u32,
    dch: u32,
    dcg: u32,
    ow: u32,
    _p: u32,
}

impl WgParams {
    /// The geometry of `g` with row runs of `rpi` rows, `nrg` of them, over the whole batch
    /// from image 0; the caller sets where dY lies and which block or group a launch covers.
    fn new(g: &ConvGeom, rpi: usize, nrg: usize) -> Self {
        Self {
            cin: g.cin as u32,
            h: g.h as u32,
            w: g.w as u32,
            oh: g.oh as u32,
            pad: g.pad as u32,
            rpi: rpi as u32,
            nrg: nrg as u32,
            co0: 0,
            cout: g.cout as u32,
            nimg: g.batch as u32,
            first: 1,
            b0: 0,
            owp: g.ow.next_multiple_of(4) as u32,
            d0: 0,
            dimg: 0,
            drow: 0,
            dch: 0,
            dcg: 0,
            ow: g.ow as u32,
            _p: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PdParams {
    batch: u32,
    cout: u32,
    ohw: u32,
    ipb: u32,
    cgroups: u32,
    blocks: u32,
    ow: u32,
    owp: u32,
}

/// Output channels per block of the weight-gradient kernel (its 12 vec4 accumulators).
const WG_CO: usize = 16;
/// Fewest invocations a weight-gradient launch keeps when it lengthens its row runs: longer
/// runs mean fewer partial sums to write and reduce (benches/NOTES.md), but each launch still
/// needs a workgroup per core.
const WG_MIN_INVOCATIONS: usize = 128;
/// Output pixels per row run of a weight-gradient invocation, where the launch is big enough.
const WG_RUN_PIXELS: usize = 256;
/// Largest buffer of weight-gradient partial sums (row runs x dW).
const WG_PARTIAL_MAX_BYTES: u64 = 32 << 20;

/// The most row runs whose partial sums (one copy of dW, `dw_floats` values, each) stay
/// within [`WG_PARTIAL_MAX_BYTES`] and the storage binding limit.
fn most_row_runs(gpu: &Gpu, dw_floats: usize) -> usize {
    let budget = WG_PARTIAL_MAX_BYTES.min(gpu.limits.max_storage_buffer_binding_size) / 4;
    (budget as usize / dw_floats).max(1)
}

/// How the weight gradient splits into uniform blocks of dY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgradPlan {
    /// Images per block.
    pub ipb: usize,
    /// Output-channel groups of 16.
    pub cgroups: usize,
    /// Image groups.
    pub igroups: usize,
    /// Output rows per invocation.
    pub rpi: usize,
    /// Row runs per block (the partial sums reduced at the end).
    pub nrg: usize,
}

impl WgradPlan {
    /// The plan for `g`, or `None` unless the kernel is 3x3, the stride 1 or 2, 16 channels of
    /// one output image (rows padded to a multiple of 4 pixels) fit a block, and the adapter
    /// binds 64 KiB uniform blocks.
    pub fn new(gpu: &Gpu, g: &ConvGeom) -> Option<Self> {
        let ohw = g.oh * g.ow.next_multiple_of(4);
        if gpu.limits.max_uniform_buffer_binding_size < BLOCK_BYTES
            || g.kw != 3
            || g.kh != 3
            || !(1..=2).contains(&g.stride)
            || WG_CO * ohw > BLOCK_FLOATS
        {
            return None;
        }
        let ipb = (BLOCK_FLOATS / (WG_CO * ohw)).min(g.batch);
        let rows = ipb * g.oh;
        // Row runs long enough that an invocation's 144 read-modify-writes of partial sums are
        // small next to its input reads (18 per 4 pixels): >= WG_RUN_PIXELS pixels per run; but
        // at least WG_MIN_INVOCATIONS invocations per launch (two workgroups).
        let most = (rows * g.cin / WG_MIN_INVOCATIONS).max(1);
        let mut rpi = WG_RUN_PIXELS
            .div_ceil(g.ow.next_multiple_of(4))
            .clamp(1, most)
            .min(rows);
        // The partial sums are nrg copies of dW: wide layers (512 x 512 x 9) take longer row
        // runs so that they stay within WG_PARTIAL_MAX_BYTES and the storage binding limit.
        let dw_floats = g.cout * g.cin * 9;
        let most_runs = most_row_runs(gpu, dw_floats);
        if rows.div_ceil(rpi) > most_runs {
            rpi = rows.div_ceil(most_runs);
        }
        if (dw_floats * rows.div_ceil(rpi)) as u64 * 4 > gpu.limits.max_storage_buffer_binding_size
        {
            return None;
        }
        Some(Self {
            ipb,
            cgroups: g.cout.div_ceil(WG_CO),
            igroups: g.batch.div_ceil(ipb),
            rpi,
            nrg: rows.div_ceil(rpi),
        })
    }
}

/// Record `dw (+)= wgrad(dy, x)` with the direct kernel (pack dY, one launch per block, sum of
/// the row-run partials), or `None` when [`WgradPlan`] says it does not apply; `sg`: its
/// subgroup variant, which streams dY instead (`None` unless [`streams`]).
pub fn wgrad(
    gpu: &Gpu,
    g: &ConvGeom,
    dy: &crate::tensor::Tensor,
    x: &crate::tensor::Tensor,
    dw: &crate::tensor::Tensor,
    beta: f32,
    algo: super::conv2d::Algo,
) -> Result<Option<Vec<Dispatch>>> {
    if algo.direct() == Some(true) {
        if !streams(gpu, g) {
            return Ok(None);
        }
        return wgrad_stream(gpu, g, dy, x, dw, beta, algo.texture()).map(Some);
    }
    let Some(plan) = WgradPlan::new(gpu, g) else {
        return Ok(None);
    };
    // pack_dy reads dY as vec4 when rows are a multiple of 4 pixels (and dY 16-byte aligned);
    // pack_dy_pad reads scalars and pads the rows.
    let owp = g.ow.next_multiple_of(4);
    let pack_entry = if owp == g.ow && dy.offset().is_multiple_of(16) {
        "pack_dy"
    } else {
        "pack_dy_pad"
    };
    let ohw = g.oh * owp;
    let blocks = plan.igroups * plan.cgroups;
    let buf = Arc::new(GpuBuffer::new(
        gpu,
        "conv dY (uniform blocks)",
        blocks as u64 * BLOCK_BYTES,
        wgpu::BufferUsages::UNIFORM,
    )?);
    let pd = PdParams {
        batch: g.batch as u32,
        cout: g.cout as u32,
        ohw: ohw as u32,
        ipb: plan.ipb as u32,
        cgroups: plan.cgroups as u32,
        blocks: blocks as u32,
        ow: g.ow as u32,
        owp: owp as u32,
    };
    let mut out = vec![Dispatch::build(
        gpu,
        "conv_wgrad",
        pack_entry,
        &[
            dy.read(),
            Binding {
                access: Access::ReadWrite,
                buffer: &buf,
                offset: 0,
                size: buf.size(),
                half: false,
                tex: None,
            },
        ],
        bytemuck::bytes_of(&pd),
        grid_1d(gpu, (blocks * BLOCK_FLOATS / 4).div_ceil(WG) as u32),
    )?];
    let partial = crate::tensor::Tensor::zeros(
        gpu,
        &[plan.nrg, g.cout * g.cin * g.kh * g.kw],
        crate::tensor::DType::F32,
    )?;
    let invocations = plan.nrg * g.cin;
    let grid = grid_1d(gpu, invocations.div_ceil(WG) as u32);
    let constants = [("WSTRIDE", g.stride as f64)];
    for ig in 0..plan.igroups {
        let b0 = ig * plan.ipb;
        for cg in 0..plan.cgroups {
            let p = WgParams {
                co0: (cg * WG_CO) as u32,
                nimg: plan.ipb.min(g.batch - b0) as u32,
                first: (ig == 0) as u32,
                b0: b0 as u32,
                // Block layout [image][16 channels][oh][owp].
                dimg: (WG_CO * ohw / 4) as u32,
                drow: (owp / 4) as u32,
                dch: (ohw / 4) as u32,
                ..WgParams::new(g, plan.rpi, plan.nrg)
            };
            out.push(Dispatch::build_with(
                gpu,
                "conv_wgrad",
                "conv_wgrad3",
                &[
                    x.read(),
                    Binding {
                        access: Access::Uniform,
                        buffer: &buf,
                        offset: (ig * plan.cgroups + cg) as u64 * BLOCK_BYTES,
                        size: BLOCK_BYTES,
                        half: false,
                        tex: None,
                    },
                    partial.write(),
                ],
                bytemuck::bytes_of(&p),
                grid,
                &constants,
            )?);
        }
    }
    let n = g.cout * g.cin * g.kh * g.kw;
    out.push(super::reduce::sum_dispatch(
        gpu,
        &partial,
        dw,
        [1, plan.nrg, n],
        1.0,
        beta,
    )?);
    Ok(Some(out))
}

/// Invocations a streaming weight gradient aims at per group of 16 output channels (input
/// channels x row runs) on a CPU adapter: enough workgroups for its cores, with long row runs
/// (each writes 144 partial sums, and the reduction reads them all). Measured on llvmpipe (2
/// cores, `bench --kernel conv_wgrad@direct-sg`, sum over the ResNet-32 shapes, 3 alternating
/// rounds, one launch per group then): 128, 256 and 512 within noise of each other, 2,048
/// 1.2-1.35x and 8,192 2-2.3x their time.
const WG_STREAM_INVOCATIONS_CPU: usize = 512;
/// The same on other adapters: 100+ compute units want hundreds of workgroups (not measured:
/// no GPU has run it yet; the tuner compares it with the GEMMs there).
const WG_STREAM_INVOCATIONS_GPU: usize = 32768;

/// Row runs of the streaming weight gradient: (rows per run, runs).
fn stream_runs(gpu: &Gpu, g: &ConvGeom) -> (usize, usize) {
    let rows = g.batch * g.oh;
    let target = if gpu.is_cpu() {
        WG_STREAM_INVOCATIONS_CPU
    } else {
        WG_STREAM_INVOCATIONS_GPU
    };
    let most_runs = most_row_runs(gpu, g.cout * g.cin * 9);
    let runs = (target / g.cin.max(1)).clamp(1, rows).min(most_runs);
    let rpi = rows.div_ceil(runs);
    (rpi, rows.div_ceil(rpi))
}

/// Whether the streaming (subgroup) weight gradient runs `g` here: a 3x3 kernel at stride 1 or
/// 2, dY, X and the partial sums within the storage binding limit, and its grid within the
/// workgroup-count limit. Unlike the block kernel ([`WgradPlan`]) it takes planes of any size
/// (the 56x56 maps of a ResNet at 224 px).
pub fn streams(gpu: &Gpu, g: &ConvGeom) -> bool {
    let lim = &gpu.limits;
    let bind = lim.max_storage_buffer_binding_size;
    let bytes = |n: usize| n as u64 * 4;
    let (_, nrg) = stream_runs(gpu, g);
    g.kh == 3
        && g.kw == 3
        && (1..=2).contains(&g.stride)
        && bytes(g.batch * g.cout * g.oh * g.ow) <= bind
        && bytes(g.batch * g.cin * g.h * g.w) <= bind
        && bytes(nrg * g.cout * g.cin * 9) <= bind
        && [nrg, g.cout.div_ceil(WG_CO), g.cin.div_ceil(WG)]
            .iter()
            .all(|&n| n as u32 <= lim.max_compute_workgroups_per_dimension)
}

/// Whether the streaming weight gradient may read X and dY as aligned vec4
/// (`shaders/conv_wgrad_x4.wgsli`, `conv_wgrad_dyq4.wgsli`): rows of both a multiple of 4 values
/// in 16-byte aligned tensors, and padding 1 (the window of a pixel quad then starts one column
/// left of an aligned vec4 at either stride).
fn wgrad_vec4(g: &ConvGeom, dy: &crate::tensor::Tensor, x: &crate::tensor::Tensor) -> bool {
    g.pad == 1
        && g.w.is_multiple_of(4)
        && g.ow.is_multiple_of(4)
        && x.offset().is_multiple_of(16)
        && dy.offset().is_multiple_of(16)
}

/// The subgroup weight gradient with dY read from storage: one launch over the whole batch and
/// every group of 16 output channels (the grid's third dimension), then the sum of the row-run
/// partials: two launches per layer.
fn wgrad_stream(
    gpu: &Gpu,
    g: &ConvGeom,
    dy: &crate::tensor::Tensor,
    x: &crate::tensor::Tensor,
    dw: &crate::tensor::Tensor,
    beta: f32,
    tex: bool,
) -> Result<Vec<Dispatch>> {
    let dw_floats = g.cout * g.cin * 9;
    let (rpi, nrg) = stream_runs(gpu, g);
    let partial = crate::tensor::Tensor::zeros(gpu, &[nrg, dw_floats], crate::tensor::DType::F32)?;
    let wgs = g.cin.next_multiple_of(8).min(WG);
    let plane = g.oh * g.ow;
    // dY's own layout [batch][cout][oh][ow], in floats.
    let p = WgParams {
        dimg: (g.cout * plane) as u32,
        drow: g.ow as u32,
        dch: plane as u32,
        dcg: (WG_CO * plane) as u32,
        ..WgParams::new(g, rpi, nrg)
    };
    let v4 = wgrad_vec4(g, dy, x);
    let tex = tex && can_mirror(gpu, x) && can_mirror(gpu, dy);
    let (xm, dym) = if tex {
        (
            Some(gpu.mirrors.get(gpu, x)?),
            Some(gpu.mirrors.get(gpu, dy)?),
        )
    } else {
        (None, None)
    };
    let xb = match &xm {
        Some(m) => x.mirrored(m),
        None => x.read(),
    };
    let dyb = match &dym {
        Some(m) => dy.mirrored(m),
        None => dy.read(),
    };
    let mut out = vec![Dispatch::build_with(
        gpu,
        match (tex, v4) {
            (true, true) => "conv_wgrad_subgroup_t4",
            (true, false) => "conv_wgrad_subgroup_t1",
            (false, true) => "conv_wgrad_subgroup_v4",
            (false, false) => "conv_wgrad_subgroup",
        },
        "conv_wgrad3",
        &[xb, dyb, partial.write()],
        bytemuck::bytes_of(&p),
        [
            g.cin.div_ceil(wgs) as u32,
            nrg as u32,
            g.cout.div_ceil(WG_CO) as u32,
        ],
        &[("WSTRIDE", g.stride as f64), ("WGS", wgs as f64)],
    )?];
    out.push(super::reduce::sum_dispatch(
        gpu,
        &partial,
        dw,
        [1, nrg, dw_floats],
        1.0,
        beta,
    )?);
    Ok(out)
}
