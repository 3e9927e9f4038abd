//! The autodiff tape: ops record their forward launches and a backward builder as they are
//! called; [`Tape::backward`] walks the nodes in reverse once and records the backward launches.
//! The recorded launches are replayed every step, so a static network allocates nothing and
//! builds nothing after it is recorded, and a whole step is one command buffer with no host sync.

use std::collections::HashMap;

use anyhow::{Result, bail};

use crate::gpu::{Dispatch, Gpu, Recorder};
use crate::tensor::{DType, Tensor};

/// Where a backward kernel writes one input's gradient.
pub struct GradOut {
    /// The gradient tensor (same shape as the input).
    pub tensor: Tensor,
    /// `false` for the first contribution (overwrite), `true` for later ones (add): a tensor used
    /// twice (a residual connection) gets the sum without any zeroing pass.
    pub accumulate: bool,
}

impl GradOut {
    /// The `beta` that kernels take: 0 overwrites, 1 accumulates.
    pub fn beta(&self) -> f32 {
        if self.accumulate { 1.0 } else { 0.0 }
    }
}

/// Builds an op's backward program from the output gradient and the input gradient targets
/// (`None` for inputs that need no gradient). Launches for input `i` must come before those for
/// input `i + 1`, so that an input used twice by one op is first overwritten, then accumulated.
pub type BackwardFn = Box<dyn FnOnce(&Gpu, &Tensor, &[Option<GradOut>]) -> Result<Vec<Recorded>>>;

/// How many devices run replicas of this tape's step (data parallel, see [`crate::parallel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    /// Devices, each with its own slice of the batch (1: no collectives are recorded).
    pub devices: usize,
    /// Batch norm reduces its statistics and gradient sums over all devices (`--sync-bn`);
    /// otherwise each device normalises with its own slice's statistics, as PyTorch DDP does.
    pub sync_bn: bool,
}

impl Replication {
    /// One device.
    pub const SINGLE: Replication = Replication {
        devices: 1,
        sync_bn: false,
    };
}

/// A cross-device all-reduce in a recorded program: every device's `tensors` are replaced by
/// `scale` x their sum over devices (added in device order, so a run is deterministic). A
/// single-device program skips it (the sum of one is itself; ops record them only for several
/// devices, where `scale` may be 1/devices for a mean).
#[derive(Clone)]
pub struct Collective {
    pub tensors: Vec<Tensor>,
    pub scale: f32,
}

impl Collective {
    /// `scale` x the sum of `tensors` over the devices.
    pub fn sum(tensors: Vec<Tensor>, scale: f32) -> Self {
        Self { tensors, scale }
    }
}

/// One recorded item of a program: a launch, or a point where the devices exchange sums.
pub enum Recorded {
    Launch(Dispatch),
    Collective(Collective),
}

impl From<Dispatch> for Recorded {
    fn from(d: Dispatch) -> Self {
        Recorded::Launch(d)
    }
}

impl From<Collective> for Recorded {
    fn from(c: Collective) -> Self {
        Recorded::Collective(c)
    }
}

/// Launches as a backward program (the common case: no collectives).
pub fn launches(v: Vec<Dispatch>) -> Vec<Recorded> {
    v.into_iter().map(Recorded::Launch).collect()
}

