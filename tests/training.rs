//! End to end: the MLP trains, a step allocates nothing after the first, and a seed fixes the run.

mod common;

use common::gpu;
use longtail::models::mlp::{Blobs, Mlp, MlpConfig};

/// The loss over the last 10 steps must average below this fraction of the first step's loss.
/// Blobs at radius 2 with noise 0.7 are nearly separable: a working step reaches ~0.1 of the
/// start within 150 steps; a broken gradient stays near 1.
const LOSS_FRACTION: f32 = 0.3;

fn run(steps: usize, seed: u64) -> (Vec<f32>, Vec<u64>) {
    let g = gpu();
    let cfg = MlpConfig {
        seed,
        lr: 0.05,
        ..Default::default()
    };
    let mlp = Mlp::new(g, cfg).unwrap();
    let mut data = Blobs::new(cfg.inputs, cfg.classes, seed);
    let mut losses = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..steps {
        let (x, y) = data.batch(cfg.batch);
        losses.push(mlp.train_step(g, &x, &y).unwrap());
        bytes.push(g.bytes_in_use());
    }
    (losses, bytes)
}

#[test]
fn mlp_loss_falls() {
    let _guard = LOCK.lock().unwrap();
    let (losses, _) = run(150, 3);
    let first = losses[0];
    let tail: f32 = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        tail < LOSS_FRACTION * first,
        "loss went {first} -> {tail} (mean of the last 10), want below {LOSS_FRACTION} x start"
    );
}

#[test]
fn memory_is_flat_after_the_first_step() {
    // The byte counter is per device and tests share the device: every test here holds LOCK.
    let _guard = LOCK.lock().unwrap();
    let (_, bytes) = run(50, 4);
    let after_first = bytes[0];
    assert!(after_first > 0);
    assert!(
        bytes.iter().all(|&b| b == after_first),
        "bytes in use changed across steps: {bytes:?}"
    );
}

#[test]
fn same_seed_same_losses() {
    let _guard = LOCK.lock().unwrap();
    let (a, _) = run(20, 9);
    let (b, _) = run(20, 9);
    assert_eq!(a, b);
    let (c, _) = run(20, 10);
    assert_ne!(a, c);
}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
