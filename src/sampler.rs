//! Batch samplers (METHOD.md §4–5) and BET scheduling. Every epoch is planned from a seed derived
//! from (run seed, epoch), so a run is reproducible and resumable at epoch boundaries. An epoch
//! is floor(N / B) steps (drop last).
//!
//! - `random`: shuffled, instance-balanced;
//! - `class-balanced`: a uniformly drawn class, then that class's next image;
//! - `b3rs` (**reconstruction**, see METHOD.md §4): classes sorted by count (descending) split into
//!   G contiguous groups; group g gets a quota b_g ∝ N_g^q of each batch (largest remainder, every
//!   group >= 1); inside a group a class is drawn with probability ∝ n_c^r, then its next image
//!   from a per-class shuffled list (reshuffled when exhausted); the batch is shuffled;
//! - `sequential`: file order, no shuffle (debugging and cross-checks).
//!
//! BET (**reconstruction**, METHOD.md §5): `embed` replaces every K-th step of the main stream by a
//! B3RS batch; `concat` appends a B3RS sub-batch of size Be to every batch.

use anyhow::{Result, bail};

use crate::rng::Rng64;

/// Which sampler.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    Random,
    ClassBalanced,
    B3rs,
    Sequential,
}

/// B3RS parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct B3rsConfig {
    /// Groups G.
    pub groups: usize,
    /// Quota power q (0: equal quotas).
    pub q: f64,
    /// In-group class power r (1: uniform over the group's images).
    pub r: f64,
}

impl Default for B3rsConfig {
    fn default() -> Self {
        Self {
            groups: 3,
            q: 0.0,
            r: 1.0,
        }
    }
}

/// How BET mixes B3RS batches into the main stream.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BetMode {
    /// Every K-th step is a B3RS batch.
    Embed,
    /// Every batch gets a B3RS sub-batch appended.
    Concat,
}

/// Per-class shuffled lists with cursors: "every image of a class before any repeats".
struct ClassCycler {
    lists: Vec<Vec<usize>>,
    pos: Vec<usize>,
}

impl ClassCycler {
    fn new(labels: &[u32], classes: usize, rng: &mut Rng64) -> Self {
        let mut lists = vec![Vec::new(); classes];
        for (i, &l) in labels.iter().enumerate() {
            lists[l as usize].push(i);
        }
        for l in &mut lists {
            rng.shuffle(l);
        }
        Self {
            pos: vec![0; classes],
            lists,
        }
    }
    fn next(&mut self, c: usize, rng: &mut Rng64) -> usize {
        if self.pos[c] == self.lists[c].len() {
            rng.shuffle(&mut self.lists[c]);
            self.pos[c] = 0;
        }
        self.pos[c] += 1;
        self.lists[c][self.pos[c] - 1]
    }
}

/// The B3RS groups: class lists (sorted by count, descending) and per-batch quotas.
pub fn b3rs_groups(
    counts: &[usize],
    cfg: &B3rsConfig,
    batch: usize,
) -> Result<(Vec<Vec<usize>>, Vec<usize>)> {
    let present: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] > 0).collect();
    let g = cfg.groups.min(present.len());
    if g == 0 {
        bail!("B3RS needs at least one class with images");
    }
    if batch < g {
        bail!("B3RS: a batch of {batch} cannot give each of {g} groups an image");
    }
    let mut order = present;
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    let mut groups = Vec::with_capacity(g);
    for k in 0..g {
        let (lo, hi) = (k * order.len() / g, (k + 1) * order.len() / g);
        groups.push(order[lo..hi].to_vec());
    }
    // Largest-remainder quotas ∝ N_g^q, at least 1 each.
    let w: Vec<f64> = groups
        .iter()
        .map(|gr| (gr.iter().map(|&c| counts[c]).sum::<usize>() as f64).powf(cfg.q))
        .collect();
    let spare = batch - g;
    let total: f64 = w.iter().sum();
    let exact: Vec<f64> = w.iter().map(|x| x / total * spare as f64).collect();
    let mut quota: Vec<usize> = exact.iter().map(|x| 1 + x.floor() as usize).collect();
    let mut left = batch - quota.iter().sum::<usize>();
    let mut rem: Vec<(usize, f64)> = exact
        .iter()
        .enumerate()
        .map(|(i, x)| (i, x - x.floor()))
        .collect();
    rem.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for (i, _) in rem {
        if left == 0 {
            break;
        }
        quota[i] += 1;
        left -= 1;
    }
    Ok((groups, quota))
}

