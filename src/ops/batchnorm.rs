//! Batch norm 2-d (PyTorch semantics: biased batch variance to normalise, unbiased variance in the
//! running EMA, momentum 0.1, eps 1e-5), with an optional fused ReLU. Kernels:
//! `shaders/batchnorm.wgsl` — statistics (one reduction per channel, running update included),
//! normalise+affine(+ReLU), and a backward of two channel sums plus one elementwise pass.

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use std::sync::Arc;

use crate::gpu::{Binding, Dispatch, Gpu, TexMirror, can_mirror, grid_1d};
use crate::tape::{Collective, Tape};
use crate::tensor::{DType, Tensor};

/// PyTorch's default epsilon.
pub const EPS: f32 = 1e-5;
/// PyTorch's default running-statistics momentum.
pub const MOMENTUM: f32 = 0.1;
/// vec4 (or elements, in the scalar kernels) per invocation of the apply / backward kernels
/// (`RUN` in the shader).
const RUN: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    channels: u32,
    hw: u32,
    relu: u32,
    eps: f32,
    momentum: f32,
    beta: f32,
    /// Workgroups per channel of the split reductions (unused by the fused kernels).
    splits: u32,
    /// Values per channel over the whole batch: `batch x hw`, times the devices with sync-BN.
    count: u32,
    /// Channel c's pivot is `pivot[c * pivot_stride]` in the split statistics (`hw` when the
    /// pivot buffer is x itself, 1 for the devices' shared pivots).
    pivot_stride: u32,
    /// `beta` of the residual's gradient, written by `backward_dx_res4`.
    res_beta: f32,
    _pad: u32,
}

/// A batch-norm layer's state outside the parameters: running statistics (saved in checkpoints).
#[derive(Clone)]
pub struct BnState {
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

impl BnState {
    /// Running mean 0, running variance 1 (PyTorch's initial values).
    pub fn new(gpu: &Gpu, channels: usize) -> Result<Self> {
        Ok(Self {
            running_mean: Tensor::from_f32(gpu, &[channels], &vec![0.0; channels])?,
            running_var: Tensor::from_f32(gpu, &[channels], &vec![1.0; channels])?,
        })
    }
}

/// Train mode normalises with batch statistics and updates the running ones; eval mode uses the
/// running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    Train,
    Eval,
}

fn dims(x: &Tensor) -> Result<(usize, usize, usize)> {
    match x.shape() {
        [b, c, h, w] => Ok((*b, *c, h * w)),
        [b, c] => Ok((*b, *c, 1)),
        s => bail!("batch_norm: input must be [B, C, H, W] or [B, C], got {s:?}"),
    }
}

/// Which reduction kernels a train-mode batch norm records (apply and dx are shared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BnAlgo {
    /// The adapter's tuner decides (see [`crate::tune`]).
    #[default]
    Auto,
    /// One 256-wide workgroup per channel, statistics and running update in one launch
    /// (`batchnorm.wgsl`; vec4 lanes walking whole planes where the layout allows): best where
    /// cores are few, as on llvmpipe.
    Fused,
    /// [`BnAlgo::Fused`] with subgroup adds instead of the workgroup-memory tree in its
    /// reductions (`batchnorm_tree_sg.wgsli`: two barriers instead of nine), where the adapter
    /// has subgroups.
    FusedSubgroup,
    /// [`BnAlgo::FusedSubgroup`] whose vec4 kernels read x, y, dy and the residual through
    /// texture mirrors ([`crate::gpu::TexMirror`], `batchnorm_ld4_texture.wgsli`): on llvmpipe
    /// without AVX-512 a texel fetch costs a fraction of a storage read. f32 activations; the
    /// mirrors hold a second copy of each tensor they read.
    FusedTexture,
    /// Each channel split over several workgroups so that C x S >= [`SPLIT_WORKGROUPS`], then a
    /// per-channel finish (`batchnorm_split.wgsl`): shaped for GPUs with many compute units.
    Split,
    /// [`BnAlgo::Split`] with subgroup adds in the workgroup reduction
    /// (`batchnorm_subgroup.wgsl`), where the adapter has subgroups.
    Subgroup,
}

