//! `longtail train` and `longtail eval`: the training loop of METHOD.md §6–7.
//!
//! Every epoch's batches and augmentation come from generators seeded by (seed, epoch), and GPU
//! kernels are deterministic, so a run is reproducible on one adapter and `--resume` continues
//! from the last finished epoch to the same final weights as an uninterrupted run.
//! While the GPU runs step t, the host assembles the batch of step t + 1; the loss of step t is
//! read after that (the one sync per step).

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, HostTensor, write_atomic};
use crate::config::{Distributed, TrainConfig};
use crate::data::augment::{Augment, assemble_part};
use crate::data::longtail::{class_sizes, shot_group, subset_indices};
use crate::data::{Dataset, Splits, cifar, idx, list};
use crate::gpu::Gpu;
use crate::losses::{LossConfig, LossKind, LossSetup, class_balanced_weights};
use crate::models::resnet::{Arch, Classifier, ResNet, ResNetConfig};
use crate::ops::batchnorm::BnMode;
use crate::ops::whiten::WhitenConfig;
use crate::optim::SgdConfig;
use crate::parallel::Processes;
use crate::replicas::{Replicas, Runner, describe_devices, open_devices};
use crate::rng::Rng64;
use crate::sampler::{B3rsConfig, Bet, Sampler, plan_epoch, steps_per_epoch};
use crate::schedule::Schedule;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// Load the configured data set (train and test splits).
pub fn load_data(cfg: &TrainConfig) -> Result<Splits> {
    let dir = |default: Option<&str>| -> Result<PathBuf> {
        match (&cfg.data_dir, default) {
            (Some(d), _) => Ok(PathBuf::from(d)),
            (None, Some(d)) => Ok(PathBuf::from(d)),
            (None, None) => bail!("dataset {} needs --data-dir", cfg.dataset),
        }
    };
    match cfg.dataset.as_str() {
        "fashion-mnist" => idx::load(&dir(Some(idx::FASHION_MNIST_DIR))?, true),
        "mnist" => idx::load(&dir(None)?, false),
        "cifar10" => cifar::load10(&dir(None)?),
        "cifar100" => cifar::load100(&dir(None)?),
        set @ ("imagenet-lt" | "inat2018" | "places-lt") => {
            let root = cfg
                .data_root
                .as_deref()
                .with_context(|| format!("{set} needs --data-root"))?;
            let tl = cfg
                .train_list
                .as_deref()
                .with_context(|| format!("{set} needs --train-list"))?;
            let vl = cfg
                .test_list
                .as_deref()
                .with_context(|| format!("{set} needs --test-list"))?;
            let stream = cfg.prefetch > 0;
            let train = list::load_with(Path::new(tl), Path::new(root), cfg.image_size, 0, stream)?;
            let test = list::load_with(
                Path::new(vl),
                Path::new(root),
                cfg.image_size,
                train.classes,
                stream,
            )?;
            Ok(Splits {
                name: set.into(),
                train,
                test,
            })
        }
        d => bail!("unknown dataset {d:?}"),
    }
}

/// The long-tailed training subset and the (optionally reduced) test set.
pub fn prepare_data(cfg: &TrainConfig, splits: Splits) -> Result<(Dataset, Dataset)> {
    let counts = splits.train.class_counts();
    // METHOD.md §6: n_max = 5000 for the 10-class sets (Fashion-MNIST has 6000 per class, MNIST
    // 5421..6742), 500 for CIFAR-100; otherwise the largest class.
    let largest = counts.iter().copied().max().unwrap_or(0);
    let protocol = crate::config::protocol_n_max(&cfg.dataset);
    let asked = cfg.n_max.or(protocol).unwrap_or(largest);
    if asked > largest {
        // Legal (the protocol's 5,000 on a smaller set), but the user should know.
        eprintln!(
            "warning: n_max = {asked} is more than the largest class of {}'s training split \
             ({largest} images): capped to {largest}",
            splits.name
        );
    }
    let n_max = asked.min(largest);
    let (tr, te) = (&splits.train, &splits.test);
    if (tr.channels, tr.height, tr.width) != (te.channels, te.height, te.width) {
        bail!(
            "{}: the test images are {}x{}x{} (channels x height x width) but the training images \
             are {}x{}x{}: both splits must have one image shape",
            splits.name,
            te.channels,
            te.height,
            te.width,
            tr.channels,
            tr.height,
            tr.width
        );
    }
    if tr.classes != te.classes {
        bail!(
            "{}: the test split has {} classes, the training split {}",
            splits.name,
            te.classes,
            tr.classes
        );
    }
    let sizes = class_sizes(splits.train.classes, n_max, cfg.rho, cfg.profile)?;
    let train = if cfg.rho == 1.0 && n_max == largest {
        splits.train
    } else {
        splits.train.subset(&subset_indices(&splits.train, &sizes)?)
    };
    let test = if cfg.test_per_class > 0 {
        let mut taken = vec![0usize; splits.test.classes];
        let keep: Vec<usize> = (0..splits.test.len())
            .filter(|&i| {
                let c = splits.test.labels[i] as usize;
                taken[c] += 1;
                taken[c] <= cfg.test_per_class
            })
            .collect();
        splits.test.subset(&keep)
    } else {
        splits.test
    };
    Ok((train, test))
}

