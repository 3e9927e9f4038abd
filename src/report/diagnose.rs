//! `longtail diagnose`: what channel whitening did to the pooled features, and the classifier's
//! bias toward head classes. The model runs in eval mode over a split; the pooled features
//! before and after whitening are read back and analysed in f64 on the host: covariance
//! eigenvalue spectrum, condition number, effective rank exp(H(lambda / sum lambda)), mean
//! |off-diagonal correlation|; per-class mean feature norm and classifier weight norm against the
//! class's training count; and the whitening error max |W Sigma W^T - I| of the running
//! statistics (and of the split's own covariance).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::config::TrainConfig;
use crate::data::names::class_names;
use crate::gpu::Gpu;
use crate::models::resnet::{Classifier, ResNet};
use crate::ops::batchnorm::BnMode;
use crate::ops::whiten::reference::eigh;
use crate::plot::{self, Labelled, Series};

/// Spectrum statistics of one covariance matrix.
#[derive(Clone, Debug, Serialize)]
pub struct SpectrumStats {
    /// Eigenvalues, largest first.
    pub eigenvalues: Vec<f64>,
    /// lambda_max / lambda_min (None when any eigenvalue is numerically zero: singular).
    pub condition: Option<f64>,
    /// Eigenvalues at most [`ZERO_EIGENVALUE`] x lambda_max (dead channels, exact collinearity).
    pub zero_eigenvalues: usize,
    /// lambda_max / the smallest eigenvalue above that floor: the conditioning of what is left.
    pub condition_nonzero: Option<f64>,
    /// exp(H(p)) with p = lambda / sum(lambda) (eigenvalues clipped at 0): d for an isotropic
    /// covariance, 1 for rank one.
    pub effective_rank: f64,
    /// Mean |corr_ij| over i != j.
    pub mean_abs_offdiag_corr: f64,
}

/// Covariance `[d, d]` of `n` rows of `x` (`[n, d]`, row-major) about their mean (divided by n,
/// as the whitening layer's batch covariance).
pub fn covariance(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut mean = vec![0.0; d];
    for r in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut c = vec![0.0; d * d];
    let mut xc = vec![0.0; d];
    for r in x.chunks_exact(d) {
        for k in 0..d {
            xc[k] = r[k] - mean[k];
        }
        for i in 0..d {
            let xi = xc[i];
            for j in i..d {
                c[i * d + j] += xi * xc[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = c[i * d + j] / n.max(1) as f64;
            c[i * d + j] = v;
            c[j * d + i] = v;
        }
    }
    c
}

/// Eigenvalues at most this fraction of the largest count as zero: features are f32 (~1e-7
/// relative rounding, ~1e-14 in a variance), so anything below 1e-9 is rounding, not signal.
pub const ZERO_EIGENVALUE: f64 = 1e-9;

/// The statistics of a symmetric covariance `[d, d]`.
pub fn spectrum_stats(cov: &[f64], d: usize) -> SpectrumStats {
    let (mut l, _) = eigh(cov, d);
    l.sort_by(|a, b| b.total_cmp(a));
    let (max, min) = (l[0], l[d - 1]);
    let total: f64 = l.iter().map(|v| v.max(0.0)).sum();
    let h: f64 = if total > 0.0 {
        l.iter()
            .map(|v| v.max(0.0) / total)
            .filter(|p| *p > 0.0)
            .map(|p| -p * p.ln())
            .sum()
    } else {
        0.0
    };
    let mut off = 0.0;
    let mut cnt = 0usize;
    for i in 0..d {
        for j in 0..d {
            if i != j {
                let den = (cov[i * d + i] * cov[j * d + j]).sqrt();
                if den > 0.0 {
                    off += (cov[i * d + j] / den).abs();
                }
                cnt += 1;
            }
        }
    }
    let floor = max.max(0.0) * ZERO_EIGENVALUE;
    let zero = l.iter().filter(|v| **v <= floor).count();
    let smallest_live = l
        .iter()
        .copied()
        .filter(|v| *v > floor)
        .fold(f64::MAX, f64::min);
    SpectrumStats {
        condition: (zero == 0 && min > 0.0).then(|| max / min),
        zero_eigenvalues: zero,
        condition_nonzero: (zero < d && max > 0.0).then(|| max / smallest_live),
        eigenvalues: l,
        effective_rank: if total > 0.0 { h.exp() } else { 0.0 },
        mean_abs_offdiag_corr: if cnt > 0 { off / cnt as f64 } else { 0.0 },
    }
}

/// max |W S W^T - I| over the groups, with `w` and `s` as `[G, g, g]` stacks.
pub fn whitening_error(w: &[f64], s: &[f64], g: usize) -> f64 {
    use crate::ops::whiten::reference::{mm, tr};
    let mut worst: f64 = 0.0;
    for (wk, sk) in w.chunks_exact(g * g).zip(s.chunks_exact(g * g)) {
        let m = mm(&mm(wk, sk, g), &tr(wk, g), g);
        for i in 0..g {
            for j in 0..g {
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((m[i * g + j] - want).abs());
            }
        }
    }
    worst
}

/// The `[G, g, g]` diagonal blocks of a `[d, d]` matrix.
fn blocks(m: &[f64], d: usize, g: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(d * g);
    for k in 0..d / g {
        for i in 0..g {
            for j in 0..g {
                out.push(m[(k * g + i) * d + k * g + j]);
            }
        }
    }
    out
}

/// One class's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ClassRow {
    pub class: usize,
    pub name: String,
    pub train_count: usize,
    pub feature_norm: f64,
    /// Mean norm of the whitened features (with whitening).
    pub whitened_norm: Option<f64>,
    pub weight_norm: f64,
}

/// Everything `diagnose` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    pub checkpoint: String,
    pub split: String,
    pub images: usize,
    pub feature_dim: usize,
    pub before: SpectrumStats,
    /// The whitened features (None without a whitening layer).
    pub after: Option<SpectrumStats>,
    pub whitening_groups: Option<usize>,
    /// max |W Sigma_running W^T - I| (tracking Sigma; None when W itself is tracked or there is
    /// no whitening layer).
    pub whitening_error_running: Option<f64>,
    /// max |W (Sigma_split + eps I) W^T - I| with the split's own covariance.
    pub whitening_error_split: Option<f64>,
    pub classes: Vec<ClassRow>,
    /// PNG files written.
    pub plots: Vec<String>,
}

