//! The training configuration: every option is a config key (TOML, `--config FILE`) and a flag of
//! `longtail train`; presets in `assets/presets/` (embedded in the binary) are config files.
//! Precedence: defaults < preset or config file < flags. Unknown keys are errors that list the
//! valid ones.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::longtail::Profile;
use crate::losses::LossKind;
use crate::ops::whiten::{TrackStat, WhitenMethod};
use crate::sampler::{BetMode, SamplerKind};
use crate::schedule::Decay;

/// Everything a training run needs. Defaults are METHOD.md's recipe on Fashion-MNIST-LT.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// fashion-mnist, mnist, cifar10, cifar100, or a list-file set: imagenet-lt, inat2018,
    /// places-lt (`path label` lines).
    pub dataset: String,
    /// Folder of the data set's files (default: Debian's Fashion-MNIST folder for fashion-mnist).
    pub data_dir: Option<String>,
    /// List-file sets (imagenet-lt, inat2018, places-lt): folder the list paths are relative to.
    pub data_root: Option<String>,
    /// ImageNet-LT: training list (`path label` lines).
    pub train_list: Option<String>,
    /// ImageNet-LT: test list.
    pub test_list: Option<String>,
    /// ImageNet-LT: resize + centre-crop size.
    pub image_size: usize,
    /// Imbalance ratio (>= 1) of the long-tailed training subset (1: the full set).
    pub rho: f64,
    pub profile: Profile,
    /// Largest class size (default: 5000 for fashion-mnist, mnist, cifar10; 500 for cifar100; else
    /// the largest class).
    pub n_max: Option<usize>,
    /// resnet8/20/32/44/56/110 (CIFAR style), resnet10, resnet50/101/152, resnext50_32x4d.
    pub model: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub warmup_epochs: usize,
    pub schedule: Decay,
    pub loss: LossKind,
    /// Logit-adjustment temperature (la).
    pub tau: f64,
    pub ldam_max_margin: f64,
    pub ldam_scale: f64,
    /// Deferred re-weighting with class-balanced weights.
    pub drw: bool,
    /// DRW start as a fraction of the epochs (0.8: epoch 160 of 200) unless `drw_epoch` is set.
    pub drw_fraction: f64,
    pub drw_epoch: Option<usize>,
    pub drw_beta: f64,
    /// Channel whitening: none, ns, iternorm or eigen.
    pub whiten: String,
    /// Iterations (default: 20 for ns, 5 for iternorm).
    pub whiten_iters: Option<usize>,
    pub whiten_eps: f64,
    /// Channels per whitening group (0: all).
    pub whiten_group: usize,
    pub whiten_track: TrackStat,
    pub sampler: SamplerKind,
    pub b3rs_groups: usize,
    pub b3rs_q: f64,
    pub b3rs_r: f64,
    /// BET: a B3RS batch every K-th step (embed) or a B3RS sub-batch per batch (concat).
    pub bet: Option<usize>,
    pub bet_mode: BetMode,
    pub bet_size: usize,
    pub seed: u64,
    /// Stop after this many training steps in total.
    pub max_steps: Option<usize>,
    /// standard (crop with 4 px padding + flip) or none.
    pub augment: String,
    pub eval_every: usize,
    /// Images per evaluation batch.
    pub eval_batch: usize,
    /// Post-hoc logit adjustment at evaluation (tau; none by default).
    pub posthoc_tau: Option<f64>,
    /// Evaluate on at most this many test images per class (0: all). For quick runs only.
    pub test_per_class: usize,
    /// Refresh the run's report (`RUN_DIR/report/`: PNG charts + index.html) at every
    /// evaluation.
    pub report: bool,
    /// List data sets (imagenet-lt, inat2018, places-lt): keep the images as files and decode
    /// each batch on the CPU cores while the GPU trains, at most this many batches ahead per
    /// decoding thread (memory stays bounded at any set size); 0 decodes the whole set into
    /// memory first.
    pub prefetch: usize,
    /// Data parallel: the adapters to train on, comma-separated indices or name parts from
    /// `longtail devices` (`0,0` opens one adapter twice); each takes an equal slice of the
    /// batch. Empty: the one `--adapter` device.
    pub devices: String,
    /// With several devices, batch norm uses the whole batch's statistics (all devices');
    /// otherwise each device its own slice's, as PyTorch DDP does.
    pub sync_bn: bool,
    /// Several processes (machines): `mpi` joins the MPI job the process was started in
    /// (`mpirun -n N longtail train --distributed mpi`), one device per process.
    pub distributed: Distributed,
    /// Element type of the backbone's activations: `f32`, or `f16` (adapters with shader-f16:
    /// f16 activations and weight copies in storage, f32 accumulation, f32 master weights and
    /// optimizer state, dynamic loss scaling).
    pub precision: Precision,
}

