//! Property tests of the samplers, BET and the schedules.

use longtail::sampler::{
    B3rsConfig, Bet, BetMode, Sampler, SamplerKind, b3rs_groups, plan_epoch, steps_per_epoch,
};
use longtail::schedule::{Decay, Schedule, drw_epoch};

/// Labels of a long-tailed set: class c has counts[c] images, interleaved.
fn labels(counts: &[usize]) -> Vec<u32> {
    let mut v = Vec::new();
    let mut left = counts.to_vec();
    while left.iter().any(|&n| n > 0) {
        for (c, n) in left.iter_mut().enumerate() {
            if *n > 0 {
                v.push(c as u32);
                *n -= 1;
            }
        }
    }
    v
}

const COUNTS: [usize; 10] = [500, 300, 180, 108, 65, 39, 23, 14, 8, 5];

fn group_of(groups: &[Vec<usize>], c: usize) -> usize {
    groups.iter().position(|g| g.contains(&c)).unwrap()
}

#[test]
fn b3rs_quotas_hold_in_every_batch() {
    let lab = labels(&COUNTS);
    for (q, batch) in [(0.0, 32usize), (0.5, 33), (1.0, 64)] {
        let cfg = B3rsConfig {
            groups: 3,
            q,
            r: 1.0,
        };
        let (groups, quota) = b3rs_groups(&COUNTS, &cfg, batch).unwrap();
        assert_eq!(quota.iter().sum::<usize>(), batch);
        assert!(quota.iter().all(|&x| x >= 1));
        assert_eq!(groups[0][0], 0, "groups sorted by count, largest first");
        if q == 0.0 {
            assert!(
                quota.iter().max().unwrap() - quota.iter().min().unwrap() <= 1,
                "equal quotas: {quota:?}"
            );
        }
        let mut s = Sampler::new(SamplerKind::B3rs, &lab, 10, cfg, 7);
        for _ in 0..50 {
            let b = s.next_batch(batch).unwrap();
            let mut per = vec![0usize; groups.len()];
            for &i in &b {
                per[group_of(&groups, lab[i] as usize)] += 1;
            }
            assert_eq!(per, quota, "q={q}");
        }
    }
}

#[test]
fn every_image_of_a_class_before_any_repeats() {
    let lab = labels(&COUNTS);
    for kind in [SamplerKind::B3rs, SamplerKind::ClassBalanced] {
        let mut s = Sampler::new(kind, &lab, 10, B3rsConfig::default(), 3);
        // After every batch, the images of each class have been drawn either k or k + 1 times:
        // no image repeats before all of its class were drawn (batches are shuffled, so the
        // check is on counts, not on order).
        let mut draws = vec![0usize; lab.len()];
        for _ in 0..200 {
            for i in s.next_batch(32).unwrap() {
                draws[i] += 1;
            }
            for c in 0..10 {
                let d: Vec<usize> = (0..lab.len())
                    .filter(|&i| lab[i] as usize == c)
                    .map(|i| draws[i])
                    .collect();
                let (lo, hi) = (d.iter().min().unwrap(), d.iter().max().unwrap());
                assert!(
                    hi - lo <= 1,
                    "{kind:?} class {c}: an image drawn {hi} times while another only {lo}"
                );
            }
        }
    }
}

#[test]
fn random_and_sequential_cover_the_epoch() {
    let lab = labels(&COUNTS);
    let n = lab.len();
    let steps = steps_per_epoch(n, 64).unwrap();
    assert_eq!(steps, n / 64);
    for kind in [SamplerKind::Random, SamplerKind::Sequential] {
        let mut s = Sampler::new(kind, &lab, 10, B3rsConfig::default(), 1);
        let plan = plan_epoch(&mut s, steps, 64, Bet::OFF).unwrap();
        let mut all: Vec<usize> = plan.concat();
        if kind == SamplerKind::Sequential {
            assert_eq!(all, (0..steps * 64).collect::<Vec<_>>());
        }
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            steps * 64,
            "{kind:?}: no image twice in an epoch"
        );
    }
    assert!(steps_per_epoch(10, 11).is_err());
}

#[test]
fn bet_embeds_at_the_stated_period_and_concat_appends() {
    let lab = labels(&COUNTS);
    let cfg = B3rsConfig::default();
    let (groups, quota) = b3rs_groups(&COUNTS, &cfg, 30).unwrap();
    let mut s = Sampler::new(SamplerKind::Random, &lab, 10, cfg, 9);
    let bet = Bet {
        mode: BetMode::Embed,
        period: Some(3),
        size: 0,
    };
    let plan = plan_epoch(&mut s, 30, 30, bet).unwrap();
    let mut tail_batches = 0;
    for (step, b) in plan.iter().enumerate() {
        let mut per = vec![0usize; groups.len()];
        for &i in b {
            per[group_of(&groups, lab[i] as usize)] += 1;
        }
        if (step + 1) % 3 == 0 {
            assert_eq!(per, quota, "step {step} should be a B3RS batch");
        } else if per[2] >= quota[2] {
            tail_batches += 1;
        }
    }
    // Instance-balanced batches rarely give the tail group its B3RS quota.
    assert!(
        tail_batches < 5,
        "{tail_batches} random batches looked like B3RS batches"
    );
    let mut s = Sampler::new(SamplerKind::Random, &lab, 10, cfg, 9);
    let plan = plan_epoch(
        &mut s,
        4,
        30,
        Bet {
            mode: BetMode::Concat,
            period: Some(1),
            size: 9,
        },
    )
    .unwrap();
    assert!(plan.iter().all(|b| b.len() == 39));
}

#[test]
fn a_seed_fixes_the_sequence() {
    let lab = labels(&COUNTS);
    for kind in [
        SamplerKind::Random,
        SamplerKind::ClassBalanced,
        SamplerKind::B3rs,
    ] {
        let run = |seed| {
            let mut s = Sampler::new(kind, &lab, 10, B3rsConfig::default(), seed);
            plan_epoch(
                &mut s,
                10,
                16,
                Bet {
                    mode: BetMode::Embed,
                    period: Some(2),
                    size: 0,
                },
            )
            .unwrap()
        };
        assert_eq!(run(4), run(4), "{kind:?}");
        assert_ne!(run(4), run(5), "{kind:?}");
    }
}

#[test]
fn schedules() {
    let s = Schedule {
        lr: 0.1,
        epochs: 200,
        steps_per_epoch: 10,
        warmup_epochs: 5,
        decay: Decay::Multistep,
    };
    assert!((s.lr_at(0) - 0.1 / 50.0).abs() < 1e-12);
    assert!((s.lr_at(49) - 0.1).abs() < 1e-12);
    assert_eq!(s.lr_at(1599), 0.1);
    assert!((s.lr_at(1600) - 1e-3).abs() < 1e-12, "x0.01 from epoch 161");
    assert!(
        (s.lr_at(1800) - 1e-5).abs() < 1e-15,
        "x0.0001 from epoch 181"
    );
    let c = Schedule {
        decay: Decay::Cosine,
        ..s
    };
    assert!((c.lr_at(50) - 0.1).abs() < 1e-6);
    assert!(c.lr_at(1999) < 1e-5);
    assert_eq!(drw_epoch(200, 0.8), 160);
}
