//! Half precision (`--precision f16`): every f16 kernel variant through the harness (inputs
//! rounded to f16 before the f64 reference sees them), the f32 <-> f16 conversion, dynamic loss
//! scaling, and ResNet training steps in f16 against f32.

mod common;

use common::gpu;
use longtail::gpu::Gpu;
use longtail::ops::batchnorm::{self, BnAlgo, BnMode, BnState, EPS};
use longtail::ops::conv2d::{self, ConvGeom};
use longtail::ops::{cast, pool, shortcut};
use longtail::rng::Rng64;
use longtail::tape::Tape;
use longtail::tensor::{DType, Tensor};
use longtail::verify::{self, Case, Input, Tolerance, f16_sum_of};

/// The f16 tests need an adapter with shader-f16 (llvmpipe has it; so do current GPUs). A CI
/// machine without it fails loudly rather than passing an empty test.
fn f16_gpu() -> &'static Gpu {
    let g = gpu();
    assert!(
        g.has_f16(),
        "the adapter has no shader-f16: the f16 tests cannot run ({})",
        g.describe()
    );
    g
}

/// The f16 variants the tuner can pick for a convolution (the direct kernels are f32 only).
const VARIANTS: [conv2d::Algo; 2] = [conv2d::Algo::Gemm, conv2d::Algo::GemmWide];

fn check_conv(
    seed: u64,
    x: [usize; 4],
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) {
    for algo in VARIANTS {
        let mut rng = Rng64::new(seed);
        let wsh = [cout, x[1] / groups, k, k];
        let g = ConvGeom::new_grouped(&x, &wsh, stride, pad, groups).unwrap();
        let case = Case {
            name: format!("conv2d f16 {algo:?} x={x:?} w={wsh:?} groups={groups} stride={stride}"),
            seed,
            inputs: vec![
                Input::uniform_f16(&mut rng, &x, -1.0, 1.0, true),
                // f32 master weights the op copies to f16: exact in f16, so the copy is too.
                Input::uniform_f16_exact(&mut rng, &wsh, -1.0, 1.0, true),
            ],
            fwd: f16_sum_of(wsh[1] * k * k),
            bwd: f16_sum_of((x[0] * g.oh * g.ow).max(g.cout_g() * k * k)),
        };
        verify::check(
            f16_gpu(),
            &case,
            &|t, v| {
                let y = conv2d::conv2d_grouped_with(t, &v[0], &v[1], stride, pad, groups, algo)?;
                assert_eq!(y.dtype(), DType::F16);
                Ok(y)
            },
            &|v| conv2d::reference::conv2d(&v[0], &v[1], &g),
            &|v, dy| {
                let (dx, dw) = conv2d::reference::conv2d_grad(&v[0], &v[1], dy, &g);
                vec![Some(dx), Some(dw)]
            },
        )
        .unwrap();
    }
}

#[test]
fn conv_f16_every_variant() {
    check_conv(1, [2, 3, 7, 9], 5, 3, 1, 1, 1);
    check_conv(2, [3, 5, 9, 8], 7, 3, 2, 1, 1);
    check_conv(3, [2, 16, 8, 8], 32, 3, 2, 1, 1); // a ResNet-32 stage transition
    check_conv(4, [2, 6, 5, 5], 4, 1, 2, 0, 1); // 1x1 option-B shortcut
    check_conv(5, [2, 8, 6, 6], 8, 3, 1, 1, 4); // grouped (ResNeXt)
    check_conv(6, [2, 3, 15, 13], 8, 7, 2, 3, 1); // ImageNet stem
}

#[test]
fn conv_f16_resnet32_shape() {
    // ResNet-32's first stage at batch 4: wgrad sums 4,096 products per weight.
    check_conv(7, [4, 16, 32, 32], 16, 3, 1, 1, 1);
}

/// Batch norm in f16: the f16 band times the normalisation's small factor (see ops_norm.rs).
fn bn_f16_tol(count: usize) -> Tolerance {
    let t = f16_sum_of(count);
    Tolerance {
        abs: 4.0 * t.abs,
        rel: 4.0 * t.rel,
    }
}