/// Pooled features `[N, d]` (and whitened ones) of every image of `d`, in eval mode.
fn features(
    gpu: &Gpu,
    model: &ResNet,
    d: &crate::data::Dataset,
    batch: usize,
) -> Result<(Vec<f64>, Option<Vec<f64>>, usize)> {
    let ev = crate::train::Evaluator::recording(gpu, model, d, batch, |tape, x| {
        let f = model.features(tape, x, BnMode::Eval)?;
        let mut outs = vec![f.clone()];
        if let Some(w) = &model.whiten {
            outs.push(w.forward_eval(tape, &f)?);
        }
        Ok(outs)
    })?;
    let dim = model.cfg.arch.feature_dim();
    let mut outs = ev
        .outputs(gpu, d)?
        .into_iter()
        .map(|o| o.into_iter().map(f64::from).collect::<Vec<f64>>());
    let f = outs.next().unwrap_or_default();
    Ok((f, outs.next(), dim))
}

fn per_class_norms(x: &[f64], labels: &[u32], classes: usize, d: usize) -> Vec<f64> {
    let mut sum = vec![0.0; classes];
    let mut cnt = vec![0usize; classes];
    for (r, &y) in x.chunks_exact(d).zip(labels) {
        sum[y as usize] += r.iter().map(|v| v * v).sum::<f64>().sqrt();
        cnt[y as usize] += 1;
    }
    sum.iter()
        .zip(&cnt)
        .map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 })
        .collect()
}

