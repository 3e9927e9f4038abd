//! conv2d forward, dgrad and wgrad through the verification harness.

mod common;

use common::gpu;
use longtail::ops::conv2d::{self, ConvGeom};
use longtail::rng::Rng64;
use longtail::verify::{self, Case, Input, sum_of};

/// Every variant the tuner can pick: the direct kernels (where they apply; the GEMM otherwise)
/// and their subgroup variant (where the adapter has subgroups of >= 8 lanes; the plain direct
/// kernels otherwise), the subgroup kernel reading its input (wgrad: X and dY) through texture
/// mirrors (where they fit; the subgroup kernel otherwise), the GEMMs, and the GEMM wgrad split
/// for large GPUs.
const VARIANTS: [conv2d::Algo; 5] = [
    conv2d::Algo::Direct,
    conv2d::Algo::DirectSubgroup,
    conv2d::Algo::DirectTexture,
    conv2d::Algo::Gemm,
    conv2d::Algo::GemmWide,
];

fn check(seed: u64, x: [usize; 4], cout: usize, k: usize, stride: usize, pad: usize) {
    for algo in VARIANTS {
        check_with(seed, x, cout, k, stride, pad, 1, algo);
    }
}

#[allow(clippy::too_many_arguments)] // the geometry, its groups and the variant
fn check_with(
    seed: u64,
    x: [usize; 4],
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    algo: conv2d::Algo,
) {
    let mut rng = Rng64::new(seed);
    let wsh = [cout, x[1] / groups, k, k];
    let g = ConvGeom::new_grouped(&x, &wsh, stride, pad, groups).unwrap();
    let case = Case {
        name: format!(
            "conv2d {algo:?} x={x:?} w={wsh:?} groups={groups} stride={stride} pad={pad}"
        ),
        seed,
        inputs: vec![
            Input::uniform(&mut rng, &x, -1.0, 1.0, true),
            Input::uniform(&mut rng, &wsh, -1.0, 1.0, true),
        ],
        fwd: sum_of(wsh[1] * k * k),
        // wgrad sums over batch x output pixels; dgrad over cout/groups x k x k.
        bwd: sum_of((x[0] * g.oh * g.ow).max(g.cout_g() * k * k)),
    };
    verify::check(
        gpu(),
        &case,
        &|t, v| conv2d::conv2d_grouped_with(t, &v[0], &v[1], stride, pad, groups, algo),
        &|v| conv2d::reference::conv2d(&v[0], &v[1], &g),
        &|v, dy| {
            let (dx, dw) = conv2d::reference::conv2d_grad(&v[0], &v[1], dy, &g);
            vec![Some(dx), Some(dw)]
        },
    )
    .unwrap();
}

#[test]
fn conv3x3_stride1_and_2_odd_sizes() {
    check(1, [2, 3, 7, 9], 5, 3, 1, 1);
    check(2, [3, 5, 9, 8], 7, 3, 2, 1);
    check(3, [1, 16, 8, 8], 33, 3, 1, 1);
}

#[test]
fn conv1x1_and_7x7() {
    check(4, [2, 6, 5, 5], 4, 1, 2, 0); // option-B shortcut shape
    // The same with rows of a multiple of 4 (vec4 windows): dgrad's odd-pixel classes have
    // no taps at all.
    check(40, [2, 8, 8, 8], 16, 1, 2, 0);
    check(5, [2, 3, 15, 13], 8, 7, 2, 3); // ImageNet stem shape
}

#[test]
fn conv_resnet32_stage_shapes() {
    // Reduced batch of the ResNet-32 stages, channel counts as in the model.
    check(6, [2, 16, 32, 32], 16, 3, 1, 1);
    check(7, [2, 16, 16, 16], 32, 3, 2, 1);
    check(8, [4, 64, 8, 8], 64, 3, 1, 1);
}