fn check_bn(seed: u64, shape: [usize; 4], relu: bool, residual: bool) {
    let mut rng = Rng64::new(seed);
    let (b, c, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    let dims = (b, c, hw);
    let mut inputs = vec![
        Input::uniform_f16(&mut rng, &shape, -1.0, 1.5, true),
        Input::uniform(&mut rng, &[c], 0.5, 1.5, true),
        Input::uniform(&mut rng, &[c], -0.5, 0.5, true),
    ];
    if residual {
        inputs.push(Input::uniform_f16(&mut rng, &shape, -1.0, 1.0, true));
    }
    let case = Case {
        name: format!("batch_norm f16 {shape:?} relu={relu} residual={residual}"),
        seed,
        inputs,
        fwd: bn_f16_tol(b * hw),
        bwd: bn_f16_tol(b * hw),
    };
    verify::check(
        f16_gpu(),
        &case,
        &|t, v| {
            let st = BnState::new(t.gpu(), c)?;
            let y = if residual {
                batchnorm::batch_norm_add_relu(
                    t,
                    &v[0],
                    &v[1],
                    &v[2],
                    &st,
                    BnMode::Train,
                    &v[3],
                    BnAlgo::Auto,
                )?
            } else {
                batchnorm::batch_norm_with(
                    t,
                    &v[0],
                    &v[1],
                    &v[2],
                    &st,
                    BnMode::Train,
                    relu,
                    BnAlgo::Auto,
                )?
            };
            assert_eq!(y.dtype(), DType::F16);
            Ok(y)
        },
        &|v| {
            if residual {
                batchnorm::reference::batch_norm_add_relu(
                    &v[0], &v[1], &v[2], &v[3], dims, EPS as f64,
                )
            } else {
                batchnorm::reference::batch_norm(&v[0], &v[1], &v[2], dims, EPS as f64, relu)
            }
        },
        &|v, dy| {
            if residual {
                let (dx, dg, db, dr) = batchnorm::reference::batch_norm_add_relu_grad(
                    &v[0], &v[1], &v[2], &v[3], dy, dims, EPS as f64,
                );
                vec![Some(dx), Some(dg), Some(db), Some(dr)]
            } else {
                let (dx, dg, db) = batchnorm::reference::batch_norm_grad(
                    &v[0], &v[1], &v[2], dy, dims, EPS as f64, relu,
                );
                vec![Some(dx), Some(dg), Some(db)]
            }
        },
    )
    .unwrap();
}

#[test]
fn batch_norm_f16_scalar_and_vec4_kernels() {
    check_bn(11, [3, 5, 7, 3], false, false); // scalar kernels (H*W = 21)
    check_bn(12, [2, 16, 8, 8], true, false); // vec4 kernels
    check_bn(13, [3, 5, 7, 3], true, true); // + residual, scalar
    check_bn(14, [4, 3, 6, 6], true, true); // + residual, vec4
}

#[test]
fn batch_norm_f16_past_2_17_values_per_channel() {
    check_bn(15, [128, 2, 32, 32], true, false);
}

#[test]
fn shortcut_max_pool_and_cast_f16() {
    let g = f16_gpu();
    let mut rng = Rng64::new(21);
    let sh = [2, 4, 7, 6];
    let case = Case {
        name: format!("option_a f16 {sh:?}"),
        seed: 21,
        inputs: vec![Input::uniform_f16(&mut rng, &sh, -1.0, 1.0, true)],
        fwd: f16_sum_of(1),
        bwd: f16_sum_of(1),
    };
    verify::check(
        g,
        &case,
        &|t, v| shortcut::option_a(t, &v[0], 8, 2),
        &|v| shortcut::reference::option_a(&v[0], sh, 8, 2),
        &|_, dy| vec![Some(shortcut::reference::option_a_grad(dy, sh, 8, 2))],
    )
    .unwrap();

    let sh = [2, 3, 9, 8];
    let case = Case {
        name: format!("max_pool2d f16 {sh:?}"),
        seed: 22,
        inputs: vec![Input::uniform_f16(&mut rng, &sh, -1.0, 1.0, true)],
        fwd: f16_sum_of(1),
        bwd: f16_sum_of(9),
    };
    verify::check(
        g,
        &case,
        &|t, v| pool::max_pool2d(t, &v[0], 3, 2, 1),
        &|v| pool::reference::max_pool2d(&v[0], sh, 3, 2, 1).0,
        &|v, dy| {
            vec![Some(pool::reference::max_pool2d_grad(
                &v[0], sh, 3, 2, 1, dy,
            ))]
        },
    )
    .unwrap();

    // f32 -> f16 is one rounding to nearest (exactly the reference's), and its gradient, f16
    // back to f32, is exact. (Not through the harness: finite differences of a rounding
    // function are 0 or huge.)
    let x: Vec<f32> = rng.vec_f32(1001, -3.0, 3.0);
    let xt = Tensor::from_f32(g, &[1001], &x).unwrap().requiring_grad();
    let mut tape = Tape::new(g);
    let y = cast::cast(&mut tape, &xt, DType::F16).unwrap();
    let seed: Vec<f32> = rng.vec_f32(1001, -1.0, 1.0);
    let seed_t = Tensor::from_f32_as(g, &[1001], &seed, DType::F16).unwrap();
    tape.backward_with(&y, seed_t.clone()).unwrap();
    tape.run(true);
    let want: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(y.to_f32(g).unwrap(), want);
    assert_eq!(
        tape.grad(&xt).unwrap().to_f32(g).unwrap(),
        seed_t.to_f32(g).unwrap()
    );
}

#[test]
fn cast_overflow_is_infinite() {
    // Dynamic loss scaling counts on an f16 overflow becoming inf (not saturating at 65504).
    let g = f16_gpu();
    let x = Tensor::from_f32(g, &[4], &[1.0e6, -1.0e6, 65504.0, 1.0]).unwrap();
    let y = Tensor::zeros(g, &[4], DType::F16).unwrap();
    let d = cast::dispatch(g, &x, &y, 0.0).unwrap();
    longtail::gpu::submit(g, &[&d]);
    let v = y.to_f32(g).unwrap();
    assert_eq!(v[0], f32::INFINITY, "{v:?}");
    assert_eq!(v[1], f32::NEG_INFINITY, "{v:?}");
    assert_eq!(&v[2..], &[65504.0, 1.0]);
}

#[test]
fn f32_kernel_refuses_f16_tensors() {
    let g = f16_gpu();
    let x = Tensor::zeros(g, &[8], DType::F16).unwrap();
    let y = Tensor::zeros(g, &[8], DType::F32).unwrap();
    let err = longtail::gpu::Dispatch::build(
        g,
        "sgd",
        "step",
        &[y.write(), x.read(), y.write()],
        &[0u8; 32],
        [1, 1, 1],
    )
    .err()
    .expect("an f32 kernel bound an f16 tensor");
    assert!(err.to_string().contains("f16"), "{err}");
}

// ---- ResNet training steps in f16

use longtail::loss_scale::ScaleState;
use longtail::losses::LossSetup;
use longtail::models::resnet::{Arch, Classifier, ResNet, ResNetConfig, ResNetStep};
use longtail::ops::whiten::WhitenConfig;
use longtail::optim::SgdConfig;

const SHAPE: [usize; 3] = [3, 16, 16];
const BATCH: usize = 16;
const STEPS: usize = 6;

fn model(dtype: DType) -> ResNet {
    let g = f16_gpu();
    let mut m = ResNet::new(
        g,
        ResNetConfig {
            arch: Arch::Cifar { n: 1 },
            in_channels: SHAPE[0],
            classes: 4,
            classifier: Classifier::Linear,
            seed: 3,
            whiten: Some(WhitenConfig {
                iters: 10,
                eps: 0.1,
                ..Default::default()
            }),
        },
    )
    .unwrap();
    m.set_precision(g, dtype).unwrap();
    m
}

fn step(m: &ResNet, loss: &LossSetup) -> ResNetStep {
    let sgd = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    };
    m.train_step(f16_gpu(), [BATCH, SHAPE[0], SHAPE[1], SHAPE[2]], sgd, loss)
        .unwrap()
}

