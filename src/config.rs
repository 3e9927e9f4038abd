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
    /// fashion-mnist, mnist, cifar10, cifar100 or imagenet-lt.
    pub dataset: String,
    /// Folder of the data set's files (default: Debian's Fashion-MNIST folder for fashion-mnist).
    pub data_dir: Option<String>,
    /// ImageNet-LT: folder the list paths are relative to.
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
    /// resnet8/20/32/44/56/110 (CIFAR style) or resnet10.
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
        }
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

impl TrainConfig {
    /// Reject values that cannot work, with the key's name.
    pub fn check(&self) -> Result<()> {
        if self.rho.is_nan() || self.rho < 1.0 {
            bail!(
                "rho must be >= 1 (the imbalance ratio n_max / n_min), got {}",
                self.rho
            );
        }
        if self.epochs == 0 {
            bail!("epochs must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if self.whiten != "none" && self.batch_size < 2 {
            bail!(
                "whitening needs batch_size >= 2 (a covariance of one sample is 0), got {}",
                self.batch_size
            );
        }
        if self.batch_size < 2 {
            bail!("batch_size must be at least 2 (batch norm needs two samples)");
        }
        if self.lr.is_nan() || self.lr <= 0.0 || !self.lr.is_finite() {
            bail!("lr must be a positive number, got {}", self.lr);
        }
        if self.eval_every == 0 || self.eval_batch == 0 {
            bail!("eval_every and eval_batch must be at least 1");
        }
        self.whiten_method()?;
        if !matches!(self.augment.as_str(), "standard" | "none") {
            bail!("augment must be standard or none, got {:?}", self.augment);
        }
        if !matches!(
            self.dataset.as_str(),
            "fashion-mnist" | "mnist" | "cifar10" | "cifar100" | "imagenet-lt"
        ) {
            bail!(
                "dataset must be one of fashion-mnist, mnist, cifar10, cifar100, imagenet-lt; got {:?}",
                self.dataset
            );
        }
        crate::models::resnet::Arch::parse(&self.model)?;
        Ok(())
    }

    /// The whitening method (None: off).
    pub fn whiten_method(&self) -> Result<Option<WhitenMethod>> {
        Ok(match self.whiten.as_str() {
            "none" => None,
            "ns" => Some(WhitenMethod::Ns),
            "iternorm" => Some(WhitenMethod::Iternorm),
            "eigen" => Some(WhitenMethod::Eigen),
            w => bail!("whiten must be none, ns, iternorm or eigen; got {w:?}"),
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
