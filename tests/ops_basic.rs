//! The first ops through the verification harness: elementwise, matmul and reductions, at random
//! shapes that are not multiples of any tile (the losses are in tests/losses.rs).

mod common;

use common::gpu;
use longtail::ops::{elementwise, matmul, reduce};
use longtail::rng::Rng64;
use longtail::verify::{self, Case, ELEMENTWISE, Input, sum_of};

/// Seeds per op: each draws its own shapes and values.
const SEEDS: [u64; 3] = [11, 12, 13];

fn random_len(rng: &mut Rng64) -> usize {
    1 + rng.below(3000)
}

/// `n` made a multiple of 4 for the first seed (the vec4 kernels) and not one for the others
/// (the scalar kernels).
fn vec4_or_not(seed: u64, n: usize) -> usize {
    if seed == SEEDS[0] {
        4 * n.div_ceil(4)
    } else if n.is_multiple_of(4) {
        n + 1
    } else {
        n
    }
}

#[test]
fn add_mul_scale() {
    for seed in SEEDS {
        let mut rng = Rng64::new(seed);
        let n = vec4_or_not(seed, random_len(&mut rng));
        let mk = |rng: &mut Rng64, name: &str| Case {
            name: format!("{name} [{n}]"),
            seed,
            inputs: vec![
                Input::uniform(rng, &[n], -2.0, 2.0, true),
                Input::uniform(rng, &[n], -2.0, 2.0, true),
            ],
            fwd: ELEMENTWISE,
            bwd: ELEMENTWISE,
        };
        verify::check(
            gpu(),
            &mk(&mut rng, "add"),
            &|t, x| elementwise::add(t, &x[0], &x[1]),
            &|x| elementwise::reference::add(&x[0], &x[1]),
            &|_, g| {
                let (a, b) = elementwise::reference::add_grad(g);
                vec![Some(a), Some(b)]
            },
        )
        .unwrap();
        verify::check(
            gpu(),
            &mk(&mut rng, "mul"),
            &|t, x| elementwise::mul(t, &x[0], &x[1]),
            &|x| elementwise::reference::mul(&x[0], &x[1]),
            &|x, g| {
                let (a, b) = elementwise::reference::mul_grad(&x[0], &x[1], g);
                vec![Some(a), Some(b)]
            },
        )
        .unwrap();
        let s = rng.range(-3.0, 3.0) as f32;
        let case = Case {
            name: format!("scale({s}) [{n}]"),
            seed,
            inputs: vec![Input::uniform(&mut rng, &[n], -2.0, 2.0, true)],
            fwd: ELEMENTWISE,
            bwd: ELEMENTWISE,
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| elementwise::scale(t, &x[0], s),
            &|x| elementwise::reference::scale(&x[0], s as f64),
            &|_, g| vec![Some(elementwise::reference::scale(g, s as f64))],
        )
        .unwrap();
    }
}

#[test]
fn relu_and_add_row() {
    for seed in SEEDS {
        let mut rng = Rng64::new(seed);
        let (rows, cols) = (1 + rng.below(70), vec4_or_not(seed, 1 + rng.below(90)));
        // Keep relu inputs away from the kink, where finite differences are meaningless.
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| {
                let v = rng.range(0.01, 2.0);
                (if rng.uniform() < 0.5 { -v } else { v }) as f32
            })
            .collect();
        let case = Case {
            name: format!("relu [{rows}, {cols}]"),
            seed,
            inputs: vec![Input::F32 {
                shape: vec![rows, cols],
                data,
                grad: true,
            }],
            fwd: ELEMENTWISE,
            bwd: ELEMENTWISE,
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| elementwise::relu(t, &x[0]),
            &|x| elementwise::reference::relu(&x[0]),
            &|x, g| vec![Some(elementwise::reference::relu_grad(&x[0], g))],
        )
        .unwrap();

        let case = Case {
            name: format!("add_row [{rows}, {cols}] + [{cols}]"),
            seed,
            inputs: vec![
                Input::uniform(&mut rng, &[rows, cols], -1.0, 1.0, true),
                Input::uniform(&mut rng, &[cols], -1.0, 1.0, true),
            ],
            fwd: ELEMENTWISE,
            bwd: sum_of(rows),
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| elementwise::add_row(t, &x[0], &x[1]),
            &|x| elementwise::reference::add_row(&x[0], &x[1]),
            &|_, g| {
                let (a, b) = elementwise::reference::add_row_grad(g, cols);
                vec![Some(a), Some(b)]
            },
        )
        .unwrap();
    }
}