#[test]
fn conv_direct_groups_and_chunks() {
    use longtail::ops::conv_direct::Plan;
    // 120 -> 20 channels: two output groups of 16, the 120 inputs in two chunks of 113.
    let p = Plan::new(gpu(), 20, 120, 9, 6).expect("adapter without 64 KiB uniform bindings");
    assert_eq!((p.groups, p.chunks), (2, 2));
    check(10, [1, 120, 5, 6], 20, 3, 2, 1);
    // 7x7 taps: 20 input channels per block, so 24 take two chunks.
    check(14, [1, 24, 9, 9], 5, 7, 2, 3);
    // Wider than one row of pixels per invocation, odd width, stride 2 with pad 0.
    check(11, [1, 8, 11, 13], 40, 3, 2, 0);
}

#[test]
fn conv_direct_wgrad_blocks() {
    use longtail::ops::conv_direct::WgradPlan;
    // 16x16 outputs: 4 images per uniform block, 5 image groups (the last one short), three
    // channel groups (the last one partial), rows split into runs.
    let g = ConvGeom::new(&[17, 5, 16, 16], &[40, 5, 3, 3], 1, 1).unwrap();
    let p = WgradPlan::new(gpu(), &g).expect("adapter without 64 KiB uniform bindings");
    assert_eq!((p.ipb, p.igroups, p.cgroups), (4, 5, 3));
    check(12, [17, 5, 16, 16], 40, 3, 1, 1);
    // Stride 2 with an odd input size.
    let g = ConvGeom::new(&[3, 6, 15, 15], &[16, 6, 3, 3], 2, 1).unwrap();
    assert!(WgradPlan::new(gpu(), &g).is_some());
    check(13, [3, 6, 15, 15], 16, 3, 2, 1);
    // Rows that are no multiple of 4 pixels (the 14x14 and 7x7 maps of a ResNet on 28x28 or
    // 224x224 images): dY rows padded in the blocks. 14 -> 16: 4 images per block, 2 groups.
    let g = ConvGeom::new(&[5, 6, 14, 14], &[20, 6, 3, 3], 1, 1).unwrap();
    let p = WgradPlan::new(gpu(), &g).unwrap();
    assert_eq!((p.ipb, p.igroups), (4, 2));
    check(15, [5, 6, 14, 14], 20, 3, 1, 1);
    check(16, [4, 5, 13, 13], 8, 3, 2, 1);
    check(17, [2, 3, 7, 9], 5, 3, 1, 1);
    // The subgroup variant's wgrad reading dY from storage: two channel groups at stride 2,
    // 20 input channels (workgroups of 24 lanes, 4 idle) at stride 1, and 20 output channels
    // (the second group's last 12 read past the channels and are not stored).
    check(18, [3, 5, 16, 16], 32, 3, 2, 1);
    check(19, [2, 20, 8, 12], 16, 3, 1, 1);
    check(41, [2, 6, 7, 10], 20, 3, 1, 1);
    // Other kernel sizes take the GEMM path.
    let g = ConvGeom::new(&[2, 6, 5, 5], &[4, 6, 1, 1], 2, 0).unwrap();
    assert!(WgradPlan::new(gpu(), &g).is_none());
    // ResNet-10's last stage (512 -> 512 at 4x4, batch 64): the partial sums (row runs x dW)
    // must stay far below the storage binding limit.
    let g = ConvGeom::new(&[64, 512, 4, 4], &[512, 512, 3, 3], 1, 1).unwrap();
    let p = WgradPlan::new(gpu(), &g).unwrap();
    assert!(p.nrg * 512 * 512 * 9 * 4 <= 32 << 20, "{p:?}");
}

#[test]
fn wgrad_split_k_engages() {
    // A large batch x pixels K: several splits plus the reduction.
    let g = ConvGeom::new(&[16, 4, 16, 16], &[8, 4, 3, 3], 1, 1).unwrap();
    let (splits, _) = conv2d::wgrad_splits(&g);
    assert!(splits > 1, "expected split-K, got {splits}");
    check(9, [16, 4, 16, 16], 8, 3, 1, 1);
}

