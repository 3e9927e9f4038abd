//! The devices of a data-parallel training run (`train --devices 0,1 [--sync-bn]`): opening
//! them, one model and loss per extra device, and the step that runs on one device or in
//! lockstep on all ([`crate::parallel`]). Device 0 is the run's device: it evaluates, and its
//! weights, running statistics and optimizer state are what checkpoints hold (the replicas'
//! weights and optimizer state are identical to it; with per-device batch norm their running
//! statistics are their own, and device 0's are kept, as PyTorch DDP keeps rank 0's).

use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use anyhow::{Result, bail};

use crate::config::TrainConfig;
use crate::gpu::Gpu;
use crate::losses::{LossConfig, LossSetup};
use crate::models::resnet::{ResNet, ResNetStep};
use crate::optim::SgdConfig;
use crate::parallel::{DataParallel, Processes};
use crate::tape::Replication;
use crate::tensor::Tensor;

/// This process's devices: `[gpu]`, or those `cfg.devices` names (opened anew, the first with
/// `gpu`'s tuning settings). In a multi-process run (`procs`) one: the entry of the process's
/// rank on its machine (cycling through the list), or without a list the adapter of that
/// index among the machine's GPUs (CPU adapters where it has none; GL adapters only where no
/// other backend has one).
pub fn open_devices(
    gpu: &Gpu,
    cfg: &TrainConfig,
    procs: Option<&dyn Processes>,
) -> Result<Vec<Gpu>> {
    let mut list = cfg.device_list();
    if let Some(p) = procs {
        let local = p.local_rank();
        list = vec![if list.is_empty() {
            let mut all = crate::gpu::list_adapters(gpu.options().backend);
            // One device usually shows under several backends (Vulkan and GL): as `auto`
            // does, GL only where no other backend has an adapter, so that processes do not
            // land on one device's GL twin (with other features: no subgroups, no f16).
            if all.iter().any(|a| a.backend != "gl") {
                all.retain(|a| a.backend != "gl");
            }
            let gpus: Vec<_> = all.iter().filter(|a| a.device_type != "Cpu").collect();
            let pool = if gpus.is_empty() {
                all.iter().collect()
            } else {
                gpus
            };
            match pool.get(local % pool.len().max(1)) {
                Some(a) => a.index.to_string(),
                None => bail!("process {} found no GPU adapter", p.rank()),
            }
        } else {
            list[local % list.len()].clone()
        }];
    }
    if list.len() <= 1
        && list
            .first()
            .is_none_or(|d| d == &gpu.summary.index.to_string())
    {
        return Ok(vec![gpu.clone()]);
    }
    open_list(gpu, &list)
}

/// Open the adapters `list` names (see [`Gpu::open_replica`]); the first tunes as `gpu` does.
pub fn open_list(gpu: &Gpu, list: &[String]) -> Result<Vec<Gpu>> {
    let devices = list
        .iter()
        .map(|d| gpu.open_replica(d))
        .collect::<Result<Vec<_>>>()?;
    if let Some(first) = devices.first() {
        first.tuner.configure_like(&gpu.tuner)?;
    }
    Ok(devices)
}

/// One line for logs: the adapter, or the devices of a data-parallel run.
pub fn describe_devices(devices: &[Gpu], sync_bn: bool) -> String {
    match devices {
        [one] => one.describe(),
        _ => format!(
            "{} devices ({}), batch norm {}: {}",
            devices.len(),
            devices
                .iter()
                .map(|g| g.summary.index.to_string())
                .collect::<Vec<_>>()
                .join(","),
            if sync_bn {
                "synchronised"
            } else {
                "per device"
            },
            devices[0].describe()
        ),
    }
}

/// The models and losses of devices 1.. of a data-parallel run (none for one device).
pub struct Replicas {
    gpus: Vec<Gpu>,
    models: Vec<ResNet>,
    losses: Vec<LossSetup>,
}