/// The network the configuration describes.
pub fn build_model(
    gpu: &Gpu,
    cfg: &TrainConfig,
    channels: usize,
    classes: usize,
) -> Result<ResNet> {
    let whiten = cfg.whiten_method()?.map(|method| WhitenConfig {
        method,
        iters: cfg
            .whiten_iters
            .unwrap_or_else(|| WhitenConfig::default_iters(method)),
        eps: cfg.whiten_eps as f32,
        group: cfg.whiten_group,
        track: cfg.whiten_track,
        momentum: 0.1,
    });
    let mut model = ResNet::new(
        gpu,
        ResNetConfig {
            arch: Arch::parse(&cfg.model)?,
            in_channels: channels,
            classes,
            // LDAM's margins are meant for cosine logits.
            classifier: if cfg.loss == LossKind::Ldam {
                Classifier::Normed
            } else {
                Classifier::Linear
            },
            seed: cfg.seed,
            whiten,
        },
    )?;
    model.set_precision(gpu, cfg.precision.dtype())?;
    Ok(model)
}

/// Accuracy figures of one evaluation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    /// Top-1 on the balanced test set = mean per-class accuracy (%).
    pub acc: f64,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    pub per_class: Vec<f64>,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<u64>>,
}

/// Batches decoded ahead per thread when the evaluator streams a set of files.
const EVAL_PREFETCH: usize = 2;

/// Where a batch's pixels come from: an in-memory set, or the decoding threads of a set of
/// files (started for one plan of batches, taken in order).
enum Feed {
    Memory,
    Files(crate::data::prefetch::Prefetch),
}

impl Feed {
    /// Start feeding `plan`; with `keep`, only those images of every batch (one process's
    /// share of a distributed run) are decoded.
    fn start(
        d: &Dataset,
        plan: &[Vec<usize>],
        depth: usize,
        keep: Option<Range<usize>>,
    ) -> Result<Self> {
        Ok(if d.is_streamed() && !plan.is_empty() {
            let part: Vec<Vec<usize>>;
            let plan = match keep {
                Some(k) => {
                    part = plan.iter().map(|b| b[k.clone()].to_vec()).collect();
                    &part[..]
                }
                None => plan,
            };
            Feed::Files(crate::data::prefetch::Prefetch::start(
                d,
                plan,
                0,
                depth.max(1),
            )?)
        } else {
            Feed::Memory
        })
    }

    /// The next batch of the plan (`indices`), normalised (and augmented) into `out`: the
    /// images `keep` of it (all: `None`), as [`Feed::start`] was told.
    fn assemble(
        &mut self,
        d: &Dataset,
        indices: &[usize],
        keep: Option<Range<usize>>,
        aug: Option<(Augment, &mut Rng64)>,
        out: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<()> {
        let keep = keep.unwrap_or(0..indices.len());
        match self {
            Feed::Memory => assemble_part(d, indices, keep, aug, out, labels),
            Feed::Files(p) => {
                let raw = p.next_batch()?;
                crate::data::augment::assemble_raw_part(d, &raw, indices, keep, aug, out, labels);
            }
        }
        Ok(())
    }

    fn prefetch(&self) -> Option<&crate::data::prefetch::Prefetch> {
        match self {
            Feed::Files(p) => Some(p),
            Feed::Memory => None,
        }
    }
}

/// A recorded eval-mode forward of `batch` images plus the whitening preparation.
pub struct Evaluator {
    tape: Tape,
    prepare: Tape,
    x: Tensor,
    /// What the program reads back per batch, each `[batch, ...]`.
    outputs: Vec<Tensor>,
    batch: usize,
}

impl Evaluator {
    /// Record the eval program of `model` (logits) for batches of `batch` images like those of
    /// `d`.
    pub fn new(gpu: &Gpu, model: &ResNet, d: &Dataset, batch: usize) -> Result<Self> {
        Self::recording(gpu, model, d, batch, |tape, x| {
            Ok(vec![model.forward(tape, x, BnMode::Eval)?])
        })
    }

