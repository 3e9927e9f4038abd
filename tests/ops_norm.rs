//! Batch norm through the harness, its running statistics, eval mode, and per-channel
//! reductions past 2^17 values.

mod common;

use common::gpu;
use longtail::ops::batchnorm::{self, BnAlgo, BnMode, BnState, EPS, MOMENTUM};
use longtail::rng::Rng64;
use longtail::tape::Tape;
use longtail::tensor::Tensor;
use longtail::verify::{self, Case, Input, Tolerance, sum_of};

/// Normalisation divides by a standard deviation of ~0.6 and the backward subtracts per-channel
/// sums of `count` terms: the band is the sum's band times a small factor.
fn bn_tol(count: usize) -> Tolerance {
    let t = sum_of(count);
    Tolerance {
        abs: 4.0 * t.abs,
        rel: 4.0 * t.rel,
    }
}

/// Every reduction variant the adapter has: fused (tree or subgroup adds), split (GPU-shaped),
/// split with subgroup adds.
fn variants() -> Vec<BnAlgo> {
    batchnorm::candidates(gpu())
}

fn check(seed: u64, shape: [usize; 4], relu: bool) {
    for algo in variants() {
        check_with(seed, shape, relu, algo);
    }
}

fn check_with(seed: u64, shape: [usize; 4], relu: bool, algo: BnAlgo) {
    let mut rng = Rng64::new(seed);
    let (b, c, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    let dims = (b, c, hw);
    let case = Case {
        name: format!("batch_norm {algo:?} {shape:?} relu={relu}"),
        seed,
        inputs: vec![
            Input::uniform(&mut rng, &shape, -1.0, 1.5, true),
            Input::uniform(&mut rng, &[c], 0.5, 1.5, true),
            Input::uniform(&mut rng, &[c], -0.5, 0.5, true),
        ],
        fwd: bn_tol(b * hw),
        bwd: bn_tol(b * hw),
    };
    verify::check(
        gpu(),
        &case,
        &|t, v| {
            let st = BnState::new(t.gpu(), c)?;
            batchnorm::batch_norm_with(t, &v[0], &v[1], &v[2], &st, BnMode::Train, relu, algo)
        },
        &|v| batchnorm::reference::batch_norm(&v[0], &v[1], &v[2], dims, EPS as f64, relu),
        &|v, dy| {
            let (dx, dg, db) = batchnorm::reference::batch_norm_grad(
                &v[0], &v[1], &v[2], dy, dims, EPS as f64, relu,
            );
            vec![Some(dx), Some(dg), Some(db)]
        },
    )
    .unwrap();
}

#[test]
fn batch_norm_train_odd_shapes() {
    check(1, [3, 5, 7, 3], false);
    check(2, [4, 3, 5, 5], true);
    check(3, [2, 16, 8, 8], true);
    // vec4 kernels: a plane longer than the 256 lanes, a plane of 9 vec4 (a short last run).
    check(5, [2, 3, 36, 36], true);
    check(6, [3, 4, 6, 6], false);
    // Scalar kernels (planes not a multiple of 4) at a batch of 64: each lane walks whole planes.
    check(9, [64, 2, 5, 5], true);
}

#[test]
fn batch_norm_past_2_17_values_per_channel() {
    // 128 x 32 x 32 = 131072 values per channel: the ResNet-32 first-stage count.
    check(4, [128, 2, 32, 32], false);
    // The scalar kernels past 2^17: whole short planes per lane (33 x 33), and planes too long
    // for that (65 x 65: lanes share a plane).
    check(7, [128, 2, 33, 33], false);
    check(8, [64, 1, 65, 65], false);
    // 2^18 + a remainder, a mean far from zero, to catch a dropped or doubled chunk.
    let mut rng = Rng64::new(5);
    let (b, c, h, w) = (257, 1, 32, 32);
    let data: Vec<f32> = rng.vec_f32(b * c * h * w, 3.0, 5.0);
    let g = gpu();
    let x = Tensor::from_f32(g, &[b, c, h, w], &data).unwrap();
    let one = Tensor::from_f32(g, &[1], &[1.0]).unwrap();
    let zero = Tensor::from_f32(g, &[1], &[0.0]).unwrap();
    let st = BnState::new(g, 1).unwrap();
    for algo in variants() {
        let mut tape = Tape::new(g);
        let y =
            batchnorm::batch_norm_with(&mut tape, &x, &one, &zero, &st, BnMode::Train, false, algo)
                .unwrap();
        tape.run(false);
        let y = y.to_f32(g).unwrap();
        let n = y.len() as f64;
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1e-4, "{algo:?}: normalised mean {mean}");
        assert!(
            (var - 1.0).abs() < 1e-3,
            "{algo:?}: normalised variance {var}"
        );
    }
}

/// A mean 3,000 standard deviations from zero: the one-pass statistics (sums around a pivot
/// taken from the channel) must not lose the variance to cancellation.
#[test]
fn batch_norm_statistics_with_a_large_mean() {
    let mut rng = Rng64::new(21);
    let (b, c, h, w) = (8, 2, 8, 8);
    let data: Vec<f32> = rng.vec_f32(b * c * h * w, 1000.0, 1001.0);
    let g = gpu();
    let x = Tensor::from_f32(g, &[b, c, h, w], &data).unwrap();
    for algo in variants() {
        large_mean_with(g, &x, &data, (b, c, h, w), algo);
    }
}

