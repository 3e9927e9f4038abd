//! ResNets with PyTorch's parameter names and layouts:
//! - `ResNet-(6n+2)` for CIFAR (kaidic/LDAM-DRW `resnet_cifar.py`: 3x3 conv 16 + BN + ReLU, three
//!   stages of n basic blocks at 16/32/64 channels, option-A shortcuts, global average pool,
//!   `linear` or a normed linear); ResNet-32 is n = 5.
//! - `ResNet-10` for ImageNet-LT (torchvision naming: 7x7/2 stem + BN + ReLU + 3x3/2 max pool,
//!   four stages of one basic block at 64/128/256/512, option-B `downsample` 1x1 conv + BN,
//!   global average pool, `fc`).
//!
//! Init: Kaiming-normal (fan-in, ReLU gain) for convolutions and linear weights (LDAM-DRW's
//! `_weights_init`), PyTorch defaults elsewhere: BN weight 1 and bias 0, linear bias
//! uniform(+-1/sqrt(fan_in)), normed-linear columns uniform(-1, 1) renormalised to unit norm.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::gpu::Gpu;
use crate::ops::batchnorm::{BnAlgo, BnMode, BnState, batch_norm, batch_norm_add_relu};
use crate::ops::{conv2d, linear, pool, shortcut};
use crate::params::{Params, ParamsBuilder};
use crate::rng::Rng64;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// Which network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// CIFAR ResNet-(6n+2) with option-A shortcuts.
    Cifar { n: usize },
    /// ResNet-10 for ImageNet-LT.
    ResNet10,
    /// torchvision's bottleneck ResNets (v1.5: the stride on the 3x3 conv): ResNet-50/101/152
    /// (`groups` 1, `width` 64) and ResNeXt (`resnext50_32x4d`: 32 groups of width 4).
    Bottleneck {
        layers: [usize; 4],
        groups: usize,
        width: usize,
    },
}

/// Blocks per stage of the bottleneck ResNets by depth.
const BOTTLENECK_DEPTHS: [(usize, [usize; 4]); 3] = [
    (50, [3, 4, 6, 3]),
    (101, [3, 4, 23, 3]),
    (152, [3, 8, 36, 3]),
];

impl Arch {
    /// `resnet8`, `resnet20`, `resnet32`, `resnet44`, `resnet56`, `resnet110` (CIFAR),
    /// `resnet10`, `resnet50`, `resnet101`, `resnet152`, `resnext50_32x4d`, `resnext101_32x8d`
    /// (torchvision's names; any `resnextD_GxWd` of those depths).
    pub fn parse(name: &str) -> Result<Self> {
        if name == "resnet10" {
            return Ok(Arch::ResNet10);
        }
        let bottleneck =
            |depth: usize| BOTTLENECK_DEPTHS.iter().find(|d| d.0 == depth).map(|d| d.1);
        if let Some(rest) = name.strip_prefix("resnext")
            && let Some((depth, gw)) = rest.split_once('_')
            && let Some((g, w)) = gw.strip_suffix('d').and_then(|gw| gw.split_once('x'))
            && let (Ok(depth), Ok(groups), Ok(width)) = (
                depth.parse::<usize>(),
                g.parse::<usize>(),
                w.parse::<usize>(),
            )
            && let Some(layers) = bottleneck(depth)
            && groups >= 1
            && width >= 1
        {
            return Ok(Arch::Bottleneck {
                layers,
                groups,
                width,
            });
        }
        if let Some(depth) = name
            .strip_prefix("resnet")
            .and_then(|d| d.parse::<usize>().ok())
        {
            if let Some(layers) = bottleneck(depth) {
                return Ok(Arch::Bottleneck {
                    layers,
                    groups: 1,
                    width: 64,
                });
            }
            if depth >= 8 && (depth - 2) % 6 == 0 {
                return Ok(Arch::Cifar { n: (depth - 2) / 6 });
            }
        }
        bail!(
            "unknown model {name:?}: expected resnet(6n+2) such as resnet8, resnet20, resnet32 \
             (CIFAR), resnet10, resnet50, resnet101, resnet152 or resnext50_32x4d"
        )
    }