fn batch(seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng64::new(seed);
    let per = SHAPE.iter().product::<usize>();
    let y: Vec<u32> = (0..BATCH).map(|i| (i % 4) as u32).collect();
    let x = (0..BATCH * per)
        .map(|i| rng.normal() as f32 + 0.5 * y[i / per] as f32)
        .collect();
    (x, y)
}

/// The scaler's state after the last step (a blocking read).
fn scale_of(st: &ResNetStep) -> ScaleState {
    let sc = st
        .step
        .sgd
        .scaler
        .as_ref()
        .expect("an f16 step has a loss scaler");
    sc.read(f16_gpu()).unwrap()
}

fn run_steps(st: &ResNetStep, steps: usize) -> Vec<f32> {
    let g = f16_gpu();
    (0..steps)
        .map(|k| {
            let (x, y) = batch(100 + k as u64);
            st.x.write_f32(g, &x).unwrap();
            st.y.write_u32(g, &y).unwrap();
            st.step.run().unwrap()
        })
        .collect()
}

/// One step from the same weights, per parameter tensor: (largest |f16 - f32| of the updated
/// weights) / (largest f32 update). f16 storage rounds every activation and activation gradient
/// to 11 bits (4.9e-4 relative); batch norm's backward subtracts per-channel means of those
/// gradients (cancellation), once per layer on the way down, so the relative difference grows
/// from the head to the stem. Measured on llvmpipe (ResNet-8 + whitening, batch 16): the f32
/// classifier 9.5e-4, the last batch norm 6e-2, the stem 9e-2, worst 0.13. The bands leave 2x;
/// a wrong gradient or a lost loss scale is off by O(1) (or by 65536x).
const F16_BACKBONE_STEP_TOL: f64 = 0.25;
/// The classifier (f32) sees f16-rounded features only.
const F16_HEAD_STEP_TOL: f64 = 5e-3;
/// The first loss: the forward's rounding only (measured 7e-5).
const F16_LOSS_TOL: f64 = 1e-3;
/// Six steps of SGD with momentum at lr 0.1 on batches of 16: the largest difference over all
/// weights (measured 5.1e-2 after 6 steps, 5.9e-2 after 1: the trajectories do not drift apart).
const F16_TRAJECTORY_TOL: f64 = 0.15;