    /// Record an eval-mode program `record` (images to outputs, each `[batch, ...]`) for batches
    /// of `batch` images like those of `d`, with `model`'s whitening preparation.
    pub fn recording(
        gpu: &Gpu,
        model: &ResNet,
        d: &Dataset,
        batch: usize,
        record: impl FnOnce(&mut Tape, &Tensor) -> Result<Vec<Tensor>>,
    ) -> Result<Self> {
        let batch = batch.min(d.len()).max(1);
        let x = Tensor::zeros(gpu, &[batch, d.channels, d.height, d.width], DType::F32)?;
        let mut tape = Tape::new(gpu);
        let outputs = record(&mut tape, &x)?;
        let mut prepare = Tape::new(gpu);
        model.record_prepare(&mut prepare)?;
        Ok(Self {
            tape,
            prepare,
            x,
            outputs,
            batch,
        })
    }

    /// Every output over all images of `d`, `[N, ...]` each (the padded rows of the last batch
    /// dropped).
    pub fn outputs(&self, gpu: &Gpu, d: &Dataset) -> Result<Vec<Vec<f32>>> {
        self.prepare.run(false);
        let mut out: Vec<Vec<f32>> = self
            .outputs
            .iter()
            .map(|t| Vec::with_capacity(d.len() * t.numel() / self.batch))
            .collect();
        let (mut buf, mut lab) = (Vec::new(), Vec::new());
        let plan: Vec<Vec<usize>> = (0..d.len())
            .step_by(self.batch)
            .map(|start| (start..(start + self.batch).min(d.len())).collect())
            .collect();
        let mut feed = Feed::start(d, &plan, EVAL_PREFETCH, None)?;
        for idx in &plan {
            feed.assemble(d, idx, None, None, &mut buf, &mut lab)?;
            buf.resize(self.x.numel(), 0.0); // pad the last batch; its extra rows are ignored
            self.x.write_f32(gpu, &buf)?;
            self.tape.run(false);
            for (o, t) in out.iter_mut().zip(&self.outputs) {
                let row = t.numel() / self.batch;
                o.extend_from_slice(&t.to_f32(gpu)?[..idx.len() * row]);
            }
        }
        Ok(out)
    }

