//! The verification harness itself must fail on wrong results: a wrong forward, a wrong GPU
//! gradient, and a reference gradient that disagrees with finite differences.

mod common;

use common::gpu;
use longtail::ops::elementwise;
use longtail::rng::Rng64;
use longtail::verify::{self, Case, ELEMENTWISE, Input};

fn case(seed: u64) -> Case {
    let mut rng = Rng64::new(seed);
    Case {
        name: "mul".into(),
        seed,
        inputs: vec![
            Input::uniform(&mut rng, &[33], -1.0, 1.0, true),
            Input::uniform(&mut rng, &[33], -1.0, 1.0, true),
        ],
        fwd: ELEMENTWISE,
        bwd: ELEMENTWISE,
    }
}

#[test]
fn correct_op_passes() {
    verify::check(
        gpu(),
        &case(1),
        &|t, x| elementwise::mul(t, &x[0], &x[1]),
        &|x| elementwise::reference::mul(&x[0], &x[1]),
        &|x, g| {
            let (a, b) = elementwise::reference::mul_grad(&x[0], &x[1], g);
            vec![Some(a), Some(b)]
        },
    )
    .unwrap();
}

#[test]
fn wrong_forward_fails_and_names_the_seed() {
    let err = verify::check(
        gpu(),
        &case(2),
        &|t, x| elementwise::add(t, &x[0], &x[1]),
        &|x| elementwise::reference::mul(&x[0], &x[1]),
        &|x, g| {
            let (a, b) = elementwise::reference::mul_grad(&x[0], &x[1], g);
            vec![Some(a), Some(b)]
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("forward") && err.contains("seed 2"), "{err}");
}

#[test]
fn wrong_gpu_gradient_fails() {
    // The GPU op is mul, the reference claims the gradient of 2*a*b: forward agrees only if the
    // reference forward is mul, so use a reference whose gradient alone is wrong.
    let err = verify::check(
        gpu(),
        &case(3),
        &|t, x| elementwise::mul(t, &x[0], &x[1]),
        &|x| elementwise::reference::mul(&x[0], &x[1]),
        &|x, g| {
            let (a, b) = elementwise::reference::mul_grad(&x[0], &x[1], g);
            vec![Some(a.iter().map(|v| 2.0 * v).collect()), Some(b)]
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("gradient of input 0"), "{err}");
}

#[test]
fn reference_gradient_is_checked_by_finite_differences() {
    // GPU and reference gradient agree with each other (both wrong: the GPU op's backward is
    // scale's, 1 * g) but not with the reference forward x^2: only finite differences catch it.
    let mut rng = Rng64::new(4);
    let c = Case {
        name: "square".into(),
        seed: 4,
        inputs: vec![Input::uniform(&mut rng, &[20], 0.5, 1.0, true)],
        fwd: verify::Tolerance {
            abs: 10.0,
            rel: 10.0,
        }, // forward deliberately not compared
        bwd: ELEMENTWISE,
    };
    let err = verify::check(
        gpu(),
        &c,
        &|t, x| elementwise::scale(t, &x[0], 1.0),
        &|x| x[0].iter().map(|v| v * v).collect(),
        &|_, g| vec![Some(g.to_vec())],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("finite differences"), "{err}");
}

#[test]
fn tensor_used_twice_accumulates_its_gradient() {
    // y = x * x + x: x feeds three uses, the gradient must be 2x g + g.
    let mut rng = Rng64::new(5);
    let c = Case {
        name: "x*x + x".into(),
        seed: 5,
        inputs: vec![Input::uniform(&mut rng, &[101], -1.0, 1.0, true)],
        fwd: ELEMENTWISE,
        bwd: ELEMENTWISE,
    };
    verify::check(
        gpu(),
        &c,
        &|t, x| {
            let sq = elementwise::mul(t, &x[0], &x[0])?;
            elementwise::add(t, &sq, &x[0])
        },
        &|x| x[0].iter().map(|v| v * v + v).collect(),
        &|x, g| {
            vec![Some(
                x[0].iter()
                    .zip(g)
                    .map(|(v, d)| (2.0 * v + 1.0) * d)
                    .collect(),
            )]
        },
    )
    .unwrap();
}
