//! `longtail tune`: choose every kernel variant of a model's training step ahead of time.

use anyhow::{Result, bail};
use clap::Args;

use longtail::gpu::Gpu;
use longtail::tune::TuneMode;

#[derive(Args)]
pub struct TuneArgs {
    /// The model whose training step is tuned (resnet8/20/32/..., resnet10, resnet50, ...).
    #[arg(long, default_value = "resnet32")]
    model: String,
    #[command(flatten)]
    step: super::StepShape,
    /// Print the choices as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(gpu: &Gpu, a: TuneArgs) -> Result<()> {
    if gpu.tuner.mode() == TuneMode::Off {
        bail!("longtail tune measures kernel variants: use --tune cached (the default) or full");
    }
    let st = &a.step;
    let t0 = std::time::Instant::now();
    for p in &st.precision {
        longtail::bench::model_step(gpu, &st.spec(&a.model, *p))?;
    }
    let used = gpu.tuner.used();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&used)?);
        return Ok(());
    }
    println!("adapter: {}", gpu.describe());
    println!(
        "{} batch {} at {}x{}x{}: {} choices in {:.1} s ({})",
        a.model,
        st.batch,
        st.channels,
        st.size,
        st.size,
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
