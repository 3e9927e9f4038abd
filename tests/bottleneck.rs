//! The bottleneck ResNets (torchvision's resnet50 and resnext50_32x4d, grouped 3x3 convs)
//! against PyTorch: the same names and shapes as torchvision's state_dict, and the same
//! eval-mode logits for weights given by a formula both sides evaluate
//! (assets/fixtures/make_bottleneck_fixture.py), plus a training step.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::gpu;
use longtail::checkpoint::{HostTensor, load_model_bytes, state_dict, to_bytes};
use longtail::models::resnet::{Arch, Classifier, ResNet, ResNetConfig};
use longtail::ops::batchnorm::BnMode;
use longtail::tape::Tape;
use longtail::tensor::Tensor;

/// PyTorch and longtail differ by f32 rounding over ~50 layers (different summation orders);
/// 1e-4 of the largest logit is far below any wrong layer or misplaced weight.
const LOGIT_REL_TOL: f64 = 1e-4;

/// The fixture's formula (see make_bottleneck_fixture.py), tensor by tensor.
fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let ph = name.bytes().map(|b| b as u64).sum::<u64>() as f64 * 0.01;
    let s = (0..n).map(|i| (0.7 * i as f64 + ph).sin());
    let v: Vec<f64> = if name.ends_with("running_mean") || name.ends_with(".bias") {
        s.map(|a| 0.1 * a).collect()
    } else if name.ends_with("running_var") {
        s.map(|a| 1.0 + 0.25 * (1.0 + a)).collect()
    } else if shape.len() == 1 {
        s.map(|a| 1.0 + 0.1 * a).collect()
    } else {
        let fan_in: usize = shape[1..].iter().product();
        s.map(|a| (4.0 / fan_in as f64).sqrt() * a).collect()
    };
    v.into_iter().map(|a| a as f32).collect()
}

/// torchvision's (name, shape) list, the input and the logits.
type Fixture = (Vec<(String, Vec<usize>)>, Vec<f32>, Vec<f32>);

fn fixture(arch: &str) -> Fixture {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/fixtures")
        .join(format!("{arch}_io.safetensors"));
    let bytes = std::fs::read(&p).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let names: Vec<(String, Vec<usize>)> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["names"]).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f = |k: &str| bytemuck::pod_collect_to_vec::<u8, f32>(st.tensor(k).unwrap().data());
    (names, f("x"), f("logits"))
}

fn model(arch: &str) -> ResNet {
    ResNet::new(
        gpu(),
        ResNetConfig {
            arch: Arch::parse(arch).unwrap(),
            in_channels: 3,
            classes: 10,
            classifier: Classifier::Linear,
            seed: 1,
            whiten: None,
        },
    )
    .unwrap()
}

fn check_against_torchvision(arch: &str, params: usize) {
    let g = gpu();
    let m = model(arch);
    let (names, x, want) = fixture(arch);
    // 1. torchvision's names and shapes, nothing more or less.
    let ours: BTreeMap<String, Vec<usize>> = state_dict(g, &m, 0)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.shape))
        .collect();
    let theirs: BTreeMap<String, Vec<usize>> = names.iter().cloned().collect();
    assert_eq!(ours.len(), theirs.len(), "{arch}: tensor count");
    for (k, s) in &theirs {
        assert_eq!(ours.get(k), Some(s), "{arch}: {k}");
    }
    let count: usize = m.params.iter().map(|p| p.value.numel()).sum();
    assert_eq!(count, params, "{arch}: parameters (torchvision's count)");
    // 2. The formula's weights give PyTorch's logits.
    let tensors: BTreeMap<String, HostTensor> = names
        .iter()
        .map(|(k, s)| {
            let t = if k.ends_with("num_batches_tracked") {
                HostTensor::i64_scalar(0)
            } else {
                HostTensor::f32(s, &formula(k, s))
            };
            (k.clone(), t)
        })
        .collect();
    let bytes = to_bytes(&tensors, None).unwrap();
    load_model_bytes(g, &bytes, &PathBuf::from(format!("{arch}.safetensors")), &m).unwrap();
    let xt = Tensor::from_f32(g, &[2, 3, 64, 64], &x).unwrap();
    let mut tape = Tape::new(g);
    let z = m.forward(&mut tape, &xt, BnMode::Eval).unwrap();
    tape.run(false);
    let got = z.to_f32(g).unwrap();
    let scale = want.iter().fold(0f64, |a, &b| a.max((b as f64).abs()));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f64, |a, (&x, &y)| a.max((x as f64 - y as f64).abs()));
    eprintln!("{arch}: max |logit - PyTorch| = {worst:e} (largest logit {scale})");
    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
        let d = (a as f64 - b as f64).abs();
        assert!(
            d <= LOGIT_REL_TOL * scale,
            "{arch}: logit {i}: {a} vs PyTorch {b} (|diff| {d:e}, scale {scale})"
        );
    }
}

#[test]
fn resnet50_matches_torchvision() {
    check_against_torchvision("resnet50", 23_528_522);
}

#[test]
fn resnext50_32x4d_matches_torchvision() {
    check_against_torchvision("resnext50_32x4d", 23_000_394);
}

#[test]
fn resnext_trains_a_step_and_names_round_trip() {
    let g = gpu();
    let a = Arch::parse("resnext50_32x4d").unwrap();
    assert_eq!(a.name(), "resnext50_32x4d");
    assert_eq!(Arch::parse("resnet50").unwrap().name(), "resnet50");
    assert!(Arch::parse("resnext50_32x").is_err());
    let m = model("resnext50_32x4d");
    let counts = [5usize, 4, 3, 2, 2, 1, 1, 1, 1, 1];
    let loss = longtail::losses::LossSetup::new(g, Default::default(), &counts).unwrap();
    let sgd = longtail::optim::SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    };
    let st = m.train_step(g, [2, 3, 32, 32], sgd, &loss).unwrap();
    let xs: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
        .collect();
    st.x.write_f32(g, &xs).unwrap();
    st.y.write_u32(g, &[1, 7]).unwrap();
    let l0 = st.step.run().unwrap();
    assert!(l0.is_finite(), "loss {l0}");
    // `eval` of weights without a config infers the architecture from the tensors.
    let dir = common::tmp_dir("bottleneck-infer");
    let path = dir.join("w.safetensors");
    longtail::checkpoint::save_model(g, &path, &m, 1).unwrap();
    let (t, said) = longtail::checkpoint::infer_config(&path).unwrap();
    assert_eq!(t["model"].as_str(), Some("resnext50_32x4d"), "{said}");
}
