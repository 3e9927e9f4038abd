//! `longtail train` and `longtail eval`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use longtail::config::{self, TrainConfig};
use longtail::data::longtail::Profile;
use longtail::gpu::Gpu;
use longtail::losses::LossKind;
use longtail::ops::whiten::TrackStat;
use longtail::sampler::{BetMode, SamplerKind};
use longtail::schedule::Decay;
use longtail::train;

/// Every configuration key as a flag (kebab-case here, snake_case in TOML).
#[derive(Args, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub struct ConfigFlags {
    /// fashion-mnist, mnist, cifar10, cifar100, imagenet-lt, inat2018, places-lt
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dataset: Option<String>,
    /// Folder of the data set's files.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    /// ImageNet-LT: root the list paths are relative to.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_root: Option<String>,
    /// ImageNet-LT: training list.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train_list: Option<String>,
    /// ImageNet-LT: test list.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_list: Option<String>,
    /// ImageNet-LT: resize + crop size.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    image_size: Option<usize>,
    /// Imbalance ratio (>= 1).
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rho: Option<f64>,
    /// Class-size profile.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Profile>,
    /// Largest class size.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    n_max: Option<usize>,
    /// resnet8/20/32/... (CIFAR), resnet10, resnet50/101/152, resnext50_32x4d (torchvision)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    epochs: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    weight_decay: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    momentum: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nesterov: Option<bool>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_epochs: Option<usize>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<Decay>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<LossKind>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tau: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ldam_max_margin: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ldam_scale: Option<f64>,
    /// Deferred re-weighting (true/false).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drw: Option<bool>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drw_fraction: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drw_epoch: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drw_beta: Option<f64>,
    /// none, ns, iternorm, eigen
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    whiten: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    whiten_iters: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    whiten_eps: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    whiten_group: Option<usize>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    whiten_track: Option<TrackStat>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    sampler: Option<SamplerKind>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    b3rs_groups: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    b3rs_q: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    b3rs_r: Option<f64>,
    /// BET period K (a B3RS batch every K-th step).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bet: Option<usize>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bet_mode: Option<BetMode>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bet_size: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// Stop after N training steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    /// standard or none
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    augment: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_every: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_batch: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    posthoc_tau: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_per_class: Option<usize>,
    /// Refresh RUN_DIR/report/ at every evaluation (true/false).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<bool>,
    /// List data sets: batches decoded ahead per thread while training (0: decode all first).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    prefetch: Option<usize>,
    /// Data parallel over these adapters: indices or name parts from `longtail devices`,
    /// comma-separated ("0,1"; "0,0" opens one adapter twice). Each takes batch/N images.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<String>,
    /// With --devices: batch norm over the whole batch (all devices), not per device.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_bn: Option<bool>,
    /// Several processes: `mpi` (one device per process; start with `mpirun -n N`; a build
    /// with `--features mpi`).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    distributed: Option<longtail::config::Distributed>,
    /// Activations in `f16` (adapters with shader-f16; f32 master weights, dynamic loss
    /// scaling) or `f32`.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<longtail::config::Precision>,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A preset of assets/presets (quick, fmnist-lt, ce, ldam-drw, cw-ldam-drw, ...).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A TOML config file (keys as the flags, with underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory (default: runs/<preset or config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory (its config.toml; flags may change e.g. --epochs).
    #[arg(long, conflicts_with_all = ["preset", "config", "out"])]
    resume: Option<PathBuf>,
    /// Start from these weights (safetensors, PyTorch names).
    #[arg(long)]
    init: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    flags: ConfigFlags,
}

fn flags_table(f: &ConfigFlags) -> Result<toml::Table> {
    Ok(toml::Table::try_from(f)?)
}

fn base(preset: Option<&str>, config: Option<&Path>) -> Result<(toml::Table, String)> {
    match (preset, config) {
        (Some(p), _) => Ok((config::preset(p)?, format!("preset {p}"))),
        (None, Some(c)) => Ok((config::file(c)?, c.display().to_string())),
        (None, None) => Ok((toml::Table::new(), "defaults".into())),
    }
}

