//! The verification harness every op goes through:
//! 1. GPU forward against the op's f64 CPU reference;
//! 2. GPU backward (for a random upstream gradient) against the reference's gradient;
//! 3. the reference's gradient against central finite differences of the reference.
//!
//! Inputs are rounded to f32 before the reference sees them, so differences come from the GPU's
//! arithmetic alone. Errors name the case, the seed and the worst element.

use anyhow::{Result, bail};

use crate::gpu::Gpu;
use crate::rng::Rng64;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// A pass/fail band: element `x` matches `r` when `|x - r| <= abs + rel * |r|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

/// One f32 rounding of an O(1) value (f32 epsilon is 1.2e-7), with a 4x margin for the few
/// operations an elementwise kernel chains.
pub const ELEMENTWISE: Tolerance = Tolerance {
    abs: 5e-7,
    rel: 5e-7,
};

/// A sum of `terms` O(1) f32 products. Rounding errors of random sign grow like sqrt(terms);
/// the band is 8 f32 epsilons times sqrt(terms) (a 3-4x margin over what shows in practice),
/// never below [`ELEMENTWISE`]. Past a few hundred terms a sequential accumulation's partial
/// sums grow like sqrt(k) themselves, so its absolute error grows like terms: the absolute part
/// is then epsilon x terms / 2 (3x the worst error seen: 9.4e-5 for a K = 4,608 GEMM row at
/// ResNet-10's 512-channel layer).
pub fn sum_of(terms: usize) -> Tolerance {
    let n = terms.max(1) as f64;
    let eps = f32::EPSILON as f64;
    let t = 8.0 * eps * n.sqrt();
    Tolerance {
        abs: t.max(eps * n / 2.0).max(ELEMENTWISE.abs),
        rel: t.max(ELEMENTWISE.rel),
    }
}

/// A kernel with f16 inputs and output (`--precision f16`) summing `terms` products in f32:
/// the reference sees the f16-rounded inputs, so what remains is the f32 sum ([`sum_of`]) and
/// one rounding of the result to f16, half an ulp: 2^-11 relative (2x margin: 2^-10), or
/// 3e-8 absolute in f16's subnormal range (f16's smallest subnormal is 6e-8).
pub fn f16_sum_of(terms: usize) -> Tolerance {
    let t = sum_of(terms);
    Tolerance {
        abs: t.abs.max(6e-8),
        rel: t.rel.max(1.0 / 1024.0),
    }
}

/// Transcendental kernels (exp, log in softmax): the GPU's exp/log are allowed a few ulps more
/// than correctly rounded ones (WGSL permits 3 + 2|x| ulp for exp).
pub const TRANSCENDENTAL: Tolerance = Tolerance {
    abs: 2e-6,
    rel: 2e-5,
};

/// Reference gradient against central differences of the f64 reference with step
/// `FD_STEP * (1 + |x|)`: truncation error is O(step^2) ~ 1e-12 and cancellation O(1e-16 / step)
/// ~ 1e-11 for O(1) functions, so 1e-6 leaves a wide margin yet catches any real mistake (a wrong
/// factor or index shows as O(1)).
pub const FD_TOL: Tolerance = Tolerance {
    abs: 1e-6,
    rel: 1e-6,
};

/// Finite-difference step (relative to 1 + |x|).
pub const FD_STEP: f64 = 1e-5;

/// At most this many coordinates per input are probed by finite differences (all when fewer).
pub const FD_SAMPLES: usize = 48;

/// One input of an op under test.
pub enum Input {
    /// An f32 tensor; `grad` says whether its gradient is checked.
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
        grad: bool,
    },
    /// An f16 tensor holding `data` rounded to f16 (the reference sees the rounded values).
    F16 {
        shape: Vec<usize>,
        data: Vec<f32>,
        grad: bool,
    },
    /// A u32 tensor (labels); never differentiated.
    U32 { shape: Vec<usize>, data: Vec<u32> },
}

impl Input {
    /// Uniform random f32 input in [lo, hi).
    pub fn uniform(rng: &mut Rng64, shape: &[usize], lo: f64, hi: f64, grad: bool) -> Self {
        let n = shape.iter().product();
        Input::F32 {
            shape: shape.to_vec(),
            data: rng.vec_f32(n, lo, hi),
            grad,
        }
    }

    /// Uniform random f16 input in [lo, hi).
    pub fn uniform_f16(rng: &mut Rng64, shape: &[usize], lo: f64, hi: f64, grad: bool) -> Self {
        let n = shape.iter().product();
        Input::F16 {
            shape: shape.to_vec(),
            data: rng.vec_f32(n, lo, hi),
            grad,
        }
    }

    /// An f32 input whose values are exactly representable in f16 (e.g. master weights that an
    /// f16 op copies to f16: the copy is then exact).
    pub fn uniform_f16_exact(
        rng: &mut Rng64,
        shape: &[usize],
        lo: f64,
        hi: f64,
        grad: bool,
    ) -> Self {
        let n = shape.iter().product();
        Input::F32 {
            shape: shape.to_vec(),
            data: rng
                .vec_f32(n, lo, hi)
                .into_iter()
                .map(|v| half::f16::from_f32(v).to_f32())
                .collect(),
            grad,
        }
    }

