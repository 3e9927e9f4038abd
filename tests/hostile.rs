//! Hostile input and crash safety (issue 12): crafted headers, values that cannot be meant,
//! damaged weights, checkpoints without a config, unwritable run directories, and a kill at every
//! write point of a run followed by `--resume`.

mod common;

use std::path::Path;
use std::process::Command;

use longtail::config::{self, TrainConfig};

fn longtail(args: &[&str]) -> (Option<i32>, String, String) {
    common::run_bin(env!("CARGO_BIN_EXE_longtail"), args)
}

/// Exit code 1 with every `want` in stderr, and no panic or abort.
fn fails_with(args: &[&str], wants: &[&str]) -> String {
    let (code, out, err) = longtail(args);
    assert_eq!(code, Some(1), "{args:?}: exit {code:?}\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for w in wants {
        assert!(err.contains(w), "{args:?}: error lacks {w:?}:\n{err}");
    }
    err
}

fn be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

#[test]
fn idx_headers_that_overflow_or_lie_are_refused_without_allocating() {
    let data = common::tmp_dir("hostile-idx");
    common::synthetic_idx(&data, 4, 2);
    let d = data.to_str().unwrap();
    let img = data.join("train-images-idx3-ubyte");
    // The report's case: 2^22 images of 2^21 x 2^21 (n x r x c wraps to 0 in 64 bits).
    let mut h = vec![0, 0, 8, 3];
    for v in [1u32 << 22, 1 << 21, 1 << 21] {
        h.extend(be(v));
    }
    std::fs::write(&img, &h).unwrap();
    fails_with(
        &["train", "--dataset", "mnist", "--data-dir", d],
        &["train-images-idx3-ubyte", "rows = 2097152", "1..=4096"],
    );
    // Sides within the limit but a count whose product overflows: named with the sizes.
    let mut h = vec![0, 0, 8, 3];
    for v in [u32::MAX, 4096, 4096] {
        h.extend(be(v));
    }
    h.extend([0u8; 64]);
    std::fs::write(&img, &h).unwrap();
    fails_with(
        &["train", "--dataset", "mnist", "--data-dir", d],
        &[
            "train-images-idx3-ubyte",
            "4294967295 images of 4096x4096",
            "80 bytes",
        ],
    );
    // Zero-sized images.
    let mut h = vec![0, 0, 8, 3];
    for v in [1u32, 0, 28] {
        h.extend(be(v));
    }
    std::fs::write(&img, &h).unwrap();
    fails_with(
        &["train", "--dataset", "mnist", "--data-dir", d],
        &["rows = 0"],
    );
    // A label file claiming 2^32 - 1 labels.
    common::synthetic_idx(&data, 4, 2);
    let lab = data.join("t10k-labels-idx1-ubyte");
    let mut h = vec![0, 0, 8, 1];
    h.extend(be(u32::MAX));
    h.extend([0u8; 20]);
    std::fs::write(&lab, &h).unwrap();
    fails_with(
        &["train", "--dataset", "mnist", "--data-dir", d],
        &["t10k-labels-idx1-ubyte", "4294967295 labels"],
    );
    // The test split's images must have the training images' shape.
    common::synthetic_idx(&data, 40, 2);
    longtail::data::idx::write(&data, "t10k", 14, 14, &vec![0u8; 20 * 196], &[0u8; 20]).unwrap();
    fails_with(
        &[
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            d,
            "--n-max",
            "40",
            "--rho",
            "10",
        ],
        &["test images are 1x14x14", "training images are 1x28x28"],
    );
}