pub fn run(gpu: &Gpu, a: TrainArgs) -> Result<()> {
    let (cfg, out, resume) = match &a.resume {
        Some(dir) => {
            let (t, _) = base(None, Some(&dir.join("config.toml")))?;
            (
                config::resolve(
                    t,
                    flags_table(&a.flags)?,
                    &dir.join("config.toml").display().to_string(),
                )?,
                dir.clone(),
                true,
            )
        }
        None => {
            let (t, src) = base(a.preset.as_deref(), a.config.as_deref())?;
            let cfg = config::resolve(t, flags_table(&a.flags)?, &src)?;
            let name = a
                .preset
                .clone()
                .or_else(|| {
                    a.config
                        .as_ref()
                        .and_then(|c| c.file_stem())
                        .map(|s| s.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "run".into());
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(name));
            if out.join("state.json").exists() {
                bail!(
                    "{} already holds a run: continue it with --resume {}, or pick another --out",
                    out.display(),
                    out.display()
                );
            }
            (cfg, out, false)
        }
    };
    let summary = train::train_with_init(gpu, &cfg, &out, resume, a.quiet, a.init.as_deref())?;
    if summary.rank != 0 {
        // Another MPI process: process 0 reports the run.
        return Ok(());
    }
    println!();
    if let Some(f) = &summary.final_ {
        println!("final (epoch {}):", summary.epochs);
        train::print_table(f, &summary.class_counts);
    }
    if let (Some(b), Some(e)) = (&summary.best, summary.best_epoch) {
        println!("best: epoch {e}: {}", train::eval_line(b));
    }
    println!(
        "{} epochs, {} steps in {:.0} s ({:.1} training images/s); run directory {}",
        summary.epochs,
        summary.steps,
        summary.seconds,
        summary.img_s,
        out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// Weights to evaluate (safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Config of the run (default: config.toml beside the checkpoint).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Or a preset.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    flags: ConfigFlags,
}

/// The configuration a checkpoint was trained with, in order: `--preset`/`--config`, the
/// `config.toml` beside it, the config stored in its metadata, or what its tensors imply (said
/// on stderr); `flags` on top.
pub fn checkpoint_config(
    checkpoint: &Path,
    preset: Option<&str>,
    config: Option<&Path>,
    flags: &ConfigFlags,
) -> Result<TrainConfig> {
    let beside = checkpoint
        .parent()
        .map(|p| p.join("config.toml"))
        .filter(|p| p.exists());
    let config = config
        .map(Path::to_path_buf)
        .or(if preset.is_none() { beside } else { None });
    let (t, src) = if preset.is_some() || config.is_some() {
        base(preset, config.as_deref())?
    } else if let Some(text) = longtail::checkpoint::stored_config(checkpoint)? {
        // Saved by this tool: the run's own configuration travels inside the file.
        let src = format!("the config stored in {}", checkpoint.display());
        let t: toml::Table =
            toml::from_str(&text).with_context(|| format!("{src} is not valid TOML"))?;
        eprintln!("note: no config.toml beside the checkpoint; using {src}");
        (t, src)
    } else {
        let (t, said) = longtail::checkpoint::infer_config(checkpoint)?;
        eprintln!("note: {said}");
        (
            t,
            format!("the config inferred from {}", checkpoint.display()),
        )
    };
    config::resolve(t, flags_table(flags)?, &src)
}

pub fn eval(gpu: &Gpu, a: EvalArgs) -> Result<()> {
    let cfg = checkpoint_config(
        &a.checkpoint,
        a.preset.as_deref(),
        a.config.as_deref(),
        &a.flags,
    )?;
    let (r, counts) = train::eval_checkpoint(gpu, &cfg, &a.checkpoint)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        train::print_table(&r, &counts);
    }
    Ok(())
}