    /// Logits of every image of `d`, `[N, C]`.
    pub fn logits(&self, gpu: &Gpu, d: &Dataset) -> Result<Vec<f32>> {
        Ok(self.outputs(gpu, d)?.swap_remove(0))
    }
}

/// Accuracy, Many/Medium/Few, per-class accuracy and confusion from logits.
pub fn score(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    train_counts: &[usize],
    posthoc: Option<(f64, &[usize])>,
) -> Result<EvalResult> {
    let mut z = logits.to_vec();
    if let Some((tau, counts)) = posthoc {
        crate::losses::posthoc_adjust(&mut z, counts, tau)?;
    }
    let mut confusion = vec![vec![0u64; classes]; classes];
    for (i, &y) in labels.iter().enumerate() {
        let row = &z[i * classes..(i + 1) * classes];
        let pred = row
            .iter()
            .enumerate()
            .fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
        confusion[y as usize][pred] += 1;
    }
    let per_class: Vec<f64> = confusion
        .iter()
        .enumerate()
        .map(|(c, r)| {
            let n: u64 = r.iter().sum();
            if n == 0 {
                0.0
            } else {
                100.0 * r[c] as f64 / n as f64
            }
        })
        .collect();
    let present: Vec<usize> = (0..classes)
        .filter(|&c| confusion[c].iter().sum::<u64>() > 0)
        .collect();
    let mean = |cs: &[usize]| {
        (!cs.is_empty()).then(|| cs.iter().map(|&c| per_class[c]).sum::<f64>() / cs.len() as f64)
    };
    let group = |g: usize| -> Vec<usize> {
        present
            .iter()
            .copied()
            .filter(|&c| shot_group(train_counts[c]) == g)
            .collect()
    };
    Ok(EvalResult {
        acc: mean(&present).unwrap_or(0.0),
        many: mean(&group(0)),
        medium: mean(&group(1)),
        few: mean(&group(2)),
        per_class,
        confusion,
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("  -  ".into(), |x| format!("{x:5.2}"))
}

/// One line: top-1 and Many / Medium / Few.
pub fn eval_line(r: &EvalResult) -> String {
    format!(
        "top-1 {:5.2} % | many {} | medium {} | few {}",
        r.acc,
        fmt_opt(r.many),
        fmt_opt(r.medium),
        fmt_opt(r.few)
    )
}

/// One `metrics.jsonl` row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub acc: Option<f64>,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    pub img_s: f64,
    pub seconds: f64,
}

/// What `--resume` needs beyond the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    /// Epochs finished.
    epochs_done: usize,
    /// Global steps done.
    steps_done: usize,
    best: Option<(usize, EvalResult)>,
    last_eval: Option<EvalResult>,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub dataset: String,
    pub final_: Option<EvalResult>,
    pub best: Option<EvalResult>,
    pub best_epoch: Option<usize>,
    pub class_counts: Vec<usize>,
    pub adapter: String,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    pub img_s: f64,
    /// Whether the run reached its last epoch (or its step limit).
    #[serde(default)]
    pub finished: bool,
    /// The process that returned this summary (MPI): only process 0's is the run's.
    #[serde(skip, default)]
    pub rank: usize,
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

fn summary_json(s: &Summary) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("serialisable");
    if let Some(o) = v.as_object_mut()
        && let Some(f) = o.remove("final_")
    {
        o.insert("final".into(), f);
    }
    v
}

fn epoch_seed(seed: u64, epoch: usize, stream: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (epoch as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
        ^ stream
}

/// Train per `cfg` into `out`; with `resume`, continue the run already there.
pub fn train(
    gpu: &Gpu,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    quiet: bool,
) -> Result<Summary> {
    train_with_init(gpu, cfg, out, resume, quiet, None)
}

/// [`train`], starting from the weights in `init` when given (ignored on resume).
pub fn train_with_init(
    gpu: &Gpu,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    quiet: bool,
    init: Option<&Path>,
) -> Result<Summary> {
    let t_start = Instant::now();
    let procs: Option<Rc<dyn Processes>> = match cfg.distributed {
        Distributed::Mpi => Some(crate::distributed::join()?),
        Distributed::None => None,
    };
    let result = train_in(gpu, cfg, out, resume, quiet, init, procs.clone(), t_start);
    // An error in one process of a multi-process run: say which, then end them all (the
    // others would wait forever in their next collective).
    if let (Err(e), Some(p)) = (&result, &procs)
        && p.size() > 1
    {
        eprintln!("error in process {} of {}: {e:#}", p.rank(), p.size());
        p.abort();
    }
    result
}

/// The run of [`train_with_init`] in this process (`procs`: the processes of an MPI run).
#[allow(clippy::too_many_arguments)] // train_with_init's arguments plus its process group
fn train_in(
    gpu: &Gpu,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    quiet: bool,
    init: Option<&Path>,
    procs: Option<Rc<dyn Processes>>,
    t_start: Instant,
) -> Result<Summary> {
    // Process 0 evaluates, prints and writes the run directory; the others train only.
    let root = procs.as_ref().is_none_or(|p| p.rank() == 0);
    let quiet = quiet || !root;
    // Before any data is read or an epoch is spent: a run that cannot save is no run.
    if root {
        crate::rundir::check_writable(out)?;
    }
    let devices = open_devices(gpu, cfg, procs.as_deref())?;
    let gpu = &devices[0];
    let splits = load_data(cfg)?;
    let name = splits.name.clone();
    let (train, test) = prepare_data(cfg, splits)?;
    let counts = train.class_counts();
    let spe = steps_per_epoch(train.len(), cfg.batch_size)?;
    let model = build_model(gpu, cfg, train.channels, train.classes)?;
    let config_toml = cfg.to_toml()?;
    if !resume && root {
        write_atomic(&out.join("config.toml"), config_toml.as_bytes())?;
    }
    if root {
        println!(
            "{name}-LT: {} training images {:?}, {} test images; {} on {}{}",
            train.len(),
            counts,
            test.len(),
            cfg.model,
            describe_devices(&devices, cfg.sync_bn),
            procs.as_ref().map_or(String::new(), |p| format!(
                " x {} processes (MPI)",
                p.size()
            ))
        );
    }
    let loss_cfg = LossConfig {
        kind: cfg.loss,
        max_margin: cfg.ldam_max_margin,
        ldam_scale: cfg.ldam_scale,
        tau: cfg.tau,
    };
    let loss = LossSetup::new(gpu, loss_cfg, &counts)?;
    let bet = match cfg.bet {
        Some(k) => Bet {
            mode: cfg.bet_mode,
            period: Some(k),
            size: cfg.bet_size,
        },
        None => Bet::OFF,
    };
    let extra = if bet.mode == crate::sampler::BetMode::Concat && bet.period.is_some() {
        bet.size
    } else {
        0
    };
    let batch = cfg.batch_size + extra;
    let shape = [batch, train.channels, train.height, train.width];
    let sgd_cfg = SgdConfig {
        lr: cfg.lr as f32,
        momentum: cfg.momentum as f32,
        weight_decay: cfg.weight_decay as f32,
        nesterov: cfg.nesterov,
    };
    if let (Some(p), false) = (init, resume) {
        checkpoint::load_init(gpu, p, &model)?;
    }
    // A resumed run records the kernel variants it started with (reproducible to the bit on
    // one adapter), whatever the tune cache says now.
    if resume && let Some(pinned) = crate::tune::recorded(out)? {
        gpu.tuner.pin(pinned);
    }
    let replicas = Replicas::build(
        &devices,
        |g| build_model(g, cfg, train.channels, train.classes),
        loss_cfg,
        &counts,
    )?;
    let mut st = Runner::record(
        gpu,
        &model,
        &loss,
        &replicas,
        shape,
        sgd_cfg,
        cfg.sync_bn,
        procs.clone(),
    )?;
    let evaluator = Evaluator::new(gpu, &model, &test, cfg.eval_batch)?;
    if root {
        crate::tune::record(out, &gpu.tuner)?;
    }
    let schedule = Schedule {
        lr: cfg.lr,
        epochs: cfg.epochs,
        steps_per_epoch: spe,
        warmup_epochs: cfg.warmup_epochs,
        decay: cfg.schedule,
    };
    let b3rs = B3rsConfig {
        groups: cfg.b3rs_groups,
        q: cfg.b3rs_q,
        r: cfg.b3rs_r,
    };
    let aug = if cfg.augment == "none" {
        Augment::NONE
    } else {
        Augment::STANDARD
    };
    let drw_weights = class_balanced_weights(&counts, cfg.drw_beta)?;
    let posthoc = cfg.posthoc_tau.map(|t| (t, counts.as_slice()));

    // Resume: weights, optimizer state, counters, metrics so far.
    let mut state = RunState {
        epochs_done: 0,
        steps_done: 0,
        best: None,
        last_eval: None,
    };
    let mut history: Vec<EpochMetrics> = Vec::new();
    if resume {
        match crate::rundir::load_latest(out)? {
            Some(set) => {
                let what = |f: &str| set.dir.join(f).display().to_string();
                state = serde_json::from_slice(&set.state)
                    .with_context(|| format!("{} is corrupt", what("state.json")))?;
                checkpoint::load_model_bytes(
                    gpu,
                    &set.model,
                    &set.dir.join("model.safetensors"),
                    &model,
                )?;
                st.set_momentum(&momentum_from(
                    &st,
                    &set.optimizer,
                    &what("optimizer.safetensors"),
                )?)?;
                if let Some(ls) = loss_scale_from(&set.optimizer, &what("optimizer.safetensors"))? {
                    st.set_loss_scale(ls)?;
                } else if cfg.precision == crate::config::Precision::F16 {
                    bail!(
                        "{}: no loss_scale tensor, but the run trains in f16 (precision changed?)",
                        what("optimizer.safetensors")
                    );
                }
                history = parse_metrics(&set.metrics, &what("metrics.jsonl"))?;
                history.truncate(state.epochs_done);
                println!(
                    "resuming after epoch {} (step {}) from {}",
                    state.epochs_done,
                    state.steps_done,
                    set.dir.display()
                );
            }
            None if out.join("state.json").exists() && !out.join(crate::rundir::SETS).exists() => {
                // A run directory from before checkpoint sets: its files are not verified.
                eprintln!(
                    "warning: {} has no checkpoint sets (an older run directory): resuming from \
                     its top-level files, which cannot be checked for consistency",
                    out.display()
                );
                let p = out.join("state.json");
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                state = serde_json::from_str(&text)
                    .with_context(|| format!("{} is corrupt", p.display()))?;
                checkpoint::load_model(gpu, &out.join("last.safetensors"), &model)?;
                let p = out.join("optimizer.safetensors");
                let opt = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                st.set_momentum(&momentum_from(&st, &opt, &p.display().to_string())?)?;
                if let Ok(b) = std::fs::read(out.join("metrics.jsonl")) {
                    history = parse_metrics(&b, "metrics.jsonl")?;
                    history.truncate(state.epochs_done);
                }
            }
            None => {
                if !out.join("config.toml").exists() {
                    bail!("{}: no run to resume (no config.toml)", out.display());
                }
                // Stopped before its first epoch was saved: nothing to continue, so start over
                // (same seed, same run).
                // The config does not record --init: say so rather than guess.
                println!(
                    "{}: no complete checkpoint set yet; starting the run from the beginning \
                     (if it began from --init weights, pass --init again)",
                    out.display()
                );
                if let Some(p) = init {
                    checkpoint::load_init(gpu, p, &model)?;
                }
            }
        }
    }

    // Replicas start from device 0's weights and statistics, whatever was loaded.
    replicas.copy_state_from(gpu, &model)?;
    // The step's pipelines compile on background threads: wait for them here, so that the
    // epoch's time (training images/s) counts training, as it did when they compiled while
    // the step was recorded.
    gpu.kernels.wait_all();
    replicas.wait_compiled();
    let total_steps = cfg.max_steps.unwrap_or(usize::MAX).min(cfg.epochs * spe);
    let mut exchange_before = (0.0, 0.0);
    if cfg.sync_bn && st.exchange_stats().is_none() && root {
        eprintln!("note: --sync-bn has no effect on one device");
    }
    let (mut xbuf, mut ybuf) = (Vec::new(), Vec::new());
    let fp16 = cfg.precision == crate::config::Precision::F16;
    let mut nonfinite_run = 0usize;
    let mut step = state.steps_done;
    let mut images = 0usize;
    let mut train_secs = 0.0;
    for epoch in state.epochs_done..cfg.epochs {
        if step >= total_steps {
            break;
        }
        let t0 = Instant::now();
        let drw_on = cfg.drw_start().is_some_and(|e| epoch >= e);
        loss.set_weights(gpu, drw_on.then_some(drw_weights.as_slice()))?;
        replicas.set_loss_weights(drw_on.then_some(drw_weights.as_slice()))?;
        let mut sampler = Sampler::new(
            cfg.sampler,
            &train.labels,
            train.classes,
            b3rs,
            epoch_seed(cfg.seed, epoch, 1),
        );
        let plan = plan_epoch(&mut sampler, spe, cfg.batch_size, bet)?;
        let mut arng = Rng64::new(epoch_seed(cfg.seed, epoch, 2));
        let steps_here = plan.len().min(total_steps - step);
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(steps_here as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            )
        };
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        let mut loss_sum = 0.0;
        let mut nonfinite_losses = 0usize;
        let mut lr = cfg.lr;
        // A process of a distributed run decodes and uploads its share of each batch only.
        let keep = st.part(batch);
        let mut feed = Feed::start(&train, &plan[..steps_here], cfg.prefetch, keep.clone())?;
        feed.assemble(
            &train,
            &plan[0],
            keep.clone(),
            Some((aug, &mut arng)),
            &mut xbuf,
            &mut ybuf,
        )?;
        for i in 0..steps_here {
            lr = schedule.lr_at(step);
            st.set_lr(gpu, lr as f32);
            st.start(gpu, &xbuf, &ybuf)?;
            let l = if i + 1 < steps_here {
                // The next batch is assembled on another thread while this step runs (with
                // several devices this thread drives the step's collectives meanwhile).
                std::thread::scope(|sc| {
                    let next = sc.spawn(|| {
                        feed.assemble(
                            &train,
                            &plan[i + 1],
                            keep.clone(),
                            Some((aug, &mut arng)),
                            &mut xbuf,
                            &mut ybuf,
                        )
                    });
                    let l = st.finish();
                    let assembled = next.join().expect("the batch assembly thread panicked");
                    assembled.and(l)
                })?
            } else {
                st.finish()?
            };
            step += 1;
            // f16: an overflow in the forward makes the loss inf / NaN and the step is skipped
            // (the loss scale halves); only a long run of them stops training.
            if !l.is_finite() && fp16 && nonfinite_run < MAX_NONFINITE_STEPS {
                nonfinite_run += 1;
                nonfinite_losses += 1;
                bar.inc(1);
                continue;
            }
            nonfinite_run = 0;
            if !l.is_finite() {
                bar.abandon();
                bail!(
                    "the loss became {l} at epoch {} step {step}: training stopped; {}. Try a lower --lr",
                    epoch + 1,
                    crate::rundir::describe_latest(out)
                );
            }
            loss_sum += l as f64;
            let secs = t0.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} {:.1} img/s",
                loss_sum / (i + 1 - nonfinite_losses) as f64,
                ((i + 1) * batch) as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if let Some((n, bytes, (wait, ex))) = st.exchange_stats().filter(|_| root) {
            let per = |now: f64, before: f64| (now - before) / steps_here.max(1) as f64 * 1e3;
            println!(
                "devices: {n} collectives per step ({:.2} MB per device); per step {:.0} ms \
                 waiting for the devices' compute, {:.1} ms exchanging",
                bytes as f64 / 1e6,
                per(wait, exchange_before.0),
                per(ex, exchange_before.1)
            );
            exchange_before = (wait, ex);
        }
        if let Some(ls) = st.loss_scale()?.filter(|_| root) {
            println!(
                "loss scale: {} ({} steps skipped so far{})",
                ls.scale,
                ls.skipped,
                if nonfinite_losses > 0 {
                    format!("; {nonfinite_losses} losses this epoch were inf/NaN")
                } else {
                    String::new()
                }
            );
        }
        if let Some(p) = feed.prefetch().filter(|_| root) {
            println!(
                "decoding: {:.0} images/s on {} threads; the GPU waited {:.1} s for images",
                p.images_per_s(),
                p.workers,
                p.wait_secs
            );
        }
        let secs = t0.elapsed().as_secs_f64();
        train_secs += secs;
        images += steps_here * batch;
        let last_epoch = epoch + 1 == cfg.epochs || step >= total_steps;
        let eval = if root && ((epoch + 1) % cfg.eval_every == 0 || last_epoch) {
            let z = evaluator.logits(gpu, &test)?;
            Some(score(&z, &test.labels, test.classes, &counts, posthoc)?)
        } else {
            None
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / (steps_here - nonfinite_losses).max(1) as f64,
            acc: eval.as_ref().map(|e| e.acc),
            many: eval.as_ref().and_then(|e| e.many),
            medium: eval.as_ref().and_then(|e| e.medium),
            few: eval.as_ref().and_then(|e| e.few),
            img_s: (steps_here * batch) as f64 / secs,
            seconds: secs,
        };
        if root {
            println!(
                "epoch {:>3}/{}  loss {:.4}  lr {:.4}  {:.1} img/s  {:.0} s{}",
                epoch + 1,
                cfg.epochs,
                m.loss,
                m.lr,
                m.img_s,
                secs,
                eval.as_ref()
                    .map_or(String::new(), |e| format!("  | {}", eval_line(e)))
            );
        }
        history.push(m);
        state.epochs_done = epoch + 1;
        state.steps_done = step;
        if !root {
            continue;
        }
        let model_bytes = checkpoint::model_bytes(gpu, &model, step as i64, Some(&config_toml))?;
        let mut new_best = false;
        if let Some(e) = &eval {
            state.last_eval = Some(e.clone());
            if state.best.as_ref().is_none_or(|(_, b)| e.acc > b.acc) {
                state.best = Some((epoch + 1, e.clone()));
                new_best = true;
            }
        }
        let mom = st.momentum().to_f32(gpu)?;
        let mut opt = BTreeMap::new();
        opt.insert("momentum".to_string(), HostTensor::f32(&[mom.len()], &mom));
        if let Some(ls) = st.loss_scale()? {
            // f32 holds the counters exactly up to 2^24 steps.
            let v = [ls.scale, ls.clean as f32, ls.skipped as f32];
            opt.insert("loss_scale".to_string(), HostTensor::f32(&[3], &v));
        }
        let mut lines = Vec::new();
        for h in &history {
            writeln!(lines, "{}", serde_json::to_string(h)?)?;
        }
        crate::rundir::save(
            out,
            &crate::rundir::SetFiles {
                epoch: epoch + 1,
                best: new_best.then(|| model_bytes.clone()),
                model: model_bytes,
                optimizer: checkpoint::to_bytes(&opt, None)?,
                state: serde_json::to_string_pretty(&state)?.into_bytes(),
                metrics: lines,
                best_from: state.best.as_ref().map(|b| b.0),
            },
        )?;
        if eval.is_some() {
            // The summary so far (final = this evaluation), and the pictures of it.
            publish_summary(
                cfg,
                out,
                SummaryParts {
                    name: &name,
                    state: &state,
                    counts: &counts,
                    gpu,
                    seconds: t_start.elapsed().as_secs_f64(),
                    images,
                    train_secs,
                    finished: false,
                },
            )?;
        }
    }
    let parts = SummaryParts {
        name: &name,
        state: &state,
        counts: &counts,
        gpu,
        seconds: t_start.elapsed().as_secs_f64(),
        images,
        train_secs,
        finished: true,
    };
    if !root {
        let mut s = make_summary(parts);
        s.rank = procs.as_ref().map_or(0, |p| p.rank());
        return Ok(s);
    }
    publish_summary(cfg, out, parts)
}

/// Write `summary.json` and, unless `report = false`, redraw the report from it.
fn publish_summary(cfg: &TrainConfig, out: &Path, parts: SummaryParts<'_>) -> Result<Summary> {
    let summary = make_summary(parts);
    write_json(&out.join("summary.json"), &summary_json(&summary))?;
    if cfg.report {
        refresh_report(out);
    }
    Ok(summary)
}

struct SummaryParts<'a> {
    name: &'a str,
    state: &'a RunState,
    counts: &'a [usize],
    gpu: &'a Gpu,
    seconds: f64,
    images: usize,
    train_secs: f64,
    finished: bool,
}

