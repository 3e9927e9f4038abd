//! Channel whitening (METHOD.md §2): ZCA-whiten a batch of features `[B, d]` right before the
//! classifier, in groups of `g` channels. Training mode: `mu = mean(F)`, `Xc = F - mu`,
//! `Sigma = Xc^T Xc / B + eps I`, `W ~= Sigma^(-1/2)`, output `Xc W`; gradients flow through the
//! mean and the covariance. W by one of three methods:
//! - coupled Newton–Schulz (default, T = 20): `Y0 = Sigma / tr`, `Z0 = I`,
//!   `M = (3I - Z Y) / 2`, `Y <- Y M`, `Z <- M Z`, `W = Z / sqrt(tr)`;
//! - IterNorm (T = 5, partial whitening): `P <- (3P - P^3 Sigma_N) / 2`, `W = P / sqrt(tr)`;
//! - eigen: ZCA from a GPU Jacobi eigendecomposition ([`crate::ops::eigen`]).
//!
//! The layer is recorded from differentiable ops (mean, batched matmul, trace, ...), so the
//! iterative methods back-propagate through their saved iterates. Running statistics: EMAs
//! (momentum 0.1) of the mean and of Sigma (default) or of W, updated by every training step;
//! [`Whitening::record_prepare`] computes the eval-mode W from them once, cached until the
//! statistics change.

use anyhow::{Result, bail};

use crate::gpu::Gpu;
use crate::ops::{all_reduce, eigen, elementwise, linalg, matmul, reduce};
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// How W is computed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum WhitenMethod {
    /// Coupled Newton–Schulz (default).
    Ns,
    /// IterNorm's uncoupled Newton–Schulz.
    Iternorm,
    /// Eigendecomposition (Jacobi).
    Eigen,
}

/// Which running statistic eval mode whitens with.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TrackStat {
    /// EMA of Sigma; W computed from it.
    Cov,
    /// EMA of W itself.
    W,
}

/// Whitening hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct WhitenConfig {
    pub method: WhitenMethod,
    /// Iterations (NS, IterNorm); ignored by eigen.
    pub iters: usize,
    pub eps: f32,
    /// Channels per group; 0 = all channels in one group.
    pub group: usize,
    pub track: TrackStat,
    pub momentum: f32,
}

impl Default for WhitenConfig {
    fn default() -> Self {
        Self {
            method: WhitenMethod::Ns,
            iters: 20,
            eps: 1e-5,
            group: 0,
            track: TrackStat::Cov,
            momentum: 0.1,
        }
    }
}

impl WhitenConfig {
    /// Default iteration count of a method (NS 20, IterNorm 5).
    pub fn default_iters(method: WhitenMethod) -> usize {
        match method {
            WhitenMethod::Iternorm => 5,
            _ => 20,
        }
    }
}

/// The whitening layer's state: configuration and running statistics.
pub struct Whitening {
    pub cfg: WhitenConfig,
    /// Feature width.
    pub dim: usize,
    /// Channels per group.
    pub group: usize,
    /// `whiten.running_mean` `[d]`.
    pub running_mean: Tensor,
    /// `whiten.running_cov` `[G, g, g]`.
    pub running_cov: Tensor,
    /// `whiten.running_wm` `[G, g, g]` when W is tracked.
    pub running_wm: Option<Tensor>,
    /// Eval-mode W and `-mean`, filled by [`Whitening::record_prepare`]'s program.
    cached_w: Tensor,
    cached_neg_mean: Tensor,
}

fn identity_stack(gpu: &Gpu, groups: usize, g: usize) -> Result<Tensor> {
    let mut v = vec![0f32; groups * g * g];
    for k in 0..groups {
        for i in 0..g {
            v[(k * g + i) * g + i] = 1.0;
        }
    }
    Tensor::from_f32(gpu, &[groups, g, g], &v)
}