    fn as_f64(&self) -> Vec<f64> {
        match self {
            Input::F32 { data, .. } => data.iter().map(|&v| v as f64).collect(),
            Input::F16 { data, .. } => data
                .iter()
                .map(|&v| half::f16::from_f32(v).to_f64())
                .collect(),
            Input::U32 { data, .. } => data.iter().map(|&v| v as f64).collect(),
        }
    }

    fn numel(&self) -> usize {
        match self {
            Input::F32 { data, .. } | Input::F16 { data, .. } => data.len(),
            Input::U32 { data, .. } => data.len(),
        }
    }

    fn wants_grad(&self) -> bool {
        matches!(
            self,
            Input::F32 { grad: true, .. } | Input::F16 { grad: true, .. }
        )
    }
}

/// An op under test.
pub struct Case {
    /// Name printed on failure (include the shape).
    pub name: String,
    /// The seed the inputs were drawn with, printed on failure.
    pub seed: u64,
    pub inputs: Vec<Input>,
    /// Forward band.
    pub fwd: Tolerance,
    /// Backward band.
    pub bwd: Tolerance,
}

/// f64 reference forward: inputs (as f64) to the flattened output.
pub type RefForward<'a> = &'a dyn Fn(&[Vec<f64>]) -> Vec<f64>;
/// f64 reference backward: inputs and upstream gradient to one gradient per input (None where
/// not differentiable).
pub type RefBackward<'a> = &'a dyn Fn(&[Vec<f64>], &[f64]) -> Vec<Option<Vec<f64>>>;

/// Largest violation of `tol`, as (ratio to the band, index, got, want). Ratio <= 1 passes;
/// NaN anywhere fails.
fn worst(got: &[f64], want: &[f64], tol: Tolerance) -> (f64, usize, f64, f64) {
    let mut w = (0.0, 0, 0.0, 0.0);
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        let band = tol.abs + tol.rel * r.abs();
        let ratio = if g.is_finite() && r.is_finite() {
            (g - r).abs() / band
        } else if g == r {
            0.0
        } else {
            f64::INFINITY
        };
        if ratio > w.0 || ratio.is_nan() {
            w = (ratio, i, g, r);
        }
    }
    w
}

fn compare(what: &str, case: &Case, got: &[f64], want: &[f64], tol: Tolerance) -> Result<()> {
    if got.len() != want.len() {
        bail!(
            "{} (seed {}): {what}: {} values, reference has {}",
            case.name,
            case.seed,
            got.len(),
            want.len()
        );
    }
    let (ratio, i, g, r) = worst(got, want, tol);
    if ratio.is_nan() || ratio > 1.0 {
        bail!(
            "{} (seed {}): {what}: element {i}: got {g:e}, want {r:e} (|diff| {:e} is {ratio:.2}x \
             the band abs {:e} + rel {:e})",
            case.name,
            case.seed,
            (g - r).abs(),
            tol.abs,
            tol.rel
        );
    }
    Ok(())
}

/// Compare `got` with the f64 reference `want` within `tol` (for checks outside [`check`], e.g.
/// single kernels at full model shapes); the error names `what` and the worst element.
pub fn compare_values(what: &str, got: &[f64], want: &[f64], tol: Tolerance) -> Result<()> {
    let case = Case {
        name: what.into(),
        seed: 0,
        inputs: Vec::new(),
        fwd: tol,
        bwd: tol,
    };
    compare("values", &case, got, want, tol)
}