impl Replicas {
    /// Build the model (as `build` builds device 0's) and loss on every device after the first.
    pub fn build(
        devices: &[Gpu],
        build: impl Fn(&Gpu) -> Result<ResNet>,
        loss: LossConfig,
        counts: &[usize],
    ) -> Result<Self> {
        let gpus = devices[1..].to_vec();
        let models = gpus.iter().map(&build).collect::<Result<Vec<_>>>()?;
        let losses = gpus
            .iter()
            .map(|g| LossSetup::new(g, loss, counts))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            gpus,
            models,
            losses,
        })
    }

    /// Wait for the replicas' pipelines to compile ([`crate::gpu::KernelCache::wait_all`]).
    pub fn wait_compiled(&self) {
        for g in &self.gpus {
            g.kernels.wait_all();
        }
    }

    /// Copy device 0's weights and running statistics to every replica (after loading).
    pub fn copy_state_from(&self, gpu: &Gpu, model: &ResNet) -> Result<()> {
        if self.gpus.is_empty() {
            return Ok(());
        }
        let bytes = crate::checkpoint::model_bytes(gpu, model, 0, None)?;
        for (g, m) in self.gpus.iter().zip(&self.models) {
            crate::checkpoint::load_model_bytes(g, &bytes, Path::new("device 0's weights"), m)?;
        }
        Ok(())
    }

    /// Set every replica's class weights (DRW).
    pub fn set_loss_weights(&self, weights: Option<&[f64]>) -> Result<()> {
        for (g, l) in self.gpus.iter().zip(&self.losses) {
            l.set_weights(g, weights)?;
        }
        Ok(())
    }
}

/// The training step: on one device, or replicas in lockstep on several.
pub enum Runner {
    One(Box<ResNetStep>),
    Many {
        dp: DataParallel,
        /// Each local device's (device, images, labels) inputs.
        inputs: Vec<(Gpu, Tensor, Tensor)>,
        /// The batch slice of the first local device, and slices in all (every process's).
        first_slice: usize,
        slices: usize,
    },
}

impl Runner {
    /// Record the step for a batch of `shape` on device 0 (`gpu`, `model`, `loss`) and, with
    /// replicas, the same step for `shape[0] / devices` images on every device. Replicas of
    /// device 0's adapter record its kernel choices; other adapters choose their own.
    #[allow(clippy::too_many_arguments)] // device 0's model, its replicas, the step's settings
    pub fn record(
        gpu: &Gpu,
        model: &ResNet,
        loss: &LossSetup,
        replicas: &Replicas,
        shape: [usize; 4],
        sgd: SgdConfig,
        sync_bn: bool,
        procs: Option<Rc<dyn Processes>>,
    ) -> Result<Self> {
        let local = replicas.gpus.len() + 1;
        let n = local * procs.as_ref().map_or(1, |p| p.size());
        let first_slice = procs.as_ref().map_or(0, |p| p.rank() * local);
        if n == 1 {
            return Ok(Runner::One(Box::new(
                model.train_step(gpu, shape, sgd, loss)?,
            )));
        }
        if !shape[0].is_multiple_of(n) {
            bail!(
                "a batch of {} images does not split over {n} devices",
                shape[0]
            );
        }
        let rep = Replication {
            devices: n,
            sync_bn,
        };
        let slice = [shape[0] / n, shape[1], shape[2], shape[3]];
        let first = model.train_step_replicated(gpu, slice, sgd, loss, rep)?;
        let choices = gpu
            .tuner
            .used()
            .into_iter()
            .map(|(k, c)| (k, c.variant))
            .collect::<std::collections::BTreeMap<_, _>>();
        let mut steps = vec![first.step];
        let mut inputs = vec![(gpu.clone(), first.x, first.y)];
        for ((g, m), l) in replicas
            .gpus
            .iter()
            .zip(&replicas.models)
            .zip(&replicas.losses)
        {
            let same_adapter = (&g.summary.name, &g.summary.backend, &g.summary.driver_info)
                == (
                    &gpu.summary.name,
                    &gpu.summary.backend,
                    &gpu.summary.driver_info,
                );
            if same_adapter {
                g.tuner.pin(choices.clone());
            } else {
                // Another kind of adapter tunes for itself (its variants may differ; the
                // weights stay identical: every device applies the same summed gradients).
                g.tuner.configure_like(&gpu.tuner)?;
            }
            let st = m.train_step_replicated(g, slice, sgd, l, rep)?;
            steps.push(st.step);
            inputs.push((g.clone(), st.x, st.y));
        }
        Ok(Runner::Many {
            dp: DataParallel::new(steps, procs)?,
            inputs,
            first_slice,
            slices: n,
        })
    }