/// An item of [`Tape::program`], borrowed.
pub enum Item<'a> {
    Launch(&'a Dispatch),
    Collective(&'a Collective),
}

struct Node {
    inputs: Vec<Tensor>,
    output: Tensor,
    backward: Option<BackwardFn>,
}

/// A recorded launch with the op family it belongs to (for benchmark breakdowns).
pub struct Launch {
    pub family: &'static str,
    pub dispatch: Dispatch,
}

/// The recorded forward and backward program of a network.
pub struct Tape {
    gpu: Gpu,
    forward: Vec<Launch>,
    nodes: Vec<(&'static str, Node)>,
    backward: Vec<Launch>,
    grads: HashMap<usize, Tensor>,
    preset: HashMap<usize, Tensor>,
    has_backward: bool,
    family: Option<&'static str>,
    replication: Replication,
    /// Collectives as (index of the launch they precede, collective), forward and backward.
    forward_syncs: Vec<(usize, Collective)>,
    backward_syncs: Vec<(usize, Collective)>,
}

impl Tape {
    /// An empty tape on `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        Self {
            gpu: gpu.clone(),
            forward: Vec::new(),
            nodes: Vec::new(),
            backward: Vec::new(),
            grads: HashMap::new(),
            preset: HashMap::new(),
            has_backward: false,
            family: None,
            replication: Replication::SINGLE,
            forward_syncs: Vec::new(),
            backward_syncs: Vec::new(),
        }
    }

    /// An empty tape for one of `replication.devices` replicas of a data-parallel step: ops
    /// record collectives where they need the whole batch's sums.
    pub fn replicated(gpu: &Gpu, replication: Replication) -> Result<Self> {
        if replication.devices == 0 {
            bail!("a replicated tape needs at least one device");
        }
        Ok(Self {
            replication,
            ..Self::new(gpu)
        })
    }

    /// How many devices run this tape's program.
    pub fn replication(&self) -> Replication {
        self.replication
    }

    /// Record a forward collective (after the launches recorded so far). Ignored on a
    /// single-device tape.
    pub fn push_collective(&mut self, c: Collective) {
        if self.replication.devices > 1 {
            self.forward_syncs.push((self.forward.len(), c));
        }
    }

    /// Record a collective after the backward launches recorded so far (e.g. the gradient
    /// all-reduce at the end of a step). Ignored on a single-device tape.
    pub fn push_backward_collective(&mut self, c: Collective) {
        if self.replication.devices > 1 {
            self.backward_syncs.push((self.backward.len(), c));
        }
    }

    /// The whole program, forward then backward, launches and collectives in order.
    pub fn program(&self) -> Vec<Item<'_>> {
        let mut out = Vec::new();
        for (launches, syncs) in [
            (&self.forward, &self.forward_syncs),
            (&self.backward, &self.backward_syncs),
        ] {
            let mut s = syncs.iter().peekable();
            for (i, l) in launches.iter().enumerate() {
                while let Some((_, c)) = s.next_if(|(at, _)| *at == i) {
                    out.push(Item::Collective(c));
                }
                out.push(Item::Launch(&l.dispatch));
            }
            out.extend(s.map(|(_, c)| Item::Collective(c)));
        }
        out
    }

    /// Collectives recorded (0 on a single-device tape).
    pub fn collectives(&self) -> usize {
        self.forward_syncs.len() + self.backward_syncs.len()
    }

    /// The device this tape records for.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Allocate an op's output: f32, needing a gradient when any input does.
    pub fn output(&self, shape: &[usize], inputs: &[&Tensor]) -> Result<Tensor> {
        self.output_as(shape, DType::F32, inputs)
    }

    /// [`Tape::output`] of element type `dtype` (f16 activations, `--precision f16`).
    pub fn output_as(&self, shape: &[usize], dtype: DType, inputs: &[&Tensor]) -> Result<Tensor> {
        let t = Tensor::zeros(&self.gpu, shape, dtype)?;
        Ok(if inputs.iter().any(|t| t.requires_grad()) {
            t.requiring_grad()
        } else {
            t
        })
    }

    /// Attribute every launch recorded until the next call to `family` (None: each op's own),
    /// so that a composite layer (whitening) shows as one line in benchmark breakdowns.
    pub fn set_family(&mut self, family: Option<&'static str>) {
        self.family = family;
    }

    /// Record a differentiable op: its forward launches, inputs, output and backward builder.
    pub fn push(
        &mut self,
        family: &'static str,
        inputs: Vec<Tensor>,
        output: &Tensor,
        forward: Vec<Dispatch>,
        backward: BackwardFn,
    ) -> Result<()> {
        if self.has_backward {
            bail!("op {family} recorded after backward(): record the whole forward pass first");
        }
        let family = self.family.unwrap_or(family);
        self.forward.extend(
            forward
                .into_iter()
                .map(|dispatch| Launch { family, dispatch }),
        );
        if output.requires_grad() {
            self.nodes.push((
                family,
                Node {
                    inputs,
                    output: output.clone(),
                    backward: Some(backward),
                },
            ));
        }
        Ok(())
    }

    /// Record a single-input op whose backward is one launch into the input's gradient target.
    pub fn push_unary(
        &mut self,
        family: &'static str,
        x: &Tensor,
        y: &Tensor,
        forward: Vec<Dispatch>,
        grad: impl FnOnce(&Gpu, &Tensor, &GradOut) -> Result<Dispatch> + 'static,
    ) -> Result<()> {
        self.push(
            family,
            vec![x.clone()],
            y,
            forward,
            Box::new(move |gpu, g, gin| match &gin[0] {
                Some(t) => Ok(vec![grad(gpu, g, t)?.into()]),
                None => Ok(Vec::new()),
            }),
        )
    }

    /// Record a forward-only launch (e.g. a running-statistics update).
    pub fn push_forward(&mut self, family: &'static str, dispatch: Dispatch) {
        let family = self.family.unwrap_or(family);
        self.forward.push(Launch { family, dispatch });
    }

    /// Send the gradient of `param` into `grad` (a view of the flat gradient buffer) instead of
    /// a tensor the tape allocates. Call before [`Tape::backward`].
    pub fn set_grad(&mut self, param: &Tensor, grad: Tensor) -> Result<()> {
        if param.shape() != grad.shape() {
            bail!(
                "gradient of {param:?} must have its shape, got {:?}",
                grad.shape()
            );
        }
        self.preset.insert(param.id(), grad);
        Ok(())
    }

    /// Record the backward pass of a scalar `loss` (seed gradient 1).
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        if loss.numel() != 1 {
            bail!(
                "backward() needs a scalar loss, got shape {:?}",
                loss.shape()
            );
        }
        let seed = Tensor::from_f32(&self.gpu, &[1], &[1.0])?;
        self.backward_with(loss, seed)
    }

    /// Record the backward pass of `out` with the given output gradient `seed`.
    pub fn backward_with(&mut self, out: &Tensor, seed: Tensor) -> Result<()> {
        if self.has_backward {
            bail!("backward() was already recorded on this tape");
        }
        if seed.shape() != out.shape() {
            bail!(
                "seed gradient shape {:?} differs from output {:?}",
                seed.shape(),
                out.shape()
            );
        }
        if !out.requires_grad() {
            bail!("{out:?} does not depend on anything that requires a gradient");
        }
        self.has_backward = true;
        self.grads.insert(out.id(), seed);
        let gpu = self.gpu.clone();
        let nodes = std::mem::take(&mut self.nodes);
        for (family, mut node) in nodes.into_iter().rev() {
            let Some(gout) = self.grads.get(&node.output.id()).cloned() else {
                continue; // does not reach the output
            };
            let mut targets = Vec::with_capacity(node.inputs.len());
            for input in &node.inputs {
                if !input.requires_grad() {
                    targets.push(None);
                    continue;
                }
                let (tensor, accumulate) = match self.grads.get(&input.id()) {
                    Some(g) => (g.clone(), true),
                    None => {
                        let g = match self.preset.get(&input.id()) {
                            Some(g) => g.clone(),
                            // A gradient has its tensor's element type (f16 activations get
                            // f16 gradients, as under PyTorch's autocast).
                            None => Tensor::zeros(&gpu, input.shape(), input.dtype())?,
                        };
                        self.grads.insert(input.id(), g.clone());
                        (g, false)
                    }
                };
                targets.push(Some(GradOut { tensor, accumulate }));
            }
            let build = node.backward.take().expect("backward built once");
            for item in build(&gpu, &gout, &targets)? {
                match item {
                    Recorded::Launch(dispatch) => self.backward.push(Launch { family, dispatch }),
                    Recorded::Collective(c) => self.push_backward_collective(c),
                }
            }
        }
        Ok(())
    }

    /// The gradient of `t` once [`Tape::backward`] is recorded (None if `t` does not reach the
    /// loss).
    pub fn grad(&self, t: &Tensor) -> Option<&Tensor> {
        self.grads.get(&t.id())
    }

    /// Record the forward launches.
    pub fn encode_forward(&self, rec: &mut Recorder) {
        for l in &self.forward {
            l.dispatch.record(rec);
        }
    }

    /// Record the backward launches.
    pub fn encode_backward(&self, rec: &mut Recorder) {
        for l in &self.backward {
            l.dispatch.record(rec);
        }
    }

    /// Every recorded launch, forward then backward.
    pub fn launches(&self) -> impl Iterator<Item = &Launch> {
        self.forward.iter().chain(self.backward.iter())
    }

    /// Encode and submit the forward (and the backward when `with_backward`) in one command
    /// buffer, without waiting.
    pub fn run(&self, with_backward: bool) -> wgpu::SubmissionIndex {
        let mut rec = Recorder::new(&self.gpu);
        self.encode_forward(&mut rec);
        if with_backward {
            self.encode_backward(&mut rec);
        }
        self.gpu.queue.submit([rec.finish()])
    }
}
