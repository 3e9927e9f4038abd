//! Kernels stay right past llvmpipe's loop cap: gallivm stops an invocation's loops after
//! 65,535 iterations in total per dispatch (benches/NOTES.md), which cut a K = 65,536 matmul
//! 11 % short before long K was split over launches.

mod common;

use longtail::ops::conv2d::{ConvGeom, wgrad_splits};
use longtail::ops::matmul::{self, MAX_K_PER_LAUNCH};
use longtail::tape::Tape;
use longtail::tensor::Tensor;

/// Worst-case f32 rounding of a K-term sum of products of magnitude <= 1: K eps (0.016 at
/// K = 2^17); a truncated K loses whole launches (3.4 off on values of ~5 before the fix).
fn tol(k: usize) -> f64 {
    k as f64 * f32::EPSILON as f64
}

#[test]
fn matmul_with_k_far_past_the_cap_matches_f64() {
    let g = common::gpu();
    let k = 131_072 + 5;
    let (m, n) = (3, 2);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let ad: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let bd: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    for (ta, tb, algo) in [(false, false), (true, false), (false, true)]
        .into_iter()
        .flat_map(|(ta, tb)| matmul::candidates(g).into_iter().map(move |v| (ta, tb, v)))
    {
        // The same values laid out for the transpose flags.
        let a_l: Vec<f32> = if ta {
            (0..m * k).map(|i| a[(i % m) * k + i / m]).collect()
        } else {
            a.clone()
        };
        let b_l: Vec<f32> = if tb {
            (0..k * n).map(|i| b[(i % k) * n + i / k]).collect()
        } else {
            b.clone()
        };
        let sa = if ta { [k, m] } else { [m, k] };
        let sb = if tb { [n, k] } else { [k, n] };
        let ta_t = Tensor::from_f32(g, &sa, &a_l).unwrap();
        let tb_t = Tensor::from_f32(g, &sb, &b_l).unwrap();
        let mut tape = Tape::new(g);
        let c = matmul::matmul_with(&mut tape, &ta_t, &tb_t, ta, tb, algo).unwrap();
        tape.run(false);
        let got = c.to_f32(g).unwrap();
        let want = matmul::reference::matmul(&ad, &bd, (m, n, k), false, false);
        for (x, y) in got.iter().zip(&want) {
            assert!(
                (*x as f64 - y).abs() <= tol(k),
                "{algo:?} ta {ta} tb {tb}: {x} vs {y}"
            );
        }
    }
    assert!(k > 8 * MAX_K_PER_LAUNCH);
}

#[test]
fn wgrad_split_k_chunks_stay_under_the_cap() {
    // ResNet-10's 7x7 stem at 224 px, batch 64: K = 64 x 112 x 112 = 802,816.
    let geom = ConvGeom::new(&[64, 3, 224, 224], &[64, 3, 7, 7], 2, 3).unwrap();
    let (splits, chunk) = wgrad_splits(&geom);
    assert!(
        chunk <= 16_384 && splits * chunk >= 802_816,
        "{splits} x {chunk}"
    );
}
