//! Weights in PyTorch's safetensors layout: PyTorch-exported ResNets give PyTorch's logits here,
//! saving and loading round-trips, and bad files get clear errors.

mod common;

use std::path::PathBuf;

use common::gpu;
use longtail::checkpoint::{load_model, save_model, state_dict};
use longtail::models::resnet::{Arch, Classifier, ResNet, ResNetConfig};

/// PyTorch (f32, its own summation order) and longtail differ by rounding over ~30 layers:
/// 1e-4 of the largest logit is ~100x what shows in practice and far below any real mistake.
const LOGIT_REL_TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/fixtures")
        .join(name)
}

fn model(arch: Arch, classifier: Classifier) -> ResNet {
    ResNet::new(
        gpu(),
        ResNetConfig {
            arch,
            in_channels: 3,
            classes: 10,
            classifier,
            seed: 99,
            whiten: None,
        },
    )
    .unwrap()
}

fn io(name: &str) -> (Vec<f32>, Vec<f32>) {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f = |k: &str| -> Vec<f32> {
        bytemuck::pod_collect_to_vec::<u8, f32>(st.tensor(k).unwrap().data())
    };
    (f("x"), f("logits"))
}

fn check_against_pytorch(weights: &str, io_file: &str, arch: Arch, classifier: Classifier) {
    let g = gpu();
    let m = model(arch, classifier);
    let tracked = load_model(g, &fixture(weights), &m).unwrap();
    assert_eq!(tracked, 3, "num_batches_tracked from the fixture");
    let (x, want) = io(io_file);
    common::assert_logits_match(weights, &m, &[4, 3, 32, 32], &x, &want, LOGIT_REL_TOL);
}

#[test]
fn resnet32_imported_from_pytorch_gives_pytorchs_logits() {
    check_against_pytorch(
        "resnet32_linear.safetensors",
        "resnet32_linear_io.safetensors",
        Arch::Cifar { n: 5 },
        Classifier::Linear,
    );
}

#[test]
fn resnet8_normed_head_imported_from_pytorch() {
    check_against_pytorch(
        "resnet8_normed.safetensors",
        "resnet8_normed_io.safetensors",
        Arch::Cifar { n: 1 },
        Classifier::Normed,
    );
}

