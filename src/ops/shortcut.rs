//! The option-A ResNet shortcut: stride-2 subsampling plus zero-padded channels
//! (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))` in LDAM-DRW's
//! resnet_cifar.py, i.e. `(cout - cin) / 2` zero channels on each side).

use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Dispatch, grid_1d};
use crate::tape::Tape;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    oh: u32,
    ow: u32,
    pad_lo: u32,
    stride: u32,
    beta: f32,
    _p: [u32; 2],
}

/// `[B, cin, H, W] -> [B, cout, ceil(H/stride), ceil(W/stride)]`.
pub fn option_a(tape: &mut Tape, x: &Tensor, cout: usize, stride: usize) -> Result<Tensor> {
    let &[b, cin, h, w] = x.shape() else {
        bail!("shortcut: input must be [B, C, H, W], got {:?}", x.shape());
    };
    if cout < cin || !(cout - cin).is_multiple_of(2) || stride == 0 {
        bail!("shortcut: cannot pad {cin} channels to {cout} evenly (stride {stride})");
    }
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let p = Params {
        batch: b as u32,
        cin: cin as u32,
        h: h as u32,
        w: w as u32,
        cout: cout as u32,
        oh: oh as u32,
        ow: ow as u32,
        pad_lo: ((cout - cin) / 2) as u32,
        stride: stride as u32,
        beta: 0.0,
        _p: [0; 2],
    };
    let gpu = tape.gpu().clone();
    // f32 or f16 activations (`--precision f16`).
    let shader = crate::shaders::typed("shortcut", x.dtype(), x.dtype())?;
    let y = tape.output_as(&[b, cout, oh, ow], x.dtype(), &[x])?;
    let fwd = Dispatch::build(
        &gpu,
        shader,
        "forward",
        &[x.read(), y.write()],
        bytemuck::bytes_of(&p),
        grid_1d(&gpu, ((b * cout * oh) as u32).div_ceil(256)),
    )?;
    let rows_in = (b * cin * h) as u32;
    tape.push_unary("shortcut", x, &y, vec![fwd], move |gpu, g, t| {
        let bp = Params {
            beta: t.beta(),
            ..p
        };
        Dispatch::build(
            gpu,
            shader,
            "backward",
            &[g.read(), t.tensor.write()],
            bytemuck::bytes_of(&bp),
            grid_1d(gpu, rows_in.div_ceil(256)),
        )
    })?;
    Ok(y)
}

/// CPU references (f64).
pub mod reference {
    /// Forward.
    pub fn option_a(x: &[f64], [b, cin, h, w]: [usize; 4], cout: usize, s: usize) -> Vec<f64> {
        let (oh, ow, lo) = (h.div_ceil(s), w.div_ceil(s), (cout - cin) / 2);
        let mut y = vec![0.0; b * cout * oh * ow];
        for n in 0..b {
            for c in 0..cin {
                for i in 0..oh {
                    for j in 0..ow {
                        y[((n * cout + c + lo) * oh + i) * ow + j] =
                            x[((n * cin + c) * h + i * s) * w + j * s];
                    }
                }
            }
        }
        y
    }

    /// Gradient: the transpose of the selection.
    pub fn option_a_grad(g: &[f64], [b, cin, h, w]: [usize; 4], cout: usize, s: usize) -> Vec<f64> {
        let (oh, ow, lo) = (h.div_ceil(s), w.div_ceil(s), (cout - cin) / 2);
        let mut dx = vec![0.0; b * cin * h * w];
        for n in 0..b {
            for c in 0..cin {
                for i in 0..oh {
                    for j in 0..ow {
                        dx[((n * cin + c) * h + i * s) * w + j * s] =
                            g[((n * cout + c + lo) * oh + i) * ow + j];
                    }
                }
            }
        }
        dx
    }
}
