#![allow(dead_code)] // each test binary uses a different part

use std::sync::OnceLock;

use longtail::gpu::Gpu;

/// One device per test binary, chosen by LONGTAIL_BACKEND / LONGTAIL_ADAPTER.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::from_env() {
        Ok(g) => g,
        Err(e) => panic!("tests need a GPU adapter: {e:#}"),
    })
}

/// A learnable 10-class 28x28 problem in MNIST's IDX format: class c lights a 6x6 block at a
/// class-specific place (the trainer makes it long-tailed from rho).
pub fn synthetic_idx(dir: &std::path::Path, per_class_train: usize, per_class_test: usize) {
    let mut rng = longtail::rng::Rng64::new(1);
    let mut make = |n: usize| {
        let (mut img, mut lab) = (Vec::new(), Vec::new());
        for i in 0..n * 10 {
            let c = i % 10;
            let (y0, x0) = ((c / 4) * 8 + 2, (c % 4) * 6 + 1);
            for y in 0..28 {
                for x in 0..28 {
                    let on = (y0..y0 + 6).contains(&y) && (x0..x0 + 6).contains(&x);
                    let v = if on { 200.0 } else { 20.0 } + 30.0 * rng.normal();
                    img.push(v.clamp(0.0, 255.0) as u8);
                }
            }
            lab.push(c as u8);
        }
        (img, lab)
    };
    let (ti, tl) = make(per_class_train);
    let (vi, vl) = make(per_class_test);
    longtail::data::idx::write(dir, "train", 28, 28, &ti, &tl).unwrap();
    longtail::data::idx::write(dir, "t10k", 28, 28, &vi, &vl).unwrap();
}

/// A fresh temp folder for one test, removed when the test passes (dropped outside a panic);
/// a failing test leaves it for a look. Runs of the whole suite used to leave ~300 MB behind.
pub struct TmpDir(std::path::PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TmpDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// [`TmpDir`] `longtail-TAG-PID` under the system temp folder, emptied first.
pub fn tmp_dir(tag: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("longtail-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

/// Run the `longtail` binary: (exit code, stdout, stderr). `exe` is `env!("CARGO_BIN_EXE_longtail")`
/// of the calling test crate.
pub fn run_bin(exe: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(exe)
        .args(args)
        .env("LONGTAIL_TUNE", "off") // tests/tune.rs covers tuning; keep these fast
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `train` flags of the small data-parallel runs (tests/parallel.rs, tests/mpi.rs): ResNet-8 on
/// the synthetic set (rho 10 over 40 images per class), two epochs of LDAM-DRW with whitening.
/// At batch 16 the 64x64 feature covariance has rank <= 15, and with the default eps (1e-5)
/// and 20 iterations W amplifies its null space: rounding alone then decides the run
/// (measured: one device with other kernel variants, split batch norm and t16 matmuls, moves
/// the weights by 5.7e-2 within 7 steps; two devices 1.3e-3). A conditioned whitening (eps 0.1,
/// 5 iterations) keeps these tests about the reductions.
pub fn parallel_run_args(data: &std::path::Path) -> Vec<String> {
    [
        "train",
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
        "2",
        "--warmup-epochs",
        "0",
        "--lr",
        "0.02",
        "--loss",
        "ldam",
        "--drw",
        "true",
        "--drw-epoch",
        "1",
        "--whiten",
        "ns",
        "--whiten-eps",
        "0.1",
        "--whiten-iters",
        "5",
        "--eval-batch",
        "50",
        "--report",
        "false",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Eval-mode logits of `model` on images `x` of `shape`, checked against PyTorch's `want`:
/// every logit within `rel_tol` of the largest (the worst difference is printed).
pub fn assert_logits_match(
    what: &str,
    model: &longtail::models::resnet::ResNet,
    shape: &[usize],
    x: &[f32],
    want: &[f32],
    rel_tol: f64,
) {
    let g = gpu();
    let xt = longtail::tensor::Tensor::from_f32(g, shape, x).unwrap();
    let mut tape = longtail::tape::Tape::new(g);
    let z = model
        .forward(&mut tape, &xt, longtail::ops::batchnorm::BnMode::Eval)
        .unwrap();
    tape.run(false);
    let got = z.to_f32(g).unwrap();
    assert_eq!(got.len(), want.len(), "{what}: logits");
    let scale = want.iter().fold(0f64, |a, &b| a.max((b as f64).abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0f64, |a, (&x, &y)| a.max((x as f64 - y as f64).abs()));
    eprintln!("{what}: max |logit - PyTorch| = {worst:e} (largest logit {scale})");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let d = (a as f64 - b as f64).abs();
        assert!(
            d <= rel_tol * scale,
            "{what}: logit {i}: {a} vs PyTorch {b} (|diff| {d:e}, scale {scale})"
        );
    }
}

/// Largest |a - b| over the largest |b - base|: how far two runs' weights `a` and `b` are apart,
/// relative to how far `b` moved from `base` (the size of what the steps changed).
pub fn rel_change_diff(a: &[f32], b: &[f32], base: &[f32]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let change = b
        .iter()
        .zip(base)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    diff / change
}

/// Half the steps a finished run directory `dir` did (`state.json`), as a `--max-steps` value:
/// where the stop-and-resume tests stop their second run.
pub fn half_steps(dir: &std::path::Path) -> String {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    (state["steps_done"].as_u64().unwrap() / 2).to_string()
}

/// Drop `max_steps` from a stopped run's `config.toml`, so that `--resume` trains to the end.
pub fn forget_max_steps(dir: &std::path::Path) {
    let path = dir.join("config.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = cfg
        .lines()
        .filter(|l| !l.starts_with("max_steps"))
        .collect();
    std::fs::write(path, kept.join("\n")).unwrap();
}