/// Run the diagnosis of `checkpoint` (built per `cfg`) on `split` ("train": the long-tailed
/// training subset; "test"), writing PNGs into `out`.
pub fn run(
    gpu: &Gpu,
    cfg: &TrainConfig,
    checkpoint: &Path,
    split: &str,
    out: &Path,
) -> Result<Diagnosis> {
    let splits = crate::train::load_data(cfg)?;
    let (train, test) = crate::train::prepare_data(cfg, splits)?;
    let counts = train.class_counts();
    let data = match split {
        "train" => &train,
        "test" => &test,
        s => bail!("--split must be train or test, got {s:?}"),
    };
    let model = crate::train::build_model(gpu, cfg, data.channels, data.classes)?;
    crate::checkpoint::load_model(gpu, checkpoint, &model)?;
    let (f, fw, dim) = features(gpu, &model, data, cfg.eval_batch)?;
    let n = data.len();
    if n < 2 {
        bail!("{split} split has {n} images: a covariance needs at least 2");
    }
    let cov = covariance(&f, n, dim);
    let before = spectrum_stats(&cov, dim);
    let after = fw
        .as_ref()
        .map(|w| spectrum_stats(&covariance(w, n, dim), dim));
    let (mut err_run, mut err_split, mut groups) = (None, None, None);
    if let Some(wl) = &model.whiten {
        let g = wl.group;
        groups = Some(wl.groups());
        let w: Vec<f64> = wl
            .eval_matrix()
            .to_f32(gpu)?
            .iter()
            .map(|&v| v as f64)
            .collect();
        if wl.running_wm.is_none() {
            let s: Vec<f64> = wl
                .running_cov
                .to_f32(gpu)?
                .iter()
                .map(|&v| v as f64)
                .collect();
            err_run = Some(whitening_error(&w, &s, g));
        }
        let mut cs = cov.clone();
        for i in 0..dim {
            cs[i * dim + i] += wl.cfg.eps as f64;
        }
        err_split = Some(whitening_error(&w, &blocks(&cs, dim, g), g));
    }
    // Classifier weight norm per class.
    let head = ResNet::head_name(model.cfg.arch);
    let wt = model.params.get(&format!("{head}.weight"))?;
    let wv = wt.to_f32(gpu)?;
    let classes = data.classes;
    let weight_norm: Vec<f64> = (0..classes)
        .map(|c| {
            let it: Box<dyn Iterator<Item = f32>> = match model.cfg.classifier {
                Classifier::Linear => Box::new(wv[c * dim..(c + 1) * dim].iter().copied()),
                Classifier::Normed => Box::new((0..dim).map(|i| wv[i * classes + c])),
            };
            it.map(|v| (v as f64).powi(2)).sum::<f64>().sqrt()
        })
        .collect();
    let fnorm = per_class_norms(&f, &data.labels, classes, dim);
    let wnorm = fw
        .as_ref()
        .map(|w| per_class_norms(w, &data.labels, classes, dim));
    let names = class_names(&cfg.dataset, classes);
    let rows: Vec<ClassRow> = (0..classes)
        .map(|c| ClassRow {
            class: c,
            name: names[c].clone(),
            train_count: counts[c],
            feature_norm: fnorm[c],
            whitened_norm: wnorm.as_ref().map(|w| w[c]),
            weight_norm: weight_norm[c],
        })
        .collect();
    let mut diag = Diagnosis {
        checkpoint: checkpoint.display().to_string(),
        split: split.into(),
        images: n,
        feature_dim: dim,
        before,
        after,
        whitening_groups: groups,
        whitening_error_running: err_run,
        whitening_error_split: err_split,
        classes: rows,
        plots: Vec::new(),
    };
    diag.plots = plots(&diag, out)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Ok(diag)
}

/// `spectrum.png` and `norms.png` into `out`.
pub fn plots(d: &Diagnosis, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let spectrum = out.join("spectrum.png");
    let mut series = vec![Series {
        name: "pooled features".into(),
        points: d
            .before
            .eigenvalues
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64 + 1.0, v))
            .collect(),
    }];
    if let Some(a) = &d.after {
        series.push(Series {
            name: "after whitening".into(),
            points: a
                .eigenvalues
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64 + 1.0, v))
                .collect(),
        });
    }
    plot::save_png(&spectrum, 800, 500, |area| {
        plot::line_chart(
            area,
            &format!("Covariance eigenvalues ({} split)", d.split),
            "index (largest first)",
            "eigenvalue (log scale)",
            &series,
            None,
            true,
        )
    })?;
    let norms = out.join("norms.png");
    let pts = |f: &dyn Fn(&ClassRow) -> f64| -> Vec<Labelled> {
        d.classes
            .iter()
            .map(|r| Labelled {
                x: r.train_count.max(1) as f64,
                y: f(r),
                label: r.name.clone(),
            })
            .collect()
    };
    let mut feat = vec![("pooled features".to_string(), pts(&|r| r.feature_norm))];
    if d.after.is_some() {
        feat.push((
            "whitened".to_string(),
            pts(&|r| r.whitened_norm.unwrap_or(0.0)),
        ));
    }
    let weights = vec![("classifier weight".to_string(), pts(&|r| r.weight_norm))];
    plot::save_png(&norms, 1200, 500, |area| {
        let (l, r) = area.split_horizontally(600);
        plot::log_x_scatter(
            &l,
            "Mean feature norm per class",
            "training images (log scale)",
            "mean ||f||",
            &feat,
            None,
        )?;
        plot::log_x_scatter(
            &r,
            "Classifier weight norm per class",
            "training images (log scale)",
            "||w_c||",
            &weights,
            None,
        )
    })?;
    Ok(vec![spectrum, norms])
}