impl Whitening {
    /// A layer over `dim` channels. Running mean 0, running Sigma and W the identity.
    pub fn new(gpu: &Gpu, dim: usize, cfg: WhitenConfig) -> Result<Self> {
        let group = if cfg.group == 0 { dim } else { cfg.group };
        if dim == 0 || group == 0 || !dim.is_multiple_of(group) {
            bail!("whitening: {dim} channels do not split into groups of {group}");
        }
        if cfg.method == WhitenMethod::Eigen && group > eigen::MAX_N {
            bail!(
                "whitening: the eigen method handles groups of at most {} channels, got {group} (use --whiten-group)",
                eigen::MAX_N
            );
        }
        if cfg.method != WhitenMethod::Eigen && cfg.iters == 0 {
            bail!("whitening: Newton–Schulz needs at least one iteration");
        }
        if cfg.eps.is_nan() || cfg.eps <= 0.0 {
            bail!("whitening: eps must be positive, got {}", cfg.eps);
        }
        let groups = dim / group;
        Ok(Self {
            cfg,
            dim,
            group,
            running_mean: Tensor::zeros(gpu, &[dim], DType::F32)?,
            running_cov: identity_stack(gpu, groups, group)?,
            running_wm: match cfg.track {
                TrackStat::W => Some(identity_stack(gpu, groups, group)?),
                TrackStat::Cov => None,
            },
            cached_w: identity_stack(gpu, groups, group)?,
            cached_neg_mean: Tensor::zeros(gpu, &[dim], DType::F32)?,
        })
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.dim / self.group
    }

    /// `[B, d] -> [G, B, g]` (the group axis first).
    fn to_groups(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let b = x.shape()[0];
        if self.groups() == 1 {
            linalg::reshape(tape, x, &[1, b, self.dim])
        } else {
            let r = linalg::reshape(tape, x, &[b, self.groups(), self.group])?;
            linalg::swap01(tape, &r)
        }
    }

    /// `[G, B, g] -> [B, d]`.
    fn ungroup(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let b = x.shape()[1];
        if self.groups() == 1 {
            linalg::reshape(tape, x, &[b, self.dim])
        } else {
            let s = linalg::swap01(tape, x)?;
            linalg::reshape(tape, &s, &[b, self.dim])
        }
    }

    /// Record `W ~= sigma^(-1/2)` for `sigma: [G, g, g]` with the configured method.
    pub fn whitening_matrix(&self, tape: &mut Tape, sigma: &Tensor) -> Result<Tensor> {
        match self.cfg.method {
            WhitenMethod::Eigen => eigen::zca_eigen(tape, sigma),
            WhitenMethod::Ns => {
                let tr = linalg::trace(tape, sigma)?;
                let mut y = linalg::scale_pow(tape, sigma, &tr, -1.0)?;
                // Z0 = I: the first step is M = 1.5 I - 0.5 Y, Y <- Y M, Z <- M.
                let m = linalg::add_identity(tape, &y, -0.5, 1.5)?;
                y = matmul::matmul(tape, &y, &m, false, false)?;
                let mut z = m;
                for _ in 1..self.cfg.iters {
                    let zy = matmul::matmul(tape, &z, &y, false, false)?;
                    let m = linalg::add_identity(tape, &zy, -0.5, 1.5)?;
                    y = matmul::matmul(tape, &y, &m, false, false)?;
                    z = matmul::matmul(tape, &m, &z, false, false)?;
                }
                linalg::scale_pow(tape, &z, &tr, -0.5)
            }
            WhitenMethod::Iternorm => {
                let tr = linalg::trace(tape, sigma)?;
                let sn = linalg::scale_pow(tape, sigma, &tr, -1.0)?;
                // P0 = I: P1 = 1.5 I - 0.5 Sigma_N.
                let mut p = linalg::add_identity(tape, &sn, -0.5, 1.5)?;
                for _ in 1..self.cfg.iters {
                    let p2 = matmul::matmul(tape, &p, &p, false, false)?;
                    let p3 = matmul::matmul(tape, &p2, &p, false, false)?;
                    let q = matmul::matmul(tape, &p3, &sn, false, false)?;
                    let a = elementwise::scale(tape, &p, 1.5)?;
                    let b = elementwise::scale(tape, &q, -0.5)?;
                    p = elementwise::add(tape, &a, &b)?;
                }
                linalg::scale_pow(tape, &p, &tr, -0.5)
            }
        }
    }

