//! SGD against its f64 reference (PyTorch semantics), over several steps, with and without
//! Nesterov, and a learning-rate change between steps.

mod common;

use common::gpu;
use longtail::optim::{Sgd, SgdConfig, reference};
use longtail::params::ParamsBuilder;
use longtail::rng::Rng64;

/// Three steps of a handful of f32 multiply-adds each.
const TOL: f64 = 2e-6;

#[test]
fn sgd_matches_reference_over_steps() {
    let g = gpu();
    for nesterov in [false, true] {
        let mut rng = Rng64::new(nesterov as u64 + 1);
        let sizes = [7usize, 300, 1];
        let mut pb = ParamsBuilder::default();
        let mut host_w = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let v = rng.vec_f32(n, -1.0, 1.0);
            host_w.push(v.clone());
            pb.add(&format!("p{i}"), &[n], v).unwrap();
        }
        let params = pb.build(g).unwrap();
        let mut cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 2e-4,
            nesterov,
        };
        let mut sgd = Sgd::new(g, &params, cfg).unwrap();
        let mut w: Vec<Vec<f64>> = host_w
            .iter()
            .map(|v| v.iter().map(|&x| x as f64).collect())
            .collect();
        let mut mom: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        for step in 0..3 {
            if step == 2 {
                cfg.lr = 0.01;
                sgd.set_lr(g, cfg.lr);
            }
            for (i, p) in params.iter().enumerate() {
                let grad = rng.vec_f32(sizes[i], -1.0, 1.0);
                p.grad.write_f32(g, &grad).unwrap();
                let gd: Vec<f64> = grad.iter().map(|&x| x as f64).collect();
                reference::sgd_step(&mut w[i], &mut mom[i], &gd, &cfg);
            }
            let mut enc = g.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                sgd.encode(&mut pass);
            }
            g.queue.submit([enc.finish()]);
        }
        for (i, p) in params.iter().enumerate() {
            let got = p.value.to_f32(g).unwrap();
            for (j, (&a, &b)) in got.iter().zip(&w[i]).enumerate() {
                assert!(
                    (a as f64 - b).abs() < TOL,
                    "nesterov={nesterov} p{i}[{j}]: {a} vs {b}"
                );
            }
        }
    }
}