fn make_summary(p: SummaryParts<'_>) -> Summary {
    Summary {
        dataset: p.name.to_string(),
        final_: p.state.last_eval.clone(),
        best: p.state.best.as_ref().map(|b| b.1.clone()),
        best_epoch: p.state.best.as_ref().map(|b| b.0),
        class_counts: p.counts.to_vec(),
        adapter: p.gpu.describe(),
        epochs: p.state.epochs_done,
        steps: p.state.steps_done,
        seconds: p.seconds,
        img_s: if p.train_secs > 0.0 {
            p.images as f64 / p.train_secs
        } else {
            0.0
        },
        finished: p.finished,
        rank: 0,
    }
}

/// Redraw `out/report/`; a failure (no font, say) is a warning: the run goes on.
fn refresh_report(out: &Path) {
    if let Err(e) = crate::report::write(out) {
        eprintln!("warning: the run report was not refreshed: {e:#}");
    }
}

/// f16 training stops after this many inf / NaN losses in a row: each halves the loss scale, so
/// by then the scale is tiny and the forward pass itself overflows f16 (weights diverged).
const MAX_NONFINITE_STEPS: usize = 50;

/// The momentum buffer stored in an optimizer file, checked against the step's size.
fn momentum_from(st: &Runner, bytes: &[u8], what: &str) -> Result<Vec<f32>> {
    let ost = safetensors::SafeTensors::deserialize(bytes)
        .with_context(|| format!("{what}: not a valid safetensors file"))?;
    let m = ost
        .tensor("momentum")
        .with_context(|| format!("{what}: no momentum tensor"))?;
    let want = st.momentum().numel();
    if m.dtype() != safetensors::Dtype::F32 || m.data().len() != want * 4 {
        bail!(
            "{what}: tensor momentum is {:?} x {} bytes, expected F32 x {want} values (a run of \
             another model?)",
            m.dtype(),
            m.data().len()
        );
    }
    Ok(bytemuck::pod_collect_to_vec(m.data()))
}