#[test]
fn a_gzip_bomb_is_bounded() {
    // 1 MB of zeros compresses to ~1 kB: with a 64 kB limit the reader stops and says so (the
    // real limit, 16 GiB, works the same way without allocating past it).
    const { assert!(longtail::data::idx::MAX_DECOMPRESSED >= 1 << 30) };
    let d = common::tmp_dir("hostile-gz");
    let p = d.join("bomb.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut e, &vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&p, e.finish().unwrap()).unwrap();
    let err = longtail::data::idx::read_maybe_gz_limited(&p, 65_536).unwrap_err();
    assert!(
        format!("{err:#}").contains("bomb.gz") && format!("{err:#}").contains("more than 65536"),
        "{err:#}"
    );
    assert_eq!(
        longtail::data::idx::read_maybe_gz_limited(&p, 1 << 20)
            .unwrap()
            .len(),
        1 << 20
    );
}

/// Resolve `flags` (TOML `key = value` lines) over the defaults.
fn resolve(flags: &str) -> anyhow::Result<TrainConfig> {
    config::resolve(toml::Table::new(), toml::from_str(flags).unwrap(), "flags")
}

#[test]
fn values_that_cannot_be_meant_name_the_key_value_and_range() {
    let cases: &[(&str, &[&str])] = &[
        (
            "momentum = -1.0",
            &["momentum = -1", "--momentum", "[0, 1)"],
        ),
        ("momentum = 1.0", &["momentum = 1", "[0, 1)"]),
        ("tau = nan", &["tau = NaN", "finite"]),
        ("posthoc_tau = nan", &["posthoc_tau = NaN", "finite"]),
        ("ldam_scale = 0.0", &["ldam_scale = 0", "> 0"]),
        ("ldam_max_margin = -1.0", &["ldam_max_margin = -1", "> 0"]),
        ("weight_decay = nan", &["weight_decay = NaN", "[0, inf)"]),
        ("lr = inf", &["lr = inf", "> 0"]),
        (
            "epochs = 8\ndrw = true\ndrw_epoch = 100",
            &["drw_epoch = 100", "less than epochs (8)"],
        ),
        (
            "epochs = 8\nwarmup_epochs = 100",
            &["warmup_epochs = 100", "less than epochs (8)"],
        ),
        ("b3rs_groups = 0", &["b3rs_groups = 0", ">= 1"]),
        ("bet = 0", &["bet = 0", ">= 1"]),
        (
            "bet = 2\nbet_mode = \"concat\"\nbet_size = 0",
            &["bet_size = 0", ">= 1"],
        ),
        ("drw_beta = 1.0", &["drw_beta = 1", "[0, 1)"]),
        ("drw_fraction = 1.5", &["drw_fraction = 1.5", "[0, 1)"]),
        ("whiten_eps = 0.0", &["whiten_eps = 0", "> 0"]),
        ("whiten_iters = 0", &["whiten_iters = 0", "[1, 1000]"]),
        ("n_max = 0", &["n_max = 0", ">= 1"]),
        ("max_steps = 0", &["max_steps = 0", ">= 1"]),
        ("image_size = 100000", &["image_size = 100000", "[8, 2048]"]),
        ("rho = nan", &["rho = NaN", ">= 1"]),
        ("eval_every = 0", &["eval_every = 0", ">= 1"]),
        (
            "momentum = 0.0\nnesterov = true",
            &["nesterov = true", "momentum = 0"],
        ),
        (
            "whiten = \"zca\"",
            &["whiten = \"zca\"", "none, ns, iternorm or eigen"],
        ),
    ];
    for (flags, wants) in cases {
        let e = format!("{:#}", resolve(flags).expect_err(flags));
        for w in *wants {
            assert!(e.contains(w), "{flags:?}: {e:?} lacks {w:?}");
        }
    }
    // Legal edge values still pass.
    for ok in [
        "momentum = 0.0",
        "weight_decay = 0.0",
        "tau = -1.0",
        "warmup_epochs = 0\nepochs = 1",
        "drw = true\nepochs = 8\ndrw_epoch = 7",
        "drw = false\nepochs = 8\ndrw_epoch = 100",
    ] {
        resolve(ok).unwrap_or_else(|e| panic!("{ok:?}: {e:#}"));
    }
    // Every preset passes its own checks.
    for (name, _) in config::PRESETS {
        config::resolve(config::preset(name).unwrap(), toml::Table::new(), name).unwrap();
    }
}

#[test]
fn cli_rejects_bad_values_and_warns_on_capped_ones() {
    let data = common::tmp_dir("hostile-cli");
    common::synthetic_idx(&data, 40, 2);
    let d = data.to_str().unwrap();
    fails_with(
        &[
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            d,
            "--momentum",
            "-1",
        ],
        &["momentum = -1", "--momentum", "[0, 1)"],
    );
    fails_with(
        &[
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            d,
            "--weight-decay",
            "nan",
        ],
        &["weight_decay = NaN"],
    );
    // n_max above the largest class: a warning, and the run goes on.
    let out = common::tmp_dir("hostile-cap");
    let (code, _, err) = longtail(&[
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        d,
        "--n-max",
        "100000",
        "--rho",
        "10",
        "--model",
        "resnet8",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--max-steps",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: n_max = 100000") && err.contains("capped to 40"),
        "{err}"
    );
}

/// Small-run flags for the synthetic set.
fn small_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--n-max",
        "40",
        "--rho",
        "10",
        "--model",
        "resnet8",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--lr",
        "0.05",
        "--eval-batch",
        "50",
        "--quiet",
        "--out",
        out,
    ]
}