/// Workgroups a split reduction aims for (a 132-SM GPU gets several per SM).
pub const SPLIT_WORKGROUPS: usize = 1024;

impl BnAlgo {
    /// The variant's name in tune caches and run records.
    pub fn name(self) -> &'static str {
        match self {
            BnAlgo::Auto => "auto",
            BnAlgo::Fused => "fused",
            BnAlgo::FusedSubgroup => "fused-sg",
            BnAlgo::FusedTexture => "fused-tex",
            BnAlgo::Split => "split",
            BnAlgo::Subgroup => "subgroup",
        }
    }

    /// The variant named `s` (as in tune caches), or an error listing the names.
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "fused" => BnAlgo::Fused,
            "fused-sg" => BnAlgo::FusedSubgroup,
            "fused-tex" => BnAlgo::FusedTexture,
            "split" => BnAlgo::Split,
            "subgroup" => BnAlgo::Subgroup,
            _ => bail!("unknown batch-norm variant {s:?}"),
        })
    }
}

/// The variants this adapter can run, heuristic favourite first.
pub fn candidates(gpu: &Gpu) -> Vec<BnAlgo> {
    if gpu.has_subgroups() {
        // Texture reads first on a CPU adapter (llvmpipe with AVX2: see BnAlgo::FusedTexture
        // and benches/NOTES.md, session 14), last elsewhere: the tuner decides.
        let mut v = vec![
            BnAlgo::FusedSubgroup,
            BnAlgo::Fused,
            BnAlgo::Split,
            BnAlgo::Subgroup,
        ];
        if gpu.is_cpu() {
            v.insert(0, BnAlgo::FusedTexture);
        } else {
            v.push(BnAlgo::FusedTexture);
        }
        v
    } else {
        vec![BnAlgo::Fused, BnAlgo::Split]
    }
}

/// Workgroups per channel of the split reductions: enough for [`SPLIT_WORKGROUPS`] in all, at
/// most one per image.
pub fn splits(batch: usize, channels: usize) -> usize {
    SPLIT_WORKGROUPS
        .div_ceil(channels.max(1))
        .clamp(1, batch.max(1))
}

/// `algo`, or for [`BnAlgo::Auto`] the tuner's choice for a train-mode layer of this shape
/// (timed as forward + backward on scratch tensors).
pub fn resolve(
    gpu: &Gpu,
    batch: usize,
    channels: usize,
    hw: usize,
    algo: BnAlgo,
) -> Result<BnAlgo> {
    if matches!(
        algo,
        BnAlgo::Subgroup | BnAlgo::FusedSubgroup | BnAlgo::FusedTexture
    ) && !gpu.has_subgroups()
    {
        bail!(
            "batch_norm: the {} variant needs an adapter with subgroups",
            algo.name()
        );
    }
    if algo != BnAlgo::Auto {
        return Ok(algo);
    }
    let cands = candidates(gpu);
    let names: Vec<&str> = cands.iter().map(|a| a.name()).collect();
    let key = format!("b{batch} {channels}x{hw}");
    let v = gpu
        .tuner
        .choose("batchnorm", &key, &names, &mut |v, best| {
            let a = BnAlgo::from_name(v)?;
            let shape = [batch, channels, 1, hw];
            let x = crate::tune::scratch(gpu, &shape)?.requiring_grad();
            let g = Tensor::from_f32(gpu, &[channels], &vec![1.0; channels])?.requiring_grad();
            let b = Tensor::from_f32(gpu, &[channels], &vec![0.0; channels])?.requiring_grad();
            let st = BnState::new(gpu, channels)?;
            let mut tape = Tape::new(gpu);
            let y = batch_norm_with(&mut tape, &x, &g, &b, &st, BnMode::Train, true, a)?;
            tape.backward_with(&y, crate::tune::scratch(gpu, &shape)?)?;
            let case = crate::bench::Case::from_tape("batchnorm", &key, 0.0, 0.0, tape, vec![x]);
            Ok(Some(crate::tune::time_launches(gpu, &case, best)?))
        })?;
    BnAlgo::from_name(&v)
}