struct Compared {
    /// (parameter, relative difference of its update)
    per_param: Vec<(String, f64)>,
    all: f64,
    l16: Vec<f32>,
    l32: Vec<f32>,
    scale: ScaleState,
}

/// f32 and f16 runs of `steps` steps from the same weights.
fn f16_vs_f32(steps: usize) -> Compared {
    let g = f16_gpu();
    let loss = LossSetup::new(g, Default::default(), &[4, 4, 4, 4]).unwrap();
    let (m32, m16) = (model(DType::F32), model(DType::F16));
    let init: Vec<(String, Vec<f32>)> = m32
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.to_f32(g).unwrap()))
        .collect();
    let (s32, s16) = (step(&m32, &loss), step(&m16, &loss));
    assert!(s32.step.sgd.scaler.is_none() && s16.step.sgd.scaler.is_some());
    let l32 = run_steps(&s32, steps);
    let l16 = run_steps(&s16, steps);
    let per_param: Vec<(String, f64)> = init
        .iter()
        .map(|(name, w0)| {
            let a = m16.params.get(name).unwrap().to_f32(g).unwrap();
            let b = m32.params.get(name).unwrap().to_f32(g).unwrap();
            (name.clone(), common::rel_change_diff(&a, &b, w0))
        })
        .collect();
    let all = common::rel_change_diff(
        &m16.params.flat_values().unwrap().to_f32(g).unwrap(),
        &m32.params.flat_values().unwrap().to_f32(g).unwrap(),
        &init.iter().flat_map(|(_, v)| v.clone()).collect::<Vec<_>>(),
    );
    let scale = scale_of(&s16);
    eprintln!(
        "f16 vs f32 after {steps} steps: update difference {all:.3e}; per parameter \
         {per_param:?}; losses {l16:?} vs {l32:?}; {scale:?}"
    );
    Compared {
        per_param,
        all,
        l16,
        l32,
        scale,
    }
}

