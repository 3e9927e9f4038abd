//! SGD with momentum and L2 weight decay (PyTorch `torch.optim.SGD` semantics), one dispatch over
//! the flat parameter buffer.

use anyhow::Result;
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, Gpu, grid_1d};
use crate::loss_scale::{LossScaleConfig, LossScaler};
use crate::params::Params;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Uniform {
    n: u32,
    nesterov: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _p: [f32; 3],
}

/// SGD hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// The optimizer: its momentum buffer and its recorded launch.
pub struct Sgd {
    cfg: SgdConfig,
    n: u32,
    /// The momentum buffer (saved with checkpoints for exact resume).
    pub momentum: Tensor,
    dispatch: Dispatch,
    /// Dynamic loss scaling (`--precision f16`): the gradients hold scale x the true ones.
    pub scaler: Option<LossScaler>,
}

impl Sgd {
    /// Record the update of all of `params`.
    pub fn new(gpu: &Gpu, params: &Params, cfg: SgdConfig) -> Result<Self> {
        Self::with_scaling(gpu, params, cfg, None)
    }

    /// [`Sgd::new`] under dynamic loss scaling with `scaling` (None: plain SGD). The backward
    /// pass must be seeded with the scaler's [`LossScaler::seed`].
    pub fn with_scaling(
        gpu: &Gpu,
        params: &Params,
        cfg: SgdConfig,
        scaling: Option<LossScaleConfig>,
    ) -> Result<Self> {
        let values = params.flat_values()?;
        let grads = params.flat_grads()?;
        let n = values.numel() as u32;
        let momentum = Tensor::zeros(gpu, &[n as usize], DType::F32)?;
        let u = Self::uniform(n, &cfg);
        let scaler = match scaling {
            Some(c) => Some(LossScaler::new(gpu, &grads, c)?),
            None => None,
        };
        let dispatch = match &scaler {
            Some(sc) => Dispatch::build(
                gpu,
                "sgd",
                "step_scaled",
                &[
                    values.write(),
                    grads.read(),
                    momentum.write(),
                    sc.state.read(),
                ],
                bytemuck::bytes_of(&u),
                grid_1d(gpu, n.div_ceil(256)),
            )?,
            None => Dispatch::build(
                gpu,
                "sgd",
                "step",
                &[values.write(), grads.read(), momentum.write()],
                bytemuck::bytes_of(&u),
                grid_1d(gpu, n.div_ceil(256)),
            )?,
        };
        Ok(Self {
            cfg,
            n,
            momentum,
            dispatch,
            scaler,
        })
    }

    fn uniform(n: u32, c: &SgdConfig) -> Uniform {
        Uniform {
            n,
            nesterov: c.nesterov as u32,
            lr: c.lr,
            momentum: c.momentum,
            weight_decay: c.weight_decay,
            _p: [0.0; 3],
        }
    }

    /// Change the learning rate for the next steps (a queued 32-byte write, nothing rebuilt).
    pub fn set_lr(&mut self, gpu: &Gpu, lr: f32) {
        self.cfg.lr = lr;
        self.dispatch
            .set_params(gpu, bytemuck::bytes_of(&Self::uniform(self.n, &self.cfg)));
    }

    /// The current configuration.
    pub fn config(&self) -> SgdConfig {
        self.cfg
    }

    /// The recorded launch.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// Every launch of an update, in order (with loss scaling: check, update, new scale).
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        match &self.scaler {
            Some(sc) => vec![sc.check(), &self.dispatch, sc.update()],
            None => vec![&self.dispatch],
        }
    }

    /// The recorded launch (benchmarks replay it alone).
    pub fn into_dispatch(self) -> Dispatch {
        self.dispatch
    }

    /// Encode the update (under loss scaling: the overflow check, the update, the new scale).
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        match &self.scaler {
            Some(sc) => {
                sc.check().encode(pass);
                self.dispatch.encode(pass);
                sc.update().encode(pass);
            }
            None => self.dispatch.encode(pass),
        }
    }
}

/// CPU reference (f64) of one `torch.optim.SGD` step (dampening 0), in place.
pub mod reference {
    use super::SgdConfig;

    /// Update `w` and the momentum buffer `v` with gradient `g`.
    pub fn sgd_step(w: &mut [f64], v: &mut [f64], g: &[f64], c: &SgdConfig) {
        let (lr, m, wd) = (c.lr as f64, c.momentum as f64, c.weight_decay as f64);
        for i in 0..w.len() {
            let d = g[i] + wd * w[i];
            v[i] = m * v[i] + d;
            let upd = if c.nesterov { d + m * v[i] } else { v[i] };
            w[i] -= lr * upd;
        }
    }
}
