//! Pooling: global average pool (through the reduction kernels) and max pool (KxK, stride,
//! padding; `shaders/pool.wgsl`).

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, grid_1d};
use crate::ops::reduce;
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// `[B, C, H, W] -> [B, C]`, the mean over H x W (f32 features also from f16 activations).
pub fn global_avg_pool(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    let &[b, c, h, w] = x.shape() else {
        bail!(
            "global_avg_pool: input must be [B, C, H, W], got {:?}",
            x.shape()
        );
    };
    let dims = [b * c, h * w, 1];
    let alpha = 1.0 / (h * w) as f32;
    let y = tape.output(&[b, c], &[x])?;
    let fwd = reduce::sum_dispatch(tape.gpu(), x, &y, dims, alpha, 0.0)?;
    tape.push_unary("pool", x, &y, vec![fwd], move |gpu, g, t| {
        reduce::broadcast_dispatch(gpu, g, &t.tensor, dims, alpha, t.beta())
    })?;
    Ok(y)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MaxParams {
    batch: u32,
    channels: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    stride: u32,
    pad: u32,
    beta: f32,
    _p: [u32; 2],
}

/// Max pool with a `k x k` window, `stride` and `pad` (the ImageNet stem uses 3, 2, 1).
pub fn max_pool2d(
    tape: &mut Tape,
    x: &Tensor,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let &[b, c, h, w] = x.shape() else {
        bail!(
            "max_pool2d: input must be [B, C, H, W], got {:?}",
            x.shape()
        );
    };
    if k == 0 || stride == 0 || pad * 2 > k || h + 2 * pad < k || w + 2 * pad < k {
        bail!("max_pool2d: bad window k={k} stride={stride} pad={pad} for {h}x{w}");
    }
    let (oh, ow) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    let p = MaxParams {
        batch: b as u32,
        channels: c as u32,
        h: h as u32,
        w: w as u32,
        oh: oh as u32,
        ow: ow as u32,
        k: k as u32,
        stride: stride as u32,
        pad: pad as u32,
        beta: 0.0,
        _p: [0; 2],
    };
    let gpu = tape.gpu().clone();
    // f32 or f16 activations (`--precision f16`).
    let shader = crate::shaders::typed("pool", x.dtype(), x.dtype())?;
    let y = tape.output_as(&[b, c, oh, ow], x.dtype(), &[x])?;
    let argmax = Tensor::zeros(&gpu, &[b, c, oh, ow], DType::U32)?;
    let n_out = (b * c * oh * ow) as u32;
    let fwd = Dispatch::build(
        &gpu,
        shader,
        "max_forward",
        &[x.read(), y.write(), argmax.write()],
        bytemuck::bytes_of(&p),
        grid_1d(&gpu, n_out.div_ceil(256)),
    )?;
    let n_in = x.numel() as u32;
    tape.push_unary("pool", x, &y, vec![fwd], move |gpu, g, t| {
        let bp = MaxParams {
            beta: t.beta(),
            ..p
        };
        Dispatch::build(
            gpu,
            shader,
            "max_backward",
            &[g.read(), argmax.read(), t.tensor.write()],
            bytemuck::bytes_of(&bp),
            grid_1d(gpu, n_in.div_ceil(256)),
        )
    })?;
    Ok(y)
}

/// CPU references (f64).
pub mod reference {
    /// Max pool forward and the argmax (first maximum in window order, as the kernel).
    pub fn max_pool2d(
        x: &[f64],
        [b, c, h, w]: [usize; 4],
        k: usize,
        s: usize,
        pad: usize,
    ) -> (Vec<f64>, Vec<usize>) {
        let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
        let mut y = Vec::new();
        let mut arg = Vec::new();
        for plane in 0..b * c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best = (f64::NEG_INFINITY, 0);
                    for a in 0..k {
                        for bb in 0..k {
                            let (ih, iw) = (
                                (i * s + a) as isize - pad as isize,
                                (j * s + bb) as isize - pad as isize,
                            );
                            if ih < 0 || iw < 0 || ih as usize >= h || iw as usize >= w {
                                continue;
                            }
                            let idx = (plane * h + ih as usize) * w + iw as usize;
                            if x[idx] > best.0 {
                                best = (x[idx], idx);
                            }
                        }
                    }
                    y.push(best.0);
                    arg.push(best.1);
                }
            }
        }
        (y, arg)
    }

    /// Max pool gradient: each upstream value goes to its window's maximum.
    pub fn max_pool2d_grad(
        x: &[f64],
        shape: [usize; 4],
        k: usize,
        s: usize,
        pad: usize,
        g: &[f64],
    ) -> Vec<f64> {
        let (_, arg) = max_pool2d(x, shape, k, s, pad);
        let mut dx = vec![0.0; x.len()];
        for (o, &i) in arg.iter().enumerate() {
            dx[i] += g[o];
        }
        dx
    }
}