#[test]
fn resnet8_f16_step_matches_f32() {
    let c = f16_vs_f32(1);
    for (name, d) in &c.per_param {
        let tol = if name.starts_with("linear") {
            F16_HEAD_STEP_TOL
        } else {
            F16_BACKBONE_STEP_TOL
        };
        assert!(
            *d < tol,
            "{name}: one f16 step's update differs from f32's by {d:.3e}"
        );
    }
    let rel = ((c.l16[0] - c.l32[0]) / c.l32[0]).abs() as f64;
    assert!(
        rel < F16_LOSS_TOL,
        "first loss {} vs {} ({rel:.2e})",
        c.l16[0],
        c.l32[0]
    );
    // No overflow at the initial scale: one clean step.
    assert_eq!(
        c.scale,
        ScaleState {
            scale: 65536.0,
            clean: 1,
            skipped: 0
        }
    );
}

#[test]
fn resnet8_f16_trajectory_follows_f32() {
    let c = f16_vs_f32(STEPS);
    assert!(
        c.all < F16_TRAJECTORY_TOL,
        "f16 updates differ from f32 by {:.3e} after {STEPS} steps",
        c.all
    );
    assert_eq!(c.scale.skipped, 0);
}

#[test]
fn loss_scaling_skips_overflowing_steps_and_grows() {
    let g = f16_gpu();
    let loss = LossSetup::new(g, Default::default(), &[4, 4, 4, 4]).unwrap();
    let m = model(DType::F16);
    let st = step(&m, &loss);
    let sc = st.step.sgd.scaler.as_ref().unwrap();
    run_steps(&st, 1);
    let w0 = m.params.flat_values().unwrap().to_f32(g).unwrap();
    let v0 = st.step.sgd.momentum.to_f32(g).unwrap();
    // A scale of 1e30 overflows the f16 gradients: the step changes nothing and halves it.
    sc.set(
        g,
        ScaleState {
            scale: 1e30,
            clean: 7,
            skipped: 0,
        },
    )
    .unwrap();
    run_steps(&st, 1);
    assert_eq!(
        m.params.flat_values().unwrap().to_f32(g).unwrap(),
        w0,
        "weights moved"
    );
    assert_eq!(
        st.step.sgd.momentum.to_f32(g).unwrap(),
        v0,
        "momentum moved"
    );
    assert_eq!(
        scale_of(&st),
        ScaleState {
            scale: 5e29,
            clean: 0,
            skipped: 1
        }
    );
    // A clean step that completes the growth interval (2000) doubles the scale.
    sc.set(
        g,
        ScaleState {
            scale: 1024.0,
            clean: 1999,
            skipped: 1,
        },
    )
    .unwrap();
    run_steps(&st, 1);
    let w1 = m.params.flat_values().unwrap().to_f32(g).unwrap();
    assert!(w1 != w0 && w1.iter().all(|v| v.is_finite()));
    assert_eq!(
        scale_of(&st),
        ScaleState {
            scale: 2048.0,
            clean: 0,
            skipped: 1
        }
    );
}

// ---- through the CLI

fn longtail(args: &[&str]) -> (bool, String, String) {
    let (code, so, se) = common::run_bin(env!("CARGO_BIN_EXE_longtail"), args);
    (code == Some(0), so, se)
}

fn tensors(path: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect()
}

