//! Learning-rate schedule (linear warm-up, then multi-step or cosine) and the DRW switch
//! (METHOD.md §3, §6).

/// Decay after warm-up.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// x0.01 from 80 % of the epochs, x0.0001 from 90 % (the 200-epoch recipe's 160 / 180).
    Multistep,
    /// Cosine to 0 over the epochs after warm-up.
    Cosine,
}

/// The schedule of one run.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub lr: f64,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub warmup_epochs: usize,
    pub decay: Decay,
}

impl Schedule {
    /// Learning rate at global step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let spe = self.steps_per_epoch.max(1);
        let warm = self.warmup_epochs * spe;
        if step < warm {
            return self.lr * (step + 1) as f64 / warm as f64;
        }
        let epoch = step / spe;
        match self.decay {
            Decay::Multistep => {
                // Epoch indices are 0-based: with 200 epochs, x0.01 from epoch 160 (the 161st).
                let e = self.epochs;
                if epoch >= e * 9 / 10 {
                    self.lr * 1e-4
                } else if epoch >= e * 8 / 10 {
                    self.lr * 1e-2
                } else {
                    self.lr
                }
            }
            Decay::Cosine => {
                let total = (self.epochs * spe).saturating_sub(warm).max(1);
                let t = (step - warm) as f64 / total as f64;
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }
}

/// The DRW epoch from a fraction of the epochs (default 0.8: epoch 160 of 200).
pub fn drw_epoch(epochs: usize, fraction: f64) -> usize {
    (epochs as f64 * fraction).round() as usize
}