/// Forward, dgrad and wgrad of every distinct variant of `g` on inputs drawn by `values(rng,
/// n)`, each result handed to `check(mode, variant, got, want)` with the f64 reference.
fn each_product(
    seed: u64,
    g: &ConvGeom,
    values: impl Fn(&mut Rng64, usize) -> Vec<f32>,
    check: impl Fn(conv2d::Mode, conv2d::Algo, &[f64], &[f64]),
) {
    use conv2d::Mode;
    use longtail::tensor::{DType, Tensor};
    let gpu = gpu();
    let mut rng = Rng64::new(seed);
    let x = [g.batch, g.cin, g.h, g.w];
    let wsh = [g.cout, g.cin, g.kh, g.kw];
    let xv = values(&mut rng, x.iter().product());
    let wv = values(&mut rng, wsh.iter().product());
    let dyv = values(&mut rng, g.out_shape().iter().product());
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let want_y = conv2d::reference::conv2d(&f64s(&xv), &f64s(&wv), g);
    let (want_dx, want_dw) = conv2d::reference::conv2d_grad(&f64s(&xv), &f64s(&wv), &f64s(&dyv), g);
    let xt = Tensor::from_f32(gpu, &x, &xv).unwrap();
    let wt = Tensor::from_f32(gpu, &wsh, &wv).unwrap();
    let dyt = Tensor::from_f32(gpu, &g.out_shape(), &dyv).unwrap();
    for mode in [Mode::Forward, Mode::Dgrad, Mode::Wgrad] {
        let mut names = Vec::new();
        for algo in VARIANTS {
            let picked = conv2d::resolve(gpu, g, mode, algo).unwrap();
            if names.contains(&picked) {
                continue; // e.g. GemmWide is Gemm outside wgrad
            }
            names.push(picked);
            let (shape, want) = match mode {
                Mode::Forward => (g.out_shape().to_vec(), &want_y),
                Mode::Dgrad => (x.to_vec(), &want_dx),
                Mode::Wgrad => (wsh.to_vec(), &want_dw),
            };
            let out = Tensor::zeros(gpu, &shape, DType::F32).unwrap();
            let d = match mode {
                Mode::Forward => conv2d::forward_dispatches(gpu, g, &xt, &wt, &out, 0.0, picked),
                Mode::Dgrad => conv2d::dgrad_dispatches(gpu, g, &dyt, &wt, &out, 0.0, picked),
                Mode::Wgrad => conv2d::wgrad_dispatches(gpu, g, &dyt, &xt, &out, 0.0, picked),
            }
            .unwrap();
            longtail::gpu::submit(gpu, &d.iter().collect::<Vec<_>>());
            check(mode, picked, &f64s(&out.to_f32(gpu).unwrap()), want);
        }
    }
}

/// Forward, dgrad and wgrad of every variant at a full model shape against the f64 reference
/// (no finite differences here: the same reference is checked against them at the small
/// shapes above, and they would cost minutes at these sizes).
fn check_products(seed: u64, x: [usize; 4], cout: usize, k: usize, stride: usize, pad: usize) {
    let g = ConvGeom::new(&x, &[cout, x[1], k, k], stride, pad).unwrap();
    let uniform = |rng: &mut Rng64, n: usize| rng.vec_f32(n, -1.0, 1.0);
    each_product(seed, &g, uniform, |mode, picked, got, want| {
        let tol = match mode {
            conv2d::Mode::Forward => sum_of(x[1] * k * k),
            conv2d::Mode::Dgrad => sum_of(cout * k * k),
            conv2d::Mode::Wgrad => sum_of(x[0] * g.oh * g.ow),
        };
        let what = format!("{} {} {}", mode.op_name(), picked.name(), g.key());
        verify::compare_values(&what, got, want, tol).unwrap();
    });
}

