//! `longtail train` / `eval` end to end on a small synthetic data set in MNIST's IDX format:
//! the run directory's files, exact resume, the ablation presets, NaN stop and bad inputs.

use std::path::Path;
use std::process::Command;

use longtail::data::idx;

mod common;

fn synthetic(dir: &Path, per_class_train: usize, per_class_test: usize) {
    common::synthetic_idx(dir, per_class_train, per_class_test);
}

fn tmp(name: &str) -> common::TmpDir {
    common::tmp_dir(&format!("train-{name}"))
}

fn longtail(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(args)
        .env("LONGTAIL_TUNE", "off") // tests/tune.rs covers tuning; keep these fast
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Flags for a fast run on the synthetic set (rho 10 over 40 images per class: 40..4).
fn small(data: &Path) -> Vec<String> {
    [
        "--dataset",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--n-max",
        "40",
        "--rho",
        "10",
        "--model",
        "resnet8",
        "--batch-size",
        "16",
        "--epochs",
        "3",
        "--warmup-epochs",
        "1",
        "--lr",
        "0.05",
        "--eval-batch",
        "50",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `train` with the small-run flags, any of them overridden by `extra`.
fn run(extra: &[&str], data: &Path) -> (bool, String, String) {
    let mut a: Vec<String> = vec!["train".into()];
    let base = small(data);
    let mut i = 0;
    while i < base.len() {
        let is_pair = base[i] != "--quiet";
        if !extra.contains(&base[i].as_str()) {
            a.push(base[i].clone());
            if is_pair {
                a.push(base[i + 1].clone());
            }
        }
        i += if is_pair { 2 } else { 1 };
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    longtail(&refs)
}

#[test]
fn full_method_run_writes_its_files_and_resumes_exactly() {
    let data = tmp("data1");
    synthetic(&data, 40, 10);
    let base = [
        "--loss",
        "ldam",
        "--drw",
        "true",
        "--drw-epoch",
        "2",
        "--whiten",
        "ns",
        "--bet",
        "2",
    ];
    // Uninterrupted 3 epochs.
    let a = tmp("runA");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--out", a.to_str().unwrap()]);
    let (ok, out, err) = run(&args, &data);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("many") && out.contains("few") && out.contains("per class"),
        "{out}"
    );
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "last.safetensors",
        "best.safetensors",
        "state.json",
        "checkpoints/epoch-00003/MANIFEST.json",
        "checkpoints/epoch-00003/optimizer.safetensors",
    ] {
        assert!(a.join(f).exists(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    let m: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for k in [
        "epoch", "lr", "loss", "acc", "many", "medium", "few", "img_s", "seconds",
    ] {
        assert!(m.get(k).is_some(), "metrics lacks {k}: {m}");
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    for k in ["acc", "many", "medium", "few", "per_class", "confusion"] {
        assert!(
            s["final"].get(k).is_some() && s["best"].get(k).is_some(),
            "summary lacks {k}"
        );
    }
    assert!(s["class_counts"].is_array() && s["adapter"].is_string());
    // Killed after epoch 2 (max-steps stops there), then resumed: same final weights.
    let b = tmp("runB");
    let sa: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("state.json")).unwrap()).unwrap();
    let spe = sa["steps_done"].as_u64().unwrap() / 3;
    let steps = (2 * spe).to_string();
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--out", b.to_str().unwrap(), "--max-steps", &steps]);
    let (ok, out, err) = run(&args, &data);
    assert!(ok, "{out}\n{err}");
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("state.json")).unwrap()).unwrap();
    assert_eq!(st["epochs_done"], 2);
    // The resumed run reads its config.toml; lift the step limit.
    let cfg = std::fs::read_to_string(b.join("config.toml")).unwrap();
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("max_steps"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(b.join("config.toml"), cfg).unwrap();
    let (ok, out, err) = longtail(&["train", "--resume", b.to_str().unwrap(), "--quiet"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("resuming after epoch 2"), "{out}");
    let wa = std::fs::read(a.join("last.safetensors")).unwrap();
    let wb = std::fs::read(b.join("last.safetensors")).unwrap();
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run"
    );
    // --init starts a new run from given weights (same architecture flags).
    let c = tmp("runC");
    let init = a.join("last.safetensors");
    let mut args: Vec<&str> = base.to_vec();
    args.extend([
        "--init",
        init.to_str().unwrap(),
        "--max-steps",
        "1",
        "--out",
        c.to_str().unwrap(),
    ]);
    let (ok, out, err) = run(&args, &data);
    assert!(ok, "{out}\n{err}");
    let (ok, _, err) = run(
        &[
            "--init",
            "/no/such.safetensors",
            "--max-steps",
            "1",
            "--out",
            tmp("runD").to_str().unwrap(),
        ],
        &data,
    );
    assert!(!ok && err.contains("/no/such.safetensors"), "{err}");
    // eval on the checkpoint (config.toml beside it).
    let (ok, out, err) = longtail(&[
        "eval",
        "--checkpoint",
        a.join("best.safetensors").to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(e["acc"].as_f64().unwrap() >= 0.0 && e["per_class"].as_array().unwrap().len() == 10);
}

#[test]
fn every_ablation_preset_runs() {
    let data = tmp("data2");
    synthetic(&data, 40, 5);
    for preset in [
        "ce",
        "ldam-drw",
        "cw-ldam-drw",
        "cw-ldam-drw-b3rs",
        "cw-ldam-drw-b3rs-bet",
        "fmnist-lt",
    ] {
        let out_dir = tmp(&format!("p-{preset}"));
        let (ok, out, err) = run(
            &[
                "--preset",
                preset,
                "--max-steps",
                "2",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &data,
        );
        assert!(ok, "preset {preset}:\n{out}\n{err}");
        assert!(out_dir.join("summary.json").exists(), "{preset}");
    }
}

#[test]
fn a_diverging_loss_stops_with_a_clear_message() {
    let data = tmp("data3");
    synthetic(&data, 40, 5);
    let out_dir = tmp("nan");
    let (ok, out, err) = run(
        &[
            "--lr",
            "1e30",
            "--warmup-epochs",
            "0",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &data,
    );
    assert!(!ok, "{out}");
    // It diverges in the first epoch: nothing was saved, and the message must not claim otherwise.
    assert!(
        err.contains("the loss became") && err.contains("no checkpoint was written yet"),
        "{err}"
    );
    assert!(!out_dir.join("last.safetensors").exists());
}

#[test]
fn bad_inputs_get_clear_errors() {
    let data = tmp("data4");
    synthetic(&data, 40, 5);
    let d = data.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["train", "--preset", "nope"],
            vec!["unknown preset", "quick", "fmnist-lt"],
        ),
        (
            vec!["train", "--dataset", "mnist", "--data-dir", "/no/such/dir"],
            vec!["/no/such/dir", "does not exist"],
        ),
        (
            vec![
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                d,
                "--rho",
                "0.5",
            ],
            vec!["rho", ">= 1"],
        ),
        (
            vec![
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                d,
                "--n-max",
                "40",
                "--rho",
                "10",
                "--batch-size",
                "5000",
                "--model",
                "resnet8",
            ],
            vec!["batch size 5000", "larger"],
        ),
        (
            vec![
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                d,
                "--whiten",
                "ns",
                "--batch-size",
                "1",
            ],
            vec!["whitening", "batch_size >= 2"],
        ),
        (
            vec![
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                d,
                "--model",
                "resnet9",
            ],
            vec!["unknown model", "resnet32"],
        ),
    ];
    for (args, wants) in cases {
        let (ok, _, err) = longtail(&args);
        assert!(!ok, "{args:?} should fail");
        for w in wants {
            assert!(err.contains(w), "{args:?}: error lacks {w:?}: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    // Unknown config key: the valid ones are listed.
    let cfg_dir = tmp("cfg");
    let cfg = cfg_dir.join("bad.toml");
    std::fs::write(&cfg, "dataset = \"mnist\"\nlearning_rate = 0.1\n").unwrap();
    let (ok, _, err) = longtail(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("learning_rate") && err.contains("bad.toml") && err.contains("batch_size"),
        "{err}"
    );
    // Missing Fashion-MNIST names the package when the default folder is absent.
    if !Path::new(idx::FASHION_MNIST_DIR).exists() {
        let (ok, _, err) = longtail(&["train", "--preset", "quick"]);
        assert!(!ok && err.contains("dataset-fashion-mnist"), "{err}");
    }
    // Corrupt data files.
    let p = data.join("t10k-labels-idx1-ubyte");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 3]).unwrap();
    let (ok, _, err) = longtail(&["train", "--dataset", "mnist", "--data-dir", d]);
    assert!(
        !ok && err.contains("t10k-labels-idx1-ubyte") && err.contains("truncated"),
        "{err}"
    );
}

/// A list data set streamed through the prefetch threads trains to the same weights as the
/// same set decoded into memory first, and the epoch reports its decoding rate.
#[test]
fn streamed_list_set_trains_like_the_in_memory_one() {
    let d = tmp("stream");
    std::fs::create_dir_all(d.join("img")).unwrap();
    let mut train = String::new();
    let mut test = String::new();
    for i in 0..36u32 {
        let c = i % 3;
        let img = image::RgbImage::from_fn(20, 18, |x, y| {
            image::Rgb([
                (x * 9 + c * 70) as u8,
                (y * 11) as u8,
                (i * 7 + c * 60) as u8,
            ])
        });
        img.save(d.join(format!("img/{i}.png"))).unwrap();
        let line = format!("img/{i}.png {c}\n");
        if i < 30 {
            train.push_str(&line)
        } else {
            test.push_str(&line)
        }
    }
    std::fs::write(d.join("train.txt"), train).unwrap();
    std::fs::write(d.join("test.txt"), test).unwrap();
    let run = |prefetch: &str, out: &str| {
        let o = d.join(out);
        let (ok, so, se) = longtail(&[
            "train",
            "--dataset",
            "imagenet-lt",
            "--rho",
            "1",
            "--model",
            "resnet8",
            "--data-root",
            d.to_str().unwrap(),
            "--train-list",
            d.join("train.txt").to_str().unwrap(),
            "--test-list",
            d.join("test.txt").to_str().unwrap(),
            "--image-size",
            "16",
            "--batch-size",
            "6",
            "--epochs",
            "2",
            "--warmup-epochs",
            "0",
            "--eval-batch",
            "4",
            "--quiet",
            "--report",
            "false",
            "--prefetch",
            prefetch,
            "--out",
            o.to_str().unwrap(),
        ]);
        assert!(ok, "{so}{se}");
        // The tensors (the metadata holds the config, which differs in `prefetch`).
        let bytes = std::fs::read(o.join("last.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut t: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.data().to_vec()))
            .collect();
        t.sort();
        (so, t)
    };
    let (streamed_out, streamed) = run("2", "streamed");
    let (_, in_memory) = run("0", "memory");
    assert!(streamed == in_memory, "streamed and in-memory runs differ");
    assert!(streamed_out.contains("decoding:"), "{streamed_out}");
}