/// The dynamic loss-scale state stored in an optimizer file (`--precision f16` runs), if any.
fn loss_scale_from(bytes: &[u8], what: &str) -> Result<Option<crate::loss_scale::ScaleState>> {
    let ost = safetensors::SafeTensors::deserialize(bytes)
        .with_context(|| format!("{what}: not a valid safetensors file"))?;
    let Ok(t) = ost.tensor("loss_scale") else {
        return Ok(None);
    };
    if t.dtype() != safetensors::Dtype::F32 || t.data().len() != 12 {
        bail!(
            "{what}: tensor loss_scale is {:?} x {} bytes, expected F32 x 3 (scale, clean steps, \
             skipped steps)",
            t.dtype(),
            t.data().len()
        );
    }
    let v: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
    if !(v[0].is_finite() && v[0] > 0.0) || v[1] < 0.0 || v[2] < 0.0 {
        bail!("{what}: tensor loss_scale holds {v:?}: expected a positive scale and counts >= 0");
    }
    Ok(Some(crate::loss_scale::ScaleState {
        scale: v[0],
        clean: v[1] as u32,
        skipped: v[2] as u32,
    }))
}

fn parse_metrics(bytes: &[u8], what: &str) -> Result<Vec<EpochMetrics>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{what}: not UTF-8"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{what}:{}: not a metrics row", i + 1))
        })
        .collect()
}