/// `train --precision f16` (two data-parallel devices, per-device batch norm, LDAM-DRW and
/// whitening), stopped after one epoch and resumed, ends with the uninterrupted run's weights
/// and loss-scale state to the bit; the run reports the scale.
#[test]
fn f16_run_resumes_exactly() {
    f16_gpu();
    let dir = common::tmp_dir("f16-resume");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_idx(&data, 40, 5);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let mut base = common::parallel_run_args(&data);
    for f in ["--precision", "f16", "--devices", "0,0"] {
        base.push(f.into());
    }
    base.retain(|a| a != "--quiet");
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend(extra);
        let (ok, so, se) = longtail(&args);
        assert!(ok, "{so}\n{se}");
        so
    };
    let so = run(&["--out", a.to_str().unwrap()]);
    assert!(
        so.contains("loss scale: 65536 (0 steps skipped so far)"),
        "{so}"
    );
    let cfg = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(cfg.contains("precision = \"f16\""), "{cfg}");
    run(&[
        "--max-steps",
        &common::half_steps(&a),
        "--out",
        b.to_str().unwrap(),
    ]);
    common::forget_max_steps(&b);
    let (ok, so, se) = longtail(&["train", "--resume", b.to_str().unwrap(), "--quiet"]);
    assert!(ok, "{so}\n{se}");
    for f in [
        "last.safetensors",
        "checkpoints/epoch-00002/optimizer.safetensors",
    ] {
        let (x, y) = (tensors(&a.join(f)), tensors(&b.join(f)));
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (name, v) in &x {
            assert!(v == &y[name], "{f}: {name} differs after resuming");
        }
    }
    let opt = tensors(&a.join("checkpoints/epoch-00002/optimizer.safetensors"));
    assert!(opt.contains_key("loss_scale"), "{:?}", opt.keys());
}

