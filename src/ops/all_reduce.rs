//! All-reduce across the devices of a data-parallel step, as a differentiable op: the layers
//! that need the whole batch's statistics (channel whitening's mean and covariance) reduce
//! their per-device sums with it. Forward: `y = scale x sum_d x_d` on every device. Backward:
//! each device holds its own share of `dL/dy` (y is replicated, every device's loss terms use
//! it), so `dL/dx_d = scale x sum_d dy_d`: the same all-reduce. The exchange itself is a
//! [`Collective`] the data-parallel executor ([`crate::parallel`]) performs; on a single device
//! the op records nothing and returns `x`.

use anyhow::Result;

use crate::ops::elementwise;
use crate::tape::{Collective, Tape};
use crate::tensor::Tensor;

/// `scale x` the sum of `x` over the tape's devices (`x` itself on one device).
pub fn all_reduce(tape: &mut Tape, x: &Tensor, scale: f32) -> Result<Tensor> {
    if tape.replication().devices == 1 {
        return Ok(x.clone());
    }
    let gpu = tape.gpu().clone();
    let y = tape.output(x.shape(), &[x])?;
    // A copy to reduce in place: x may be read again by its own consumers.
    tape.push_forward(
        "all_reduce",
        elementwise::dispatch(&gpu, "scale", x, x, &y, 1.0, 0.0, 0)?,
    );
    tape.push_collective(Collective::sum(vec![y.clone()], scale));
    tape.push(
        "all_reduce",
        vec![x.clone()],
        &y,
        Vec::new(),
        Box::new(move |gpu, g, gin| {
            let Some(t) = &gin[0] else {
                return Ok(Vec::new());
            };
            // dy is complete here (reverse order) and nothing else reads it: reduce in place.
            Ok(vec![
                Collective::sum(vec![g.clone()], scale).into(),
                elementwise::dispatch(gpu, "scale", g, g, &t.tensor, 1.0, t.beta(), 0)?.into(),
            ])
        }),
    )?;
    Ok(y)
}

/// CPU reference (f64): every device's value after the all-reduce.
pub fn reference(xs: &[Vec<f64>], scale: f64) -> Vec<f64> {
    let mut s = vec![0.0; xs.first().map_or(0, Vec::len)];
    for x in xs {
        for (a, b) in s.iter_mut().zip(x) {
            *a += b;
        }
    }
    s.iter().map(|v| v * scale).collect()
}
