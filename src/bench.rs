//! Kernel benchmarks: each case is a set of recorded launches with its FLOP and byte counts;
//! [`time_case`] replays it after warm-up and reports the median.

use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::gpu::{Dispatch, Gpu};
use crate::ops::{cross_entropy, elementwise, matmul, reduce};
use crate::rng::Rng64;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// A kernel at one shape, ready to replay.
pub struct Case {
    pub kernel: String,
    pub shape: String,
    /// Floating-point operations of one launch set.
    pub flops: f64,
    /// Minimum bytes moved through device memory (each input read once, each output written once).
    pub bytes: f64,
    dispatches: Vec<Dispatch>,
    _keep: Vec<Tensor>, // inputs stay alive while the launches reference them
    tape_prog: Option<Tape>,
}

impl Case {
    /// A case from recorded launches (`keep`: tensors they reference).
    pub fn new(
        kernel: &str,
        shape: &str,
        flops: f64,
        bytes: f64,
        dispatches: Vec<Dispatch>,
        keep: Vec<Tensor>,
    ) -> Self {
        Self {
            kernel: kernel.to_string(),
            shape: shape.to_string(),
            flops,
            bytes,
            dispatches,
            _keep: keep,
            tape_prog: None,
        }
    }

    /// A case replaying a recorded tape, forward and backward (`keep`: tensors it references).
    pub fn from_tape(
        kernel: &str,
        shape: &str,
        flops: f64,
        bytes: f64,
        tape: Tape,
        keep: Vec<Tensor>,
    ) -> Self {
        let mut c = Self::new(kernel, shape, flops, bytes, Vec::new(), keep);
        c.tape_prog = Some(tape);
        c
    }
}

/// One measured case.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub kernel: String,
    pub shape: String,
    /// Median milliseconds per launch set.
    pub ms: f64,
    pub gflops: f64,
    pub gbs: f64,
    /// `gpu-timestamp` or `wall-clock`.
    pub timer: &'static str,
    /// Samples taken (the median is over these).
    pub samples: usize,
    /// Launch sets per sample.
    pub repeats: usize,
    /// The roofline bound: max(flops / peak FLOP/s, bytes / peak bandwidth), from the adapter's
    /// measured ceilings (`bench --peak`); absent when they were not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_ms: Option<f64>,
    /// bound / measured time, in % (100: at the roofline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pct_peak: Option<f64>,
}

impl Measurement {
    /// Fill `bound_ms` and `pct_peak` from the adapter's ceilings.
    pub fn against(mut self, peaks: &crate::peak::Peaks, flops: f64, bytes: f64) -> Self {
        let bound = peaks.bound_seconds(flops, bytes);
        self.bound_ms = Some(bound * 1e3);
        self.pct_peak = Some(100.0 * bound * 1e3 / self.ms.max(1e-12));
        self
    }
}

/// The kernels `longtail bench` knows, with their default shapes.
pub const KERNELS: &[(&str, &[&str])] = &[
    (
        "matmul",
        &["1024x1024x1024", "128x64x64", "128x10x64", "4096x64x128"],
    ),
    ("conv_fwd", CONV_SHAPES),
    ("conv_dgrad", CONV_SHAPES),
    ("conv_wgrad", CONV_SHAPES),
    ("conv_fwd_gemm", CONV_SHAPES),
    ("conv_dgrad_gemm", CONV_SHAPES),
    ("conv_wgrad_gemm", CONV_SHAPES),
    // f16 activations (and weight copy; wgrad writes f32), the GEMM kernels.
    ("conv_fwd_f16", CONV_SHAPES),
    ("conv_dgrad_f16", CONV_SHAPES),
    ("conv_wgrad_f16", CONV_SHAPES),
    ("batchnorm", &["128x16x32x32", "128x32x16x16", "128x64x8x8"]),
    ("batchnorm_relu", &["128x16x32x32"]),
    ("avgpool", &["128x64x8x8"]),
    ("maxpool", &["64x64x56x56"]),
    ("shortcut", &["128x16x32x32x32", "128x32x16x16x64"]),
    ("linear", &["128x64x10", "64x512x1000"]),
    ("normed_linear", &["128x64x10"]),
    ("whiten_cov", &["128x64", "128x512"]),
    ("ns_step", &["1x64", "1x512", "8x64"]),
    ("eigen", &["1x64", "8x64", "4x128"]),
    ("add", &["1048576"]),
    ("mul", &["1048576"]),
    ("scale", &["1048576"]),
    ("relu", &["1048576"]),
    ("reduce_sum", &["1024x1024", "1x262144"]),
    ("cross_entropy", &["128x10", "256x1000"]),
    ("sgd", &["466906"]),
];

