//! Channel whitening: gradient checks of the whole layer for every method (B = 128, d = 64, and
//! odd sizes with groups), agreement with an f64 ZCA on well- and ill-conditioned covariances,
//! whitened covariance ~ I, IterNorm against its own reference, running statistics and eval
//! mode, and a finite eigen backward when eigenvalues coincide.

mod common;

use common::gpu;
use longtail::ops::whiten::{self, TrackStat, WhitenConfig, WhitenMethod, Whitening};
use longtail::rng::Rng64;
use longtail::tape::Tape;
use longtail::tensor::Tensor;
use longtail::verify::{self, Case, Input, Tolerance};

/// Whitening chains ~60 f32 matrix products (Newton–Schulz through 20 iterations, forward and
/// backward): errors of ~1e-4 of the output scale are expected; 2e-3 still catches any wrong
/// term (those show as O(1)).
const WHITEN_TOL: Tolerance = Tolerance {
    abs: 2e-3,
    rel: 2e-3,
};

fn method_ref(m: WhitenMethod, iters: usize) -> whiten::reference::Method {
    match m {
        WhitenMethod::Ns => whiten::reference::Method::Ns(iters),
        WhitenMethod::Iternorm => whiten::reference::Method::IterNorm(iters),
        WhitenMethod::Eigen => whiten::reference::Method::Eigen,
    }
}

/// Features with distinct per-channel scales (a well-conditioned but non-trivial covariance).
fn features(rng: &mut Rng64, b: usize, d: usize) -> Vec<f32> {
    let scales: Vec<f64> = (0..d).map(|j| 0.5 + (j % 7) as f64 * 0.3).collect();
    let mix: Vec<f64> = (0..b).map(|_| rng.normal()).collect();
    (0..b * d)
        .map(|i| (scales[i % d] * rng.normal() + 0.3 * mix[i / d] + 0.1) as f32)
        .collect()
}

fn grad_check(seed: u64, b: usize, d: usize, group: usize, method: WhitenMethod) {
    let iters = WhitenConfig::default_iters(method);
    let cfg = WhitenConfig {
        method,
        iters,
        group,
        ..Default::default()
    };
    let g = if group == 0 { d } else { group };
    let mut rng = Rng64::new(seed);
    let case = Case {
        name: format!("whiten {method:?} B={b} d={d} group={g}"),
        seed,
        inputs: vec![Input::F32 {
            shape: vec![b, d],
            data: features(&mut rng, b, d),
            grad: true,
        }],
        fwd: WHITEN_TOL,
        bwd: WHITEN_TOL,
    };
    let eps = cfg.eps as f64;
    let m = method_ref(method, iters);
    verify::check(
        gpu(),
        &case,
        &|t, x| Whitening::new(t.gpu(), d, cfg)?.forward_train(t, &x[0]),
        &|x| whiten::reference::whiten(&x[0], b, d, g, eps, m),
        &|x, dy| {
            vec![Some(whiten::reference::whiten_grad(
                &x[0], dy, b, d, g, eps, m,
            ))]
        },
    )
    .unwrap();
}

#[test]
fn gradient_ns_b128_d64() {
    grad_check(1, 128, 64, 0, WhitenMethod::Ns);
}

#[test]
fn gradient_iternorm_b128_d64() {
    grad_check(2, 128, 64, 0, WhitenMethod::Iternorm);
}

#[test]
fn gradient_eigen_b128_d64() {
    grad_check(3, 128, 64, 0, WhitenMethod::Eigen);
}

#[test]
fn gradient_odd_sizes_and_groups() {
    for (i, method) in [
        WhitenMethod::Ns,
        WhitenMethod::Iternorm,
        WhitenMethod::Eigen,
    ]
    .into_iter()
    .enumerate()
    {
        grad_check(10 + i as u64, 37, 12, 4, method);
        grad_check(20 + i as u64, 29, 7, 0, method);
    }
}

/// Sigma of features whose covariance has condition number ~`cond`.
fn conditioned_features(rng: &mut Rng64, b: usize, d: usize, cond: f64) -> Vec<f32> {
    // Random orthogonal basis by Gram–Schmidt, spectrum log-spaced from 1 to 1/cond.
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        for u in &q {
            let p: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= p * b);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if n > 1e-6 {
            q.push(v.iter().map(|a| a / n).collect());
        }
    }
    let sd: Vec<f64> = (0..d)
        .map(|k| cond.powf(-(k as f64) / (d - 1) as f64 / 2.0))
        .collect();
    let mut out = vec![0f32; b * d];
    for i in 0..b {
        let z: Vec<f64> = (0..d).map(|k| rng.normal() * sd[k]).collect();
        for j in 0..d {
            out[i * d + j] = (0..d).map(|k| z[k] * q[k][j]).sum::<f64>() as f32;
        }
    }
    out
}

