//! `longtail bench`.

use anyhow::Result;
use clap::Args;

use longtail::bench::{bench_model, select, time_case};
use longtail::gpu::Gpu;
use longtail::ops::whiten::{WhitenConfig, WhitenMethod};

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
    /// Batch size for --model.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Image size for --model (32 for CIFAR, 112 or 224 for ImageNet).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Input channels for --model.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Channel whitening before the classifier of --model (ns, iternorm, eigen).
    #[arg(long, value_enum)]
    whiten: Option<WhitenMethod>,
    /// Whitening group size for --model (0: all channels).
    #[arg(long, default_value_t = 0)]
    whiten_group: usize,
}

pub fn run(gpu: &Gpu, a: BenchArgs) -> Result<()> {
    if let Some(model) = &a.model {
        let whiten = a.whiten.map(|method| WhitenConfig {
            method,
            iters: WhitenConfig::default_iters(method),
            group: a.whiten_group,
            ..Default::default()
        });
        let m = bench_model(gpu, model, a.batch, a.size, a.channels, a.samples, whiten)?;
        if a.json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            println!("adapter: {}", gpu.describe());
            println!(
                "{} batch {} at {}x{}: {:.1} ms/step, {:.2} images/s (median of {}, {} launches per step)",
                m.model, m.batch, m.size, m.size, m.ms, m.images_per_s, m.samples, m.launches
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
        }
        return Ok(());
    }
    let cases = select(gpu, a.kernel.as_deref(), a.shape.as_deref())?;
    if !a.json {
        println!("adapter: {}", gpu.describe());
        println!(
            "{:<16} {:<18} {:>10} {:>10} {:>9}  timer",
            "kernel", "shape", "ms", "GFLOP/s", "GB/s"
        );
    }
    for c in &cases {
        let m = time_case(gpu, c, a.samples)?;
        if a.json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            println!(
                "{:<16} {:<18} {:>10.4} {:>10.2} {:>9.2}  {} (median of {}, {} launches each)",
                m.kernel, m.shape, m.ms, m.gflops, m.gbs, m.timer, m.samples, m.repeats
            );
        }
    }
    Ok(())
}
