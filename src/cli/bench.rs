//! `longtail bench`.

use anyhow::Result;
use clap::Args;

use longtail::bench::{bench_model, select, time_case};
use longtail::gpu::Gpu;

#[derive(Args)]
pub struct BenchArgs {
    /// Only this kernel (see the list printed without it).
    #[arg(long)]
    kernel: Option<String>,
    /// Only this shape, e.g. 1024x1024x1024 for matmul (MxNxK), 1048576 for elementwise.
    #[arg(long)]
    shape: Option<String>,
    /// Samples per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Time whole training steps of a model instead (resnet8/20/32/..., resnet10).
    #[arg(long)]
    model: Option<String>,
    /// The step of --model.
    #[command(flatten)]
    step: super::StepShape,
    /// Measure the adapter's ceilings only (FMA, read/write/uniform/workgroup bandwidth,
    /// dispatch and submission cost).
    #[arg(long)]
    peak: bool,
    /// Kernel rows without pct_peak (skips measuring the ceilings first).
    #[arg(long)]
    no_peak: bool,
    /// With --model: train data parallel over these adapters ("0,0": one adapter twice) and
    /// report the collectives' cost; --batch is the whole batch.
    #[arg(long, requires = "model", value_delimiter = ',')]
    devices: Option<Vec<String>>,
    /// With --model: also list every launch of the profiled step (family, kernel, workgroups,
    /// GPU ms, GFLOP/s where known, MB bound).
    #[arg(long, requires = "model")]
    launches: bool,
    /// With --devices: synchronised batch norm.
    #[arg(long, requires = "devices")]
    sync_bn: bool,
}

fn print_peaks(gpu: &Gpu, p: &longtail::peak::Peaks) {
    println!("adapter: {}", gpu.describe());
    println!("ceiling                  value");
    println!("FMA                {:>10.2} GFLOP/s", p.fma_gflops);
    println!("storage read       {:>10.2} GB/s", p.read_gbs);
    println!("storage write      {:>10.2} GB/s", p.write_gbs);
    match p.uniform_gbs {
        Some(u) => println!("uniform read       {u:>10.2} GB/s (shared address)"),
        None => println!("uniform read                - (uniform bindings < 64 KiB)"),
    }
    println!("workgroup read     {:>10.2} GB/s", p.workgroup_gbs);
    println!("empty dispatch     {:>10.2} us", p.dispatch_us);
    println!("submit + wait      {:>10.2} us", p.submit_us);
}