/// ResNet-32 at batch 128: `BxCinxHxWxCoutxKxStride` (padding K/2).
const CONV_SHAPES: &[&str] = &[
    "128x16x32x32x16x3x1",
    "128x16x32x32x32x3x2",
    "128x32x16x16x32x3x1",
    "128x32x16x16x64x3x2",
    "128x64x8x8x64x3x1",
];

fn dims(shape: &str, n: usize) -> Result<Vec<usize>> {
    let v: Result<Vec<usize>, _> = shape.split('x').map(str::parse::<usize>).collect();
    match v {
        Ok(v) if v.len() == n && v.iter().all(|&d| d > 0) => Ok(v),
        _ => bail!(
            "shape {shape:?}: expected {n} positive integers joined by 'x' (e.g. {})",
            vec!["64"; n].join("x")
        ),
    }
}

fn random(gpu: &Gpu, rng: &mut Rng64, shape: &[usize]) -> Result<Tensor> {
    random_as(gpu, rng, shape, DType::F32)
}

fn random_as(gpu: &Gpu, rng: &mut Rng64, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_f32_as(gpu, shape, &rng.vec_f32(n, -1.0, 1.0), dtype)
}

/// `kernel@variant` pins one variant of a tuned kernel (the tuner's choice otherwise):
/// `conv_*@direct|direct-sg|direct-tex|gemm|gemm-wide`, `matmul@b8|t16|sg`, `batchnorm*@fused|fused-sg|fused-tex|split|subgroup`.
pub const VARIANTS_HELP: &str = "conv_fwd|conv_dgrad|conv_wgrad@direct|direct-sg|direct-tex|gemm|gemm-wide, conv_*_f16@gemm|gemm-wide, matmul@b8|t16|sg, batchnorm|batchnorm_relu@fused|fused-sg|fused-tex|split|subgroup";

