//! The fused margin cross-entropy through the harness for every loss of the method (CE,
//! class-weighted CE, LDAM, logit adjustment, balanced softmax), with extreme logits and
//! classes absent from the batch; and the host-side margin/prior/weight formulas.

mod common;

use common::gpu;
use longtail::losses::{self, LossConfig, LossKind};
use longtail::ops::cross_entropy;
use longtail::rng::Rng64;
use longtail::verify::{self, Case, Input, TRANSCENDENTAL, Tolerance};

fn check(
    seed: u64,
    rows: usize,
    classes: usize,
    cfg: LossConfig,
    weighted: bool,
    spread: f64,
    labels: Option<Vec<u32>>,
) {
    let mut rng = Rng64::new(seed);
    let counts: Vec<usize> = (0..classes).map(|c| 5000 / (1 + 7 * c)).collect();
    let weights = weighted.then(|| losses::class_balanced_weights(&counts, 0.9999).unwrap());
    let (cls, scale) = losses::class_vector(&cfg, &counts, weights.as_deref()).unwrap();
    let labels = labels.unwrap_or_else(|| (0..rows).map(|_| rng.below(classes) as u32).collect());
    // The loss scales logits by s (30 for LDAM): the band scales with it.
    let s = scale as f64;
    let tol = Tolerance {
        abs: TRANSCENDENTAL.abs * s.max(1.0) * spread.max(1.0),
        rel: TRANSCENDENTAL.rel * s.max(1.0),
    };
    let case = Case {
        name: format!(
            "{:?} [{rows}, {classes}] weighted={weighted} spread={spread}",
            cfg.kind
        ),
        seed,
        inputs: vec![
            Input::uniform(&mut rng, &[rows, classes], -spread, spread, true),
            Input::U32 {
                shape: vec![rows],
                data: labels,
            },
            Input::F32 {
                shape: vec![3 * classes],
                data: cls,
                grad: false,
            },
        ],
        fwd: tol,
        bwd: tol,
    };
    let lab = |x: &[Vec<f64>]| x[1].iter().map(|&v| v as usize).collect::<Vec<_>>();
    verify::check(
        gpu(),
        &case,
        &|t, x| cross_entropy::margin_cross_entropy(t, &x[0], &x[1], &x[2], scale),
        &|x| {
            vec![cross_entropy::reference::margin_cross_entropy(
                &x[0],
                &lab(x),
                &x[2],
                s,
            )]
        },
        &|x, g| {
            vec![
                Some(cross_entropy::reference::margin_cross_entropy_grad(
                    &x[0],
                    &lab(x),
                    &x[2],
                    s,
                    g[0],
                )),
                None,
                None,
            ]
        },
    )
    .unwrap();
}

fn cfg(kind: LossKind) -> LossConfig {
    LossConfig {
        kind,
        ..Default::default()
    }
}

#[test]
fn every_loss_plain_and_weighted() {
    for (i, kind) in [LossKind::Ce, LossKind::Ldam, LossKind::La, LossKind::Bs]
        .into_iter()
        .enumerate()
    {
        for weighted in [false, true] {
            let seed = 10 * i as u64 + weighted as u64;
            let mut rng = Rng64::new(seed);
            let (rows, classes) = (1 + rng.below(200), 2 + rng.below(30));
            // LDAM sees cosine logits in [-1, 1].
            let spread = if kind == LossKind::Ldam { 1.0 } else { 3.0 };
            check(seed, rows, classes, cfg(kind), weighted, spread, None);
        }
    }
}

#[test]
fn la_with_other_tau() {
    let c = LossConfig {
        kind: LossKind::La,
        tau: 1.7,
        ..Default::default()
    };
    check(50, 33, 10, c, false, 2.0, None);
}

#[test]
fn extreme_logits_and_absent_classes() {
    // +-80 (x30 for LDAM: +-2400) overflows exp() in f32 without the max shift; only classes 0
    // and 1 appear in the batch.
    let labels: Vec<u32> = (0..37).map(|i| (i % 2) as u32).collect();
    for (i, kind) in [LossKind::Ce, LossKind::Ldam, LossKind::La]
        .into_iter()
        .enumerate()
    {
        check(
            60 + i as u64,
            37,
            7,
            cfg(kind),
            true,
            80.0,
            Some(labels.clone()),
        );
    }
}

#[test]
fn host_formulas() {
    let counts = [5000usize, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50];
    let m = losses::ldam_margins(&counts, 0.5).unwrap();
    assert!((m[9] - 0.5).abs() < 1e-12);
    assert!((m[0] - 0.5 * (50f64 / 5000.0).powf(0.25)).abs() < 1e-12);
    let w = losses::class_balanced_weights(&counts, 0.9999).unwrap();
    assert!((w.iter().sum::<f64>() - 10.0).abs() < 1e-9);
    assert!(
        w.windows(2).all(|p| p[0] < p[1]),
        "rarer classes weigh more: {w:?}"
    );
    let o = losses::prior_offsets(&counts, 1.0).unwrap();
    let total: usize = counts.iter().sum();
    assert!((o[0] - (5000.0 / total as f64).ln()).abs() < 1e-12);
    assert!(losses::ldam_margins(&[3, 0], 0.5).is_err());
    assert!(losses::class_balanced_weights(&[3, 4], 1.0).is_err());
    let mut z = vec![0.0f32; 20];
    losses::posthoc_adjust(&mut z, &counts, 1.0).unwrap();
    assert!((z[10] as f64 + o[0]).abs() < 1e-6);
}