/// The backbone's activation precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Mixed precision (see [`crate::models::resnet::ResNet::set_precision`]).
    F16,
}

impl Precision {
    /// The activations' element type.
    pub fn dtype(self) -> crate::tensor::DType {
        match self {
            Precision::F32 => crate::tensor::DType::F32,
            Precision::F16 => crate::tensor::DType::F16,
        }
    }
}

/// How the processes of a run are joined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distributed {
    /// One process.
    #[default]
    None,
    /// MPI (a build with `--features mpi`, started by `mpirun`).
    Mpi,
}

impl TrainConfig {
    /// The `devices` entries (empty: one device, the `--adapter` one).
    pub fn device_list(&self) -> Vec<String> {
        if self.devices.trim().is_empty() {
            return Vec::new();
        }
        self.devices
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            dataset: "fashion-mnist".into(),
            data_dir: None,
            data_root: None,
            train_list: None,
            test_list: None,
            image_size: 224,
            rho: 100.0,
            profile: Profile::Exp,
            n_max: None,
            model: "resnet32".into(),
            epochs: 200,
            batch_size: 128,
            lr: 0.1,
            weight_decay: 2e-4,
            momentum: 0.9,
            nesterov: false,
            warmup_epochs: 5,
            schedule: Decay::Multistep,
            loss: LossKind::Ce,
            tau: 1.0,
            ldam_max_margin: 0.5,
            ldam_scale: 30.0,
            drw: false,
            drw_fraction: 0.8,
            drw_epoch: None,
            drw_beta: 0.9999,
            whiten: "none".into(),
            whiten_iters: None,
            whiten_eps: 1e-5,
            whiten_group: 0,
            whiten_track: TrackStat::Cov,
            sampler: SamplerKind::Random,
            b3rs_groups: 3,
            b3rs_q: 0.0,
            b3rs_r: 1.0,
            bet: None,
            bet_mode: BetMode::Embed,
            bet_size: 0,
            seed: 0,
            max_steps: None,
            augment: "standard".into(),
            eval_every: 1,
            eval_batch: 250,
            posthoc_tau: None,
            test_per_class: 0,
            report: true,
            prefetch: 2,
            devices: String::new(),
            sync_bn: false,
            distributed: Distributed::None,
            precision: Precision::F32,
        }
    }
}

/// The protocol's largest-class size of a data set (METHOD.md §6): 5000 for the 10-class sets,
/// 500 for CIFAR-100; None (the largest class) for the rest.
pub fn protocol_n_max(dataset: &str) -> Option<usize> {
    match dataset {
        "fashion-mnist" | "mnist" | "cifar10" => Some(5000),
        "cifar100" => Some(500),
        _ => None,
    }
}

/// The presets of `assets/presets/`, embedded.
pub const PRESETS: &[(&str, &str)] = &[
    ("quick", include_str!("../assets/presets/quick.toml")),
    (
        "fmnist-lt",
        include_str!("../assets/presets/fmnist-lt.toml"),
    ),
    ("ce", include_str!("../assets/presets/ce.toml")),
    ("ldam-drw", include_str!("../assets/presets/ldam-drw.toml")),
    (
        "cw-ldam-drw",
        include_str!("../assets/presets/cw-ldam-drw.toml"),
    ),
    (
        "cw-ldam-drw-b3rs",
        include_str!("../assets/presets/cw-ldam-drw-b3rs.toml"),
    ),
    (
        "cw-ldam-drw-b3rs-bet",
        include_str!("../assets/presets/cw-ldam-drw-b3rs-bet.toml"),
    ),
    (
        "cifar10-lt",
        include_str!("../assets/presets/cifar10-lt.toml"),
    ),
    (
        "cifar100-lt",
        include_str!("../assets/presets/cifar100-lt.toml"),
    ),
    (
        "imagenet-lt",
        include_str!("../assets/presets/imagenet-lt.toml"),
    ),
    ("inat2018", include_str!("../assets/presets/inat2018.toml")),
    (
        "places-lt",
        include_str!("../assets/presets/places-lt.toml"),
    ),
];