/// Tensor `t`, bound through `mirrors[k]` where the backward reads texture mirrors.
fn xyd<'a>(mirrors: &'a Option<[Arc<TexMirror>; 3]>, k: usize, t: &'a Tensor) -> Binding<'a> {
    match mirrors {
        Some(m) => t.mirrored(&m[k]),
        None => t.read(),
    }
}

/// `relu?(gamma * (x - mean) / sqrt(var + eps) + beta)` per channel.
pub fn batch_norm(
    tape: &mut Tape,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    state: &BnState,
    mode: BnMode,
    relu: bool,
) -> Result<Tensor> {
    batch_norm_with(tape, x, gamma, beta, state, mode, relu, BnAlgo::Auto)
}

/// [`batch_norm`] with a choice of reduction kernels (train mode; eval mode has none).
#[allow(clippy::too_many_arguments)] // the layer's tensors, its state and three switches
pub fn batch_norm_with(
    tape: &mut Tape,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    state: &BnState,
    mode: BnMode,
    relu: bool,
    algo: BnAlgo,
) -> Result<Tensor> {
    bn_impl(tape, x, gamma, beta, state, mode, relu, None, algo)
}

/// The end of a residual block in one pass: `relu(batch_norm(x) + residual)`. Saves the add
/// and ReLU launches (and their memory passes) forward and the ReLU-backward and two
/// gradient copies backward; the residual's gradient is the masked upstream gradient.
#[allow(clippy::too_many_arguments)] // the layer's tensors, its state, the residual, a switch
pub fn batch_norm_add_relu(
    tape: &mut Tape,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    state: &BnState,
    mode: BnMode,
    residual: &Tensor,
    algo: BnAlgo,
) -> Result<Tensor> {
    if residual.shape() != x.shape() {
        bail!(
            "batch_norm_add_relu: residual must be {:?} like the input, got {:?}",
            x.shape(),
            residual.shape()
        );
    }
    bn_impl(
        tape,
        x,
        gamma,
        beta,
        state,
        mode,
        true,
        Some(residual),
        algo,
    )
}

