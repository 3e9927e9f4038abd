//! ResNet models: parameter names and counts, ten SGD steps of ResNet-8 lower the loss, and a
//! ResNet-10 forward runs.

mod common;

use common::gpu;
use longtail::models::resnet::{Arch, Classifier, ResNet, ResNetConfig};
use longtail::ops::batchnorm::BnMode;
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