pub fn run(gpu: &Gpu, a: BenchArgs) -> Result<()> {
    if let (Some(model), Some(devices)) = (&a.model, &a.devices) {
        let st = &a.step;
        for p in &st.precision {
            let m = longtail::bench::bench_model_parallel(
                gpu,
                &st.spec(model, *p),
                a.samples,
                devices,
                a.sync_bn,
            )?;
            if a.json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                println!(
                    "{} ({}) batch {} at {}x{} on {} devices ({}), batch norm {}: {:.1} ms/step, \
                 {:.2} images/s (median of {})",
                    m.model,
                    m.precision,
                    m.batch,
                    m.size,
                    m.size,
                    m.devices.len(),
                    m.devices.join(","),
                    if m.sync_bn {
                        "synchronised"
                    } else {
                        "per device"
                    },
                    m.ms,
                    m.images_per_s,
                    m.samples
                );
                println!(
                    "{} collectives per step, {:.2} MB per device; per step {:.1} ms waiting for the \
                 devices' compute, {:.2} ms exchanging",
                    m.collectives,
                    m.bytes_per_device as f64 / 1e6,
                    m.wait_ms,
                    m.exchange_ms
                );
            }
        }
        return Ok(());
    }
    if let Some(model) = &a.model {
        let st = &a.step;
        let mut done: Vec<(&'static str, f64)> = Vec::new();
        if !a.json {
            println!("adapter: {}", gpu.describe());
        }
        for p in &st.precision {
            let m = bench_model(gpu, &st.spec(model, *p), a.samples)?;
            done.push((m.precision, m.ms));
            if a.json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                println!(
                    "{} ({}) batch {} at {}x{}: {:.1} ms/step, {:.2} images/s (median of {}, {} launches per step)",
                    m.model,
                    m.precision,
                    m.batch,
                    m.size,
                    m.size,
                    m.ms,
                    m.images_per_s,
                    m.samples,
                    m.launches
                );
                println!(
                    "first step {:.1} s (recording, tuning as --tune {} says, pipeline compilation)",
                    m.first_step_s,
                    gpu.tuner.mode()
                );
                for (fam, share) in &m.breakdown {
                    println!("  {fam:<12} {:>5.1} %", 100.0 * share);
                }
                if !m.kernels.is_empty() {
                    println!("by kernel (share of GPU time, launches per step):");
                    for (entry, share, n) in m.kernels.iter().take(12) {
                        println!("  {entry:<16} {:>5.1} %  {n:>5}", 100.0 * share);
                    }
                }
                if let (Some(g), Some(r)) = (m.gpu_ms, m.roofline_ms) {
                    println!(
                        "GPU time {g:.1} ms per step against a roofline step of {r:.1} ms ({:.1} % of peak)",
                        100.0 * r / g.max(1e-9)
                    );
                    println!(
                        "losing the most time against their bound (measured / bound ms, launches):"
                    );
                    for (e, t, b, n) in &m.losses {
                        println!("  {e:<16} {t:>9.2} / {b:>8.3}  {n:>5}");
                    }
                }
                if a.launches {
                    println!("launches (family, kernel, workgroups, GPU ms, GFLOP/s, MB bound):");
                    for (i, l) in m.launches_profiled.iter().enumerate() {
                        let gf = if l.flops > 0.0 {
                            format!("{:8.2}", l.flops / (l.ms * 1e-3).max(1e-12) / 1e9)
                        } else {
                            format!("{:>8}", "-")
                        };
                        let [x, y, z] = l.workgroups;
                        println!(
                            "  {i:4} {:<12} {:<18} {:>13} {:9.3} {gf} {:8.2}",
                            l.family,
                            l.entry,
                            format!("{x}x{y}x{z}"),
                            l.ms,
                            l.bytes / 1e6
                        );
                    }
                }
            }
        }
        if let [(pa, ta), (pb, tb)] = done[..]
            && !a.json
        {
            println!("step time {pb} / {pa}: {:.2}", tb / ta);
        }
        return Ok(());
    }
    if a.peak {
        let (p, rows) = longtail::peak::measure(gpu, a.samples)?;
        if a.json {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
            println!("{}", serde_json::json!({ "peaks": p }));
        } else {
            print_peaks(gpu, &p);
        }
        return Ok(());
    }
    let cases = select(gpu, a.kernel.as_deref(), a.shape.as_deref())?;
    // The ceilings first, so every row can say how far it is from its roofline bound.
    let peaks = if a.no_peak {
        None
    } else {
        Some(longtail::peak::measure(gpu, 3)?.0)
    };
    if !a.json {
        println!("adapter: {}", gpu.describe());
        if let Some(p) = &peaks {
            println!(
                "roofline: {:.1} GFLOP/s FMA, {:.1} GB/s memory (longtail bench --peak)",
                p.fma_gflops,
                p.read_gbs.max(p.write_gbs)
            );
        }
        println!(
            "{:<16} {:<20} {:>10} {:>10} {:>9} {:>7}  timer",
            "kernel", "shape", "ms", "GFLOP/s", "GB/s", "% peak"
        );
    }
    for c in &cases {
        let mut m = time_case(gpu, c, a.samples)?;
        if let Some(p) = &peaks {
            m = m.against(p, c.flops, c.bytes);
        }
        if a.json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            println!(
                "{:<16} {:<20} {:>10.4} {:>10.2} {:>9.2} {:>7}  {} (median of {}, {} launches each)",
                m.kernel,
                m.shape,
                m.ms,
                m.gflops,
                m.gbs,
                m.pct_peak.map_or("-".into(), |v| format!("{v:.1}")),
                m.timer,
                m.samples,
                m.repeats
            );
        }
    }
    Ok(())
}