#[test]
fn save_then_load_round_trips() {
    let g = gpu();
    let a = model(Arch::Cifar { n: 1 }, Classifier::Linear);
    let dir = common::tmp_dir("ckpt");
    let path = dir.join("w.safetensors");
    save_model(g, &path, &a, 7).unwrap();
    let b = ResNet::new(g, ResNetConfig { seed: 5, ..a.cfg }).unwrap();
    assert_eq!(load_model(g, &path, &b).unwrap(), 7);
    let (sa, sb) = (state_dict(g, &a, 7).unwrap(), state_dict(g, &b, 7).unwrap());
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (k, v) in &sa {
        assert_eq!(v.bytes, sb[k].bytes, "{k}");
    }
    assert!(sa.contains_key("layer1.0.bn2.num_batches_tracked"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn whitening_statistics_are_saved_and_loaded() {
    use longtail::ops::whiten::{TrackStat, WhitenConfig};
    let g = gpu();
    let cfg = ResNetConfig {
        arch: Arch::Cifar { n: 1 },
        in_channels: 3,
        classes: 10,
        classifier: Classifier::Normed,
        seed: 3,
        whiten: Some(WhitenConfig {
            track: TrackStat::W,
            ..Default::default()
        }),
    };
    let a = ResNet::new(g, cfg).unwrap();
    let w = a.whiten.as_ref().unwrap();
    w.running_mean
        .write_f32(g, &(0..64).map(|i| i as f32).collect::<Vec<_>>())
        .unwrap();
    let dir = common::tmp_dir("wckpt");
    let path = dir.join("w.safetensors");
    save_model(g, &path, &a, 1).unwrap();
    let sd = state_dict(g, &a, 1).unwrap();
    assert_eq!(sd["whiten.running_cov"].shape, vec![1, 64, 64]);
    assert!(sd.contains_key("whiten.running_wm"));
    let b = ResNet::new(g, ResNetConfig { seed: 4, ..cfg }).unwrap();
    load_model(g, &path, &b).unwrap();
    let got = b.whiten.as_ref().unwrap().running_mean.to_f32(g).unwrap();
    assert_eq!(got[63], 63.0);
    // A checkpoint without whitening statistics does not load into a whitened model.
    let plain = ResNet::new(
        g,
        ResNetConfig {
            whiten: None,
            ..cfg
        },
    )
    .unwrap();
    let p2 = dir.join("plain.safetensors");
    save_model(g, &p2, &plain, 1).unwrap();
    let e = format!("{:#}", load_model(g, &p2, &b).unwrap_err());
    assert!(e.contains("whiten.running_mean"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_get_clear_errors() {
    let g = gpu();
    let dir = common::tmp_dir("bad");
    // Not safetensors at all.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"hello").unwrap();
    let m8 = model(Arch::Cifar { n: 1 }, Classifier::Linear);
    let e = format!("{:#}", load_model(g, &junk, &m8).unwrap_err());
    assert!(
        e.contains("junk.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    // Missing file.
    let e = format!(
        "{:#}",
        load_model(g, &dir.join("nope.safetensors"), &m8).unwrap_err()
    );
    assert!(e.contains("nope.safetensors"), "{e}");
    // ResNet-32 weights into ResNet-8: unexpected keys.
    let e = format!(
        "{:#}",
        load_model(g, &fixture("resnet32_linear.safetensors"), &m8).unwrap_err()
    );
    assert!(
        e.contains("unexpected tensors") && e.contains("layer1.1."),
        "{e}"
    );
    // ResNet-8 normed weights into a linear-head ResNet-8: wrong shape / missing bias.
    let e = format!(
        "{:#}",
        load_model(g, &fixture("resnet8_normed.safetensors"), &m8).unwrap_err()
    );
    assert!(e.contains("linear.weight") && e.contains("shape"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train --init` from weights of another head (another class count) or without whitening
/// statistics: the backbone loads, the head and whitening keep their initialisation; a
/// different backbone is still an error.
#[test]
fn init_keeps_a_head_of_another_shape() {
    let g = gpu();
    let src = model(Arch::Cifar { n: 1 }, Classifier::Linear);
    let dir = common::tmp_dir("ckpt-init");
    let path = dir.join("pretrained.safetensors");
    save_model(g, &path, &src, 1).unwrap();
    let dst = ResNet::new(
        g,
        ResNetConfig {
            arch: Arch::Cifar { n: 1 },
            in_channels: 3,
            classes: 5,
            classifier: Classifier::Linear,
            seed: 3,
            whiten: Some(Default::default()),
        },
    )
    .unwrap();
    let head_before = state_dict(g, &dst, 0).unwrap()["linear.weight"]
        .bytes
        .clone();
    longtail::checkpoint::load_init(g, &path, &dst).unwrap();
    let (a, b) = (
        state_dict(g, &src, 0).unwrap(),
        state_dict(g, &dst, 0).unwrap(),
    );
    assert_eq!(
        a["conv1.weight"].bytes, b["conv1.weight"].bytes,
        "backbone loaded"
    );
    assert_eq!(
        a["layer3.0.bn2.running_var"].bytes,
        b["layer3.0.bn2.running_var"].bytes
    );
    assert_eq!(b["linear.weight"].bytes, head_before, "head kept");
    // Strict loading (eval, resume) still refuses the other head.
    let e = load_model(g, &path, &dst).unwrap_err().to_string();
    assert!(e.contains("linear.weight") || e.contains("whiten"), "{e}");
    // Another backbone is no starting point.
    let deeper = model(Arch::Cifar { n: 3 }, Classifier::Linear);
    let e = format!(
        "{:#}",
        longtail::checkpoint::load_init(g, &path, &deeper).unwrap_err()
    );
    assert!(e.contains("missing tensor layer1.1"), "{e}");
}