/// A sampler's state within one epoch.
pub struct Sampler {
    kind: SamplerKind,
    rng: Rng64,
    order: Vec<usize>,
    cursor: usize,
    cycler: ClassCycler,
    counts: Vec<usize>,
    b3rs: B3rsConfig,
    classes: usize,
}

impl Sampler {
    /// A sampler over `labels` for one epoch, seeded by `seed`.
    pub fn new(
        kind: SamplerKind,
        labels: &[u32],
        classes: usize,
        b3rs: B3rsConfig,
        seed: u64,
    ) -> Self {
        let mut rng = Rng64::new(seed);
        let mut order: Vec<usize> = (0..labels.len()).collect();
        if kind == SamplerKind::Random {
            rng.shuffle(&mut order);
        }
        let cycler = ClassCycler::new(labels, classes, &mut rng);
        let mut counts = vec![0; classes];
        for &l in labels {
            counts[l as usize] += 1;
        }
        Self {
            kind,
            rng,
            order,
            cursor: 0,
            cycler,
            counts,
            b3rs,
            classes,
        }
    }

    /// The next batch of `b` indices.
    pub fn next_batch(&mut self, b: usize) -> Result<Vec<usize>> {
        self.batch_of(self.kind, b)
    }

    /// The next batch drawn by `kind` (BET mixes B3RS batches into another stream).
    pub fn batch_of(&mut self, kind: SamplerKind, b: usize) -> Result<Vec<usize>> {
        Ok(match kind {
            SamplerKind::Random | SamplerKind::Sequential => {
                if self.cursor + b > self.order.len() {
                    self.cursor = 0;
                    if kind == SamplerKind::Random {
                        self.rng.shuffle(&mut self.order);
                    }
                }
                self.cursor += b;
                self.order[self.cursor - b..self.cursor].to_vec()
            }
            SamplerKind::ClassBalanced => {
                let present: Vec<usize> =
                    (0..self.classes).filter(|&c| self.counts[c] > 0).collect();
                (0..b)
                    .map(|_| {
                        let c = present[self.rng.below(present.len())];
                        self.cycler.next(c, &mut self.rng)
                    })
                    .collect()
            }
            SamplerKind::B3rs => {
                let (groups, quota) = b3rs_groups(&self.counts, &self.b3rs, b)?;
                let mut out = Vec::with_capacity(b);
                for (gr, &qt) in groups.iter().zip(&quota) {
                    let w: Vec<f64> = gr
                        .iter()
                        .map(|&c| (self.counts[c] as f64).powf(self.b3rs.r))
                        .collect();
                    let total: f64 = w.iter().sum();
                    for _ in 0..qt {
                        let mut u = self.rng.uniform() * total;
                        let mut pick = gr[gr.len() - 1];
                        for (k, &c) in gr.iter().enumerate() {
                            if u < w[k] {
                                pick = c;
                                break;
                            }
                            u -= w[k];
                        }
                        out.push(self.cycler.next(pick, &mut self.rng));
                    }
                }
                self.rng.shuffle(&mut out);
                out
            }
        })
    }
}

/// BET settings (None period: off).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bet {
    pub mode: BetMode,
    /// Embed: every `period`-th step is B3RS.
    pub period: Option<usize>,
    /// Concat: B3RS images appended per batch.
    pub size: usize,
}

impl Bet {
    /// No BET.
    pub const OFF: Bet = Bet {
        mode: BetMode::Embed,
        period: None,
        size: 0,
    };
}

/// The batches of one epoch: `steps` batches of the main sampler with BET applied.
pub fn plan_epoch(
    sampler: &mut Sampler,
    steps: usize,
    batch: usize,
    bet: Bet,
) -> Result<Vec<Vec<usize>>> {
    let mut plan = Vec::with_capacity(steps);
    for s in 0..steps {
        let b = match (bet.mode, bet.period) {
            (BetMode::Embed, Some(k)) if k > 0 && (s + 1) % k == 0 => {
                sampler.batch_of(SamplerKind::B3rs, batch)?
            }
            _ => sampler.next_batch(batch)?,
        };
        let b = if bet.mode == BetMode::Concat && bet.size > 0 {
            let mut b = b;
            b.extend(sampler.batch_of(SamplerKind::B3rs, bet.size)?);
            b
        } else {
            b
        };
        plan.push(b);
    }
    Ok(plan)
}

/// Steps per epoch: floor(N / B).
pub fn steps_per_epoch(n: usize, batch: usize) -> Result<usize> {
    if batch == 0 {
        bail!("batch size must be at least 1");
    }
    if batch > n {
        bail!("batch size {batch} is larger than the {n} training images");
    }
    Ok(n / batch)
}
