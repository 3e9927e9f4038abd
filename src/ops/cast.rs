//! Element type conversion between f32 and f16 (`--precision f16`, `shaders/cast.wgsl`): the
//! network's input images to f16, and each convolution's f16 copy of its f32 master weights.

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, Gpu, grid_1d};
use crate::shaders;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    beta: f32,
    _p: [u32; 2],
}

/// Record `out = beta * out + x`, converting `x`'s element type to `out`'s.
pub fn dispatch(gpu: &Gpu, x: &Tensor, out: &Tensor, beta: f32) -> Result<Dispatch> {
    if x.numel() != out.numel() {
        bail!("cast: {x:?} and {out:?} differ in size");
    }
    let p = Params {
        n: x.numel() as u32,
        beta,
        _p: [0; 2],
    };
    Dispatch::build(
        gpu,
        shaders::typed("cast", x.dtype(), out.dtype())?,
        "convert",
        &[x.read(), out.write()],
        bytemuck::bytes_of(&p),
        grid_1d(gpu, (x.numel() as u32).div_ceil(256)),
    )
}

/// `x` as `dtype` (f32 or f16), differentiable: the gradient is converted back.
pub fn cast(tape: &mut Tape, x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let y = tape.output_as(x.shape(), dtype, &[x])?;
    let fwd = dispatch(tape.gpu(), x, &y, 0.0)?;
    tape.push_unary("cast", x, &y, vec![fwd], |gpu, g, t| {
        dispatch(gpu, g, &t.tensor, t.beta())
    })?;
    Ok(y)
}

/// CPU references.
pub mod reference {
    /// `v` rounded to the nearest f16 (ties to even), as f64.
    pub fn round_f16(v: f64) -> f64 {
        half::f16::from_f64(v).to_f64()
    }

    /// Every value rounded to f16.
    pub fn to_f16(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| round_f16(v)).collect()
    }
}