    /// The name [`Arch::parse`] reads back.
    pub fn name(&self) -> String {
        match *self {
            Arch::Cifar { n } => format!("resnet{}", 6 * n + 2),
            Arch::ResNet10 => "resnet10".into(),
            Arch::Bottleneck {
                layers,
                groups,
                width,
            } => {
                let depth = 3 * layers.iter().sum::<usize>() + 2;
                if groups == 1 && width == 64 {
                    format!("resnet{depth}")
                } else {
                    format!("resnext{depth}_{groups}x{width}d")
                }
            }
        }
    }

    /// Width of the pooled features.
    pub fn feature_dim(&self) -> usize {
        match self {
            Arch::Cifar { .. } => 64,
            Arch::ResNet10 => 512,
            Arch::Bottleneck { .. } => 2048,
        }
    }

    /// The ImageNet layout: 7x7/2 stem, 3x3/2 max pool, `fc` head.
    pub fn imagenet(&self) -> bool {
        !matches!(self, Arch::Cifar { .. })
    }
}

/// The classifier on top of the pooled features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classifier {
    /// `nn.Linear` with bias.
    Linear,
    /// LDAM's cosine classifier (weight `[in, out]`, no bias); logits in [-1, 1].
    Normed,
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct ResNetConfig {
    pub arch: Arch,
    pub in_channels: usize,
    pub classes: usize,
    pub classifier: Classifier,
    pub seed: u64,
    /// Channel whitening between the pooled features and the classifier.
    pub whiten: Option<crate::ops::whiten::WhitenConfig>,
}

#[derive(Clone, Debug)]
struct Block {
    prefix: String,
    cin: usize,
    cout: usize,
    stride: usize,
    /// Option B (`downsample` conv + BN) rather than option A, when the shape changes.
    option_b: bool,
    /// Bottleneck blocks: the 3x3 conv's groups (1x1 -> 3x3 grouped, strided -> 1x1 x4).
    bottleneck_groups: Option<usize>,
}

/// A ResNet: parameters in one flat buffer, BN running statistics beside them.
pub struct ResNet {
    pub cfg: ResNetConfig,
    pub params: Params,
    /// BN running statistics by layer prefix (`bn1`, `layer1.0.bn2`, ...).
    pub bn: BTreeMap<String, BnState>,
    /// The whitening layer (checkpoint names `whiten.*`).
    pub whiten: Option<crate::ops::whiten::Whitening>,
    blocks: Vec<Block>,
    /// Element type of the backbone's activations: f32, or f16 (`--precision f16`, see
    /// [`ResNet::set_precision`]).
    activations: DType,
}

fn kaiming(rng: &mut Rng64, fan_in: usize, n: usize) -> Vec<f32> {
    let std = (2.0 / fan_in as f64).sqrt();
    (0..n).map(|_| (std * rng.normal()) as f32).collect()
}