fn large_mean_with(
    g: &longtail::gpu::Gpu,
    x: &Tensor,
    data: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
    algo: BnAlgo,
) {
    let one = Tensor::from_f32(g, &[c], &[1.0; 2]).unwrap();
    let zero = Tensor::from_f32(g, &[c], &[0.0; 2]).unwrap();
    let st = BnState::new(g, c).unwrap();
    let mut tape = Tape::new(g);
    let y = batchnorm::batch_norm_with(&mut tape, x, &one, &zero, &st, BnMode::Train, false, algo)
        .unwrap();
    tape.run(false);
    let got = y.to_f32(g).unwrap();
    let xs: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let want = batchnorm::reference::batch_norm(
        &xs,
        &[1.0; 2],
        &[0.0; 2],
        (b, c, h * w),
        EPS as f64,
        false,
    );
    // Inputs carry f32 rounding of ~6e-5 on a standard deviation of ~0.29: 2e-3 after
    // normalisation leaves room for that and nothing like a cancelled variance.
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-3, "{algo:?}: largest error {worst}");
}

#[test]
fn running_statistics_and_eval_mode() {
    for algo in variants() {
        running_with(algo);
    }
}

fn running_with(algo: BnAlgo) {
    let g = gpu();
    let mut rng = Rng64::new(6);
    let (b, c, h, w) = (5, 3, 4, 3);
    let data = rng.vec_f32(b * c * h * w, -2.0, 3.0);
    let x = Tensor::from_f32(g, &[b, c, h, w], &data).unwrap();
    let gamma = Tensor::from_f32(g, &[c], &[1.0, 2.0, 0.5]).unwrap();
    let beta = Tensor::from_f32(g, &[c], &[0.0, 0.1, -0.2]).unwrap();
    let st = BnState::new(g, c).unwrap();
    let mut tape = Tape::new(g);
    batchnorm::batch_norm_with(
        &mut tape,
        &x,
        &gamma,
        &beta,
        &st,
        BnMode::Train,
        false,
        algo,
    )
    .unwrap();
    // Two steps: the EMA is applied twice.
    tape.run(false);
    tape.run(false);
    let xd: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let mv = batchnorm::reference::moments(&xd, (b, c, h * w));
    let count = (b * h * w) as f64;
    let m = MOMENTUM as f64;
    let rm = st.running_mean.to_f32(g).unwrap();
    let rv = st.running_var.to_f32(g).unwrap();
    for ch in 0..c {
        let want_m = (1.0 - (1.0 - m).powi(2)) * mv[ch].0;
        let unb = mv[ch].1 * count / (count - 1.0);
        let want_v = (1.0 - m).powi(2) * 1.0 + (1.0 - (1.0 - m).powi(2)) * unb;
        assert!(
            (rm[ch] as f64 - want_m).abs() < 1e-5,
            "{algo:?}: running mean {ch}"
        );
        assert!((rv[ch] as f64 - want_v).abs() < 1e-5, "running var {ch}");
    }
    // Eval mode normalises with the running statistics.
    let mut eval = Tape::new(g);
    let y = batchnorm::batch_norm(&mut eval, &x, &gamma, &beta, &st, BnMode::Eval, true).unwrap();
    eval.run(false);
    let y = y.to_f32(g).unwrap();
    let (gm, bt) = ([1.0, 2.0, 0.5], [0.0, 0.1, -0.2]);
    for (i, &v) in y.iter().enumerate() {
        let ch = (i / (h * w)) % c;
        let want = ((xd[i] - rm[ch] as f64) / (rv[ch] as f64 + EPS as f64).sqrt() * gm[ch]
            + bt[ch])
            .max(0.0);
        assert!(
            (v as f64 - want).abs() < 1e-5,
            "eval output {i}: {v} vs {want}"
        );
    }
}

/// The fused end of a residual block, `relu(bn(x) + r)`, for every reduction variant, at odd
/// shapes (scalar kernels) and vec4 shapes. Sizes stay small: finite differences of a ReLU
/// are wrong for every element within the step of its kink, and a large channel has some
/// (the model tests check the fused block at full shapes against PyTorch).
#[test]
fn batch_norm_add_relu_fused() {
    for (seed, shape) in [
        (40, [3, 5, 7, 3]),
        (41, [2, 3, 36, 36]),
        (42, [4, 16, 8, 8]),
    ] {
        for algo in variants() {
            let mut rng = Rng64::new(seed);
            let (b, c, hw) = (shape[0], shape[1], shape[2] * shape[3]);
            let dims = (b, c, hw);
            let case = Case {
                name: format!("batch_norm_add_relu {algo:?} {shape:?}"),
                seed,
                inputs: vec![
                    Input::uniform(&mut rng, &shape, -1.0, 1.5, true),
                    Input::uniform(&mut rng, &[c], 0.5, 1.5, true),
                    Input::uniform(&mut rng, &[c], -0.5, 0.5, true),
                    Input::uniform(&mut rng, &shape, -1.0, 1.0, true),
                ],
                fwd: bn_tol(b * hw),
                bwd: bn_tol(b * hw),
            };
            verify::check(
                gpu(),
                &case,
                &|t, v| {
                    let st = BnState::new(t.gpu(), c)?;
                    batchnorm::batch_norm_add_relu(
                        t,
                        &v[0],
                        &v[1],
                        &v[2],
                        &st,
                        BnMode::Train,
                        &v[3],
                        algo,
                    )
                },
                &|v| {
                    batchnorm::reference::batch_norm_add_relu(
                        &v[0], &v[1], &v[2], &v[3], dims, EPS as f64,
                    )
                },
                &|v, dy| {
                    let (dx, dg, db, dr) = batchnorm::reference::batch_norm_add_relu_grad(
                        &v[0], &v[1], &v[2], &v[3], dy, dims, EPS as f64,
                    );
                    vec![Some(dx), Some(dg), Some(db), Some(dr)]
                },
            )
            .unwrap();
        }
    }
}