    /// Set the learning rate on every device.
    pub fn set_lr(&mut self, gpu: &Gpu, lr: f32) {
        match self {
            Runner::One(st) => st.step.sgd.set_lr(gpu, lr),
            Runner::Many { dp, .. } => dp.set_lr(lr),
        }
    }

    /// The images of a batch of `batch` this process trains on (its devices' slices), or
    /// `None` for all of them.
    pub fn part(&self, batch: usize) -> Option<Range<usize>> {
        match self {
            Runner::Many {
                inputs,
                first_slice,
                slices,
                ..
            } if inputs.len() < *slices => {
                let per = batch / slices;
                Some(first_slice * per..(first_slice + inputs.len()) * per)
            }
            _ => None,
        }
    }

    /// Start a step on this process's part of the batch (`x`, `y`: [`Runner::part`]): queue the
    /// uploads, each local device its slice; one device: submit the step. `x` and `y` may be
    /// overwritten as soon as this returns.
    pub fn start(&self, gpu: &Gpu, x: &[f32], y: &[u32]) -> Result<()> {
        match self {
            Runner::One(st) => {
                st.x.write_f32(gpu, x)?;
                st.y.write_u32(gpu, y)?;
                st.step.submit();
            }
            Runner::Many { inputs, .. } => {
                let (px, py) = (x.len() / inputs.len(), y.len() / inputs.len());
                for (i, (g, tx, ty)) in inputs.iter().enumerate() {
                    tx.write_f32(g, &x[i * px..(i + 1) * px])?;
                    ty.write_u32(g, &y[i * py..(i + 1) * py])?;
                }
            }
        }
        Ok(())
    }

    /// Finish the step last started and return its loss (one device: wait for it; several:
    /// run it, collective by collective, on this thread).
    pub fn finish(&self) -> Result<f32> {
        match self {
            Runner::One(st) => st.step.read_loss(),
            Runner::Many { dp, .. } => dp.run(),
        }
    }

    /// With several devices: collectives per step, bytes each device exchanges per step, and
    /// seconds so far waiting for the devices and exchanging ([`crate::parallel::Lockstep::secs`]).
    pub fn exchange_stats(&self) -> Option<(usize, u64, (f64, f64))> {
        match self {
            Runner::One(_) => None,
            Runner::Many { dp, .. } => {
                let l = dp.lockstep();
                Some((l.collectives(), l.bytes_per_run(), l.secs()))
            }
        }
    }

    /// Device 0's optimizer momentum (all devices hold the same).
    pub fn momentum(&self) -> &Tensor {
        match self {
            Runner::One(st) => &st.step.sgd.momentum,
            Runner::Many { dp, .. } => &dp.replicas()[0].sgd.momentum,
        }
    }

    /// Device 0's dynamic loss-scale state (`--precision f16`; None without scaling). Blocks on
    /// the GPU: for checkpoints.
    pub fn loss_scale(&self) -> Result<Option<crate::loss_scale::ScaleState>> {
        let step = match self {
            Runner::One(st) => &st.step,
            Runner::Many { dp, .. } => &dp.replicas()[0],
        };
        match &step.sgd.scaler {
            Some(sc) => Ok(Some(sc.read(step.gpu())?)),
            None => Ok(None),
        }
    }

    /// Set the loss-scale state on every device (a resumed run's); an error without scaling.
    pub fn set_loss_scale(&self, s: crate::loss_scale::ScaleState) -> Result<()> {
        let steps: Vec<&crate::step::TrainStep> = match self {
            Runner::One(st) => vec![&st.step],
            Runner::Many { dp, .. } => dp.replicas().iter().collect(),
        };
        for st in steps {
            match &st.sgd.scaler {
                Some(sc) => sc.set(st.gpu(), s)?,
                None => anyhow::bail!("this run has no loss scaling (precision f32)"),
            }
        }
        Ok(())
    }

    /// Set the optimizer momentum on every device.
    pub fn set_momentum(&self, v: &[f32]) -> Result<()> {
        match self {
            Runner::One(st) => st.step.sgd.momentum.write_f32(st.step.gpu(), v),
            Runner::Many { dp, .. } => {
                for r in dp.replicas() {
                    r.sgd.momentum.write_f32(r.gpu(), v)?;
                }
                Ok(())
            }
        }
    }
}