/// Every variant's forward, dgrad and wgrad on small integers (-2..=2), where f32 sums are
/// exact in any order: the result must equal the reference bit for bit. A dropped or doubled
/// term (a row run's last row, a run crossing into the next image, an idle subgroup lane's
/// store) moves a value by at least 1, where the tolerance of [`check`] at these sizes could
/// hide one term in ~10^4.
fn check_exact(seed: u64, x: [usize; 4], cout: usize, stride: usize) {
    let g = ConvGeom::new(&x, &[cout, x[1], 3, 3], stride, 1).unwrap();
    let ints = |rng: &mut Rng64, n: usize| {
        let v = rng.vec_f32(n, -2.5, 2.5);
        v.iter().map(|a| a.round().clamp(-2.0, 2.0)).collect()
    };
    each_product(seed, &g, ints, |mode, picked, got, want| {
        let wrong: Vec<_> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(
            wrong.is_empty(),
            "{} {} {}: {} of {} values wrong, first at {}: {} (want {})",
            mode.op_name(),
            picked.name(),
            g.key(),
            wrong.len(),
            got.len(),
            wrong[0],
            got[wrong[0]],
            want[wrong[0]]
        );
    });
}

#[test]
fn every_variant_is_exact_on_small_integers() {
    // The 1-channel stem on 28x28 images (rows of 4k pixels: the subgroup wgrad streams dY,
    // its row runs crossing image boundaries), the 16-channel stage at both strides.
    check_exact(60, [16, 1, 28, 28], 16, 1);
    check_exact(61, [8, 16, 28, 28], 16, 1);
    check_exact(62, [16, 16, 28, 28], 32, 2);
    // 20 input channels (subgroup workgroups of 24 lanes, 4 idle), odd row count; 14-pixel rows
    // (padded dY blocks).
    check_exact(63, [3, 20, 13, 12], 16, 1);
    check_exact(64, [5, 6, 14, 14], 20, 1);
    // Rows of 7 and 6 pixels: 8-pixel invocations with idle pixels (the 7x7 maps of 28x28
    // images), and a 6x6 map's stride-2 input gradient (phase classes of 3 pixels).
    check_exact(67, [3, 6, 7, 7], 16, 1);
    check_exact(68, [2, 5, 6, 6], 8, 2);
    // Planes too large for the block kernel's 64 KiB blocks (16 x 36 x 36 and 16 x 37 x 36
    // floats): among the direct kernels only the streaming wgrad runs them.
    use longtail::ops::conv_direct::{self, WgradPlan};
    for (x, s) in [([2, 5, 36, 36], 1), ([2, 5, 74, 70], 2)] {
        let g = ConvGeom::new(&x, &[16, 5, 3, 3], s, 1).unwrap();
        assert!(WgradPlan::new(gpu(), &g).is_none(), "{}", g.key());
        if conv_direct::subgroups_ok(gpu()) {
            assert!(conv_direct::streams(gpu(), &g), "{}", g.key());
        }
    }
    check_exact(65, [2, 5, 36, 36], 16, 1);
    check_exact(66, [2, 5, 74, 70], 20, 2);
}

#[test]
fn every_variant_at_resnet32_shapes_batch_128() {
    check_products(20, [128, 3, 32, 32], 16, 3, 1, 1);
    check_products(21, [128, 16, 32, 32], 16, 3, 1, 1);
    check_products(22, [128, 16, 32, 32], 32, 3, 2, 1);
    check_products(23, [128, 32, 16, 16], 32, 3, 1, 1);
    check_products(24, [128, 32, 16, 16], 64, 3, 2, 1);
    check_products(25, [128, 64, 8, 8], 64, 3, 1, 1);
}