/// Rewrite `src` into `dst` with one value of `tensor` set to NaN.
fn poison(src: &Path, dst: &Path, tensor: &str) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map = std::collections::BTreeMap::new();
    for (name, t) in st.tensors() {
        let mut b = t.data().to_vec();
        if name == tensor {
            b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        map.insert(
            name.clone(),
            longtail::checkpoint::HostTensor {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                bytes: b,
            },
        );
    }
    longtail::checkpoint::save(dst, &map, None).unwrap();
}

#[test]
fn damaged_weights_and_configless_checkpoints() {
    let data = common::tmp_dir("hostile-w-data");
    common::synthetic_idx(&data, 40, 3);
    let run = common::tmp_dir("hostile-w-run");
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let (code, out, err) = longtail(&small_args(d, r));
    assert_eq!(code, Some(0), "{out}\n{err}");
    let last = run.join("last.safetensors");

    // NaN in --init weights and in eval weights: the tensor is named.
    let bad_dir = common::tmp_dir("hostile-w-bad");
    let bad = bad_dir.join("nan.safetensors");
    poison(&last, &bad, "layer1.0.conv2.weight");
    let b = bad.to_str().unwrap();
    let mut a = small_args(d, "/tmp/unused-longtail-run");
    a.extend(["--init", b]);
    let other = common::tmp_dir("hostile-w-init");
    let n = a.len();
    a[n - 3] = other.to_str().unwrap();
    fails_with(&a, &["nan.safetensors", "layer1.0.conv2.weight", "NaN"]);
    fails_with(
        &[
            "eval",
            "--checkpoint",
            b,
            "--dataset",
            "mnist",
            "--data-dir",
            d,
        ],
        &["layer1.0.conv2.weight", "non-finite"],
    );

    // A checkpoint copied away from its run directory: its stored config builds the model.
    let away_dir = common::tmp_dir("hostile-w-away");
    let away = away_dir.join("model.safetensors");
    std::fs::copy(&last, &away).unwrap();
    let (code, out, err) = longtail(&[
        "eval",
        "--checkpoint",
        away.to_str().unwrap(),
        "--data-dir",
        d,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(err.contains("stored in"), "{err}");
    // Without metadata (as PyTorch would write it): inferred, and the message says so.
    let bare = away.with_file_name("bare.safetensors");
    poison(&last, &bare, "no-such-tensor");
    let (code, out, err) = longtail(&[
        "eval",
        "--checkpoint",
        bare.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--data-dir",
        d,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("inferred model resnet8") && err.contains("--preset"),
        "{err}"
    );
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["per_class"].as_array().unwrap().len(), 10);
    // Not a ResNet at all.
    let junk = away.with_file_name("junk.safetensors");
    let mut m = std::collections::BTreeMap::new();
    m.insert(
        "w".to_string(),
        longtail::checkpoint::HostTensor::f32(&[2], &[1.0, 2.0]),
    );
    longtail::checkpoint::save(&junk, &m, None).unwrap();
    fails_with(
        &["eval", "--checkpoint", junk.to_str().unwrap()],
        &["junk.safetensors", "conv1.weight", "--preset or --config"],
    );
}

#[test]
fn unwritable_run_directories_fail_before_training() {
    // /proc refuses new files even to root.
    let t = std::time::Instant::now();
    fails_with(
        &["train", "--preset", "quick", "--out", "/proc/longtail-run"],
        &["/proc/longtail-run"],
    );
    assert!(t.elapsed().as_secs() < 20, "the check came late");
    // --resume of a directory that cannot be written: the check comes before data and an epoch.
    let data = common::tmp_dir("hostile-ro-data");
    common::synthetic_idx(&data, 40, 2);
    let run = common::tmp_dir("hostile-ro-run");
    let (code, out, err) = longtail(&small_args(data.to_str().unwrap(), run.to_str().unwrap()));
    assert_eq!(code, Some(0), "{out}\n{err}");
    let ro = |on: bool| {
        if is_root() {
            Command::new("chattr")
                .args([if on { "+i" } else { "-i" }, run.to_str().unwrap()])
                .status()
                .is_ok_and(|s| s.success())
        } else {
            let mut p = std::fs::metadata(&run).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut p, if on { 0o555 } else { 0o755 });
            std::fs::set_permissions(&run, p).is_ok()
        }
    };
    if ro(true) {
        let r = longtail(&["train", "--resume", run.to_str().unwrap(), "--epochs", "3"]);
        ro(false);
        assert_eq!(r.0, Some(1), "{}\n{}", r.1, r.2);
        assert!(r.2.contains("not writable"), "{}", r.2);
        assert!(!r.1.contains("resuming"), "{}", r.1);
    } else {
        eprintln!("note: cannot make a directory read-only here (root without chattr): skipped");
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The small run as a config, for in-process training.
fn small_cfg(data: &Path) -> TrainConfig {
    let flags = format!(
        "dataset = \"mnist\"\ndata_dir = {:?}\nn_max = 4\nrho = 1.0\nmodel = \"resnet8\"\n\
         batch_size = 16\nepochs = 2\nwarmup_epochs = 1\nlr = 0.05\neval_batch = 50\n\
         test_per_class = 1\nwhiten = \"ns\"\nloss = \"ldam\"\ndrw = true\ndrw_epoch = 1\n",
        data.to_str().unwrap()
    );
    resolve(&flags).unwrap()
}

#[test]
fn a_kill_at_any_write_point_resumes_to_the_same_weights() {
    let gpu = common::gpu();
    let data = common::tmp_dir("fault-data");
    common::synthetic_idx(&data, 40, 1);
    let cfg = small_cfg(&data);
    let reference = common::tmp_dir("fault-ref");
    longtail::rundir::set_fault_after(None);
    longtail::train::train(gpu, &cfg, &reference, false, true).unwrap();
    let want = std::fs::read(reference.join("last.safetensors")).unwrap();
    let want_best = std::fs::read(reference.join("best.safetensors")).unwrap();
    let mut k = 1;
    loop {
        let run = common::tmp_dir("fault-run");
        longtail::rundir::set_fault_after(Some(k));
        let first = longtail::train::train(gpu, &cfg, &run, false, true);
        longtail::rundir::set_fault_after(None);
        if first.is_ok() {
            // Past the last write point: every point has been tried.
            assert!(k > 20, "only {k} write points in a 2-epoch run?");
            break;
        }
        let msg = format!("{:#}", first.unwrap_err());
        assert!(msg.contains("simulated crash"), "point {k}: {msg}");
        if !run.join("config.toml").exists() {
            // Killed before the run existed: there is nothing to resume, and resume says so.
            let e = longtail::train::train(gpu, &cfg, &run, true, true).unwrap_err();
            assert!(format!("{e:#}").contains("no run to resume"), "{e:#}");
        } else {
            longtail::train::train(gpu, &cfg, &run, true, true)
                .unwrap_or_else(|e| panic!("resume after write point {k}: {e:#}"));
            let got = std::fs::read(run.join("last.safetensors")).unwrap();
            assert!(got == want, "write point {k}: resumed weights differ");
            let best = std::fs::read(run.join("best.safetensors")).unwrap();
            assert!(best == want_best, "write point {k}: best weights differ");
            let st: serde_json::Value =
                serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap()).unwrap();
            assert_eq!(st["epochs_done"], 2, "write point {k}");
        }
        k += 1;
    }
}

#[test]
fn the_fault_hook_stops_a_real_process_and_resume_repairs_the_set() {
    let data = common::tmp_dir("fault-cli-data");
    common::synthetic_idx(&data, 40, 2);
    let run = common::tmp_dir("fault-cli-run");
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    // Write point 2 + 12 + 3: inside epoch 1's publish step (after the manifest committed).
    let out = Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(small_args(d, r))
        .env("LONGTAIL_TUNE", "off")
        .env(longtail::rundir::FAULT_ENV, "17")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(longtail::rundir::FAULT_EXIT_CODE),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out, err) = longtail(&["train", "--resume", r, "--quiet"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("resuming after epoch 1"), "{out}");
    // A damaged newest set: resume names it and falls back.
    let set2 = run.join("checkpoints/epoch-00002");
    let p = set2.join("optimizer.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 1] ^= 0xff;
    std::fs::write(&p, b).unwrap();
    let (code, out, err) = longtail(&["train", "--resume", r, "--quiet", "--epochs", "3"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("epoch-00002") && err.contains("do not match the manifest"),
        "{err}"
    );
    assert!(out.contains("resuming after epoch 1"), "{out}");
}
