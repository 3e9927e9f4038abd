//! `longtail mlp`: the stack's smoke test, a two-layer MLP on synthetic blobs.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;

use longtail::gpu::Gpu;
use longtail::models::mlp::{Blobs, Mlp, MlpConfig};

#[derive(Args)]
pub struct MlpArgs {
    /// Training steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(gpu: &Gpu, a: MlpArgs) -> Result<()> {
    if a.batch == 0 || a.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    println!("adapter: {}", gpu.describe());
    let cfg = MlpConfig {
        batch: a.batch,
        seed: a.seed,
        ..Default::default()
    };
    let mlp = Mlp::new(gpu, cfg)?;
    let mut data = Blobs::new(cfg.inputs, cfg.classes, a.seed);
    let t0 = Instant::now();
    let mut first = None;
    let mut last = 0.0;
    for s in 0..a.steps {
        let (x, y) = data.batch(cfg.batch);
        last = mlp.train_step(gpu, &x, &y)?;
        first.get_or_insert(last);
        if s % 50 == 0 || s + 1 == a.steps {
            println!("step {s:>5}  loss {last:.4}");
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "loss {:.4} -> {last:.4} in {} steps, {:.1} steps/s, {} parameters, {} GPU bytes",
        first.unwrap_or(0.0),
        a.steps,
        a.steps as f64 / secs,
        mlp.params.count(),
        gpu.bytes_in_use()
    );
    Ok(())
}