#[test]
fn nine_taps_body_at_odd_widths() {
    // Launches of >= 2^26 multiply-adds take the direct kernel's nine-taps-per-accumulator body
    // (`tap9`, conv_direct::NINE_TAPS_MIN_MACS); rows of 30 and 15 pixels take it with scalar
    // windows and stores, and the stride-2 forward with windows of stride 2.
    check_products(26, [40, 16, 30, 30], 16, 3, 1, 1);
    check_products(27, [136, 16, 30, 30], 32, 3, 2, 1);
}

#[test]
fn every_variant_at_resnet10_shapes_112px() {
    // ResNet-10 at 112 x 112 (the ImageNet-LT preset's size), batch 4.
    check_products(30, [4, 3, 112, 112], 64, 7, 2, 3); // stem
    check_products(31, [4, 64, 28, 28], 64, 3, 1, 1);
    check_products(32, [4, 64, 28, 28], 128, 3, 2, 1);
    check_products(33, [4, 64, 28, 28], 128, 1, 2, 0); // projection shortcut
    check_products(34, [4, 128, 14, 14], 256, 3, 2, 1);
    check_products(35, [4, 256, 7, 7], 512, 3, 2, 1);
    check_products(36, [4, 512, 4, 4], 512, 3, 1, 1);
}

fn check_grouped(seed: u64, x: [usize; 4], cout: usize, groups: usize, k: usize, stride: usize) {
    for algo in VARIANTS {
        check_with(seed, x, cout, k, stride, k / 2, groups, algo);
    }
}

#[test]
fn grouped_conv_odd_and_resnext_shapes() {
    check_grouped(50, [2, 8, 7, 9], 6, 2, 3, 1);
    check_grouped(51, [3, 12, 9, 8], 8, 4, 3, 2);
    check_grouped(52, [2, 6, 5, 5], 9, 3, 1, 1); // grouped 1x1
    // ResNeXt-50 32x4d's first-stage 3x3 (128 channels in 32 groups of 4), both strides.
    check_grouped(53, [2, 128, 8, 8], 128, 32, 3, 1);
    check_grouped(54, [2, 128, 8, 8], 128, 32, 3, 2);
    // Split-K wgrad across groups: a large batch x pixels K.
    check_grouped(55, [16, 8, 16, 16], 8, 4, 3, 1);
    // The reference itself: groups = channels is a depthwise convolution, and a grouped conv
    // is the per-group plain convolutions side by side.
    let g = ConvGeom::new_grouped(&[1, 2, 3, 3], &[2, 1, 1, 1], 1, 0, 2).unwrap();
    let y = conv2d::reference::conv2d(
        &[
            1., 2., 3., 4., 5., 6., 7., 8., 9., 1., 1., 1., 1., 1., 1., 1., 1., 1.,
        ],
        &[2.0, -1.0],
        &g,
    );
    assert_eq!(
        y,
        [[2., 4., 6., 8., 10., 12., 14., 16., 18.], [-1.0; 9]].concat()
    );
}

#[test]
fn direct_subgroup_variant_runs_on_llvmpipe() {
    // The variant tests above fall back to the plain direct kernels where an adapter has no
    // subgroups of >= 8 lanes; on CI's adapter (llvmpipe: 8 lanes) they must run it.
    let gpu = gpu();
    let name = gpu.summary.name.to_lowercase();
    let ok = longtail::ops::conv_direct::subgroups_ok(gpu);
    if name.contains("llvmpipe") {
        assert!(ok, "llvmpipe without subgroups of 8 lanes: {}", gpu.summary);
        let g = ConvGeom::new(&[2, 16, 8, 8], &[16, 16, 3, 3], 1, 1).unwrap();
        for mode in [
            conv2d::Mode::Forward,
            conv2d::Mode::Dgrad,
            conv2d::Mode::Wgrad,
        ] {
            let algo = conv2d::Algo::DirectSubgroup;
            assert_eq!(conv2d::resolve(gpu, &g, mode, algo).unwrap(), algo);
        }
    } else if !ok {
        eprintln!("note: {name} has no subgroups of >= 8 lanes; direct-sg was not tested");
    }
}