impl ResNet {
    /// Build and initialise the network.
    pub fn new(gpu: &Gpu, cfg: ResNetConfig) -> Result<Self> {
        if cfg.in_channels == 0 || cfg.classes == 0 {
            bail!("a ResNet needs at least one input channel and one class");
        }
        let mut rng = Rng64::new(cfg.seed);
        let mut pb = ParamsBuilder::default();
        let mut bn = BTreeMap::new();
        // `i`: input channels per group.
        let mut conv = |pb: &mut ParamsBuilder, name: &str, o: usize, i: usize, k: usize| {
            pb.add(
                &format!("{name}.weight"),
                &[o, i, k, k],
                kaiming(&mut rng, i * k * k, o * i * k * k),
            )
        };
        let mut add_bn = |pb: &mut ParamsBuilder, name: &str, c: usize| -> Result<()> {
            pb.add(&format!("{name}.weight"), &[c], vec![1.0; c])?;
            pb.add(&format!("{name}.bias"), &[c], vec![0.0; c])?;
            bn.insert(name.to_string(), BnState::new(gpu, c)?);
            Ok(())
        };
        let mut blocks = Vec::new();
        let (stem_c, stages): (usize, Vec<(usize, usize, usize)>) = match cfg.arch {
            Arch::Cifar { n } => (16, vec![(16, n, 1), (32, n, 2), (64, n, 2)]),
            Arch::ResNet10 => (64, vec![(64, 1, 1), (128, 1, 2), (256, 1, 2), (512, 1, 2)]),
            Arch::Bottleneck { layers, .. } => (
                64,
                vec![
                    (64, layers[0], 1),
                    (128, layers[1], 2),
                    (256, layers[2], 2),
                    (512, layers[3], 2),
                ],
            ),
        };
        let stem_k = if cfg.arch.imagenet() { 7 } else { 3 };
        conv(&mut pb, "conv1", stem_c, cfg.in_channels, stem_k)?;
        add_bn(&mut pb, "bn1", stem_c)?;
        let mut cin = stem_c;
        for (si, &(cout, n, stride)) in stages.iter().enumerate() {
            for j in 0..n {
                let prefix = format!("layer{}.{j}", si + 1);
                let s = if j == 0 { stride } else { 1 };
                if let Arch::Bottleneck { groups, width, .. } = cfg.arch {
                    // torchvision's Bottleneck: planes = cout, expansion 4.
                    let w = cout * width / 64 * groups;
                    let out = 4 * cout;
                    if w % groups != 0 {
                        bail!("{prefix}: width {w} is not a multiple of {groups} groups");
                    }
                    conv(&mut pb, &format!("{prefix}.conv1"), w, cin, 1)?;
                    add_bn(&mut pb, &format!("{prefix}.bn1"), w)?;
                    conv(&mut pb, &format!("{prefix}.conv2"), w, w / groups, 3)?;
                    add_bn(&mut pb, &format!("{prefix}.bn2"), w)?;
                    conv(&mut pb, &format!("{prefix}.conv3"), out, w, 1)?;
                    add_bn(&mut pb, &format!("{prefix}.bn3"), out)?;
                    let option_b = s != 1 || cin != out;
                    if option_b {
                        conv(&mut pb, &format!("{prefix}.downsample.0"), out, cin, 1)?;
                        add_bn(&mut pb, &format!("{prefix}.downsample.1"), out)?;
                    }
                    blocks.push(Block {
                        prefix,
                        cin,
                        cout: out,
                        stride: s,
                        option_b,
                        bottleneck_groups: Some(groups),
                    });
                    cin = out;
                    continue;
                }
                conv(&mut pb, &format!("{prefix}.conv1"), cout, cin, 3)?;
                add_bn(&mut pb, &format!("{prefix}.bn1"), cout)?;
                conv(&mut pb, &format!("{prefix}.conv2"), cout, cout, 3)?;
                add_bn(&mut pb, &format!("{prefix}.bn2"), cout)?;
                let option_b = cfg.arch.imagenet() && (s != 1 || cin != cout);
                if option_b {
                    conv(&mut pb, &format!("{prefix}.downsample.0"), cout, cin, 1)?;
                    add_bn(&mut pb, &format!("{prefix}.downsample.1"), cout)?;
                }
                blocks.push(Block {
                    prefix,
                    cin,
                    cout,
                    stride: s,
                    option_b,
                    bottleneck_groups: None,
                });
                cin = cout;
            }
        }
        let d = cfg.arch.feature_dim();
        let head = Self::head_name(cfg.arch);
        match cfg.classifier {
            Classifier::Linear => {
                pb.add(
                    &format!("{head}.weight"),
                    &[cfg.classes, d],
                    kaiming(&mut rng, d, cfg.classes * d),
                )?;
                let b = 1.0 / (d as f64).sqrt();
                pb.add(
                    &format!("{head}.bias"),
                    &[cfg.classes],
                    rng.vec_f32(cfg.classes, -b, b),
                )?;
            }
            Classifier::Normed => {
                let mut w: Vec<f32> = rng.vec_f32(d * cfg.classes, -1.0, 1.0);
                for c in 0..cfg.classes {
                    let norm = (0..d)
                        .map(|i| (w[i * cfg.classes + c] as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    for i in 0..d {
                        w[i * cfg.classes + c] =
                            (w[i * cfg.classes + c] as f64 / norm.max(1e-12)) as f32;
                    }
                }
                pb.add(&format!("{head}.weight"), &[d, cfg.classes], w)?;
            }
        }
        let whiten = match cfg.whiten {
            Some(w) => Some(crate::ops::whiten::Whitening::new(gpu, d, w)?),
            None => None,
        };
        Ok(Self {
            cfg,
            params: pb.build(gpu)?,
            bn,
            whiten,
            blocks,
            activations: DType::F32,
        })
    }

    /// Run the backbone with activations of `dtype` (f16: mixed precision; the convolutions read
    /// f16 copies of the f32 master weights, batch norm, the shortcut and pooling keep f16
    /// activations with f32 statistics and sums; the pooled features, whitening, classifier
    /// and loss stay f32; training steps use dynamic loss scaling).
    pub fn set_precision(&mut self, gpu: &Gpu, dtype: DType) -> Result<()> {
        match dtype {
            DType::F32 => {}
            DType::F16 if gpu.has_f16() => {}
            DType::F16 => bail!(
                "--precision f16 needs an adapter with shader-f16; {} has none (use f32)",
                gpu.describe()
            ),
            DType::U32 => bail!("activations are f32 or f16"),
        }
        self.activations = dtype;
        Ok(())
    }

    /// Name of the classifier layer: `linear` (CIFAR) or `fc` (ImageNet).
    pub fn head_name(arch: Arch) -> &'static str {
        if arch.imagenet() { "fc" } else { "linear" }
    }

    fn bn_layer(
        &self,
        tape: &mut Tape,
        name: &str,
        x: &Tensor,
        mode: BnMode,
        relu: bool,
    ) -> Result<Tensor> {
        let state = self.bn.get(name).expect("BN registered at build");
        batch_norm(
            tape,
            x,
            self.params.get(&format!("{name}.weight"))?,
            self.params.get(&format!("{name}.bias"))?,
            state,
            mode,
            relu,
        )
    }

    fn conv(&self, tape: &mut Tape, name: &str, x: &Tensor, stride: usize) -> Result<Tensor> {
        self.conv_groups(tape, name, x, stride, 1)
    }

    fn conv_groups(
        &self,
        tape: &mut Tape,
        name: &str,
        x: &Tensor,
        stride: usize,
        groups: usize,
    ) -> Result<Tensor> {
        let w = self.params.get(&format!("{name}.weight"))?;
        let pad = w.shape()[2] / 2;
        if groups == 1 {
            conv2d::conv2d(tape, x, w, stride, pad)
        } else {
            conv2d::conv2d_grouped(tape, x, w, stride, pad, groups)
        }
    }

    /// Record the backbone: `x: [B, C, H, W]` to pooled features `[B, d]`.
    pub fn features(&self, tape: &mut Tape, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        match x.shape() {
            [_, c, h, w] if *c == self.cfg.in_channels && *h > 0 && *w > 0 => {}
            s => bail!(
                "model input must be [B, {}, H, W], got {s:?}",
                self.cfg.in_channels
            ),
        }
        let imagenet = self.cfg.arch.imagenet();
        let x = &crate::ops::cast::cast(tape, x, self.activations)?;
        let mut h = self.conv(tape, "conv1", x, if imagenet { 2 } else { 1 })?;
        h = self.bn_layer(tape, "bn1", &h, mode, true)?;
        if imagenet {
            h = pool::max_pool2d(tape, &h, 3, 2, 1)?;
        }
        for b in &self.blocks {
            let p = &b.prefix;
            let (o, last) = match b.bottleneck_groups {
                Some(groups) => {
                    let mut o = self.conv(tape, &format!("{p}.conv1"), &h, 1)?;
                    o = self.bn_layer(tape, &format!("{p}.bn1"), &o, mode, true)?;
                    o = self.conv_groups(tape, &format!("{p}.conv2"), &o, b.stride, groups)?;
                    o = self.bn_layer(tape, &format!("{p}.bn2"), &o, mode, true)?;
                    (self.conv(tape, &format!("{p}.conv3"), &o, 1)?, "bn3")
                }
                None => {
                    let mut o = self.conv(tape, &format!("{p}.conv1"), &h, b.stride)?;
                    o = self.bn_layer(tape, &format!("{p}.bn1"), &o, mode, true)?;
                    (self.conv(tape, &format!("{p}.conv2"), &o, 1)?, "bn2")
                }
            };
            let short = if b.option_b {
                let s = self.conv(tape, &format!("{p}.downsample.0"), &h, b.stride)?;
                self.bn_layer(tape, &format!("{p}.downsample.1"), &s, mode, false)?
            } else if b.stride != 1 || b.cin != b.cout {
                shortcut::option_a(tape, &h, b.cout, b.stride)?
            } else {
                h.clone()
            };
            // The last BN, the residual add and the ReLU in one pass.
            let name = format!("{p}.{last}");
            h = batch_norm_add_relu(
                tape,
                &o,
                self.params.get(&format!("{name}.weight"))?,
                self.params.get(&format!("{name}.bias"))?,
                self.bn.get(&name).expect("BN registered at build"),
                mode,
                &short,
                BnAlgo::Auto,
            )?;
        }
        pool::global_avg_pool(tape, &h)
    }

    /// Record the classifier on features `[B, d]`.
    pub fn classify(&self, tape: &mut Tape, f: &Tensor) -> Result<Tensor> {
        let head = Self::head_name(self.cfg.arch);
        let w = self.params.get(&format!("{head}.weight"))?;
        match self.cfg.classifier {
            Classifier::Linear => {
                linear::linear(tape, f, w, Some(self.params.get(&format!("{head}.bias"))?))
            }
            Classifier::Normed => linear::normed_linear(tape, f, w),
        }
    }

    /// Record the whole network: images to logits. In eval mode with whitening, run the
    /// program of [`ResNet::record_prepare`] first (whenever the running statistics changed).
    pub fn forward(&self, tape: &mut Tape, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let f = self.features(tape, x, mode)?;
        let f = match (&self.whiten, mode) {
            (Some(w), BnMode::Train) => w.forward_train(tape, &f)?,
            (Some(w), BnMode::Eval) => w.forward_eval(tape, &f)?,
            (None, _) => f,
        };
        self.classify(tape, &f)
    }

    /// Record the eval-mode preparation (the whitening matrix from the running statistics);
    /// empty without whitening.
    pub fn record_prepare(&self, tape: &mut Tape) -> Result<()> {
        match &self.whiten {
            Some(w) => w.record_prepare(tape),
            None => Ok(()),
        }
    }
}

/// A recorded ResNet training step (cross-entropy loss) with its input slots.
pub struct ResNetStep {
    pub step: crate::step::TrainStep,
    /// Images `[B, C, H, W]`, written before each step.
    pub x: Tensor,
    /// Labels `[B]` (u32).
    pub y: Tensor,
}

impl ResNet {
    /// Record forward, loss, backward and SGD for batches of `shape = [B, C, H, W]`.
    pub fn train_step(
        &self,
        gpu: &Gpu,
        shape: [usize; 4],
        sgd: crate::optim::SgdConfig,
        loss: &crate::losses::LossSetup,
    ) -> Result<ResNetStep> {
        self.train_step_replicated(gpu, shape, sgd, loss, crate::tape::Replication::SINGLE)
    }