#[test]
fn matmul_all_transposes_odd_shapes() {
    for seed in SEEDS {
        let mut rng = Rng64::new(seed);
        let (m, n, k) = (1 + rng.below(150), 1 + rng.below(150), 1 + rng.below(150));
        for (ta, tb, algo) in [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .flat_map(|(ta, tb)| {
                matmul::candidates(gpu())
                    .into_iter()
                    .map(move |v| (ta, tb, v))
            })
        {
            let ash = if ta { [k, m] } else { [m, k] };
            let bsh = if tb { [n, k] } else { [k, n] };
            let case = Case {
                name: format!("matmul {algo:?} m={m} n={n} k={k} ta={ta} tb={tb}"),
                seed,
                inputs: vec![
                    Input::uniform(&mut rng, &ash, -1.0, 1.0, true),
                    Input::uniform(&mut rng, &bsh, -1.0, 1.0, true),
                ],
                fwd: sum_of(k),
                bwd: sum_of(m.max(n)),
            };
            verify::check(
                gpu(),
                &case,
                &|t, x| matmul::matmul_with(t, &x[0], &x[1], ta, tb, algo),
                &|x| matmul::reference::matmul(&x[0], &x[1], (m, n, k), ta, tb),
                &|x, g| {
                    let (a, b) = matmul::reference::matmul_grad(&x[0], &x[1], g, (m, n, k), ta, tb);
                    vec![Some(a), Some(b)]
                },
            )
            .unwrap();
        }
    }
}

#[test]
fn matmul_exact_tiles_and_skinny() {
    // Exact multiples of the 64x64 tile, and degenerate 1-wide shapes.
    for ((i, (m, n, k)), algo) in [
        (64, 64, 16),
        (128, 64, 32),
        (1, 1, 1),
        (1, 300, 2),
        (257, 1, 65),
    ]
    .into_iter()
    .enumerate()
    .flat_map(|x| matmul::candidates(gpu()).into_iter().map(move |v| (x, v)))
    {
        let seed = 100 + i as u64;
        let mut rng = Rng64::new(seed);
        let case = Case {
            name: format!("matmul {algo:?} m={m} n={n} k={k}"),
            seed,
            inputs: vec![
                Input::uniform(&mut rng, &[m, k], -1.0, 1.0, true),
                Input::uniform(&mut rng, &[k, n], -1.0, 1.0, true),
            ],
            fwd: sum_of(k),
            bwd: sum_of(m.max(n)),
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| matmul::matmul_with(t, &x[0], &x[1], false, false, algo),
            &|x| matmul::reference::matmul(&x[0], &x[1], (m, n, k), false, false),
            &|x, g| {
                let (a, b) =
                    matmul::reference::matmul_grad(&x[0], &x[1], g, (m, n, k), false, false);
                vec![Some(a), Some(b)]
            },
        )
        .unwrap();
    }
}

#[test]
fn sum_and_mean_every_axis() {
    for seed in SEEDS {
        let mut rng = Rng64::new(seed);
        let shape = [1 + rng.below(9), 1 + rng.below(40), 1 + rng.below(30)];
        for axis in 0..3 {
            for mean in [false, true] {
                let dims = reduce::split_dims(&shape, axis).unwrap();
                let case = Case {
                    name: format!(
                        "{} {shape:?} axis {axis}",
                        if mean { "mean" } else { "sum" }
                    ),
                    seed,
                    inputs: vec![Input::uniform(&mut rng, &shape, -1.0, 1.0, true)],
                    fwd: sum_of(dims[1]),
                    bwd: ELEMENTWISE,
                };
                verify::check(
                    gpu(),
                    &case,
                    &|t, x| {
                        if mean {
                            reduce::mean(t, &x[0], axis)
                        } else {
                            reduce::sum(t, &x[0], axis)
                        }
                    },
                    &|x| reduce::reference::reduce(&x[0], dims, mean),
                    &|_, g| vec![Some(reduce::reference::reduce_grad(g, dims, mean))],
                )
                .unwrap();
            }
        }
    }
}

/// Both sum kernels: short sums over many outputs (one invocation each) and the workgroup tree,
/// on either side of the switch.
#[test]
fn short_sums_over_many_outputs() {
    for (seed, shape) in [
        (11u64, [3usize, 200, 700]),
        (12, [2, 257, 600]),
        (13, [1, 1, 1500]),
    ] {
        let mut rng = Rng64::new(seed);
        let dims = [shape[0], shape[1], shape[2]];
        let case = Case {
            name: format!("sum {shape:?} axis 1"),
            seed,
            inputs: vec![Input::uniform(&mut rng, &shape, -1.0, 1.0, true)],
            fwd: sum_of(dims[1]),
            bwd: ELEMENTWISE,
        };
        verify::check(
            gpu(),
            &case,
            &|t, x| reduce::sum(t, &x[0], 1),
            &|x| reduce::reference::reduce(&x[0], dims, false),
            &|_, g| vec![Some(reduce::reference::reduce_grad(g, dims, false))],
        )
        .unwrap();
    }
}

/// Rows of 2^17 and 2^18 + 3 values (past the 65,536 where a peer framework's reductions break
/// on llvmpipe), with a non-zero mean so that a dropped or doubled chunk shows.
#[test]
fn reductions_over_long_rows() {
    for (rows, len) in [(3usize, 1usize << 17), (1, (1 << 18) + 3)] {
        let seed = len as u64;
        let mut rng = Rng64::new(seed);
        let case = Case {
            name: format!("mean of [{rows}, {len}] over axis 1"),
            seed,
            inputs: vec![Input::uniform(&mut rng, &[rows, len], 0.0, 2.0, true)],
            fwd: sum_of(len),
            bwd: ELEMENTWISE,
        };
        let dims = [rows, len, 1];
        verify::check(
            gpu(),
            &case,
            &|t, x| reduce::mean(t, &x[0], 1),
            &|x| reduce::reference::reduce(&x[0], dims, true),
            &|_, g| vec![Some(reduce::reference::reduce_grad(g, dims, true))],
        )
        .unwrap();
    }
    // Column sums over 2^17 rows (strided access, the bias-gradient pattern).
    let (len, cols) = (1usize << 17, 3usize);
    let seed = 5;
    let mut rng = Rng64::new(seed);
    let case = Case {
        name: format!("sum of [{len}, {cols}] over axis 0"),
        seed,
        inputs: vec![Input::uniform(&mut rng, &[len, cols], 0.0, 1.0, true)],
        fwd: sum_of(len),
        bwd: ELEMENTWISE,
    };
    let dims = [1, len, cols];
    verify::check(
        gpu(),
        &case,
        &|t, x| reduce::sum(t, &x[0], 0),
        &|x| reduce::reference::reduce(&x[0], dims, false),
        &|_, g| vec![Some(reduce::reference::reduce_grad(g, dims, false))],
    )
    .unwrap();
}