/// The TOML table of a preset.
pub fn preset(name: &str) -> Result<toml::Table> {
    match PRESETS.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => {
            toml::from_str(text).with_context(|| format!("preset {name} is not valid TOML"))
        }
        None => bail!(
            "unknown preset {name:?}; presets: {}",
            PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The TOML table of a config file.
pub fn file(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))
}

/// Resolve `base` (preset or file) overridden by `flags` (a table of the flags that were given)
/// into a checked configuration. `source` names the base for error messages.
pub fn resolve(base: toml::Table, flags: toml::Table, source: &str) -> Result<TrainConfig> {
    let mut t = base;
    for (k, v) in flags {
        t.insert(k, v);
    }
    let cfg: TrainConfig = toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{source}: {}", e.message()))?;
    cfg.check()?;
    Ok(cfg)
}

/// Most batches a decoding thread may run ahead: each is batch x 3 x size^2 bytes (38 MiB at
/// 256 x 224 px), so more is memory for nothing.
pub const MAX_PREFETCH: usize = 16;

/// Largest image side `image_size` may ask for: a 2048 x 2048 RGB image is 12 MiB of u8 per
/// image on the host; anything larger is a typo rather than a protocol.
pub const MAX_IMAGE_SIZE: usize = 2048;

/// `key = value: must be ...`, with the flag spelled out, so the message names what to change.
fn bad(key: &str, value: impl std::fmt::Display, want: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "config key {key} = {value} (flag --{}): must be {want}",
        key.replace('_', "-")
    )
}

fn finite(key: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(bad(key, v, "a finite number"))
    }
}

/// `v` in `[lo, hi]` (`hi_open`: `[lo, hi)`), finite.
fn in_range(key: &str, v: f64, lo: f64, hi: f64, hi_open: bool) -> Result<()> {
    let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
    if ok {
        return Ok(());
    }
    let close = if hi_open { ")" } else { "]" };
    let hi_s = if hi.is_infinite() {
        "inf".to_string()
    } else {
        hi.to_string()
    };
    Err(bad(key, v, &format!("in [{lo}, {hi_s}{close}")))
}

fn positive(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(bad(key, v, "a finite number > 0"))
    }
}

fn at_least(key: &str, v: usize, lo: usize) -> Result<()> {
    if v >= lo {
        Ok(())
    } else {
        Err(bad(key, v, &format!(">= {lo}")))
    }
}

