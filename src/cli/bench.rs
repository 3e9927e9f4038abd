//! `longtail bench`.

use anyhow::Result;
use clap::Args;

use longtail::bench::{select, time_case};
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
}

pub fn run(gpu: &Gpu, a: BenchArgs) -> Result<()> {
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
