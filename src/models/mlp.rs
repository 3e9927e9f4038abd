//! A two-layer perceptron on synthetic Gaussian blobs: the end-to-end proof that forward,
//! backward and the optimizer work together, and the workload of the memory test.

use anyhow::Result;

use crate::gpu::Gpu;
use crate::ops::{cross_entropy, elementwise, matmul};
use crate::optim::{Sgd, SgdConfig};
use crate::params::{Params, ParamsBuilder};
use crate::rng::Rng64;
use crate::step::TrainStep;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// Sizes of the MLP problem.
#[derive(Clone, Copy, Debug)]
pub struct MlpConfig {
    pub batch: usize,
    pub inputs: usize,
    pub hidden: usize,
    pub classes: usize,
    pub seed: u64,
    pub lr: f32,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            inputs: 32,
            hidden: 64,
            classes: 5,
            seed: 1,
            lr: 0.1,
        }
    }
}

/// Gaussian blobs: class centres on a sphere of radius 2, unit noise.
pub struct Blobs {
    centres: Vec<Vec<f64>>,
    rng: Rng64,
    dim: usize,
}

impl Blobs {
    /// Blobs in `dim` dimensions for `classes` classes.
    pub fn new(dim: usize, classes: usize, seed: u64) -> Self {
        let mut rng = Rng64::new(seed);
        let centres = (0..classes)
            .map(|_| {
                let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
                let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
                v.iter().map(|x| 2.0 * x / n).collect()
            })
            .collect();
        Self { centres, rng, dim }
    }

    /// Next batch: row-major features and labels.
    pub fn batch(&mut self, n: usize) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(n * self.dim);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let c = self.rng.below(self.centres.len());
            for d in 0..self.dim {
                x.push((self.centres[c][d] + 0.7 * self.rng.normal()) as f32);
            }
            y.push(c as u32);
        }
        (x, y)
    }
}

/// The recorded MLP training program plus its input slots.
pub struct Mlp {
    pub step: TrainStep,
    pub params: Params,
    pub x: Tensor,
    pub y: Tensor,
    pub cfg: MlpConfig,
}

impl Mlp {
    /// Build parameters (Kaiming-uniform-like init), record forward, loss, backward and SGD.
    pub fn new(gpu: &Gpu, cfg: MlpConfig) -> Result<Self> {
        let mut rng = Rng64::new(cfg.seed);
        let mut pb = ParamsBuilder::default();
        let init = |rng: &mut Rng64, fan_in: usize, n: usize| {
            let b = (1.0 / fan_in as f64).sqrt();
            rng.vec_f32(n, -b, b)
        };
        pb.add(
            "fc1.weight",
            &[cfg.hidden, cfg.inputs],
            init(&mut rng, cfg.inputs, cfg.hidden * cfg.inputs),
        )?;
        pb.add(
            "fc1.bias",
            &[cfg.hidden],
            init(&mut rng, cfg.inputs, cfg.hidden),
        )?;
        pb.add(
            "fc2.weight",
            &[cfg.classes, cfg.hidden],
            init(&mut rng, cfg.hidden, cfg.classes * cfg.hidden),
        )?;
        pb.add(
            "fc2.bias",
            &[cfg.classes],
            init(&mut rng, cfg.hidden, cfg.classes),
        )?;
        let params = pb.build(gpu)?;

        let x = Tensor::zeros(gpu, &[cfg.batch, cfg.inputs], DType::F32)?;
        let y = Tensor::zeros(gpu, &[cfg.batch], DType::U32)?;
        let mut tape = Tape::new(gpu);
        let h = matmul::matmul(&mut tape, &x, params.get("fc1.weight")?, false, true)?;
        let h = elementwise::add_row(&mut tape, &h, params.get("fc1.bias")?)?;
        let h = elementwise::relu(&mut tape, &h)?;
        let z = matmul::matmul(&mut tape, &h, params.get("fc2.weight")?, false, true)?;
        let z = elementwise::add_row(&mut tape, &z, params.get("fc2.bias")?)?;
        let loss = cross_entropy::cross_entropy(&mut tape, &z, &y, None)?;
        params.attach(&mut tape)?;
        tape.backward(&loss)?;
        let sgd = Sgd::new(
            gpu,
            &params,
            SgdConfig {
                lr: cfg.lr,
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            },
        )?;
        let step = TrainStep::new(gpu, tape, sgd, loss)?;
        Ok(Self {
            step,
            params,
            x,
            y,
            cfg,
        })
    }

    /// Queue a batch and run one step; returns the loss of that batch.
    pub fn train_step(&self, gpu: &Gpu, x: &[f32], y: &[u32]) -> Result<f32> {
        self.x.write_f32(gpu, x)?;
        self.y.write_u32(gpu, y)?;
        self.step.run()
    }
}