/// Print the Many/Medium/Few/All table and per-class accuracy.
pub fn print_table(r: &EvalResult, counts: &[usize]) {
    println!("{:<8} {:>8}", "split", "top-1 %");
    for (n, v) in [
        ("many", r.many),
        ("medium", r.medium),
        ("few", r.few),
        ("all", Some(r.acc)),
    ] {
        println!(
            "{n:<8} {}",
            v.map_or("      -".into(), |x| format!("{x:8.2}"))
        );
    }
    println!("per class (train images -> accuracy %):");
    for (c, a) in r.per_class.iter().enumerate() {
        println!(
            "  class {c:>3}  {:>6} -> {a:6.2}",
            counts.get(c).copied().unwrap_or(0)
        );
    }
}

/// `longtail eval`: score a checkpoint on the configured test set.
pub fn eval_checkpoint(
    gpu: &Gpu,
    cfg: &TrainConfig,
    checkpoint_path: &Path,
) -> Result<(EvalResult, Vec<usize>)> {
    let splits = load_data(cfg)?;
    let (train, test) = prepare_data(cfg, splits)?;
    let counts = train.class_counts();
    let model = build_model(gpu, cfg, test.channels, test.classes)?;
    checkpoint::load_model(gpu, checkpoint_path, &model)?;
    let ev = Evaluator::new(gpu, &model, &test, cfg.eval_batch)?;
    let z = ev.logits(gpu, &test)?;
    let posthoc = cfg.posthoc_tau.map(|t| (t, counts.as_slice()));
    Ok((
        score(&z, &test.labels, test.classes, &counts, posthoc)?,
        counts,
    ))
}