    /// Record the training-mode layer on `f: [B, d]`, including the running-statistics update.
    pub fn forward_train(&self, tape: &mut Tape, f: &Tensor) -> Result<Tensor> {
        tape.set_family(Some("whiten"));
        let out = self.forward_train_inner(tape, f);
        tape.set_family(None);
        out
    }

    fn forward_train_inner(&self, tape: &mut Tape, f: &Tensor) -> Result<Tensor> {
        let (sigma, w, xt, mu) = self.statistics(tape, f)?;
        let out = matmul::matmul(tape, &xt, &w, false, false)?;
        // EMAs: r = (1 - m) r + m x, skipping inf / NaN statistics (an overflowed f16 step).
        let gpu = tape.gpu().clone();
        let m = self.cfg.momentum;
        let ema =
            |x: &Tensor, r: &Tensor| elementwise::dispatch(&gpu, "ema", x, x, r, m, 1.0 - m, 0);
        tape.push_forward("whiten", ema(&mu, &self.running_mean)?);
        match &self.running_wm {
            Some(rw) => tape.push_forward("whiten", ema(&w, rw)?),
            None => tape.push_forward("whiten", ema(&sigma, &self.running_cov)?),
        }
        self.ungroup(tape, &out)
    }

    /// Batch statistics: (Sigma, W, centred features as `[G, B, g]`, mean).
    pub fn statistics(
        &self,
        tape: &mut Tape,
        f: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let &[b, d] = f.shape() else {
            bail!("whitening: features must be [B, d], got {:?}", f.shape());
        };
        if d != self.dim {
            bail!("whitening: built for {} channels, got {d}", self.dim);
        }
        // Data parallel: the statistics of every device's slice together (the whole batch).
        let devices = tape.replication().devices;
        let total = b * devices;
        if total < 2 {
            bail!(
                "whitening needs a batch of at least 2 (the covariance of one sample is 0), got {total}"
            );
        }
        let mu = reduce::mean(tape, f, 0)?;
        let mu = all_reduce::all_reduce(tape, &mu, 1.0 / devices as f32)?;
        let neg = elementwise::scale(tape, &mu, -1.0)?;
        let xc = elementwise::add_row(tape, f, &neg)?;
        let xt = self.to_groups(tape, &xc)?;
        let cov = matmul::matmul(tape, &xt, &xt, true, false)?;
        let cov = all_reduce::all_reduce(tape, &cov, 1.0)?;
        let sigma = linalg::add_identity(tape, &cov, 1.0 / total as f32, self.cfg.eps)?;
        let w = self.whitening_matrix(tape, &sigma)?;
        Ok((sigma, w, xt, mu))
    }

    /// Record the program that computes the eval-mode W (and `-mean`) from the running
    /// statistics into the layer's cache. Run it once after training steps or a checkpoint load,
    /// before eval-mode forwards.
    pub fn record_prepare(&self, tape: &mut Tape) -> Result<()> {
        let gpu = tape.gpu().clone();
        let copy = |x: &Tensor, to: &Tensor, a: f32| {
            elementwise::dispatch(&gpu, "scale", x, x, to, a, 0.0, 0)
        };
        let w = match &self.running_wm {
            Some(rw) => rw.clone(),
            None => self.whitening_matrix(tape, &self.running_cov)?,
        };
        tape.push_forward("whiten", copy(&w, &self.cached_w, 1.0)?);
        tape.push_forward(
            "whiten",
            copy(&self.running_mean, &self.cached_neg_mean, -1.0)?,
        );
        Ok(())
    }

    /// The eval-mode W `[G, g, g]`, as the prepare program of [`Whitening::record_prepare`]
    /// last computed it (diagnostics read it).
    pub fn eval_matrix(&self) -> &Tensor {
        &self.cached_w
    }

    /// Record the eval-mode layer: `(f - running_mean) W_cached`.
    pub fn forward_eval(&self, tape: &mut Tape, f: &Tensor) -> Result<Tensor> {
        if f.shape().len() != 2 || f.shape()[1] != self.dim {
            bail!(
                "whitening: features must be [B, {}], got {:?}",
                self.dim,
                f.shape()
            );
        }
        let xc = elementwise::add_row(tape, f, &self.cached_neg_mean)?;
        let xt = self.to_groups(tape, &xc)?;
        let out = matmul::matmul(tape, &xt, &self.cached_w, false, false)?;
        self.ungroup(tape, &out)
    }
}