#[allow(clippy::too_many_arguments)] // see the two public entry points
fn bn_impl(
    tape: &mut Tape,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    state: &BnState,
    mode: BnMode,
    relu: bool,
    residual: Option<&Tensor>,
    algo: BnAlgo,
) -> Result<Tensor> {
    let (batch, channels, hw) = dims(x)?;
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", &state.running_mean),
        ("running_var", &state.running_var),
    ] {
        if t.shape() != [channels] {
            bail!(
                "batch_norm: {name} must be [{channels}], got {:?}",
                t.shape()
            );
        }
    }
    if mode == BnMode::Train && batch * hw < 2 {
        bail!("batch_norm: training needs at least 2 values per channel, got {batch}x{hw}");
    }
    let gpu = tape.gpu().clone();
    // Sync-BN: statistics and gradient sums over every device's slice of the batch.
    let rep = tape.replication();
    let devices = if rep.devices > 1 && rep.sync_bn && mode == BnMode::Train {
        rep.devices
    } else {
        1
    };
    let p = Params {
        batch: batch as u32,
        channels: channels as u32,
        hw: hw as u32,
        relu: relu as u32,
        eps: EPS,
        momentum: MOMENTUM,
        beta: 0.0,
        splits: 1,
        count: (batch * hw * devices) as u32,
        pivot_stride: hw as u32,
        res_beta: 0.0,
        _pad: 0,
    };
    let stats = Tensor::zeros(&gpu, &[2 * channels], DType::F32)?;
    let stat_bindings = [
        x.read(),
        stats.write(),
        state.running_mean.write(),
        state.running_var.write(),
    ];
    // vec4 kernels when planes split into vec4 and the activations start 16-byte aligned.
    let v4 = hw % 4 == 0 && x.offset().is_multiple_of(16);
    let entry = |e: &'static str, e4: &'static str| if v4 { e4 } else { e };
    // apply / backward_dx: one invocation per RUN vec4 (or elements) of a plane.
    let ew_groups = move |v4: bool| {
        let per_plane = if v4 { hw / 4 } else { hw };
        ((batch * channels * per_plane.div_ceil(RUN)) as u32).div_ceil(256)
    };
    // f16 activations (`--precision f16`) have typed variants of the fused kernels only.
    let half = x.dtype() == DType::F16;
    if let Some(r) = residual
        && r.dtype() != x.dtype()
    {
        bail!(
            "batch_norm: the residual is {:?}, the input {:?}",
            r.dtype(),
            x.dtype()
        );
    }
    if half && devices > 1 {
        bail!("batch_norm: --sync-bn is not available with f16 activations (--precision f16)");
    }
    let bn_shader = crate::shaders::typed("batchnorm", x.dtype(), x.dtype())?;
    let algo = match mode {
        BnMode::Train if half => BnAlgo::Fused,
        // The fused statistics kernel finishes them in one launch, leaving no partial sums
        // to exchange: sync-BN takes the split reductions.
        BnMode::Train => match resolve(&gpu, batch, channels, hw, algo)? {
            BnAlgo::Fused if devices > 1 => BnAlgo::Split,
            BnAlgo::FusedSubgroup | BnAlgo::FusedTexture if devices > 1 => BnAlgo::Subgroup,
            a => a,
        },
        BnMode::Eval => BnAlgo::Fused,
    };
    // The fused reductions (statistics, backward sums); apply and dx come from `bn_shader`.
    let tex = algo == BnAlgo::FusedTexture;
    let tree_shader = if matches!(algo, BnAlgo::FusedSubgroup | BnAlgo::FusedTexture) {
        crate::shaders::typed("batchnorm_sg", x.dtype(), x.dtype())?
    } else {
        bn_shader
    };
    // FusedTexture in training: the vec4 statistics and apply read x through its mirror.
    let xm = if tex && mode == BnMode::Train && v4 && !half && can_mirror(&gpu, x) {
        Some(gpu.mirrors.get(&gpu, x)?)
    } else {
        None
    };
    let ns = splits(batch, channels);
    let sp = Params {
        splits: ns as u32,
        ..p
    };
    let part = match algo {
        BnAlgo::Split | BnAlgo::Subgroup => {
            Some(Tensor::zeros(&gpu, &[channels * ns * 2], DType::F32)?)
        }
        _ => None,
    };
    let (split_shader, stats_entry, back_entry) = if algo == BnAlgo::Subgroup {
        (
            "batchnorm_subgroup",
            "stats_partial_sg",
            "backward_partial_sg",
        )
    } else {
        ("batchnorm_split", "stats_partial", "backward_partial")
    };
    let finish_groups = [(channels as u32).div_ceil(64), 1, 1];
    // Several devices share one pivot per channel (the mean of their first values) so that
    // their partial sums add up; one device pivots on its own first values, read from x.
    let pivot = if devices > 1 {
        let pv = Tensor::zeros(&gpu, &[channels], DType::F32)?;
        tape.push_forward(
            "batchnorm",
            Dispatch::build(
                &gpu,
                "batchnorm_split",
                "pivot",
                &[x.read(), pv.write()],
                bytemuck::bytes_of(&p),
                finish_groups,
            )?,
        );
        tape.push_collective(Collective::sum(vec![pv.clone()], 1.0 / devices as f32));
        Some(pv)
    } else {
        None
    };
    let sp = Params {
        pivot_stride: if pivot.is_some() { 1 } else { hw as u32 },
        ..sp
    };
    let piv = pivot.as_ref().unwrap_or(x);
    match (mode, &part) {
        (BnMode::Train, Some(part)) => {
            tape.push_forward(
                "batchnorm",
                Dispatch::build(
                    &gpu,
                    split_shader,
                    stats_entry,
                    &[x.read(), piv.read(), part.write()],
                    bytemuck::bytes_of(&sp),
                    [channels as u32, ns as u32, 1],
                )?,
            );
            if devices > 1 {
                tape.push_collective(Collective::sum(vec![part.clone()], 1.0));
            }
            tape.push_forward(
                "batchnorm",
                Dispatch::build(
                    &gpu,
                    "batchnorm_split",
                    "stats_finish",
                    &[
                        piv.read(),
                        part.read(),
                        stats.write(),
                        state.running_mean.write(),
                        state.running_var.write(),
                    ],
                    bytemuck::bytes_of(&sp),
                    finish_groups,
                )?,
            );
        }
        (BnMode::Train, None) => tape.push_forward(
            "batchnorm",
            match &xm {
                // x through its mirror, refreshed here for the apply launch too.
                Some(m) => Dispatch::build(
                    &gpu,
                    "batchnorm_sg_tex",
                    "batch_stats4",
                    &[
                        x.mirrored(m),
                        stats.write(),
                        state.running_mean.write(),
                        state.running_var.write(),
                    ],
                    bytemuck::bytes_of(&p),
                    [channels as u32, 1, 1],
                )?,
                None => Dispatch::build(
                    &gpu,
                    tree_shader,
                    entry("batch_stats", "batch_stats4"),
                    &stat_bindings,
                    bytemuck::bytes_of(&p),
                    [channels as u32, 1, 1],
                )?,
            },
        ),
        (BnMode::Eval, _) => tape.push_forward(
            "batchnorm",
            Dispatch::build(
                &gpu,
                bn_shader,
                "eval_stats",
                &stat_bindings,
                bytemuck::bytes_of(&p),
                [(channels as u32).div_ceil(64), 1, 1],
            )?,
        ),
    }
    let mut inputs = vec![x, gamma, beta];
    inputs.extend(residual);
    let y = tape.output_as(x.shape(), x.dtype(), &inputs)?;
    let v4 = v4 && y.offset() % 16 == 0;
    // The vec4 apply reads x (refreshed by the statistics launch) and the residual through
    // mirrors where the statistics did.
    let apply_xm = xm
        .as_ref()
        .filter(|_| v4 && residual.is_none_or(|r| can_mirror(&gpu, r)));
    let rm = match residual {
        Some(r) if apply_xm.is_some() => Some(gpu.mirrors.get(&gpu, r)?),
        _ => None,
    };
    let mut bindings = vec![
        apply_xm.map_or_else(|| x.read(), |m| x.mirrored(m)),
        gamma.read(),
        beta.read(),
        stats.read(),
        y.write(),
    ];
    let entry = match residual {
        Some(r) => {
            bindings.push(rm.as_ref().map_or_else(|| r.read(), |m| r.mirrored(m)));
            if v4 && r.offset().is_multiple_of(16) {
                "apply_add4"
            } else {
                "apply_add"
            }
        }
        None if v4 => "apply4",
        None => "apply",
    };
    let mut apply = Dispatch::build(
        &gpu,
        if apply_xm.is_some() {
            "batchnorm_sg_tex"
        } else {
            bn_shader
        },
        entry,
        &bindings,
        bytemuck::bytes_of(&p),
        grid_1d(&gpu, ew_groups(entry.ends_with('4'))),
    )?;
    // x's mirror is the statistics launch's; the residual's still needs its copy.
    apply.keep_copies_of(rm.as_slice());
    let (sx, sy, sg) = (x.clone(), y.clone(), gamma.clone());
    tape.push(
        "batchnorm",
        inputs.into_iter().cloned().collect(),
        &y,
        vec![apply],
        Box::new(move |gpu, dy, gin| {
            if mode == BnMode::Eval {
                bail!("batch_norm: no backward in eval mode (record a train-mode network)");
            }
            let sums = Tensor::zeros(gpu, &[2 * channels], DType::F32)?;
            // Parameter gradients land in the targets, or in scratch when not wanted.
            let scratch = |t: &Option<crate::tape::GradOut>| -> Result<(Tensor, bool)> {
                Ok(match t {
                    Some(g) => (g.tensor.clone(), g.accumulate),
                    None => (Tensor::zeros(gpu, &[channels], DType::F32)?, false),
                })
            };
            let (dgamma, acc_g) = scratch(&gin[1])?;
            let (dbeta, acc_b) = scratch(&gin[2])?;
            if acc_g != acc_b {
                bail!("batch_norm: gamma and beta gradients must both accumulate or neither");
            }
            let bp = Params {
                beta: if acc_g { 1.0 } else { 0.0 },
                ..p
            };
            let v4 = v4 && dy.offset() % 16 == 0;
            // x, y and dy of the vec4 backward kernels through texture mirrors, refreshed
            // once: the sums and dx launches read the same three tensors.
            let mirrors = if tex && v4 && [&sx, &sy, dy].iter().all(|t| can_mirror(gpu, t)) {
                Some([
                    gpu.mirrors.get(gpu, &sx)?,
                    gpu.mirrors.get(gpu, &sy)?,
                    gpu.mirrors.get(gpu, dy)?,
                ])
            } else {
                None
            };
            let mut v: Vec<crate::tape::Recorded> = match &part {
                Some(part) => {
                    let bsp = Params {
                        splits: ns as u32,
                        ..bp
                    };
                    vec![
                        Dispatch::build(
                            gpu,
                            split_shader,
                            back_entry,
                            &[sx.read(), sy.read(), dy.read(), stats.read(), part.write()],
                            bytemuck::bytes_of(&bsp),
                            [channels as u32, ns as u32, 1],
                        )?
                        .into(),
                        Dispatch::build(
                            gpu,
                            "batchnorm_split",
                            "backward_finish",
                            &[part.read(), sums.write(), dgamma.write(), dbeta.write()],
                            bytemuck::bytes_of(&bsp),
                            finish_groups,
                        )?
                        .into(),
                    ]
                }
                None => vec![
                    Dispatch::build(
                        gpu,
                        if mirrors.is_some() {
                            "batchnorm_sg_tex"
                        } else {
                            tree_shader
                        },
                        if v4 {
                            "backward_sums4"
                        } else {
                            "backward_sums"
                        },
                        &[
                            xyd(&mirrors, 0, &sx),
                            xyd(&mirrors, 1, &sy),
                            xyd(&mirrors, 2, dy),
                            stats.read(),
                            sums.write(),
                            dgamma.write(),
                            dbeta.write(),
                        ],
                        bytemuck::bytes_of(&bp),
                        [channels as u32, 1, 1],
                    )?
                    .into(),
                ],
            };
            // dgamma / dbeta stay this device's share (the step's gradient all-reduce adds
            // them up); dx needs the whole batch's sums.
            if devices > 1 {
                v.push(Collective::sum(vec![sums.clone()], 1.0).into());
            }
            let dres = gin.get(3).and_then(|g| g.as_ref());
            // The residual's gradient (dy where the output is positive: the fused ReLU's mask)
            // comes out of the dx pass when both are vec4 runs in distinct buffers (and the
            // adapter binds its 8 storage buffers).
            let fuse_res = match (&gin[0], dres) {
                (Some(t), Some(r)) => {
                    v4 && gpu.limits.max_storage_buffers_per_shader_stage >= 8
                        && t.tensor.offset() % 16 == 0
                        && r.tensor.offset() % 16 == 0
                        && !std::sync::Arc::ptr_eq(t.tensor.storage(), r.tensor.storage())
                }
                _ => false,
            };
            if let Some(t) = dres.filter(|_| !fuse_res) {
                v.push(
                    crate::ops::elementwise::dispatch(
                        gpu,
                        "relu_backward",
                        dy,
                        &sy,
                        &t.tensor,
                        1.0,
                        t.beta(),
                        0,
                    )?
                    .into(),
                );
            }
            if let Some(t) = &gin[0] {
                let dp = Params {
                    beta: t.beta(),
                    ..p
                };
                // After the sums it reads.
                let v4 = v4 && t.tensor.offset() % 16 == 0;
                let (entry, groups) = if fuse_res {
                    ("backward_dx_res4", ew_groups(true))
                } else if v4 {
                    ("backward_dx4", ew_groups(true))
                } else {
                    ("backward_dx", ew_groups(false))
                };
                // The mirrors serve the vec4 kernels only (a misaligned dx takes the scalar one).
                let none = None;
                let dm = if v4 { &mirrors } else { &none };
                let mut bind = vec![
                    xyd(dm, 0, &sx),
                    xyd(dm, 1, &sy),
                    xyd(dm, 2, dy),
                    stats.read(),
                    sums.read(),
                    sg.read(),
                    t.tensor.write(),
                ];
                let dp = match dres.filter(|_| fuse_res) {
                    Some(r) => {
                        bind.push(r.tensor.write());
                        Params {
                            res_beta: r.beta(),
                            ..dp
                        }
                    }
                    None => dp,
                };
                let mut d = Dispatch::build(
                    gpu,
                    if dm.is_some() {
                        "batchnorm_sg_tex"
                    } else {
                        bn_shader
                    },
                    entry,
                    &bind,
                    bytemuck::bytes_of(&dp),
                    grid_1d(gpu, groups),
                )?;
                // The sums launch refreshed the mirrors; nothing wrote x, y or dy since.
                if dm.is_some() && part.is_none() {
                    d.skip_copies();
                }
                v.push(d.into());
            }
            Ok(v)
        }),
    )?;
    Ok(y)
}