#[test]
fn f16_with_sync_bn_is_a_clear_error() {
    f16_gpu();
    let dir = common::tmp_dir("f16-syncbn");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_idx(&data, 10, 2);
    let mut args = common::parallel_run_args(&data);
    let out = dir.join("out");
    for f in [
        "--precision",
        "f16",
        "--devices",
        "0,0",
        "--sync-bn",
        "--out",
        out.to_str().unwrap(),
    ] {
        args.push(f.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, so, se) = longtail(&args);
    assert!(!ok, "{so}");
    assert!(se.contains("--sync-bn is not available with f16"), "{se}");
    assert!(!se.contains("panicked"), "{se}");
}

/// Batch norm in eval mode on f16 activations: the running statistics (f32) after two training
/// passes over f16 data, then normalisation with them (vec4 and scalar kernels).
#[test]
fn batch_norm_f16_running_statistics_and_eval_mode() {
    let g = f16_gpu();
    for (b, c, h, w) in [(5, 3, 4, 3), (4, 3, 4, 4)] {
        let mut rng = Rng64::new(6);
        let data = rng.vec_f32(b * c * h * w, -2.0, 3.0);
        let x = Tensor::from_f32_as(g, &[b, c, h, w], &data, DType::F16).unwrap();
        let xd: Vec<f64> =
            cast::reference::to_f16(&data.iter().map(|&v| v as f64).collect::<Vec<_>>());
        let (gm, bt) = ([1.0f32, 2.0, 0.5], [0.0f32, 0.1, -0.2]);
        let gamma = Tensor::from_f32(g, &[c], &gm).unwrap();
        let beta = Tensor::from_f32(g, &[c], &bt).unwrap();
        let st = BnState::new(g, c).unwrap();
        let mut tape = Tape::new(g);
        batchnorm::batch_norm(&mut tape, &x, &gamma, &beta, &st, BnMode::Train, false).unwrap();
        tape.run(false);
        tape.run(false);
        let mv = batchnorm::reference::moments(&xd, (b, c, h * w));
        let count = (b * h * w) as f64;
        let m = batchnorm::MOMENTUM as f64;
        let rm = st.running_mean.to_f32(g).unwrap();
        let rv = st.running_var.to_f32(g).unwrap();
        for ch in 0..c {
            let want_m = (1.0 - (1.0 - m).powi(2)) * mv[ch].0;
            let unb = mv[ch].1 * count / (count - 1.0);
            let want_v = (1.0 - m).powi(2) + (1.0 - (1.0 - m).powi(2)) * unb;
            // f32 statistics of exact f16 inputs: the f32 band of ops_norm.rs.
            assert!((rm[ch] as f64 - want_m).abs() < 1e-5, "running mean {ch}");
            assert!((rv[ch] as f64 - want_v).abs() < 1e-5, "running var {ch}");
        }
        let mut eval = Tape::new(g);
        let y =
            batchnorm::batch_norm(&mut eval, &x, &gamma, &beta, &st, BnMode::Eval, true).unwrap();
        eval.run(false);
        assert_eq!(y.dtype(), DType::F16);
        let got: Vec<f64> = y.to_f32(g).unwrap().iter().map(|&v| v as f64).collect();
        let want: Vec<f64> = (0..xd.len())
            .map(|i| {
                let ch = (i / (h * w)) % c;
                ((xd[i] - rm[ch] as f64) / (rv[ch] as f64 + EPS as f64).sqrt() * gm[ch] as f64
                    + bt[ch] as f64)
                    .max(0.0)
            })
            .collect();
        verify::compare_values("batch_norm f16 eval", &got, &want, f16_sum_of(1)).unwrap();
    }
}

/// The global average pool, f16 activations in, f32 features out (summed in f32: the output
/// is not rounded to f16), and the f32 gradient back to f16 (rounded once).
fn check_avg_pool(seed: u64, sh: [usize; 4]) {
    let mut rng = Rng64::new(seed);
    let hw = sh[2] * sh[3];
    let case = Case {
        name: format!("global_avg_pool f16 -> f32 {sh:?}"),
        seed,
        inputs: vec![Input::uniform_f16(&mut rng, &sh, -1.0, 1.0, true)],
        fwd: verify::sum_of(hw),
        bwd: f16_sum_of(1),
    };
    verify::check(
        f16_gpu(),
        &case,
        &|t, v| {
            let y = pool::global_avg_pool(t, &v[0])?;
            assert_eq!(y.dtype(), DType::F32);
            Ok(y)
        },
        &|v| {
            v[0].chunks(hw)
                .map(|c| c.iter().sum::<f64>() / hw as f64)
                .collect()
        },
        &|_, dy| {
            vec![Some(
                dy.iter()
                    .flat_map(|&d| std::iter::repeat_n(d / hw as f64, hw))
                    .collect(),
            )]
        },
    )
    .unwrap();
}

/// Both reductions: one workgroup per output (few outputs), and one invocation per output
/// (`sum_short`: ResNet-32's pool at batch 32, 2,048 outputs of 64 values).
#[test]
fn average_pool_f16_both_reductions() {
    check_avg_pool(23, [3, 5, 8, 8]);
    check_avg_pool(31, [32, 64, 8, 8]);
}

/// The ImageNet-layout networks in f16 (7x7 stem, max pool, option-B 1x1 shortcuts, bottleneck
/// blocks, ResNeXt's grouped convolutions): train-mode logits (batch statistics), then eval-mode
/// logits (running statistics moved by that step), against f32's, relative to the largest
/// logit. Measured on llvmpipe at batch 4, 64 px: ResNet-10 2.0e-3 (train) / 7.5e-4 (eval);
/// ResNet-50 7.0e-2 / 4.9e-3; ResNeXt-50 0.107 / 1.4e-2. The deep train-mode networks are that
/// sensitive in f32 too: rounding only the *input* to f16 moves ResNet-50's f32 logits by 3.0e-2
/// and ResNeXt's by 1.8e-2 (fifty layers of batch norm over 16 values per channel at the last
/// stage); f16 rounds at every layer. The bands leave ~2x; a broken kernel is off by O(1).
const IMAGENET_F16_TOL: [(&str, f64, f64); 3] = [
    ("resnet10", 5e-3, 2e-3),
    ("resnet50", 0.15, 1e-2),
    ("resnext50_32x4d", 0.2, 3e-2),
];

#[test]
fn imagenet_layouts_f16_logits_follow_f32() {
    let g = f16_gpu();
    for (arch, train_tol, eval_tol) in IMAGENET_F16_TOL {
        // (train logits, eval logits) per precision
        let mut logits = Vec::new();
        for dtype in [DType::F32, DType::F16] {
            let mut m = ResNet::new(
                g,
                ResNetConfig {
                    arch: Arch::parse(arch).unwrap(),
                    in_channels: 3,
                    classes: 5,
                    classifier: Classifier::Linear,
                    seed: 9,
                    whiten: None,
                },
            )
            .unwrap();
            m.set_precision(g, dtype).unwrap();
            let shape = [4, 3, 64, 64];
            let mut rng = Rng64::new(5);
            let x = Tensor::from_f32(g, &shape, &rng.vec_f32(4 * 3 * 64 * 64, -1.0, 1.0)).unwrap();
            let mut t = Tape::new(g);
            let yt = m.forward(&mut t, &x, BnMode::Train).unwrap();
            t.run(false);
            let mut e = Tape::new(g);
            let ye = m.forward(&mut e, &x, BnMode::Eval).unwrap();
            e.run(false);
            logits.push((yt.to_f32(g).unwrap(), ye.to_f32(g).unwrap()));
        }
        let rel = |a: &[f32], b: &[f32]| {
            let scale = a.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            a.iter()
                .zip(b)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64))
                / scale
        };
        let dt = rel(&logits[0].0, &logits[1].0);
        let de = rel(&logits[0].1, &logits[1].1);
        eprintln!("{arch}: f16 vs f32 logits differ by {dt:.2e} (train) / {de:.2e} (eval)");
        assert!(dt < train_tol, "{arch}: f16 train logits off by {dt:.3e}");
        assert!(de < eval_tol, "{arch}: f16 eval logits off by {de:.3e}");
    }
}