/// CPU references (f64) for one group: a small dense-matrix toolkit, the three methods and their
/// hand-derived gradients (the GPU back-propagates through recorded ops instead, so the two are
/// independent).
pub mod reference {
    /// Dense row-major n x n matrix.
    pub type Mat = Vec<f64>;

    /// `a b` for n x n.
    pub fn mm(a: &[f64], b: &[f64], n: usize) -> Mat {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                let aik = a[i * n + k];
                for j in 0..n {
                    c[i * n + j] += aik * b[k * n + j];
                }
            }
        }
        c
    }
    /// Transpose.
    pub fn tr(a: &[f64], n: usize) -> Mat {
        (0..n * n).map(|i| a[(i % n) * n + i / n]).collect()
    }
    /// `alpha a + diag I`.
    pub fn lin(a: &[f64], alpha: f64, diag: f64, n: usize) -> Mat {
        (0..n * n)
            .map(|i| alpha * a[i] + if i / n == i % n { diag } else { 0.0 })
            .collect()
    }
    fn add(a: &[f64], b: &[f64]) -> Mat {
        a.iter().zip(b).map(|(x, y)| x + y).collect()
    }
    fn scale(a: &[f64], s: f64) -> Mat {
        a.iter().map(|x| x * s).collect()
    }
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    fn trace(a: &[f64], n: usize) -> f64 {
        (0..n).map(|i| a[i * n + i]).sum()
    }

    /// Symmetric eigendecomposition by cyclic Jacobi: (eigenvalues, eigenvectors as columns).
    pub fn eigh(a: &[f64], n: usize) -> (Vec<f64>, Mat) {
        let mut a = a.to_vec();
        let mut v = lin(&vec![0.0; n * n], 0.0, 1.0, n);
        for _ in 0..100 {
            let off: f64 = (0..n * n)
                .filter(|i| i / n != i % n)
                .map(|i| a[i] * a[i])
                .sum();
            if off < 1e-26 * dot(&a, &a).max(1e-300) {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = a[p * n + q];
                    if apq == 0.0 {
                        continue;
                    }
                    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                    let t = if theta == 0.0 {
                        1.0
                    } else {
                        theta.signum() / (theta.abs() + (1.0 + theta * theta).sqrt())
                    };
                    let c = 1.0 / (1.0 + t * t).sqrt();
                    let s = t * c;
                    for k in 0..n {
                        let (akp, akq) = (a[k * n + p], a[k * n + q]);
                        a[k * n + p] = c * akp - s * akq;
                        a[k * n + q] = s * akp + c * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                        a[p * n + k] = c * apk - s * aqk;
                        a[q * n + k] = s * apk + c * aqk;
                    }
                    for k in 0..n {
                        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                        v[k * n + p] = c * vkp - s * vkq;
                        v[k * n + q] = s * vkp + c * vkq;
                    }
                }
            }
        }
        ((0..n).map(|i| a[i * n + i]).collect(), v)
    }

    /// Exact ZCA `sigma^(-1/2)`.
    pub fn zca(sigma: &[f64], n: usize) -> Mat {
        let (l, u) = eigh(sigma, n);
        let mut w = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                w[i * n + j] = (0..n)
                    .map(|k| u[i * n + k] * u[j * n + k] / l[k].sqrt())
                    .sum();
            }
        }
        w
    }

    /// Gradient of [`zca`] (Daleckii–Krein).
    pub fn zca_grad(sigma: &[f64], dw: &[f64], n: usize) -> Mat {
        let (l, u) = eigh(sigma, n);
        let g = mm(&mm(&tr(&u, n), dw, n), &u, n);
        let k: Mat = (0..n * n)
            .map(|i| {
                let (a, b) = (l[i / n].sqrt(), l[i % n].sqrt());
                -g[i] / (a * b * (a + b))
            })
            .collect();
        mm(&mm(&u, &k, n), &tr(&u, n), n)
    }

    /// Coupled Newton–Schulz with `t` iterations.
    pub fn ns(sigma: &[f64], n: usize, t: usize) -> Mat {
        let s = trace(sigma, n);
        let mut y = scale(sigma, 1.0 / s);
        let mut z = lin(&y, 0.0, 1.0, n);
        for _ in 0..t {
            let m = lin(&mm(&z, &y, n), -0.5, 1.5, n);
            y = mm(&y, &m, n);
            z = mm(&m, &z, n);
        }
        scale(&z, 1.0 / s.sqrt())
    }

    /// Gradient of [`ns`] through its iterations.
    pub fn ns_grad(sigma: &[f64], dw: &[f64], n: usize, t: usize) -> Mat {
        let s = trace(sigma, n);
        let mut ys = vec![scale(sigma, 1.0 / s)];
        let mut zs = vec![lin(&ys[0], 0.0, 1.0, n)];
        let mut ms = Vec::new();
        for i in 0..t {
            let m = lin(&mm(&zs[i], &ys[i], n), -0.5, 1.5, n);
            ys.push(mm(&ys[i], &m, n));
            zs.push(mm(&m, &zs[i], n));
            ms.push(m);
        }
        let mut gz = scale(dw, 1.0 / s.sqrt());
        let mut gs = -0.5 * s.powf(-1.5) * dot(dw, &zs[t]);
        let mut gy = vec![0.0; n * n];
        for i in (0..t).rev() {
            let m = &ms[i];
            let gm = add(&mm(&tr(&ys[i], n), &gy, n), &mm(&gz, &tr(&zs[i], n), n));
            let mut ngy = mm(&gy, &tr(m, n), n);
            let mut ngz = mm(&tr(m, n), &gz, n);
            ngz = add(&ngz, &scale(&mm(&gm, &tr(&ys[i], n), n), -0.5));
            ngy = add(&ngy, &scale(&mm(&tr(&zs[i], n), &gm, n), -0.5));
            gy = ngy;
            gz = ngz;
        }
        gs += -dot(&gy, sigma) / (s * s);
        lin(&scale(&gy, 1.0 / s), 1.0, gs, n)
    }

    /// IterNorm with `t` iterations.
    pub fn iternorm(sigma: &[f64], n: usize, t: usize) -> Mat {
        let s = trace(sigma, n);
        let sn = scale(sigma, 1.0 / s);
        let mut p = lin(&sn, 0.0, 1.0, n);
        for _ in 0..t {
            let p3 = mm(&mm(&p, &p, n), &p, n);
            p = add(&scale(&p, 1.5), &scale(&mm(&p3, &sn, n), -0.5));
        }
        scale(&p, 1.0 / s.sqrt())
    }

    /// Gradient of [`iternorm`] through its iterations.
    pub fn iternorm_grad(sigma: &[f64], dw: &[f64], n: usize, t: usize) -> Mat {
        let s = trace(sigma, n);
        let sn = scale(sigma, 1.0 / s);
        let mut ps = vec![lin(&sn, 0.0, 1.0, n)];
        for i in 0..t {
            let p = &ps[i];
            let p3 = mm(&mm(p, p, n), p, n);
            ps.push(add(&scale(p, 1.5), &scale(&mm(&p3, &sn, n), -0.5)));
        }
        let mut gp = scale(dw, 1.0 / s.sqrt());
        let mut gs = -0.5 * s.powf(-1.5) * dot(dw, &ps[t]);
        let mut gsn = vec![0.0; n * n];
        for i in (0..t).rev() {
            let p = &ps[i];
            let p2 = mm(p, p, n);
            let p3 = mm(&p2, p, n);
            let ga = scale(&gp, -0.5);
            let mut ngp = scale(&gp, 1.5);
            let gp3 = mm(&ga, &tr(&sn, n), n);
            gsn = add(&gsn, &mm(&tr(&p3, n), &ga, n));
            let gp2 = mm(&gp3, &tr(p, n), n);
            ngp = add(&ngp, &mm(&tr(&p2, n), &gp3, n));
            ngp = add(&ngp, &mm(&gp2, &tr(p, n), n));
            ngp = add(&ngp, &mm(&tr(p, n), &gp2, n));
            gp = ngp;
        }
        // P0 = I carries no gradient; Sigma_N = Sigma / s.
        gs += -dot(&gsn, sigma) / (s * s);
        lin(&scale(&gsn, 1.0 / s), 1.0, gs, n)
    }

    /// Which method, for the layer references.
    #[derive(Clone, Copy, Debug)]
    pub enum Method {
        Ns(usize),
        IterNorm(usize),
        Eigen,
    }

    fn w_of(sigma: &[f64], n: usize, m: Method) -> Mat {
        match m {
            Method::Ns(t) => ns(sigma, n, t),
            Method::IterNorm(t) => iternorm(sigma, n, t),
            Method::Eigen => zca(sigma, n),
        }
    }

    fn w_grad(sigma: &[f64], dw: &[f64], n: usize, m: Method) -> Mat {
        match m {
            Method::Ns(t) => ns_grad(sigma, dw, n, t),
            Method::IterNorm(t) => iternorm_grad(sigma, dw, n, t),
            Method::Eigen => zca_grad(sigma, dw, n),
        }
    }

    /// Column block `[b, g]` of group `k` from row-major `[b, d]`.
    fn block(x: &[f64], b: usize, d: usize, g: usize, k: usize) -> Vec<f64> {
        (0..b * g).map(|i| x[(i / g) * d + k * g + i % g]).collect()
    }

    /// (centred block, Sigma) of one group.
    fn stats(x: &[f64], b: usize, d: usize, g: usize, k: usize, eps: f64) -> (Vec<f64>, Mat) {
        let xb = block(x, b, d, g, k);
        let mu: Vec<f64> = (0..g)
            .map(|j| (0..b).map(|i| xb[i * g + j]).sum::<f64>() / b as f64)
            .collect();
        let xc: Vec<f64> = (0..b * g).map(|i| xb[i] - mu[i % g]).collect();
        let mut s = vec![0.0; g * g];
        for i in 0..b {
            for p in 0..g {
                for q in 0..g {
                    s[p * g + q] += xc[i * g + p] * xc[i * g + q] / b as f64;
                }
            }
        }
        (xc, lin(&s, 1.0, eps, g))
    }

    /// The training-mode layer on `x: [b, d]` with groups of `g`.
    pub fn whiten(x: &[f64], b: usize, d: usize, g: usize, eps: f64, m: Method) -> Vec<f64> {
        let mut out = vec![0.0; b * d];
        for k in 0..d / g {
            let (xc, sigma) = stats(x, b, d, g, k, eps);
            let w = w_of(&sigma, g, m);
            for i in 0..b {
                for j in 0..g {
                    out[i * d + k * g + j] = (0..g).map(|p| xc[i * g + p] * w[p * g + j]).sum();
                }
            }
        }
        out
    }

    /// Gradient of [`whiten`] for upstream `dy: [b, d]`.
    pub fn whiten_grad(
        x: &[f64],
        dy: &[f64],
        b: usize,
        d: usize,
        g: usize,
        eps: f64,
        m: Method,
    ) -> Vec<f64> {
        let mut dx = vec![0.0; b * d];
        for k in 0..d / g {
            let (xc, sigma) = stats(x, b, d, g, k, eps);
            let w = w_of(&sigma, g, m);
            let dyb = block(dy, b, d, g, k);
            // out = Xc W: dXc = dY W^T, dW = Xc^T dY.
            let mut dxc = vec![0.0; b * g];
            let mut dw = vec![0.0; g * g];
            for i in 0..b {
                for p in 0..g {
                    for j in 0..g {
                        dxc[i * g + p] += dyb[i * g + j] * w[p * g + j];
                        dw[p * g + j] += xc[i * g + p] * dyb[i * g + j];
                    }
                }
            }
            let ds = w_grad(&sigma, &dw, g, m);
            let dss = add(&ds, &tr(&ds, g));
            for i in 0..b {
                for p in 0..g {
                    dxc[i * g + p] +=
                        (0..g).map(|q| xc[i * g + q] * dss[q * g + p]).sum::<f64>() / b as f64;
                }
            }
            for j in 0..g {
                let mean = (0..b).map(|i| dxc[i * g + j]).sum::<f64>() / b as f64;
                for i in 0..b {
                    dx[i * d + k * g + j] = dxc[i * g + j] - mean;
                }
            }
        }
        dx
    }
}
