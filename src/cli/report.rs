//! `longtail report`, `longtail diagnose` and `longtail ablate`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use longtail::gpu::Gpu;
use longtail::report::{self, ablate, diagnose};

use super::train::{ConfigFlags, checkpoint_config};

#[derive(Args)]
pub struct ReportArgs {
    /// A run directory (holding summary.json and metrics.jsonl).
    run_dir: PathBuf,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let out = report::write(&a.run_dir)?;
    println!("{}", out.join("index.html").display());
    Ok(())
}

#[derive(Args)]
pub struct DiagnoseArgs {
    /// Weights to analyse (safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// train (the long-tailed training subset) or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Print the whole diagnosis as JSON.
    #[arg(long)]
    json: bool,
    /// Folder for the PNGs and diagnose.json (default: diagnose-<split>/ beside the checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Config of the run (default: config.toml beside the checkpoint, else the stored one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Or a preset.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    #[command(flatten)]
    flags: ConfigFlags,
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4e}"))
}

pub fn diagnose(gpu: &Gpu, a: DiagnoseArgs) -> Result<()> {
    if !matches!(a.split.as_str(), "train" | "test") {
        bail!("--split must be train or test, got {:?}", a.split);
    }
    let cfg = checkpoint_config(
        &a.checkpoint,
        a.preset.as_deref(),
        a.config.as_deref(),
        &a.flags,
    )?;
    let out = a.out.clone().unwrap_or_else(|| {
        a.checkpoint
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(format!("diagnose-{}", a.split))
    });
    let d = diagnose::run(gpu, &cfg, &a.checkpoint, &a.split, &out)?;
    let json = serde_json::to_string_pretty(&d)?;
    longtail::checkpoint::write_atomic(&out.join("diagnose.json"), json.as_bytes())?;
    if a.json {
        println!("{json}");
        return Ok(());
    }
    println!(
        "{} images of the {} split, {} pooled features",
        d.images, d.split, d.feature_dim
    );
    println!(
        "{:<10} {:>11} {:>6} {:>14} {:>9} {:>16}",
        "features", "condition", "zero λ", "cond. (λ > 0)", "eff. rank", "mean |off-corr|"
    );
    let line = |name: &str, s: &diagnose::SpectrumStats| {
        println!(
            "{name:<10} {:>11} {:>6} {:>14} {:>9.2} {:>16.4}",
            opt(s.condition),
            s.zero_eigenvalues,
            opt(s.condition_nonzero),
            s.effective_rank,
            s.mean_abs_offdiag_corr
        )
    };
    line("pooled", &d.before);
    if let Some(a) = &d.after {
        line("whitened", a);
    }
    if d.after.is_some() {
        println!(
            "whitening error max|W S W^T - I|: running statistics {}, this split {}",
            opt(d.whitening_error_running),
            opt(d.whitening_error_split)
        );
    }
    println!("class                 train   |f|      |f_w|    |w_c|");
    for r in &d.classes {
        println!(
            "{:<20} {:>6} {:>8.3} {:>8} {:>8.3}",
            format!("{} ({})", r.name, r.class),
            r.train_count,
            r.feature_norm,
            r.whitened_norm.map_or("-".into(), |v| format!("{v:.3}")),
            r.weight_norm
        );
    }
    println!("plots: {}", d.plots.join(", "));
    Ok(())
}

#[derive(Args)]
pub struct AblateArgs {
    /// The preset that sets the scale (data, model, epochs, schedule): quick, fmnist-lt, ...
    #[arg(long)]
    preset: String,
    /// Ablation rows (presets whose method keys are used), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ablate::DEFAULT_ROWS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    rows: Vec<String>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
    seeds: Vec<u64>,
    /// Output folder: one run directory per row and seed, and the summary files.
    #[arg(long)]
    out: PathBuf,
    /// Shorten the recipe (epochs, warm-up, DRW start, n_max) by this factor, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// No per-epoch progress bars.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    flags: ConfigFlags,
}

pub fn ablate(gpu: &Gpu, a: AblateArgs) -> Result<()> {
    let o = ablate::AblateOptions {
        preset: a.preset,
        rows: a.rows,
        seeds: a.seeds,
        out: a.out,
        scale: a.scale,
        flags: toml::Table::try_from(&a.flags).context("flags")?,
        quiet: a.quiet,
    };
    let ab = ablate::run(gpu, &o)?;
    println!("{}", ablate::markdown(&ab));
    Ok(())
}