/// Build the case `kernel` (optionally `kernel@variant`) at `shape`.
pub fn case(gpu: &Gpu, kernel: &str, shape: &str) -> Result<Case> {
    let mut rng = Rng64::new(7);
    let mk = |dispatches, flops: f64, bytes: f64, keep| {
        Case::new(kernel, shape, flops, bytes, dispatches, keep)
    };
    let (base, variant) = kernel
        .split_once('@')
        .map_or((kernel, None), |(b, v)| (b, Some(v)));
    if variant.is_some()
        && !(base.starts_with("conv_") || base == "matmul" || base.starts_with("batchnorm"))
    {
        bail!("kernel {base:?} has one variant; variants exist for {VARIANTS_HELP}");
    }
    Ok(match base {
        "matmul" => {
            let d = dims(shape, 3)?;
            let (m, n, k) = (d[0], d[1], d[2]);
            let a = random(gpu, &mut rng, &[m, k])?;
            let b = random(gpu, &mut rng, &[k, n])?;
            let c = Tensor::zeros(gpu, &[m, n], DType::F32)?;
            let algo = match variant {
                Some(v) => matmul::MatAlgo::from_name(v)?,
                None => matmul::MatAlgo::Auto,
            };
            let disp = matmul::dispatch_with(gpu, &a, &b, &c, false, false, 1.0, 0.0, algo)?;
            let f = 2.0 * (m * n * k) as f64;
            let by = 4.0 * (m * k + k * n + m * n) as f64;
            mk(disp, f, by, vec![a, b, c])
        }
        "conv_fwd" | "conv_dgrad" | "conv_wgrad" | "conv_fwd_gemm" | "conv_dgrad_gemm"
        | "conv_wgrad_gemm" | "conv_fwd_f16" | "conv_dgrad_f16" | "conv_wgrad_f16" => {
            use crate::ops::conv2d;
            let d = dims(shape, 7)?;
            let xs = [d[0], d[1], d[2], d[3]];
            let ws = [d[4], d[1], d[5], d[5]];
            let g = conv2d::ConvGeom::new(&xs, &ws, d[6], d[5] / 2)?;
            let act = if base.ends_with("_f16") {
                DType::F16
            } else {
                DType::F32
            };
            let x = random_as(gpu, &mut rng, &xs, act)?;
            let w = random_as(gpu, &mut rng, &ws, act)?;
            let y = random_as(gpu, &mut rng, &g.out_shape(), act)?;
            let dx = Tensor::zeros(gpu, &xs, act)?;
            // The weight gradient is the f32 master's.
            let dw = Tensor::zeros(gpu, &ws, DType::F32)?;
            let (xb, wb, yb) = (
                x.byte_len() as f64,
                w.byte_len() as f64,
                y.byte_len() as f64,
            );
            let algo = match variant {
                Some(v) => conv2d::Algo::from_name(v)?,
                None if base.ends_with("_gemm") => conv2d::Algo::Gemm,
                None => conv2d::Algo::Auto,
            };
            let (disp, bytes) = if base.starts_with("conv_fwd") {
                (
                    conv2d::forward_dispatches(gpu, &g, &x, &w, &y, 0.0, algo)?,
                    xb + wb + yb,
                )
            } else if base.starts_with("conv_dgrad") {
                (
                    conv2d::dgrad_dispatches(gpu, &g, &y, &w, &dx, 0.0, algo)?,
                    xb + wb + yb,
                )
            } else {
                (
                    conv2d::wgrad_dispatches(gpu, &g, &y, &x, &dw, 0.0, algo)?,
                    xb + dw.byte_len() as f64 + yb,
                )
            };
            mk(disp, g.flops(), bytes, vec![x, w, y, dx, dw])
        }
        "batchnorm" | "batchnorm_relu" | "avgpool" | "maxpool" | "shortcut" | "linear"
        | "normed_linear" => {
            // Forward and backward of one layer (the ResNet-32 shapes by default).
            use crate::ops::{batchnorm, linear, pool, shortcut};
            let mut tape = Tape::new(gpu);
            let (out, flops, bytes, keep) = match base {
                "batchnorm" | "batchnorm_relu" | "avgpool" | "maxpool" => {
                    let d = dims(shape, 4)?;
                    let x = random(gpu, &mut rng, &d)?.requiring_grad();
                    let n = x.numel() as f64;
                    match base {
                        "avgpool" => (
                            pool::global_avg_pool(&mut tape, &x)?,
                            2.0 * n,
                            4.0 * 2.0 * n,
                            x,
                        ),
                        "maxpool" => (
                            pool::max_pool2d(&mut tape, &x, 3, 2, 1)?,
                            9.0 * n / 4.0 * 2.0,
                            4.0 * 2.5 * n,
                            x,
                        ),
                        _ => {
                            let c = d[1];
                            let g = Tensor::from_f32(gpu, &[c], &vec![1.0; c])?.requiring_grad();
                            let b = Tensor::from_f32(gpu, &[c], &vec![0.0; c])?.requiring_grad();
                            let st = batchnorm::BnState::new(gpu, c)?;
                            let algo = match variant {
                                Some(v) => batchnorm::BnAlgo::from_name(v)?,
                                None => batchnorm::BnAlgo::Auto,
                            };
                            let y = batchnorm::batch_norm_with(
                                &mut tape,
                                &x,
                                &g,
                                &b,
                                &st,
                                batchnorm::BnMode::Train,
                                base == "batchnorm_relu",
                                algo,
                            )?;
                            // stats (2 reads), apply (read + write), backward (3 reads x 2, write)
                            (y, 10.0 * n, 4.0 * 10.0 * n, x)
                        }
                    }
                }
                "shortcut" => {
                    let d = dims(shape, 5)?;
                    let x = random(gpu, &mut rng, &d[..4])?.requiring_grad();
                    let n = x.numel() as f64;
                    (
                        shortcut::option_a(&mut tape, &x, d[4], 2)?,
                        0.0,
                        4.0 * 2.0 * n,
                        x,
                    )
                }
                _ => {
                    let d = dims(shape, 3)?;
                    let (b, i, o) = (d[0], d[1], d[2]);
                    let x = random(gpu, &mut rng, &[b, i])?.requiring_grad();
                    let y = if base == "linear" {
                        let w = random(gpu, &mut rng, &[o, i])?.requiring_grad();
                        let bias = random(gpu, &mut rng, &[o])?.requiring_grad();
                        linear::linear(&mut tape, &x, &w, Some(&bias))?
                    } else {
                        let w = random(gpu, &mut rng, &[i, o])?.requiring_grad();
                        linear::normed_linear(&mut tape, &x, &w)?
                    };
                    let f = 3.0 * 2.0 * (b * i * o) as f64;
                    (y, f, 4.0 * 3.0 * (b * i + i * o + b * o) as f64, x)
                }
            };
            let seed = random(gpu, &mut rng, out.shape())?;
            tape.backward_with(&out, seed)?;
            Case::from_tape(kernel, shape, flops, bytes, tape, vec![keep])
        }
        "whiten_cov" | "ns_step" | "eigen" => {
            use crate::ops::{eigen, linalg};
            let d = dims(shape, 2)?;
            let mut tape = Tape::new(gpu);
            let (flops, bytes, keep) = match base {
                "whiten_cov" => {
                    // Sigma = Xc^T Xc / B + eps I over all d channels: [1, B, d] -> [1, d, d].
                    let (b, dd) = (d[0], d[1]);
                    let xt = random(gpu, &mut rng, &[1, b, dd])?;
                    let c = crate::ops::matmul::matmul(&mut tape, &xt, &xt, true, false)?;
                    linalg::add_identity(&mut tape, &c, 1.0 / b as f32, 1e-5)?;
                    (
                        2.0 * (b * dd * dd) as f64,
                        4.0 * (b * dd + dd * dd) as f64,
                        xt,
                    )
                }
                "ns_step" => {
                    // One coupled iteration on G matrices of n x n: ZY, M = 1.5 I - 0.5 ZY, YM, MZ.
                    let (g, n) = (d[0], d[1]);
                    let y = random(gpu, &mut rng, &[g, n, n])?;
                    let z = random(gpu, &mut rng, &[g, n, n])?;
                    let zy = crate::ops::matmul::matmul(&mut tape, &z, &y, false, false)?;
                    let m = linalg::add_identity(&mut tape, &zy, -0.5, 1.5)?;
                    crate::ops::matmul::matmul(&mut tape, &y, &m, false, false)?;
                    crate::ops::matmul::matmul(&mut tape, &m, &z, false, false)?;
                    let nn = (g * n * n) as f64;
                    (3.0 * 2.0 * nn * n as f64, 4.0 * 9.0 * nn, y)
                }
                _ => {
                    // Jacobi eigendecomposition + W = U diag(l^-1/2) U^T of G SPD matrices.
                    let (g, n) = (d[0], d[1]);
                    let mut v = Vec::with_capacity(g * n * n);
                    let a = rng.vec_f32(g * n * n, -1.0, 1.0);
                    for k in 0..g {
                        for i in 0..n {
                            for j in 0..n {
                                // A A^T / n + I: symmetric positive definite.
                                let s: f32 = (0..n)
                                    .map(|t| a[(k * n + i) * n + t] * a[(k * n + j) * n + t])
                                    .sum();
                                v.push(s / n as f32 + if i == j { 1.0 } else { 0.0 });
                            }
                        }
                    }
                    let sigma = Tensor::from_f32(gpu, &[g, n, n], &v)?;
                    eigen::zca_eigen(&mut tape, &sigma)?;
                    // Flops: ~sweeps x n^2/2 rotations x 8n (a and v updates); report at 8 sweeps.
                    let nn = (g * n * n) as f64;
                    (8.0 * nn / 2.0 * 8.0 * n as f64, 4.0 * 4.0 * nn, sigma)
                }
            };
            Case::from_tape(kernel, shape, flops, bytes, tape, vec![keep])
        }
        "add" | "mul" | "scale" | "relu" => {
            let n = dims(shape, 1)?[0];
            let a = random(gpu, &mut rng, &[n])?;
            let b = random(gpu, &mut rng, &[n])?;
            let c = Tensor::zeros(gpu, &[n], DType::F32)?;
            let entry: &'static str = match base {
                "add" => "add",
                "mul" => "mul",
                "scale" => "scale",
                _ => "relu",
            };
            let binary = matches!(kernel, "add" | "mul");
            let rhs = if binary { &b } else { &a };
            let disp = elementwise::dispatch(gpu, entry, &a, rhs, &c, 1.0, 0.0, 0)?;
            let by = 4.0 * n as f64 * if binary { 3.0 } else { 2.0 };
            mk(vec![disp], n as f64, by, vec![a, b, c])
        }
        "reduce_sum" => {
            let d = dims(shape, 2)?;
            let x = random(gpu, &mut rng, &[d[0], d[1]])?;
            let o = Tensor::zeros(gpu, &[d[0]], DType::F32)?;
            let disp = reduce::sum_dispatch(gpu, &x, &o, [d[0], d[1], 1], 1.0, 0.0)?;
            let n = (d[0] * d[1]) as f64;
            mk(vec![disp], n, 4.0 * (n + d[0] as f64), vec![x, o])
        }
        "cross_entropy" => {
            let d = dims(shape, 2)?;
            let (b, c) = (d[0], d[1]);
            let z = random(gpu, &mut rng, &[b, c])?.requiring_grad();
            let labels: Vec<u32> = (0..b).map(|i| (i % c) as u32).collect();
            let y = Tensor::from_u32(gpu, &[b], &labels)?;
            let mut tape = Tape::new(gpu);
            let loss = cross_entropy::cross_entropy(&mut tape, &z, &y, None)?;
            tape.backward(&loss)?;
            // Forward and backward together: the loss is always used with its gradient.
            let n = (b * c) as f64;
            Case::from_tape(kernel, shape, 8.0 * n, 4.0 * 3.0 * n, tape, vec![z, y])
        }
        "sgd" => {
            let n = dims(shape, 1)?[0];
            let mut pb = crate::params::ParamsBuilder::default();
            pb.add("w", &[n], rng.vec_f32(n, -1.0, 1.0))?;
            let params = pb.build(gpu)?;
            let sgd = crate::optim::Sgd::new(
                gpu,
                &params,
                crate::optim::SgdConfig {
                    lr: 1e-3,
                    momentum: 0.9,
                    weight_decay: 2e-4,
                    nesterov: false,
                },
            )?;
            let keep = vec![
                params.flat_values()?,
                params.flat_grads()?,
                sgd.momentum.clone(),
            ];
            let mut cs = mk(Vec::new(), 6.0 * n as f64, 4.0 * 5.0 * n as f64, keep);
            cs.dispatches = vec![sgd.into_dispatch()];
            cs
        }
        _ => bail!(
            "unknown kernel {kernel:?}; known kernels: {}",
            KERNELS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Every case selected by the optional kernel name and shape.
pub fn select(gpu: &Gpu, kernel: Option<&str>, shape: Option<&str>) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let base = kernel.map(|k| k.split_once('@').map_or(k, |(b, _)| b));
    if let Some(k) = base
        && !KERNELS.iter().any(|(n, _)| *n == k)
    {
        bail!(
            "unknown kernel {k:?}; known kernels: {} (pin a variant with {VARIANTS_HELP})",
            KERNELS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
        );
    }
    for (name, shapes) in KERNELS {
        if base.is_some_and(|k| k != *name) {
            continue;
        }
        let full = kernel.unwrap_or(name);
        match shape {
            Some(s) => out.push(case(gpu, full, s)?),
            None => {
                for s in *shapes {
                    out.push(case(gpu, full, s)?);
                }
            }
        }
    }
    Ok(out)
}

impl Case {
    /// Record every launch of the case.
    pub fn encode(&self, rec: &mut crate::gpu::Recorder) {
        for d in &self.dispatches {
            d.record(rec);
        }
        if let Some(t) = &self.tape_prog {
            t.encode_forward(rec);
            t.encode_backward(rec);
        }
    }

    /// Run one launch set and wait for it (criterion's iteration).
    pub fn run_once(&self, gpu: &Gpu) -> Result<f64> {
        self.run_wall(gpu, 1)
    }

    /// Submit `repeats` launch sets in one pass and wait; returns wall seconds.
    fn run_wall(&self, gpu: &Gpu, repeats: usize) -> Result<f64> {
        let t0 = Instant::now();
        let mut rec = crate::gpu::Recorder::new(gpu);
        for _ in 0..repeats {
            self.encode(&mut rec);
        }
        gpu.queue.submit([rec.finish()]);
        gpu.wait()?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Submit `repeats` launch sets in one pass bracketed by GPU timestamps; returns seconds.
    fn run_timestamps(&self, gpu: &Gpu, repeats: usize, qs: &wgpu::QuerySet) -> Result<f64> {
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps read"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // Timestamps in empty passes around the launches: texture mirrors' copies sit
        // between passes, and count.
        let mut rec = crate::gpu::Recorder::new(gpu);
        rec.timestamps(qs, Some(0), None);
        for _ in 0..repeats {
            self.encode(&mut rec);
        }
        rec.timestamps(qs, None, Some(1));
        let mut enc = rec.into_encoder();
        enc.resolve_query_set(qs, 0..2, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
        gpu.queue.submit([enc.finish()]);
        let bytes = crate::gpu::map_read(gpu, &read, 16)?;
        let t: &[u64] = bytemuck::cast_slice(&bytes);
        let ticks = t[1].saturating_sub(t[0]) as f64;
        Ok(ticks * gpu.queue.get_timestamp_period() as f64 * 1e-9)
    }
}

/// Time `case`: warm up, pick a repeat count so one sample lasts >= ~20 ms, take `samples`
/// samples and report the median per launch set.
pub fn time_case(gpu: &Gpu, case: &Case, samples: usize) -> Result<Measurement> {
    case.run_wall(gpu, 1)?; // compile, first-touch
    let one = case.run_wall(gpu, 1)?.max(1e-6);
    let repeats = ((0.02 / one).ceil() as usize).clamp(1, 200);
    let qs = gpu.has_timestamps().then(|| {
        gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        })
    });
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let s = match &qs {
            // Some drivers report zeros for pass timestamps: fall back to the wall clock.
            Some(q) => match case.run_timestamps(gpu, repeats, q)? {
                t if t > 0.0 => t,
                _ => case.run_wall(gpu, repeats)?,
            },
            None => case.run_wall(gpu, repeats)?,
        };
        times.push(s / repeats as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    Ok(Measurement {
        kernel: case.kernel.clone(),
        shape: case.shape.clone(),
        ms: med * 1e3,
        gflops: case.flops / med / 1e9,
        gbs: case.bytes / med / 1e9,
        timer: if qs.is_some() {
            "gpu-timestamp"
        } else {
            "wall-clock"
        },
        samples: times.len(),
        repeats,
        bound_ms: None,
        pct_peak: None,
    })
}

/// Whole-step benchmark of a model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelMeasurement {
    pub model: String,
    /// Activations: "f32" or "f16" (`--precision`).
    pub precision: &'static str,
    pub batch: usize,
    pub size: usize,
    /// Median milliseconds per training step (forward, loss, backward, SGD; loss read back).
    pub ms: f64,
    pub images_per_s: f64,
    pub samples: usize,
    /// Launches per step.
    pub launches: usize,
    /// Seconds from building the model to the end of its first step: recording (and tuning,
    /// with a cold cache), pipeline compilation and one step.
    pub first_step_s: f64,
    /// (family, share of GPU time) from a separate profiling run; empty without timestamps.
    pub breakdown: Vec<(String, f64)>,
    /// (kernel entry point, share of GPU time, launches), largest first: the same run by kernel.
    pub kernels: Vec<(String, f64, usize)>,
    pub timer: &'static str,
    /// Sum of the launches' GPU times in the profiling run, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_ms: Option<f64>,
    /// Sum of the launches' roofline bounds (each launch: max(FLOPs / peak FLOP/s, bound bytes /
    /// peak bandwidth); FLOPs known for matmul and convolutions, bytes from the bound ranges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roofline_ms: Option<f64>,
    /// The kernels losing the most time against their bound: (entry, measured ms, bound ms,
    /// launches), largest loss first.
    pub losses: Vec<(String, f64, f64, usize)>,
    /// Every launch of the profiled step in order (`bench --launches`; not serialised).
    #[serde(skip)]
    pub launches_profiled: Vec<LaunchTime>,
}

/// One launch of a profiled step: what `bench --model ... --launches` lists.
#[derive(Clone, Debug)]
pub struct LaunchTime {
    pub family: &'static str,
    pub entry: &'static str,
    pub workgroups: [u32; 3],
    /// GPU time (timestamps around the launch alone).
    pub ms: f64,
    /// FLOPs where the op set them (matmul, convolutions), else 0.
    pub flops: f64,
    /// Bytes of the bound ranges.
    pub bytes: f64,
}

/// A ResNet `arch` (10 classes, linear classifier, seed 1) and its recorded training step at
/// `[batch, channels, size, size]`: what `bench --model` times and `tune` pre-tunes. Recording
/// asks the tuner for every op's variant.
pub fn model_step(
    gpu: &Gpu,
    spec: &StepSpec<'_>,
) -> Result<(
    crate::models::resnet::ResNet,
    crate::models::resnet::ResNetStep,
)> {
    let StepSpec {
        arch,
        batch,
        size,
        channels,
        whiten,
        precision,
    } = *spec;
    if batch < 2 || size == 0 || channels == 0 {
        bail!("--batch must be >= 2 (batch norm) and --size, --channels >= 1");
    }
    let (model, loss) = bench_model_on(gpu, arch, channels, whiten, precision)?;
    let st = model.train_step(gpu, [batch, channels, size, size], BENCH_SGD, &loss)?;
    Ok((model, st))
}

/// The training step a model benchmark records: model, input shape `[batch, channels, size,
/// size]`, whitening and activation precision.
#[derive(Clone, Copy, Debug)]
pub struct StepSpec<'a> {
    pub arch: &'a str,
    pub batch: usize,
    pub size: usize,
    pub channels: usize,
    pub whiten: Option<crate::ops::whiten::WhitenConfig>,
    pub precision: crate::tensor::DType,
}

fn precision_name(p: crate::tensor::DType) -> &'static str {
    match p {
        crate::tensor::DType::F16 => "f16",
        _ => "f32",
    }
}