fn gpu_w_and_sigma(x: &[f32], b: usize, d: usize, cfg: WhitenConfig) -> (Vec<f64>, Vec<f64>) {
    let g = gpu();
    let layer = Whitening::new(g, d, cfg).unwrap();
    let xt = Tensor::from_f32(g, &[b, d], x).unwrap();
    let mut tape = Tape::new(g);
    let (sigma, w, _, _) = layer.statistics(&mut tape, &xt).unwrap();
    tape.run(false);
    let f = |t: &Tensor| {
        t.to_f32(g)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>()
    };
    (f(&w), f(&sigma))
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// max |W Sigma W^T - I|.
fn whitening_error(w: &[f64], s: &[f64], d: usize) -> f64 {
    use whiten::reference::{mm, tr};
    let m = mm(&mm(w, s, d), &tr(w, d), d);
    (0..d * d)
        .map(|i| (m[i] - if i / d == i % d { 1.0 } else { 0.0 }).abs())
        .fold(0.0, f64::max)
}

#[test]
fn ns_and_eigen_agree_with_f64_zca() {
    let (b, d) = (256, 64);
    // Relative Frobenius error to the f64 ZCA of the same Sigma. Well conditioned: f32 rounding
    // only. Condition 1e4: f32 resolves Sigma's small eigenvalues to ~1e-7 x 1e4 relative.
    for (cond, tol) in [(10.0, 1e-3), (1e4, 2e-2)] {
        let mut rng = Rng64::new(cond as u64);
        let x = conditioned_features(&mut rng, b, d, cond);
        for method in [WhitenMethod::Ns, WhitenMethod::Eigen] {
            let cfg = WhitenConfig {
                method,
                iters: 20,
                ..Default::default()
            };
            let (w, s) = gpu_w_and_sigma(&x, b, d, cfg);
            let want = whiten::reference::zca(&s, d);
            let e = rel_err(&w, &want);
            let we = whitening_error(&w, &s, d);
            eprintln!(
                "cond {cond:e} {method:?}: |W - ZCA|/|ZCA| = {e:.2e}, max|W S W^T - I| = {we:.2e}"
            );
            assert!(
                e < tol,
                "cond {cond}: {method:?} W differs from ZCA by {e:e} (tolerance {tol:e})"
            );
        }
    }
}

#[test]
fn whitened_batch_covariance_is_identity() {
    let (b, d) = (128, 64);
    let g = gpu();
    let mut rng = Rng64::new(5);
    let x = features(&mut rng, b, d);
    for method in [WhitenMethod::Ns, WhitenMethod::Eigen] {
        let cfg = WhitenConfig {
            method,
            ..Default::default()
        };
        let layer = Whitening::new(g, d, cfg).unwrap();
        let xt = Tensor::from_f32(g, &[b, d], &x).unwrap();
        let mut tape = Tape::new(g);
        let y = layer.forward_train(&mut tape, &xt).unwrap();
        tape.run(false);
        let y: Vec<f64> = y.to_f32(g).unwrap().iter().map(|&v| v as f64).collect();
        let mut worst = 0f64;
        for p in 0..d {
            for q in 0..d {
                let c: f64 = (0..b).map(|i| y[i * d + p] * y[i * d + q]).sum::<f64>() / b as f64;
                let want = if p == q { 1.0 } else { 0.0 };
                worst = worst.max((c - want).abs());
            }
        }
        eprintln!("{method:?}: max |cov(whitened) - I| = {worst:.2e}");
        // eps = 1e-5 in Sigma shrinks the diagonal by ~eps / var; f32 adds ~1e-4.
        assert!(
            worst < 1e-3,
            "{method:?}: whitened covariance off identity by {worst}"
        );
    }
}

#[test]
fn iternorm_t5_is_partial_whitening_matching_its_reference() {
    let (b, d) = (128, 64);
    let mut rng = Rng64::new(6);
    let x = conditioned_features(&mut rng, b, d, 100.0);
    let cfg = WhitenConfig {
        method: WhitenMethod::Iternorm,
        iters: 5,
        ..Default::default()
    };
    let (w, s) = gpu_w_and_sigma(&x, b, d, cfg);
    let want = whiten::reference::iternorm(&s, d, 5);
    let e = rel_err(&w, &want);
    eprintln!(
        "IterNorm T=5 (cond 100): |W - ref|/|ref| = {e:.2e}, max|W S W^T - I| = {:.2e}",
        whitening_error(&w, &s, d)
    );
    assert!(e < 1e-4, "IterNorm T=5 differs from its reference by {e:e}");
    let zca = whiten::reference::zca(&s, d);
    assert!(
        rel_err(&w, &zca) > 1e-2,
        "T=5 should not reach ZCA on a cond-100 covariance"
    );
}

#[test]
fn running_statistics_and_eval_mode() {
    let (b, d) = (64, 16);
    let g = gpu();
    let mut rng = Rng64::new(7);
    let x = features(&mut rng, b, d);
    for track in [TrackStat::Cov, TrackStat::W] {
        let cfg = WhitenConfig {
            track,
            ..Default::default()
        };
        let layer = Whitening::new(g, d, cfg).unwrap();
        let xt = Tensor::from_f32(g, &[b, d], &x).unwrap();
        let mut train = Tape::new(g);
        layer.forward_train(&mut train, &xt).unwrap();
        train.run(false);
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mu: Vec<f64> = (0..d)
            .map(|j| (0..b).map(|i| xd[i * d + j]).sum::<f64>() / b as f64)
            .collect();
        let rm = layer.running_mean.to_f32(g).unwrap();
        for j in 0..d {
            assert!(
                (rm[j] as f64 - 0.1 * mu[j]).abs() < 1e-5,
                "running mean {j}"
            );
        }
        // Eval: (x - running_mean) W(running statistic).
        let mut prep = Tape::new(g);
        layer.record_prepare(&mut prep).unwrap();
        prep.run(false);
        let mut eval = Tape::new(g);
        let y = layer.forward_eval(&mut eval, &xt).unwrap();
        eval.run(false);
        let y = y.to_f32(g).unwrap();
        let w_eval: Vec<f64> = match track {
            TrackStat::Cov => {
                let rc: Vec<f64> = layer
                    .running_cov
                    .to_f32(g)
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                whiten::reference::ns(&rc, d, 20)
            }
            TrackStat::W => layer
                .running_wm
                .as_ref()
                .unwrap()
                .to_f32(g)
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect(),
        };
        for i in 0..b {
            for j in 0..d {
                let want: f64 = (0..d)
                    .map(|p| (xd[i * d + p] - rm[p] as f64) * w_eval[p * d + j])
                    .sum();
                let got = y[i * d + j] as f64;
                assert!(
                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "{track:?} eval ({i},{j}): {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn eigen_backward_is_finite_with_coinciding_eigenvalues() {
    // Isotropic features: all eigenvalues of Sigma nearly equal.
    let (b, d) = (256, 8);
    let mut rng = Rng64::new(8);
    let x: Vec<f32> = (0..b * d).map(|_| rng.normal() as f32).collect();
    let g = gpu();
    let cfg = WhitenConfig {
        method: WhitenMethod::Eigen,
        ..Default::default()
    };
    let layer = Whitening::new(g, d, cfg).unwrap();
    let xt = Tensor::from_f32(g, &[b, d], &x).unwrap().requiring_grad();
    let mut tape = Tape::new(g);
    let y = layer.forward_train(&mut tape, &xt).unwrap();
    let seed = Tensor::from_f32(g, &[b, d], &rng.vec_f32(b * d, -1.0, 1.0)).unwrap();
    tape.backward_with(&y, seed).unwrap();
    tape.run(true);
    let gx = tape.grad(&xt).unwrap().to_f32(g).unwrap();
    assert!(
        gx.iter().all(|v| v.is_finite()),
        "eigen backward produced non-finite values"
    );
    // Exactly repeated eigenvalues (Sigma = c I) through the reference formula stay finite too.
    let s: Vec<f64> = (0..d * d)
        .map(|i| if i / d == i % d { 2.0 } else { 0.0 })
        .collect();
    let dw: Vec<f64> = (0..d * d).map(|i| (i as f64).sin()).collect();
    assert!(
        whiten::reference::zca_grad(&s, &dw, d)
            .iter()
            .all(|v| v.is_finite())
    );
}