    /// [`ResNet::train_step`] for one device of a data-parallel run: `shape` is this device's
    /// slice of the batch; the step ends with the all-reduce of the gradients (see
    /// [`crate::parallel`]).
    pub fn train_step_replicated(
        &self,
        gpu: &Gpu,
        shape: [usize; 4],
        sgd: crate::optim::SgdConfig,
        loss: &crate::losses::LossSetup,
        replication: crate::tape::Replication,
    ) -> Result<ResNetStep> {
        let x = Tensor::zeros(gpu, &shape, crate::tensor::DType::F32)?;
        let y = Tensor::zeros(gpu, &[shape[0]], crate::tensor::DType::U32)?;
        let mut tape = Tape::replicated(gpu, replication)?;
        let logits = self.forward(&mut tape, &x, BnMode::Train)?;
        let loss = crate::ops::cross_entropy::margin_cross_entropy(
            &mut tape, &logits, &y, &loss.cls, loss.scale,
        )?;
        self.params.attach(&mut tape)?;
        // f16 activations: dynamic loss scaling (the backward is seeded with the scale).
        let scaling =
            (self.activations == DType::F16).then(crate::loss_scale::LossScaleConfig::default);
        let sgd = crate::optim::Sgd::with_scaling(gpu, &self.params, sgd, scaling)?;
        match &sgd.scaler {
            Some(sc) => tape.backward_with(&loss, sc.seed().clone())?,
            None => tape.backward(&loss)?,
        }
        tape.push_backward_collective(crate::tape::Collective::sum(
            vec![self.params.flat_grads()?],
            1.0,
        ));
        Ok(ResNetStep {
            step: crate::step::TrainStep::new(gpu, tape, sgd, loss)?,
            x,
            y,
        })
    }
}