/// The optimizer of benchmarked steps.
const BENCH_SGD: crate::optim::SgdConfig = crate::optim::SgdConfig {
    lr: 0.01,
    momentum: 0.9,
    weight_decay: 2e-4,
    nesterov: false,
};

/// Class sizes of benchmarked steps (10 classes, 5,000 halving down).
fn bench_counts() -> Vec<usize> {
    (0..10).map(|c| 5000 >> c).collect()
}

/// A benchmarked model on `gpu` (10 classes, linear classifier, seed 1) and its loss.
fn bench_model_on(
    gpu: &Gpu,
    arch: &str,
    channels: usize,
    whiten: Option<crate::ops::whiten::WhitenConfig>,
    precision: crate::tensor::DType,
) -> Result<(crate::models::resnet::ResNet, crate::losses::LossSetup)> {
    use crate::models::resnet::{Arch, Classifier, ResNet, ResNetConfig};
    let mut model = ResNet::new(
        gpu,
        ResNetConfig {
            arch: Arch::parse(arch)?,
            in_channels: channels,
            classes: 10,
            classifier: Classifier::Linear,
            seed: 1,
            whiten,
        },
    )?;
    model.set_precision(gpu, precision)?;
    let loss = crate::losses::LossSetup::new(gpu, Default::default(), &bench_counts())?;
    Ok((model, loss))
}

