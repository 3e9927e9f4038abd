//! Dynamic loss scaling for `--precision f16` (`shaders/loss_scale.wgsl`, PyTorch's
//! `GradScaler` semantics): the backward pass is seeded with the scale instead of 1, the
//! optimizer divides it back out, a step whose gradients hold inf or NaN is skipped and halves
//! the scale, and `growth_interval` clean steps in a row double it. The state lives on the GPU
//! and is updated there, so a step needs no host decision; the host reads it only at epoch ends
//! (the scale report, checkpoints).

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, Gpu, grid_1d};
use crate::tensor::{DType, Tensor};

/// Scaling hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaleConfig {
    /// The first step's scale (PyTorch: 2^16).
    pub init: f32,
    /// Clean steps in a row before the scale doubles (PyTorch: 2000).
    pub growth_interval: u32,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self {
            init: 65536.0,
            growth_interval: 2000,
        }
    }
}

/// The scaler's state as last read back.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScaleState {
    /// The scale the next step's backward is seeded with.
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub clean: u32,
    /// Steps skipped so far (gradients with inf or NaN).
    pub skipped: u32,
}

impl ScaleState {
    /// From the GPU state's words (scale bits, clean, found, skipped).
    fn from_words(w: &[u32]) -> Result<Self> {
        let &[scale, clean, _found, skipped] = w else {
            bail!("loss-scale state: {} words, expected 4", w.len());
        };
        Ok(Self {
            scale: f32::from_bits(scale),
            clean,
            skipped,
        })
    }

    fn words(&self) -> [u32; 4] {
        [self.scale.to_bits(), self.clean, 0, self.skipped]
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    growth_interval: u32,
    max_scale: f32,
    _p: u32,
}

/// The scaler of one training step: its state buffer and recorded launches.
pub struct LossScaler {
    /// `[scale, clean, found, skipped]` (f32 bits, then u32).
    pub state: Tensor,
    seed: Tensor,
    check: Dispatch,
    update: Dispatch,
}

/// The largest scale: f32 headroom far beyond any f16 gradient.
const MAX_SCALE: f32 = 1.0e30;

impl LossScaler {
    /// A scaler for the flat f32 gradient buffer `grads`.
    pub fn new(gpu: &Gpu, grads: &Tensor, cfg: LossScaleConfig) -> Result<Self> {
        if !(cfg.init.is_finite() && cfg.init > 0.0) || cfg.growth_interval == 0 {
            bail!("loss scaling: the initial scale must be positive and the growth interval >= 1");
        }
        let state = Tensor::zeros(gpu, &[4], DType::U32)?;
        let seed = Tensor::view(
            state.storage().clone(),
            state.offset(),
            &[1],
            DType::F32,
            false,
        )?;
        let p = Params {
            n: grads.numel() as u32,
            growth_interval: cfg.growth_interval,
            max_scale: MAX_SCALE,
            _p: 0,
        };
        let check = Dispatch::build(
            gpu,
            "loss_scale",
            "check",
            &[grads.read(), state.write()],
            bytemuck::bytes_of(&p),
            grid_1d(gpu, (grads.numel() as u32).div_ceil(256)),
        )?;
        let update = Dispatch::build(
            gpu,
            "loss_scale",
            "update",
            &[state.write()],
            bytemuck::bytes_of(&p),
            [1, 1, 1],
        )?;
        let s = Self {
            state,
            seed,
            check,
            update,
        };
        s.set(
            gpu,
            ScaleState {
                scale: cfg.init,
                clean: 0,
                skipped: 0,
            },
        )?;
        Ok(s)
    }

    /// The backward seed: a `[1]` f32 view of the current scale.
    pub fn seed(&self) -> &Tensor {
        &self.seed
    }

    /// Overwrite the state (a resumed run's).
    pub fn set(&self, gpu: &Gpu, s: ScaleState) -> Result<()> {
        self.state.write_u32(gpu, &s.words())
    }

    /// Read the state back (blocks on the GPU).
    pub fn read(&self, gpu: &Gpu) -> Result<ScaleState> {
        ScaleState::from_words(&self.state.to_u32(gpu)?)
    }

    /// The overflow check (after the gradients are complete, before the optimizer).
    pub fn check(&self) -> &Dispatch {
        &self.check
    }

    /// The scale update (after the optimizer).
    pub fn update(&self) -> &Dispatch {
        &self.update
    }
}
