//! `longtail tune`: choose every kernel variant of a model's training step ahead of time.

use anyhow::{Result, bail};
use clap::Args;

use longtail::gpu::Gpu;
use longtail::ops::whiten::{WhitenConfig, WhitenMethod};
use longtail::tune::TuneMode;

#[derive(Args)]
pub struct TuneArgs {
    /// The model whose training step is tuned (resnet8/20/32/..., resnet10).
    #[arg(long, default_value = "resnet32")]
    model: String,
    /// Batch size of the step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Image size (32 for CIFAR, 28 for Fashion-MNIST, 112 or 224 for ImageNet).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Channel whitening before the classifier (ns, iternorm, eigen).
    #[arg(long, value_enum)]
    whiten: Option<WhitenMethod>,
    /// Whitening group size (0: all channels).
    #[arg(long, default_value_t = 0)]
    whiten_group: usize,
    /// Print the choices as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(gpu: &Gpu, a: TuneArgs) -> Result<()> {
    if gpu.tuner.mode() == TuneMode::Off {
        bail!("longtail tune measures kernel variants: use --tune cached (the default) or full");
    }
    let whiten = a.whiten.map(|method| WhitenConfig {
        method,
        iters: WhitenConfig::default_iters(method),
        group: a.whiten_group,
        ..Default::default()
    });
    let t0 = std::time::Instant::now();
    longtail::bench::model_step(gpu, &a.model, a.batch, a.size, a.channels, whiten)?;
    let used = gpu.tuner.used();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&used)?);
        return Ok(());
    }
    println!("adapter: {}", gpu.describe());
    println!(
        "{} batch {} at {}x{}x{}: {} choices in {:.1} s ({})",
        a.model,
        a.batch,
        a.channels,
        a.size,
        a.size,
        used.len(),
        t0.elapsed().as_secs_f64(),
        gpu.tuner
            .cache_path()
            .map_or("no cache".into(), |p| format!("cache {}", p.display()))
    );
    for (key, c) in &used {
        let times: Vec<String> = c.ms.iter().map(|(v, t)| format!("{v} {t:.2} ms")).collect();
        println!(
            "  {key:<48} {:<10} {:<10} {}",
            c.variant,
            c.source,
            times.join(", ")
        );
    }
    Ok(())
}
