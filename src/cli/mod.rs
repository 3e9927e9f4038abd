//! Subcommands of the binary.

pub mod bench;
pub mod mlp;
pub mod report;
pub mod train;
pub mod tune;

use clap::Args;
use longtail::ops::whiten::{WhitenConfig, WhitenMethod};

/// The training step `bench --model` times and `tune` tunes: batch, image shape, whitening.
#[derive(Args)]
pub struct StepShape {
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Image size (32 for CIFAR, 28 for Fashion-MNIST, 112 or 224 for ImageNet).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Channel whitening before the classifier (ns, iternorm, eigen).
    #[arg(long, value_enum)]
    pub whiten: Option<WhitenMethod>,
    /// Whitening group size (0: all channels).
    #[arg(long, default_value_t = 0)]
    pub whiten_group: usize,
    /// Activation precision(s): f32, f16 or both ("f32,f16": one after the other).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    pub precision: Vec<longtail::config::Precision>,
}

impl StepShape {
    /// The benchmarked step of `model` at this shape in `precision`.
    pub fn spec<'a>(
        &self,
        model: &'a str,
        precision: longtail::config::Precision,
    ) -> longtail::bench::StepSpec<'a> {
        longtail::bench::StepSpec {
            arch: model,
            batch: self.batch,
            size: self.size,
            channels: self.channels,
            whiten: self.whiten_config(),
            precision: precision.dtype(),
        }
    }

    /// The whitening layer asked for, with its method's default iteration count.
    pub fn whiten_config(&self) -> Option<WhitenConfig> {
        self.whiten.map(|method| WhitenConfig {
            method,
            iters: WhitenConfig::default_iters(method),
            group: self.whiten_group,
            ..Default::default()
        })
    }
}
