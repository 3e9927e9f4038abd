//! Pooling, the option-A shortcut, L2 normalisation, linear and normed linear through the
//! harness.

mod common;

use common::gpu;
use longtail::ops::{linear, matmul, normalize, pool, shortcut};
use longtail::rng::Rng64;
use longtail::verify::{self, Case, ELEMENTWISE, Input, Tolerance, sum_of};

/// Normalisation: a sum of squares, a sqrt and a division per element.
const NORMALIZE: Tolerance = Tolerance {
    abs: 2e-6,
    rel: 2e-6,
};

#[test]
fn global_avg_pool() {
    for (seed, shape) in [(1u64, [3usize, 5, 7, 9]), (2, [2, 64, 8, 8])] {
        let mut rng = Rng64::new(seed);
        let dims = [shape[0] * shape[1], shape[2] * shape[3], 1];
        let case = Case {
            name: format!("global_avg_pool {shape:?}"),
            seed,
            inputs: vec![Input::uniform(&mut rng, &shape, -1.0, 1.0, true)],
            fwd: sum_of(dims[1]),
            bwd: ELEMENTWISE,
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| pool::global_avg_pool(t, &x[0]),
            &|x| longtail::ops::reduce::reference::reduce(&x[0], dims, true),
            &|_, g| {
                vec![Some(longtail::ops::reduce::reference::reduce_grad(
                    g, dims, true,
                ))]
            },
        )
        .unwrap();
    }
}

#[test]
fn max_pool_3x3_stride2_pad1() {
    for (seed, shape) in [
        (3u64, [2usize, 3, 9, 7]),
        (4, [1, 4, 16, 16]),
        (5, [2, 2, 5, 6]),
    ] {
        let mut rng = Rng64::new(seed);
        // Distinct values (a shuffled ramp), so the maximum is unique and finite differences are
        // well defined.
        let n: usize = shape.iter().product();
        let mut vals: Vec<f32> = (0..n).map(|i| i as f32 / n as f32 * 4.0 - 2.0).collect();
        rng.shuffle(&mut vals);
        let case = Case {
            name: format!("max_pool2d 3/2/1 {shape:?}"),
            seed,
            inputs: vec![Input::F32 {
                shape: shape.to_vec(),
                data: vals,
                grad: true,
            }],
            fwd: ELEMENTWISE,
            bwd: sum_of(4),
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| pool::max_pool2d(t, &x[0], 3, 2, 1),
            &|x| pool::reference::max_pool2d(&x[0], shape, 3, 2, 1).0,
            &|x, g| {
                vec![Some(pool::reference::max_pool2d_grad(
                    &x[0], shape, 3, 2, 1, g,
                ))]
            },
        )
        .unwrap();
    }
}

#[test]
fn option_a_shortcut() {
    for (seed, shape, cout) in [(6u64, [2usize, 4, 7, 6], 8usize), (7, [3, 16, 32, 32], 32)] {
        let mut rng = Rng64::new(seed);
        let case = Case {
            name: format!("option_a {shape:?} -> {cout}"),
            seed,
            inputs: vec![Input::uniform(&mut rng, &shape, -1.0, 1.0, true)],
            fwd: ELEMENTWISE,
            bwd: ELEMENTWISE,
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| shortcut::option_a(t, &x[0], cout, 2),
            &|x| shortcut::reference::option_a(&x[0], shape, cout, 2),
            &|_, g| vec![Some(shortcut::reference::option_a_grad(g, shape, cout, 2))],
        )
        .unwrap();
    }
}

#[test]
fn l2_normalize_rows_and_columns() {
    for (seed, shape, axis) in [
        (8u64, [13usize, 64], 1usize),
        (9, [64, 10], 0),
        (10, [5, 7], 1),
    ] {
        let mut rng = Rng64::new(seed);
        let dims = longtail::ops::reduce::split_dims(&shape, axis).unwrap();
        let case = Case {
            name: format!("l2_normalize {shape:?} axis {axis}"),
            seed,
            inputs: vec![Input::uniform(&mut rng, &shape, -1.0, 1.0, true)],
            fwd: NORMALIZE,
            bwd: NORMALIZE,
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| normalize::l2_normalize(t, &x[0], axis),
            &|x| normalize::reference::l2_normalize(&x[0], dims, normalize::EPS as f64),
            &|x, g| {
                vec![Some(normalize::reference::l2_normalize_grad(
                    &x[0],
                    g,
                    dims,
                    normalize::EPS as f64,
                ))]
            },
        )
        .unwrap();
    }
}

#[test]
fn linear_with_bias() {
    let (seed, b, i, o) = (11u64, 37usize, 64usize, 10usize);
    let mut rng = Rng64::new(seed);
    let case = Case {
        name: format!("linear [{b}, {i}] -> {o}"),
        seed,
        inputs: vec![
            Input::uniform(&mut rng, &[b, i], -1.0, 1.0, true),
            Input::uniform(&mut rng, &[o, i], -1.0, 1.0, true),
            Input::uniform(&mut rng, &[o], -1.0, 1.0, true),
        ],
        fwd: sum_of(i),
        bwd: sum_of(b.max(o)),
    };
    verify::check(
        gpu(),
        &case,
        &|t, x| linear::linear(t, &x[0], &x[1], Some(&x[2])),
        &|x| {
            let y = matmul::reference::matmul(&x[0], &x[1], (b, o, i), false, true);
            longtail::ops::elementwise::reference::add_row(&y, &x[2])
        },
        &|x, g| {
            let (gx, gw) = matmul::reference::matmul_grad(&x[0], &x[1], g, (b, o, i), false, true);
            let (_, gb) = longtail::ops::elementwise::reference::add_row_grad(g, o);
            vec![Some(gx), Some(gw), Some(gb)]
        },
    )
    .unwrap();
}

#[test]
fn normed_linear() {
    let (seed, b, i, o) = (12u64, 29usize, 64usize, 10usize);
    let mut rng = Rng64::new(seed);
    let case = Case {
        name: format!("normed_linear [{b}, {i}] -> {o}"),
        seed,
        inputs: vec![
            Input::uniform(&mut rng, &[b, i], -1.0, 1.0, true),
            Input::uniform(&mut rng, &[i, o], -1.0, 1.0, true),
        ],
        fwd: NORMALIZE,
        bwd: Tolerance {
            abs: 4.0 * sum_of(b).abs,
            rel: 4.0 * sum_of(b).rel,
        },
    };
    let eps = normalize::EPS as f64;
    let xd = [b, i, 1];
    let wd = [1, i, o];
    verify::check(
        gpu(),
        &case,
        &|t, x| linear::normed_linear(t, &x[0], &x[1]),
        &|x| {
            let xn = normalize::reference::l2_normalize(&x[0], xd, eps);
            let wn = normalize::reference::l2_normalize(&x[1], wd, eps);
            matmul::reference::matmul(&xn, &wn, (b, o, i), false, false)
        },
        &|x, g| {
            let xn = normalize::reference::l2_normalize(&x[0], xd, eps);
            let wn = normalize::reference::l2_normalize(&x[1], wd, eps);
            let (gxn, gwn) = matmul::reference::matmul_grad(&xn, &wn, g, (b, o, i), false, false);
            vec![
                Some(normalize::reference::l2_normalize_grad(
                    &x[0], &gxn, xd, eps,
                )),
                Some(normalize::reference::l2_normalize_grad(
                    &x[1], &gwn, wd, eps,
                )),
            ]
        },
    )
    .unwrap();
}
