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
fn shortcut_pools_and_cast_f16() {
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

    // f16 activations to f32 features (sum in f32: the output is not rounded to f16), and the
    // f32 gradient back to f16 (rounded once).
    let sh = [3, 5, 8, 8];
    let case = Case {
        name: format!("global_avg_pool f16 -> f32 {sh:?}"),
        seed: 23,
        inputs: vec![Input::uniform_f16(&mut rng, &sh, -1.0, 1.0, true)],
        fwd: verify::sum_of(64),
        bwd: f16_sum_of(1),
    };
    verify::check(
        g,
        &case,
        &|t, v| {
            let y = pool::global_avg_pool(t, &v[0])?;
            assert_eq!(y.dtype(), DType::F32);
            Ok(y)
        },
        &|v| {
            v[0].chunks(64)
                .map(|c| c.iter().sum::<f64>() / 64.0)
                .collect()
        },
        &|_, dy| {
            vec![Some(
                dy.iter()
                    .flat_map(|&d| std::iter::repeat_n(d / 64.0, 64))
                    .collect(),
            )]
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
    let seed_t = Tensor::from_f32_as_f16(g, &[1001], &seed).unwrap();
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