impl TrainConfig {
    /// Every key's range, finiteness and relation to other keys, in one place: the message names
    /// the key (and its flag), the value and what is allowed. Values that are legal but only
    /// make sense once the data is known (`n_max` above the largest class) are checked, with a
    /// warning, in `train::prepare_data`.
    pub fn check(&self) -> Result<()> {
        if !matches!(
            self.dataset.as_str(),
            "fashion-mnist"
                | "mnist"
                | "cifar10"
                | "cifar100"
                | "imagenet-lt"
                | "inat2018"
                | "places-lt"
        ) {
            return Err(bad(
                "dataset",
                format!("{:?}", self.dataset),
                "one of fashion-mnist, mnist, cifar10, cifar100, imagenet-lt, inat2018, places-lt",
            ));
        }
        crate::models::resnet::Arch::parse(&self.model)?;
        if self.image_size < 8 || self.image_size > MAX_IMAGE_SIZE {
            return Err(bad(
                "image_size",
                self.image_size,
                &format!("in [8, {MAX_IMAGE_SIZE}]"),
            ));
        }
        if !(self.rho.is_finite() && self.rho >= 1.0) {
            return Err(bad(
                "rho",
                self.rho,
                "a finite number >= 1 (the imbalance ratio n_max / n_min)",
            ));
        }
        if let Some(n) = self.n_max {
            at_least("n_max", n, 1)?;
        }
        at_least("epochs", self.epochs, 1)?;
        if self.whiten != "none" && self.batch_size < 2 {
            return Err(bad(
                "batch_size",
                self.batch_size,
                ">= 2: whitening needs batch_size >= 2 (a covariance of one sample is 0)",
            ));
        }
        at_least("batch_size", self.batch_size, 2).map_err(|e| {
            e.context("batch_size must be at least 2 (batch norm needs two samples)")
        })?;
        positive("lr", self.lr)?;
        in_range("weight_decay", self.weight_decay, 0.0, f64::INFINITY, true)?;
        in_range("momentum", self.momentum, 0.0, 1.0, true)?;
        if self.nesterov && self.momentum == 0.0 {
            return Err(bad(
                "nesterov",
                true,
                "false when momentum = 0 (Nesterov momentum needs a momentum, as in PyTorch)",
            ));
        }
        if self.warmup_epochs >= self.epochs && self.warmup_epochs > 0 {
            return Err(bad(
                "warmup_epochs",
                self.warmup_epochs,
                &format!(
                    "less than epochs ({}): the learning rate would still be warming up when training ends",
                    self.epochs
                ),
            ));
        }
        finite("tau", self.tau)?;
        positive("ldam_max_margin", self.ldam_max_margin)?;
        positive("ldam_scale", self.ldam_scale)?;
        in_range("drw_fraction", self.drw_fraction, 0.0, 1.0, true)?;
        in_range("drw_beta", self.drw_beta, 0.0, 1.0, true)?;
        if let Some(e) = self.drw_epoch
            && self.drw
            && e >= self.epochs
        {
            return Err(bad(
                "drw_epoch",
                e,
                &format!(
                    "less than epochs ({}): deferred re-weighting would never start",
                    self.epochs
                ),
            ));
        }
        self.whiten_method()?;
        if let Some(t) = self.whiten_iters
            && !(1..=1000).contains(&t)
        {
            return Err(bad("whiten_iters", t, "in [1, 1000]"));
        }
        positive("whiten_eps", self.whiten_eps)?;
        at_least("b3rs_groups", self.b3rs_groups, 1)?;
        finite("b3rs_q", self.b3rs_q)?;
        finite("b3rs_r", self.b3rs_r)?;
        if let Some(k) = self.bet {
            at_least("bet", k, 1)?;
            if self.bet_mode == crate::sampler::BetMode::Concat {
                at_least("bet_size", self.bet_size, 1)?;
            }
        }
        if self.max_steps == Some(0) {
            return Err(bad("max_steps", 0, ">= 1 (or left out: no limit)"));
        }
        if !matches!(self.augment.as_str(), "standard" | "none") {
            return Err(bad(
                "augment",
                format!("{:?}", self.augment),
                "standard or none",
            ));
        }
        at_least("eval_every", self.eval_every, 1)?;
        at_least("eval_batch", self.eval_batch, 1)?;
        if self.prefetch > MAX_PREFETCH {
            return Err(bad(
                "prefetch",
                self.prefetch,
                &format!("in [0, {MAX_PREFETCH}] (batches ahead per decoding thread)"),
            ));
        }
        if let Some(t) = self.posthoc_tau {
            finite("posthoc_tau", t)?;
        }
        let devices = self.device_list();
        if !devices.is_empty() {
            if devices.iter().any(|d| d.is_empty()) {
                return Err(bad(
                    "devices",
                    format!("{:?}", self.devices),
                    "comma-separated adapter indices or name parts, e.g. \"0,1\" or \"0,0\"",
                ));
            }
            let extra = if self.bet_mode == crate::sampler::BetMode::Concat {
                self.bet.map_or(0, |_| self.bet_size)
            } else {
                0
            };
            let batch = self.batch_size + extra;
            if !batch.is_multiple_of(devices.len()) {
                return Err(bad(
                    "devices",
                    format!("{:?}", self.devices),
                    &format!(
                        "a count that divides the batch of {batch} images (each device takes an equal slice)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The whitening method (None: off).
    pub fn whiten_method(&self) -> Result<Option<WhitenMethod>> {
        Ok(match self.whiten.as_str() {
            "none" => None,
            "ns" => Some(WhitenMethod::Ns),
            "iternorm" => Some(WhitenMethod::Iternorm),
            "eigen" => Some(WhitenMethod::Eigen),
            w => {
                return Err(bad(
                    "whiten",
                    format!("{w:?}"),
                    "none, ns, iternorm or eigen",
                ));
            }
        })
    }

    /// The epoch (0-based) from which DRW weights apply, if DRW is on.
    pub fn drw_start(&self) -> Option<usize> {
        self.drw.then(|| {
            self.drw_epoch
                .unwrap_or_else(|| crate::schedule::drw_epoch(self.epochs, self.drw_fraction))
        })
    }

    /// The configuration as TOML (the run directory's `config.toml`).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }
}