/// Time training steps of `arch` at `[batch, channels, size, size]` with random data.
pub fn bench_model(gpu: &Gpu, spec: &StepSpec<'_>, samples: usize) -> Result<ModelMeasurement> {
    let StepSpec {
        arch,
        batch,
        size,
        channels,
        precision,
        ..
    } = *spec;
    let t_first = Instant::now();
    let (_model, st) = model_step(gpu, spec)?;
    let mut rng = Rng64::new(1);
    st.x.write_f32(gpu, &rng.vec_f32(batch * channels * size * size, -1.0, 1.0))?;
    let labels: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    st.y.write_u32(gpu, &labels)?;
    st.step.run()?; // compile and first touch
    let first_step_s = t_first.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..samples.max(1) {
        let t0 = Instant::now();
        st.step.run()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    let launches: Vec<(&'static str, &Dispatch)> = st
        .step
        .tape
        .launches()
        .map(|l| (l.family, &l.dispatch))
        .chain(st.step.sgd.dispatches().into_iter().map(|d| ("sgd", d)))
        .collect();
    let launches_profiled = if gpu.has_timestamps() {
        profile(gpu, &launches)?
    } else {
        Vec::new()
    };
    let (breakdown, per_entry) = summarize(&launches_profiled);
    let total: f64 = per_entry.values().map(|t| t.0).sum::<f64>().max(1e-12);
    let mut kernels: KernelShares = per_entry
        .iter()
        .map(|(e, (s, n))| (e.clone(), s / total, *n))
        .collect();
    kernels.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (mut gpu_ms, mut roofline_ms, mut losses) = (None, None, Vec::new());
    if !per_entry.is_empty() {
        let peaks = crate::peak::measure(gpu, 3)?.0;
        let bound_of: std::collections::BTreeMap<&str, f64> = {
            let mut m = std::collections::BTreeMap::new();
            for (_, d) in &launches {
                *m.entry(d.kernel.entry).or_insert(0.0) += peaks.bound_seconds(d.flops, d.bytes);
            }
            m
        };
        let mut rows: Vec<(String, f64, f64, usize)> = per_entry
            .iter()
            .map(|(e, (t, n))| {
                let b = bound_of.get(e.as_str()).copied().unwrap_or(0.0);
                (e.clone(), t * 1e3, b * 1e3, *n)
            })
            .collect();
        gpu_ms = Some(rows.iter().map(|r| r.1).sum());
        roofline_ms = Some(rows.iter().map(|r| r.2).sum());
        rows.sort_by(|a, b| (b.1 - b.2).total_cmp(&(a.1 - a.2)));
        rows.truncate(5);
        losses = rows;
    }
    Ok(ModelMeasurement {
        model: arch.to_string(),
        precision: precision_name(precision),
        batch,
        size,
        ms: med * 1e3,
        images_per_s: batch as f64 / med,
        samples: times.len(),
        launches: launches.len(),
        first_step_s,
        breakdown,
        kernels,
        timer: "wall-clock",
        gpu_ms,
        roofline_ms,
        losses,
        launches_profiled,
    })
}

/// Whole-step benchmark of a model trained data parallel over several devices.
#[derive(Clone, Debug, Serialize)]
pub struct ParallelMeasurement {
    pub model: String,
    /// The whole batch (each device takes batch / devices).
    pub batch: usize,
    pub size: usize,
    pub devices: Vec<String>,
    pub sync_bn: bool,
    /// Activations: "f32" or "f16".
    pub precision: &'static str,
    /// Median milliseconds per step.
    pub ms: f64,
    pub images_per_s: f64,
    pub samples: usize,
    /// Collectives per step and the bytes each device exchanges per step.
    pub collectives: usize,
    pub bytes_per_device: u64,
    /// Mean milliseconds per step waiting for the devices to reach collectives (their compute),
    /// and exchanging (read-back copies, host sums, write-back).
    pub wait_ms: f64,
    pub exchange_ms: f64,
}

/// Time data-parallel training steps of `arch` on `devices` (adapter indices or name parts;
/// the same adapter may repeat) for the whole batch `[batch, channels, size, size]`.
pub fn bench_model_parallel(
    gpu: &Gpu,
    spec: &StepSpec<'_>,
    samples: usize,
    devices: &[String],
    sync_bn: bool,
) -> Result<ParallelMeasurement> {
    let StepSpec {
        arch,
        batch,
        size,
        channels,
        whiten,
        precision,
    } = *spec;
    if devices.len() < 2 {
        bail!("--devices needs at least two entries to measure data parallel");
    }
    if batch < 2 * devices.len() || !batch.is_multiple_of(devices.len()) || size == 0 {
        bail!(
            "--batch {batch} must split into at least 2 images per device over {} devices",
            devices.len()
        );
    }
    let gpus = crate::replicas::open_list(gpu, devices)?;
    let (model, loss) = bench_model_on(&gpus[0], arch, channels, whiten, precision)?;
    let replicas = crate::replicas::Replicas::build(
        &gpus,
        |g| Ok(bench_model_on(g, arch, channels, whiten, precision)?.0),
        Default::default(),
        &bench_counts(),
    )?;
    let st = crate::replicas::Runner::record(
        &gpus[0],
        &model,
        &loss,
        &replicas,
        [batch, channels, size, size],
        BENCH_SGD,
        sync_bn,
        None,
    )?;
    let mut rng = Rng64::new(1);
    let x = rng.vec_f32(batch * channels * size * size, -1.0, 1.0);
    let y: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    let step = || -> Result<()> {
        st.start(&gpus[0], &x, &y)?;
        st.finish()?;
        Ok(())
    };
    step()?; // compile and first touch
    let (_, _, before) = st.exchange_stats().expect("several devices");
    let mut times = Vec::new();
    for _ in 0..samples.max(1) {
        let t0 = Instant::now();
        step()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let (collectives, bytes_per_device, after) = st.exchange_stats().expect("several devices");
    let n = times.len() as f64;
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    Ok(ParallelMeasurement {
        model: arch.to_string(),
        batch,
        size,
        devices: devices.to_vec(),
        sync_bn,
        precision: precision_name(precision),
        ms: med * 1e3,
        images_per_s: batch as f64 / med,
        samples: times.len(),
        collectives,
        bytes_per_device,
        wait_ms: (after.0 - before.0) / n * 1e3,
        exchange_ms: (after.1 - before.1) / n * 1e3,
    })
}

/// Per kernel entry point: (name, share of GPU time, launches).
type KernelShares = Vec<(String, f64, usize)>;
/// Per kernel entry point: (seconds, launches).
type EntryTimes = std::collections::BTreeMap<String, (f64, usize)>;

/// Shares of GPU time per family (largest first) and (seconds, launches) per kernel entry point
/// of a profiled step.
fn summarize(each: &[LaunchTime]) -> (Vec<(String, f64)>, EntryTimes) {
    let mut per: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut times = EntryTimes::new();
    for l in each {
        *per.entry(l.family).or_default() += l.ms * 1e-3;
        let e = times.entry(l.entry.to_string()).or_default();
        e.0 += l.ms * 1e-3;
        e.1 += 1;
    }
    let total: f64 = per.values().sum::<f64>().max(1e-12);
    let mut v: Vec<(String, f64)> = per
        .into_iter()
        .map(|(k, s)| (k.to_string(), s / total))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    (v, times)
}

/// Every launch's GPU time, each launch in its own pass bracketed by timestamps.
fn profile(gpu: &Gpu, launches: &[(&'static str, &Dispatch)]) -> Result<Vec<LaunchTime>> {
    let n = launches.len() as u32;
    // wgpu caps a query set at 4096 queries: profile in chunks.
    let chunk = 2000u32;
    let mut each = Vec::with_capacity(launches.len());
    for start in (0..n).step_by(chunk as usize) {
        let end = (start + chunk).min(n);
        let count = 2 * (end - start);
        let qs = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * 8;
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut rec = crate::gpu::Recorder::new(gpu);
        for i in start..end {
            let q = 2 * (i - start);
            let d = launches[i as usize].1;
            if d.has_copies() {
                // A launch with texture mirrors' copies: timestamps bracket copies and launch.
                rec.timestamps(&qs, Some(q), None);
                d.record(&mut rec);
                rec.timestamps(&qs, None, Some(q + 1));
            } else {
                let mut pass = rec
                    .encoder()
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &qs,
                            beginning_of_pass_write_index: Some(q),
                            end_of_pass_write_index: Some(q + 1),
                        }),
                    });
                d.encode(&mut pass);
            }
        }
        let mut enc = rec.into_encoder();
        enc.resolve_query_set(&qs, 0..count, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        let raw = crate::gpu::map_read(gpu, &read, bytes)?;
        let t: &[u64] = bytemuck::cast_slice(&raw);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        for i in start..end {
            let q = 2 * (i - start) as usize;
            let dt = t[q + 1].saturating_sub(t[q]) as f64 * period;
            let (family, d) = launches[i as usize];
            each.push(LaunchTime {
                family,
                entry: d.kernel.entry,
                workgroups: d.workgroups,
                ms: dt * 1e3,
                flops: d.flops,
                bytes: d.bytes,
            });
        }
    }
    Ok(each)
}
