//! The adapter's own ceilings, measured with small dedicated kernels (`shaders/peak.wgsl`):
//! register-only FMA throughput, streaming storage read and write bandwidth, uniform-buffer and
//! workgroup-memory read rates, and the cost of an empty dispatch and of a submission. Kernel
//! benchmarks quote their time against the roofline these give ([`Peaks::bound_seconds`]).

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::bench::{Case, Measurement, time_case};
use crate::gpu::Gpu;
use crate::gpu::{Access, Binding, Dispatch, GpuBuffer};
use crate::tensor::{DType, Tensor};

/// The ceilings (None: not measurable on this adapter).
#[derive(Clone, Debug, Serialize)]
pub struct Peaks {
    pub fma_gflops: f64,
    pub read_gbs: f64,
    pub write_gbs: f64,
    /// Uniform-buffer reads at a shared address (needs 64 KiB uniform bindings).
    pub uniform_gbs: Option<f64>,
    pub workgroup_gbs: f64,
    /// One empty dispatch inside a pass, microseconds.
    pub dispatch_us: f64,
    /// Submit one small command buffer and wait for it, microseconds (median).
    pub submit_us: f64,
}

impl Peaks {
    /// Roofline time of `flops` and `bytes` of device-memory traffic: the larger of the compute
    /// and the memory bound (bandwidth: the better of streaming read and write).
    pub fn bound_seconds(&self, flops: f64, bytes: f64) -> f64 {
        let bw = self.read_gbs.max(self.write_gbs).max(1e-9) * 1e9;
        (flops / (self.fma_gflops.max(1e-9) * 1e9)).max(bytes / bw)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    iters: u32,
    threads: u32,
    _p: u32,
}

fn params(n: usize, iters: usize, threads: usize) -> Params {
    Params {
        n: n as u32,
        iters: iters as u32,
        threads: threads as u32,
        _p: 0,
    }
}

/// Invocations of the grid-stride kernels: 1024 workgroups of 256, so each invocation loops a
/// few dozen times at most (llvmpipe stops loops past 65,535 iterations per invocation).
const STREAM_WORKGROUPS: usize = 1024;

/// One launch of `shader peak::entry` as a benchmark case.
#[allow(clippy::too_many_arguments)] // a case is its launch plus its name and costs
fn one(
    gpu: &Gpu,
    entry: &'static str,
    bindings: &[Binding<'_>],
    p: Params,
    workgroups: u32,
    (kernel, shape): (&str, String),
    (flops, bytes): (f64, f64),
    keep: Vec<Tensor>,
) -> Result<Case> {
    let d = Dispatch::build(
        gpu,
        "peak",
        entry,
        bindings,
        bytemuck::bytes_of(&p),
        [workgroups, 1, 1],
    )?;
    Ok(Case::new(kernel, &shape, flops, bytes, vec![d], keep))
}

/// The peak cases.
pub fn cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let lim = &gpu.limits;
    // 64 MiB streams, or what the adapter binds.
    let stream_bytes = (64u64 << 20)
        .min(lim.max_storage_buffer_binding_size)
        .min(lim.max_buffer_size) as usize
        / 16
        * 16;
    let n4 = stream_bytes / 16;
    let threads = STREAM_WORKGROUPS * 256;
    let big = Tensor::zeros(gpu, &[n4 * 4], DType::F32)?;
    let sink = Tensor::zeros(gpu, &[threads * 4], DType::F32)?;
    let mut out = Vec::new();

    // FMA: 4096 workgroups x 64 invocations x 256 iterations x 64 FLOP, wide and narrow.
    let (fwg, iters) = (4096usize, 256usize);
    let inv = fwg * 64;
    let fout = Tensor::zeros(gpu, &[inv * 4], DType::F32)?;
    let flop = (inv * iters * 64) as f64;
    for (entry, name) in [
        ("fma_chains", "peak_fma"),
        ("fma_narrow", "peak_fma_narrow"),
    ] {
        out.push(one(
            gpu,
            entry,
            &[fout.write()],
            params(inv, iters, 0),
            fwg as u32,
            (name, format!("{inv}x{iters}x64flop")),
            (flop, 0.0),
            vec![fout.clone()],
        )?);
    }
    let sw = STREAM_WORKGROUPS as u32;
    let stream = (0.0, stream_bytes as f64);
    out.push(one(
        gpu,
        "read_stream",
        &[big.read(), sink.write()],
        params(n4, 0, threads),
        sw,
        ("peak_read", format!("{stream_bytes}B")),
        stream,
        vec![big.clone(), sink.clone()],
    )?);
    out.push(one(
        gpu,
        "write_stream",
        &[big.write()],
        params(n4, 0, threads),
        sw,
        ("peak_write", format!("{stream_bytes}B")),
        stream,
        vec![big.clone()],
    )?);
    // Workgroup memory: 256 iterations of one vec4 per invocation.
    let iters = 256usize;
    out.push(one(
        gpu,
        "wg_read",
        &[big.read(), sink.write()],
        params(0, iters, threads),
        sw,
        ("peak_workgroup", format!("{threads}x{iters}xvec4")),
        (0.0, (threads * iters * 16) as f64),
        vec![big.clone(), sink.clone()],
    )?);
    // Uniform reads: a 64 KiB block, where the adapter binds that much.
    if lim.max_uniform_buffer_binding_size >= 65536 {
        let ub = std::sync::Arc::new(GpuBuffer::uniform(gpu, "peak uniform", &vec![0u8; 65536]));
        let (wg, iters) = (256usize, 512usize);
        let inv = wg * 256;
        let usink = Tensor::zeros(gpu, &[inv * 4], DType::F32)?;
        let ubind = Binding {
            access: Access::Uniform,
            buffer: &ub,
            offset: 0,
            size: 65536,
            half: false,
            tex: None,
        };
        out.push(one(
            gpu,
            "uniform_read",
            &[ubind, usink.write()],
            params(4096, iters, 0),
            wg as u32,
            ("peak_uniform", format!("{inv}x{iters}xvec4")),
            (0.0, (inv * iters * 16) as f64),
            vec![usink.clone()],
        )?);
    }
    out.push(noop_case(gpu)?);
    Ok(out)
}

/// An (almost) empty launch: one workgroup whose store is never taken.
fn noop_case(gpu: &Gpu) -> Result<Case> {
    let nout = Tensor::zeros(gpu, &[4], DType::F32)?;
    one(
        gpu,
        "noop",
        &[nout.write()],
        params(0, 0, 0),
        1,
        ("peak_dispatch", "1x64".into()),
        (0.0, 0.0),
        vec![nout.clone()],
    )
}

/// Median microseconds of submitting one command buffer (one empty dispatch) and waiting.
fn submit_us(gpu: &Gpu) -> Result<f64> {
    let c = noop_case(gpu)?;
    let mut times = Vec::new();
    for i in 0..25 {
        let t0 = Instant::now();
        let mut rec = crate::gpu::Recorder::new(gpu);
        c.encode(&mut rec);
        gpu.queue.submit([rec.finish()]);
        gpu.wait()?;
        if i >= 5 {
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// Measure every ceiling (`samples` per case, median); also returns the rows as measurements.
pub fn measure(gpu: &Gpu, samples: usize) -> Result<(Peaks, Vec<Measurement>)> {
    let mut rows = Vec::new();
    for c in cases(gpu)? {
        rows.push(time_case(gpu, &c, samples)?);
    }
    let get = |k: &str| rows.iter().find(|m| m.kernel == k);
    let submit = submit_us(gpu)?;
    let peaks = Peaks {
        // The better of the wide (GPU-shaped) and narrow (CPU-shaped) FMA kernels.
        fma_gflops: ["peak_fma", "peak_fma_narrow"]
            .iter()
            .filter_map(|k| get(k).map(|m| m.gflops))
            .fold(0.0, f64::max),
        read_gbs: get("peak_read").map_or(0.0, |m| m.gbs),
        write_gbs: get("peak_write").map_or(0.0, |m| m.gbs),
        uniform_gbs: get("peak_uniform").map(|m| m.gbs),
        workgroup_gbs: get("peak_workgroup").map_or(0.0, |m| m.gbs),
        dispatch_us: get("peak_dispatch").map_or(0.0, |m| m.ms * 1e3),
        submit_us: submit,
    };
    Ok((peaks, rows))
}
