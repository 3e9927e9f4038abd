//! The loss family of the method (METHOD.md §3), as the class vector `[weights; margins;
//! offsets]` and logit scale that the fused cross-entropy kernel takes:
//! - `ce`: plain cross-entropy;
//! - `ldam`: margins `Delta_c ∝ n_c^(-1/4)` scaled so the largest is `max_margin` (0.5), logit
//!   scale `s` (30), meant for the normed-linear classifier (Cao et al. 2019);
//! - `la`: logit adjustment, offsets `tau * log(pi_c)` with the training prior (Menon et al.
//!   2021); `bs`: balanced softmax, the same with tau = 1.
//!
//! Any of them takes class weights, e.g. the class-balanced DRW weights
//! `w_c = (1 - beta) / (1 - beta^n_c)` normalised to sum to C.

use anyhow::{Result, bail};

/// Which loss.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Cross-entropy.
    Ce,
    /// LDAM (label-distribution-aware margin).
    Ldam,
    /// Logit-adjusted loss (tau configurable).
    La,
    /// Balanced softmax (logit adjustment with tau = 1).
    Bs,
}

/// Loss hyper-parameters (defaults: the papers').
#[derive(Clone, Copy, Debug)]
pub struct LossConfig {
    pub kind: LossKind,
    /// LDAM's largest margin.
    pub max_margin: f64,
    /// LDAM's logit scale.
    pub ldam_scale: f64,
    /// Logit-adjustment temperature.
    pub tau: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::Ce,
            max_margin: 0.5,
            ldam_scale: 30.0,
            tau: 1.0,
        }
    }
}

fn check_counts(counts: &[usize], what: &str) -> Result<()> {
    if counts.is_empty() {
        bail!("{what}: no classes");
    }
    if let Some(c) = counts.iter().position(|&n| n == 0) {
        bail!("{what}: class {c} has no training images (its margin/prior/weight is undefined)");
    }
    Ok(())
}

/// LDAM margins: `n_c^(-1/4)`, scaled so the largest is `max_margin`.
pub fn ldam_margins(counts: &[usize], max_margin: f64) -> Result<Vec<f64>> {
    check_counts(counts, "LDAM margins")?;
    let raw: Vec<f64> = counts.iter().map(|&n| (n as f64).powf(-0.25)).collect();
    let mx = raw.iter().cloned().fold(0.0, f64::max);
    Ok(raw.iter().map(|m| m * max_margin / mx).collect())
}

/// Logit-adjustment offsets `tau * log(n_c / N)`.
pub fn prior_offsets(counts: &[usize], tau: f64) -> Result<Vec<f64>> {
    check_counts(counts, "logit adjustment")?;
    let total: usize = counts.iter().sum();
    Ok(counts
        .iter()
        .map(|&n| tau * (n as f64 / total as f64).ln())
        .collect())
}

/// Class-balanced weights `(1 - beta) / (1 - beta^n_c)`, normalised to sum to C (Cui et al.;
/// the DRW weights of LDAM-DRW with beta = 0.9999).
pub fn class_balanced_weights(counts: &[usize], beta: f64) -> Result<Vec<f64>> {
    check_counts(counts, "class-balanced weights")?;
    if !(0.0..1.0).contains(&beta) {
        bail!("class-balanced weights: beta must be in [0, 1), got {beta}");
    }
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| (1.0 - beta) / (1.0 - beta.powi(n as i32)))
        .collect();
    let sum: f64 = raw.iter().sum();
    Ok(raw.iter().map(|w| w * counts.len() as f64 / sum).collect())
}

/// The kernel's class vector `[weights; margins; offsets]` and logit scale for `cfg`, given the
/// training class counts and optional class weights (None: all 1).
pub fn class_vector(
    cfg: &LossConfig,
    counts: &[usize],
    weights: Option<&[f64]>,
) -> Result<(Vec<f32>, f32)> {
    let c = counts.len();
    let w = match weights {
        Some(w) if w.len() != c => bail!("{} class weights for {c} classes", w.len()),
        Some(w) => w.to_vec(),
        None => vec![1.0; c],
    };
    let (margins, offsets, scale) = match cfg.kind {
        LossKind::Ce => (vec![0.0; c], vec![0.0; c], 1.0),
        LossKind::Ldam => (
            ldam_margins(counts, cfg.max_margin)?,
            vec![0.0; c],
            cfg.ldam_scale,
        ),
        LossKind::La => (vec![0.0; c], prior_offsets(counts, cfg.tau)?, 1.0),
        LossKind::Bs => (vec![0.0; c], prior_offsets(counts, 1.0)?, 1.0),
    };
    let v = w
        .iter()
        .chain(&margins)
        .chain(&offsets)
        .map(|&x| x as f32)
        .collect();
    Ok((v, scale as f32))
}

/// Post-hoc logit adjustment at evaluation: `z - tau * log(pi)` for each row of `logits`.
pub fn posthoc_adjust(logits: &mut [f32], counts: &[usize], tau: f64) -> Result<()> {
    let off = prior_offsets(counts, tau)?;
    for (i, z) in logits.iter_mut().enumerate() {
        *z -= off[i % counts.len()] as f32;
    }
    Ok(())
}

/// The loss as the training step sees it: the class vector on the GPU (rewritten in place when
/// DRW switches weights on, nothing rebuilt) and the logit scale.
pub struct LossSetup {
    pub cfg: LossConfig,
    pub cls: crate::tensor::Tensor,
    pub scale: f32,
    counts: Vec<usize>,
}

impl LossSetup {
    /// Upload the class vector for `cfg` with the training class counts (no class weights).
    pub fn new(gpu: &crate::gpu::Gpu, cfg: LossConfig, counts: &[usize]) -> Result<Self> {
        let (v, scale) = class_vector(&cfg, counts, None)?;
        Ok(Self {
            cfg,
            cls: crate::tensor::Tensor::from_f32(gpu, &[v.len()], &v)?,
            scale,
            counts: counts.to_vec(),
        })
    }

    /// Replace the class weights (None: all 1), e.g. at the DRW epoch; takes effect from the next
    /// submitted step.
    pub fn set_weights(&self, gpu: &crate::gpu::Gpu, weights: Option<&[f64]>) -> Result<()> {
        let (v, _) = class_vector(&self.cfg, &self.counts, weights)?;
        self.cls.write_f32(gpu, &v)
    }
}