/// CPU references (f64), train mode.
pub mod reference {
    /// Per-channel (mean, biased variance) of `x` as `[batch, channels, hw]`.
    pub fn moments(x: &[f64], (b, c, hw): (usize, usize, usize)) -> Vec<(f64, f64)> {
        (0..c)
            .map(|ch| {
                let vals: Vec<f64> = (0..b)
                    .flat_map(|n| (0..hw).map(move |i| (n * c + ch) * hw + i))
                    .map(|i| x[i])
                    .collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
                (m, v)
            })
            .collect()
    }

    /// Forward with batch statistics.
    pub fn batch_norm(
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        dims: (usize, usize, usize),
        eps: f64,
        relu: bool,
    ) -> Vec<f64> {
        let (_, c, hw) = dims;
        let mv = moments(x, dims);
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = (i / hw) % c;
                let y = (v - mv[ch].0) / (mv[ch].1 + eps).sqrt() * gamma[ch] + beta[ch];
                if relu { y.max(0.0) } else { y }
            })
            .collect()
    }

    /// `relu(batch_norm(x) + r)`.
    pub fn batch_norm_add_relu(
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        r: &[f64],
        dims: (usize, usize, usize),
        eps: f64,
    ) -> Vec<f64> {
        batch_norm(x, gamma, beta, dims, eps, false)
            .iter()
            .zip(r)
            .map(|(a, b)| (a + b).max(0.0))
            .collect()
    }

    /// Gradients of [`batch_norm_add_relu`]: (dx, dgamma, dbeta, dr).
    #[allow(clippy::type_complexity)] // four gradients, one per input
    pub fn batch_norm_add_relu_grad(
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        r: &[f64],
        dy: &[f64],
        dims: (usize, usize, usize),
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let y = batch_norm_add_relu(x, gamma, beta, r, dims, eps);
        let dpre: Vec<f64> = y
            .iter()
            .zip(dy)
            .map(|(&v, &d)| if v > 0.0 { d } else { 0.0 })
            .collect();
        let (dx, dg, db) = batch_norm_grad(x, gamma, beta, &dpre, dims, eps, false);
        (dx, dg, db, dpre)
    }

    /// Gradients (dx, dgamma, dbeta) for upstream `dy`.
    pub fn batch_norm_grad(
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        dy: &[f64],
        dims: (usize, usize, usize),
        eps: f64,
        relu: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (b, c, hw) = dims;
        let mv = moments(x, dims);
        let y = batch_norm(x, gamma, beta, dims, eps, relu);
        let count = (b * hw) as f64;
        let g: Vec<f64> = dy
            .iter()
            .zip(&y)
            .map(|(&d, &yv)| if relu && yv <= 0.0 { 0.0 } else { d })
            .collect();
        let mut s0 = vec![0.0; c];
        let mut s1 = vec![0.0; c];
        for (i, &v) in x.iter().enumerate() {
            let ch = (i / hw) % c;
            let xhat = (v - mv[ch].0) / (mv[ch].1 + eps).sqrt();
            s0[ch] += g[i];
            s1[ch] += g[i] * xhat;
        }
        let dx = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = (i / hw) % c;
                let inv = 1.0 / (mv[ch].1 + eps).sqrt();
                let xhat = (v - mv[ch].0) * inv;
                gamma[ch] * inv * (g[i] - s0[ch] / count - xhat * s1[ch] / count)
            })
            .collect();
        (dx, s1, s0)
    }
}
