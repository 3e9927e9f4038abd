//! The Jacobi solver up to its largest supported size (n = 128) against the f64 ZCA, and the
//! clear error past it.

mod common;

use common::gpu;
use longtail::ops::eigen::zca_eigen;
use longtail::ops::whiten::reference;
use longtail::rng::Rng64;
use longtail::tape::Tape;
use longtail::tensor::Tensor;

#[test]
fn jacobi_zca_up_to_n_128() {
    for n in [96usize, 128] {
        check(n);
    }
}

fn check(n: usize) {
    let mut rng = Rng64::new(1);
    let a: Vec<f64> = (0..n * n).map(|_| rng.range(-1.0, 1.0)).collect();
    let mut s = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = (0..n).map(|t| a[i * n + t] * a[j * n + t]).sum::<f64>() / n as f64
                + if i == j { 1.0 } else { 0.0 };
        }
    }
    let sf: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    let g = gpu();
    let sigma = Tensor::from_f32(g, &[1, n, n], &sf).unwrap();
    let mut tape = Tape::new(g);
    let w = zca_eigen(&mut tape, &sigma).unwrap();
    tape.run(false);
    let got: Vec<f64> = w.to_f32(g).unwrap().iter().map(|&v| v as f64).collect();
    let sd: Vec<f64> = sf.iter().map(|&v| v as f64).collect();
    let want = reference::zca(&sd, n);
    let num: f64 = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    let e = (num / den).sqrt();
    eprintln!("n={n}: |W - ZCA| / |ZCA| = {e:e}");
    assert!(e < 1e-3, "relative error {e}");
}

#[test]
fn larger_groups_are_refused_with_advice() {
    let g = gpu();
    let sigma = Tensor::zeros(g, &[1, 129, 129], longtail::tensor::DType::F32).unwrap();
    let mut tape = Tape::new(g);
    let e = zca_eigen(&mut tape, &sigma).unwrap_err().to_string();
    assert!(e.contains("128") && e.contains("whiten-group"), "{e}");
}