/// Run the checks on `case`: forward, backward, finite differences and (small cases)
/// accumulation. `build` records the op on a tape from the uploaded inputs.
pub fn check(
    gpu: &Gpu,
    case: &Case,
    build: &dyn Fn(&mut Tape, &[Tensor]) -> Result<Tensor>,
    reference: RefForward<'_>,
    ref_grad: RefBackward<'_>,
) -> Result<()> {
    let xs: Vec<Vec<f64>> = case.inputs.iter().map(Input::as_f64).collect();
    let mut tensors = Vec::new();
    for inp in &case.inputs {
        tensors.push(match inp {
            Input::F32 { shape, data, grad } => {
                let t = Tensor::from_f32(gpu, shape, data)?;
                if *grad { t.requiring_grad() } else { t }
            }
            Input::F16 { shape, data, grad } => {
                let t = Tensor::from_f32_as(gpu, shape, data, DType::F16)?;
                if *grad { t.requiring_grad() } else { t }
            }
            Input::U32 { shape, data } => Tensor::from_u32(gpu, shape, data)?,
        });
    }
    let mut tape = Tape::new(gpu);
    let out = build(&mut tape, &tensors)?;

    // 1. forward
    let want = reference(&xs);
    let mut rng = Rng64::new(case.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut seed_vals = rng.vec_f32(out.numel(), -1.0, 1.0);
    if out.dtype() == DType::F16 {
        // An f16 output takes an f16 upstream gradient: the reference sees it rounded.
        for v in &mut seed_vals {
            *v = half::f16::from_f32(*v).to_f32();
        }
    }
    let any_grad = case.inputs.iter().any(Input::wants_grad);
    if any_grad {
        let seed = Tensor::from_f32_as(gpu, out.shape(), &seed_vals, out.dtype())?;
        tape.backward_with(&out, seed)?;
    }
    tape.run(any_grad);
    let got: Vec<f64> = out.to_f32(gpu)?.iter().map(|&v| v as f64).collect();
    compare("forward", case, &got, &want, case.fwd)?;
    if !any_grad {
        return Ok(());
    }

    // 2. backward against the reference gradient
    let g: Vec<f64> = seed_vals.iter().map(|&v| v as f64).collect();
    let ref_grads = ref_grad(&xs, &g);
    for (i, (inp, t)) in case.inputs.iter().zip(&tensors).enumerate() {
        if !inp.wants_grad() {
            continue;
        }
        let Some(Some(rg)) = ref_grads.get(i) else {
            bail!(
                "{}: the reference gives no gradient for input {i}",
                case.name
            );
        };
        let Some(gt) = tape.grad(t) else {
            bail!("{}: input {i} got no gradient on the GPU", case.name);
        };
        let gg: Vec<f64> = gt.to_f32(gpu)?.iter().map(|&v| v as f64).collect();
        compare(&format!("gradient of input {i}"), case, &gg, rg, case.bwd)?;

        // 3. reference gradient against central finite differences of sum(g * f(x))
        let n = xs[i].len();
        let picks: Vec<usize> = if n <= FD_SAMPLES {
            (0..n).collect()
        } else {
            (0..FD_SAMPLES).map(|_| rng.below(n)).collect()
        };
        let objective =
            |x: &[Vec<f64>]| -> f64 { reference(x).iter().zip(&g).map(|(a, b)| a * b).sum() };
        let mut fd = Vec::with_capacity(picks.len());
        let mut an = Vec::with_capacity(picks.len());
        for &j in &picks {
            let h = FD_STEP * (1.0 + xs[i][j].abs());
            let mut xp = xs.clone();
            xp[i][j] += h;
            let fp = objective(&xp);
            xp[i][j] -= 2.0 * h;
            let fm = objective(&xp);
            fd.push((fp - fm) / (2.0 * h));
            an.push(rg[j]);
        }
        compare(
            &format!("reference gradient of input {i} vs finite differences"),
            case,
            &an,
            &fd,
            FD_TOL,
        )?;
    }
    if case.inputs.iter().map(Input::numel).sum::<usize>() <= ACCUMULATE_MAX_VALUES {
        check_accumulation(gpu, case, &tensors, build, &seed_vals, &ref_grads)?;
    }
    Ok(())
}

/// Cases up to this many input values also run [`check_accumulation`] (the accumulating branch
/// of a backward kernel does not depend on the size; small cases keep the test time down).
pub const ACCUMULATE_MAX_VALUES: usize = 1 << 16;

/// Check 4: the op's backward adding to a gradient that already holds a contribution
/// (`beta` = 1, as when an activation feeds two ops). The op is recorded twice on the same
/// inputs and the outputs summed, so each input's gradient must come out twice the reference's;
/// the checks above only run the overwriting branch (beta = 0). Skipped for f16 inputs and
/// outputs.
fn check_accumulation(
    gpu: &Gpu,
    case: &Case,
    tensors: &[Tensor],
    build: &dyn Fn(&mut Tape, &[Tensor]) -> Result<Tensor>,
    seed_vals: &[f32],
    ref_grads: &[Option<Vec<f64>>],
) -> Result<()> {
    if case.inputs.iter().any(|i| matches!(i, Input::F16 { .. })) {
        return Ok(()); // f16 gradients: two rounded halves, not the reference's band
    }
    let mut tape = Tape::new(gpu);
    let a = build(&mut tape, tensors)?;
    if a.dtype() != DType::F32 {
        return Ok(());
    }
    let b = build(&mut tape, tensors)?;
    let both = crate::ops::elementwise::add(&mut tape, &a, &b)?;
    let seed = Tensor::from_f32(gpu, both.shape(), seed_vals)?;
    tape.backward_with(&both, seed)?;
    tape.run(true);
    for (i, (inp, t)) in case.inputs.iter().zip(tensors).enumerate() {
        let (true, Some(Some(rg))) = (inp.wants_grad(), ref_grads.get(i)) else {
            continue;
        };
        let Some(gt) = tape.grad(t) else {
            bail!("{}: input {i} got no gradient on the GPU", case.name);
        };
        let half: Vec<f64> = gt.to_f32(gpu)?.iter().map(|&v| v as f64 / 2.0).collect();
        compare(
            &format!("half the gradient of input {i} with the op recorded twice (accumulating)"),
            case,
            &half,
            rg,
            case.bwd,
        )?;
    }
    Ok(())
}