/// An f16 forward that overflowed (inf in the activations) is a step loss scaling skips; its
/// batch statistics must not reach the running statistics.
#[test]
fn overflowing_batch_leaves_running_statistics_alone() {
    let g = f16_gpu();
    for (b, c, h, w) in [(2, 3, 3, 3), (2, 3, 4, 4)] {
        let mut data = vec![0.5f32; b * c * h * w];
        data[1] = 1.0e6; // inf in f16, channel 0
        let x = Tensor::from_f32_as(g, &[b, c, h, w], &data, DType::F16).unwrap();
        let gamma = Tensor::from_f32(g, &[c], &vec![1.0; c]).unwrap();
        let beta = Tensor::from_f32(g, &[c], &vec![0.0; c]).unwrap();
        let st = BnState::new(g, c).unwrap();
        let mut tape = Tape::new(g);
        batchnorm::batch_norm(&mut tape, &x, &gamma, &beta, &st, BnMode::Train, false).unwrap();
        tape.run(false);
        let (rm, rv) = (
            st.running_mean.to_f32(g).unwrap(),
            st.running_var.to_f32(g).unwrap(),
        );
        assert_eq!((rm[0], rv[0]), (0.0, 1.0), "channel 0 took the overflow");
        // The other channels update as usual (constant 0.5: mean 0.05, variance 0.9).
        assert!(
            (rm[1] - 0.05).abs() < 1e-6 && (rv[1] - 0.9).abs() < 1e-6,
            "{rm:?} {rv:?}"
        );
    }
}

/// Whitening's running mean and covariance skip inf / NaN batch statistics the same way (the
/// pooled features of an overflowed f16 forward are inf).
#[test]
fn overflowing_features_leave_whitening_statistics_finite() {
    let g = f16_gpu();
    let (b, d) = (8, 4);
    let w = longtail::ops::whiten::Whitening::new(g, d, WhitenConfig::default()).unwrap();
    let mut rng = Rng64::new(3);
    let mut f = rng.vec_f32(b * d, -1.0, 1.0);
    f[d] = f32::INFINITY; // feature 0 of image 1
    let ft = Tensor::from_f32(g, &[b, d], &f).unwrap();
    let mut tape = Tape::new(g);
    w.forward_train(&mut tape, &ft).unwrap();
    tape.run(false);
    let rm = w.running_mean.to_f32(g).unwrap();
    let rc = w.running_cov.to_f32(g).unwrap();
    assert!(rm.iter().chain(&rc).all(|v| v.is_finite()), "{rm:?} {rc:?}");
    assert_eq!(rm[0], 0.0, "feature 0's mean took the inf");
    assert!(rm[1] != 0.0, "the finite features update as usual");
}
