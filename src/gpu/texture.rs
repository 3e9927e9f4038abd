//! Texture mirrors: a tensor's values copied into an `rgba32float` texture, so a kernel can read
//! them with `textureLoad` instead of storage-buffer reads.
//!
//! Why: Mesa 22.3's llvmpipe (Debian 12's) compiles a storage read at lane-varying addresses
//! into a loop over the SIMD lanes that inserts each lane's value at a variable index. With
//! AVX-512 that insert is a masked broadcast; with AVX2 only, LLVM lowers it through the stack
//! (store the vector, store the lane, reload the vector), and the reload waits on a failed
//! store-to-load forward every lane: streaming storage reads ran at 0.9 GB/s on a Zen 3 host.
//! A texel fetch of a 128-bit format goes through llvmpipe's sampler code instead, one gather per
//! channel: 8.5 GB/s on the same host (benches/NOTES.md, session 14). A copy into the texture
//! runs at memcpy speed (~7 GB/s there), well under the reads it saves in a convolution, which
//! reads each input value many times.
//!
//! Memory: a mirror is a second copy of its tensor, alive while a recorded launch binds it, and
//! not counted in [`crate::gpu::Gpu::bytes_in_use`].
//!
//! The layout is flat: texel `t` holds values `4t .. 4t + 3` of the tensor, at texel coordinate
//! (t % [`TEX_WIDTH`], t / [`TEX_WIDTH`]). A kernel that binds a mirror has the copy recorded
//! before it ([`crate::gpu::Dispatch::record`]), so the texture always holds the tensor's values
//! of that moment in the command stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Result, bail};

use super::{Gpu, GpuBuffer};

/// Texels per texture row: a power of two (the shaders split a texel index with `& 4095u` and
/// `>> 12u`) within WebGPU's minimum 2D texture size of 8192.
pub const TEX_WIDTH: u32 = 4096;
/// Texels past the tensor's last one that a kernel may fetch (and then mask): a window read
/// starting at the last value runs up to 6 texels on (`shaders/conv_direct_wint.wgsli`).
const SLACK_TEXELS: u32 = 8;

/// One tensor's texture mirror.
pub struct TexMirror {
    pub texture: wgpu::Texture,
    pub view: wgpu::TextureView,
    /// The tensor's storage: kept alive while a recorded launch may copy from it.
    src: Arc<GpuBuffer>,
    offset: u64,
    texels: u32,
}

impl TexMirror {
    /// Record the copy of the tensor's current values into the texture.
    pub fn encode_copy(&self, enc: &mut wgpu::CommandEncoder) {
        let full = self.texels / TEX_WIDTH;
        let rest = self.texels % TEX_WIDTH;
        let row_bytes = u64::from(TEX_WIDTH) * 16;
        let copy = |enc: &mut wgpu::CommandEncoder, offset: u64, y: u32, w: u32, h: u32| {
            enc.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.src.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset,
                        bytes_per_row: Some(TEX_WIDTH * 16),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width: w,
                    height: h,
                    depth_or_array_layers: 1,
                },
            );
        };
        if full > 0 {
            copy(enc, self.offset, 0, TEX_WIDTH, full);
        }
        if rest > 0 {
            copy(
                enc,
                self.offset + u64::from(full) * row_bytes,
                full,
                rest,
                1,
            );
        }
    }
}

/// Texture rows a mirror of `texels` texels needs, or `None` past the adapter's limit.
fn rows_for(gpu: &Gpu, texels: u64) -> Option<u32> {
    let rows = (texels + u64::from(SLACK_TEXELS)).div_ceil(u64::from(TEX_WIDTH));
    let max = u64::from(gpu.limits.max_texture_dimension_2d);
    (u64::from(TEX_WIDTH) <= max && rows <= max).then_some(rows as u32)
}

/// Whether a tensor of `values` f32 values fits a mirror on this adapter: a whole number of
/// texels, in a texture within the adapter's 2D size limit.
pub fn mirror_fits(gpu: &Gpu, values: usize) -> bool {
    values > 0 && values.is_multiple_of(4) && rows_for(gpu, values as u64 / 4).is_some()
}

/// Whether `t` can have a mirror on this adapter: f32 values that [`mirror_fits`], at a
/// 16-byte aligned offset (a texel copy's source alignment).
pub fn can_mirror(gpu: &Gpu, t: &crate::tensor::Tensor) -> bool {
    t.dtype() == crate::tensor::DType::F32
        && t.offset().is_multiple_of(16)
        && mirror_fits(gpu, t.numel())
}

/// Mirrors alive on one device, by (buffer, offset, bytes): the launches of one op (several
/// output groups, the forward and the weight gradient) share one texture per tensor.
#[derive(Default)]
pub struct MirrorCache {
    live: Mutex<HashMap<(usize, u64, u64), Weak<TexMirror>>>,
}

impl MirrorCache {
    /// The mirror of `t`, made on first use.
    pub fn get(&self, gpu: &Gpu, t: &crate::tensor::Tensor) -> Result<Arc<TexMirror>> {
        if !can_mirror(gpu, t) {
            bail!(
                "tensor of shape {:?} cannot be read through a texture on this adapter \
                 (f32, a multiple of 4 values, 16-byte offset, at most {} rows of {TEX_WIDTH} texels)",
                t.shape(),
                gpu.limits.max_texture_dimension_2d
            );
        }
        let src = t.storage().clone();
        let key = (Arc::as_ptr(&src) as usize, t.offset(), t.numel() as u64 * 4);
        let mut live = self.live.lock().unwrap();
        if let Some(m) = live.get(&key).and_then(Weak::upgrade) {
            return Ok(m);
        }
        live.retain(|_, w| w.strong_count() > 0);
        let texels = (t.numel() / 4) as u32;
        let rows = rows_for(gpu, u64::from(texels)).expect("checked by can_mirror");
        let texture = gpu.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("texture mirror"),
            size: wgpu::Extent3d {
                width: TEX_WIDTH,
                height: rows,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let view = texture.create_view(&Default::default());
        let m = Arc::new(TexMirror {
            texture,
            view,
            src,
            offset: t.offset(),
            texels,
        });
        live.insert(key, Arc::downgrade(&m));
        Ok(m)
    }
}
