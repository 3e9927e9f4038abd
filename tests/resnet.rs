//! ResNet models: parameter names and counts, ten SGD steps of ResNet-8 lower the loss, and a
//! ResNet-10 forward runs.

mod common;

use common::gpu;
use longtail::losses::{LossConfig, LossKind, LossSetup};
use longtail::models::resnet::{Arch, Classifier, ResNet, ResNetConfig};
use longtail::ops::batchnorm::BnMode;
use longtail::ops::whiten::{WhitenConfig, WhitenMethod};
use longtail::optim::SgdConfig;
use longtail::rng::Rng64;
use longtail::tape::Tape;
use longtail::tensor::Tensor;

fn cfg(arch: Arch, classifier: Classifier) -> ResNetConfig {
    ResNetConfig {
        arch,
        in_channels: 3,
        classes: 10,
        classifier,
        seed: 1,
        whiten: None,
    }
}

#[test]
fn resnet32_has_pytorch_names_and_0_46m_parameters() {
    let m = ResNet::new(
        gpu(),
        cfg(Arch::parse("resnet32").unwrap(), Classifier::Linear),
    )
    .unwrap();
    // 464,154 weights in LDAM-DRW's resnet32 (10 classes, linear head).
    assert_eq!(m.params.count(), 464_154);
    for name in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "layer1.0.conv1.weight",
        "layer3.4.bn2.bias",
        "linear.weight",
        "linear.bias",
    ] {
        m.params.get(name).unwrap();
    }
    assert_eq!(
        m.params.get("layer2.0.conv1.weight").unwrap().shape(),
        [32, 16, 3, 3]
    );
    assert!(m.bn.contains_key("layer3.4.bn2"));
    let normed = ResNet::new(gpu(), cfg(Arch::Cifar { n: 5 }, Classifier::Normed)).unwrap();
    assert_eq!(
        normed.params.get("linear.weight").unwrap().shape(),
        [64, 10]
    );
    assert!(Arch::parse("resnet33").is_err());
}

#[test]
fn resnet8_ten_sgd_steps_on_a_fixed_batch_lower_the_loss() {
    let g = gpu();
    let model = ResNet::new(g, cfg(Arch::Cifar { n: 1 }, Classifier::Linear)).unwrap();
    let shape = [16, 3, 16, 16];
    let loss = LossSetup::new(g, LossConfig::default(), &[5; 10]).unwrap();
    let st = model
        .train_step(
            g,
            shape,
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 2e-4,
                nesterov: false,
            },
            &loss,
        )
        .unwrap();
    let mut rng = Rng64::new(3);
    let x = rng.vec_f32(shape.iter().product(), -1.0, 1.0);
    let y: Vec<u32> = (0..shape[0]).map(|i| (i % 10) as u32).collect();
    st.x.write_f32(g, &x).unwrap();
    st.y.write_u32(g, &y).unwrap();
    let losses: Vec<f32> = (0..10).map(|_| st.step.run().unwrap()).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses[9] < 0.7 * losses[0],
        "loss did not fall enough: {losses:?}"
    );
}

#[test]
fn resnet10_forward_and_eval_shapes() {
    let g = gpu();
    let model = ResNet::new(g, cfg(Arch::ResNet10, Classifier::Linear)).unwrap();
    assert_eq!(
        model
            .params
            .get("layer2.0.downsample.0.weight")
            .unwrap()
            .shape(),
        [128, 64, 1, 1]
    );
    assert_eq!(model.params.get("fc.weight").unwrap().shape(), [10, 512]);
    let x = Tensor::from_f32(
        g,
        &[2, 3, 40, 40],
        &Rng64::new(1).vec_f32(2 * 3 * 40 * 40, -1.0, 1.0),
    )
    .unwrap();
    let mut tape = Tape::new(g);
    let z = model.forward(&mut tape, &x, BnMode::Eval).unwrap();
    tape.run(false);
    let z = z.to_f32(g).unwrap();
    assert_eq!(z.len(), 20);
    assert!(z.iter().all(|v| v.is_finite()));
}

/// A synthetic imbalanced image problem: class c has a bright square at a class-specific place,
/// plus noise; class counts fall off exponentially (imbalance 10).
fn imbalanced_batch(rng: &mut Rng64, n: usize, size: usize) -> (Vec<f32>, Vec<u32>, Vec<usize>) {
    let counts: Vec<usize> = (0..10)
        .map(|c| ((100.0 * 0.1f64.powf(c as f64 / 9.0)) as usize).max(1))
        .collect();
    let total: usize = counts.iter().sum();
    let mut x = Vec::with_capacity(n * 3 * size * size);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let mut r = rng.below(total);
        let mut c = 0;
        while r >= counts[c] {
            r -= counts[c];
            c += 1;
        }
        let (cy, cx) = ((c / 4) * 4 + 2, (c % 4) * 4 + 2);
        for ch in 0..3 {
            for i in 0..size {
                for j in 0..size {
                    let on = i.abs_diff(cy) <= 1 && j.abs_diff(cx) <= 1;
                    x.push(
                        (if on { 2.0 } else { 0.0 } + 0.3 * rng.normal() + 0.1 * ch as f64) as f32,
                    );
                }
            }
        }
        y.push(c as u32);
    }
    (x, y, counts)
}

#[test]
fn resnet8_whitening_ldam_trains_on_imbalanced_data() {
    let g = gpu();
    for method in [WhitenMethod::Ns, WhitenMethod::Eigen] {
        let cfg = ResNetConfig {
            arch: Arch::Cifar { n: 1 },
            in_channels: 3,
            classes: 10,
            classifier: Classifier::Normed,
            seed: 2,
            whiten: Some(WhitenConfig {
                method,
                iters: 20,
                ..Default::default()
            }),
        };
        let model = ResNet::new(g, cfg).unwrap();
        let (b, size) = (32, 16);
        let mut rng = Rng64::new(11);
        let (x, y, counts) = imbalanced_batch(&mut rng, b, size);
        let loss = LossSetup::new(
            g,
            LossConfig {
                kind: LossKind::Ldam,
                ..Default::default()
            },
            &counts,
        )
        .unwrap();
        let st = model
            .train_step(
                g,
                [b, 3, size, size],
                SgdConfig {
                    lr: 0.05,
                    momentum: 0.9,
                    weight_decay: 2e-4,
                    nesterov: false,
                },
                &loss,
            )
            .unwrap();
        st.x.write_f32(g, &x).unwrap();
        st.y.write_u32(g, &y).unwrap();
        let losses: Vec<f32> = (0..8).map(|_| st.step.run().unwrap()).collect();
        eprintln!("{method:?}: {losses:?}");
        assert!(
            losses.iter().all(|l| l.is_finite()),
            "{method:?}: {losses:?}"
        );
        assert!(
            losses[7] < 0.8 * losses[0],
            "{method:?}: loss did not fall: {losses:?}"
        );
        // Eval mode after preparing the cached whitening matrix gives finite logits.
        let mut prep = Tape::new(g);
        model.record_prepare(&mut prep).unwrap();
        prep.run(false);
        let xt = Tensor::from_f32(g, &[b, 3, size, size], &x).unwrap();
        let mut eval = Tape::new(g);
        let z = model.forward(&mut eval, &xt, BnMode::Eval).unwrap();
        eval.run(false);
        assert!(z.to_f32(g).unwrap().iter().all(|v| v.is_finite()));
    }
}
