//! Tensors: typed views (shape, element type) into GPU buffers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};

use crate::gpu::{Access, Binding};
use crate::gpu::{Gpu, GpuBuffer};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Half precision (`--precision f16`): activations and their gradients in storage; kernels
    /// widen to f32 on load and accumulate in f32.
    F16,
    /// Labels and indices.
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F16 => 2,
            DType::F32 | DType::U32 => 4,
        }
    }
}

/// Bytes of `n` elements of `dtype`, rounded up to whole 4-byte words (copies and storage
/// bindings are sized in words).
pub fn byte_len(n: usize, dtype: DType) -> u64 {
    (n as u64 * dtype.size()).div_ceil(4) * 4
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

struct Inner {
    id: usize,
    shape: Vec<usize>,
    dtype: DType,
    buf: Arc<GpuBuffer>,
    offset: u64,
    requires_grad: bool,
}

/// A contiguous row-major tensor living in a GPU buffer, possibly at an offset (parameters share
/// one flat buffer so the optimizer is a single dispatch). Clones share the storage.
#[derive(Clone)]
pub struct Tensor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor#{}{:?}", self.inner.id, self.inner.shape)
    }
}

impl Tensor {
    /// A view of `shape` at byte `offset` of `buf`.
    pub fn view(
        buf: Arc<GpuBuffer>,
        offset: u64,
        shape: &[usize],
        dtype: DType,
        requires_grad: bool,
    ) -> Result<Self> {
        let bytes = byte_len(shape.iter().product::<usize>(), dtype);
        if offset + bytes > buf.size() {
            bail!(
                "view of {shape:?} at byte {offset} overruns a buffer of {} bytes",
                buf.size()
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                shape: shape.to_vec(),
                dtype,
                buf,
                offset,
                requires_grad,
            }),
        })
    }

    /// A zero-filled tensor in its own buffer.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Self> {
        let n = shape.iter().product::<usize>();
        let buf = Arc::new(GpuBuffer::new(
            gpu,
            "tensor",
            byte_len(n, dtype),
            wgpu::BufferUsages::empty(),
        )?);
        Self::view(buf, 0, shape, dtype, false)
    }

    /// An f32 tensor holding `data`.
    pub fn from_f32(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Self> {
        Self::from_f32_as(gpu, shape, data, DType::F32)
    }

    /// A u32 tensor holding `data` (labels).
    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32]) -> Result<Self> {
        let t = Self::zeros(gpu, shape, DType::U32)?;
        t.write_u32(gpu, data)?;
        Ok(t)
    }

    /// The same storage, marked as a leaf that needs a gradient (a parameter).
    pub fn requiring_grad(&self) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                shape: self.inner.shape.clone(),
                dtype: self.inner.dtype,
                buf: self.inner.buf.clone(),
                offset: self.inner.offset,
                requires_grad: true,
            }),
        }
    }

    /// Overwrite the contents (queued; takes effect before the next submission). An f16 tensor
    /// takes f32 values rounded to nearest.
    pub fn write_f32(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        if self.inner.dtype == DType::F16 {
            self.check_len(data.len(), DType::F16)?;
            let mut bits: Vec<u16> = data
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            if bits.len() % 2 == 1 {
                bits.push(0); // whole words
            }
            gpu.queue.write_buffer(
                &self.inner.buf.buffer,
                self.inner.offset,
                bytemuck::cast_slice(&bits),
            );
            return Ok(());
        }
        self.check_len(data.len(), DType::F32)?;
        gpu.queue.write_buffer(
            &self.inner.buf.buffer,
            self.inner.offset,
            bytemuck::cast_slice(data),
        );
        Ok(())
    }

    /// A tensor of `dtype` (f32 or f16: rounded to nearest) holding `data`.
    pub fn from_f32_as(gpu: &Gpu, shape: &[usize], data: &[f32], dtype: DType) -> Result<Self> {
        let t = Self::zeros(gpu, shape, dtype)?;
        t.write_f32(gpu, data)?;
        Ok(t)
    }

    /// Overwrite the contents of a u32 tensor.
    pub fn write_u32(&self, gpu: &Gpu, data: &[u32]) -> Result<()> {
        self.check_len(data.len(), DType::U32)?;
        gpu.queue.write_buffer(
            &self.inner.buf.buffer,
            self.inner.offset,
            bytemuck::cast_slice(data),
        );
        Ok(())
    }

    fn check_len(&self, len: usize, dtype: DType) -> Result<()> {
        if dtype != self.inner.dtype {
            bail!(
                "tensor {self:?} holds {:?}, not {dtype:?}",
                self.inner.dtype
            );
        }
        if len != self.numel() {
            bail!("tensor {self:?} holds {} values, got {len}", self.numel());
        }
        Ok(())
    }

    /// Read the values back (blocks on the GPU); f16 values are widened exactly.
    pub fn to_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = crate::gpu::read_bytes(
            gpu,
            &self.inner.buf.buffer,
            self.inner.offset,
            self.byte_len(),
        )?;
        if self.inner.dtype == DType::F16 {
            return Ok(bytes
                .chunks_exact(2)
                .take(self.numel())
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect());
        }
        Ok(bytemuck::cast_slice(&bytes[..self.numel() * 4]).to_vec())
    }

    /// Read a u32 tensor back (blocks on the GPU).
    pub fn to_u32(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        let bytes = crate::gpu::read_bytes(
            gpu,
            &self.inner.buf.buffer,
            self.inner.offset,
            self.numel() as u64 * 4,
        )?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Unique id (identity of this view, used by the tape).
    pub fn id(&self) -> usize {
        self.inner.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.inner.shape
    }
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }
    pub fn numel(&self) -> usize {
        self.inner.shape.iter().product()
    }
    /// Bytes of storage the values take (whole 4-byte words).
    pub fn byte_len(&self) -> u64 {
        byte_len(self.numel(), self.inner.dtype)
    }
    pub fn requires_grad(&self) -> bool {
        self.inner.requires_grad
    }
    /// Byte offset in the underlying buffer.
    pub fn offset(&self) -> u64 {
        self.inner.offset
    }
    /// The underlying wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.inner.buf.buffer
    }
    /// The shared buffer this view lives in.
    pub fn storage(&self) -> &Arc<GpuBuffer> {
        &self.inner.buf
    }

    /// Bind as a read-only storage buffer.
    pub fn read(&self) -> Binding<'_> {
        self.bind(Access::Read)
    }
    /// Bind as a read-write storage buffer.
    pub fn write(&self) -> Binding<'_> {
        self.bind(Access::ReadWrite)
    }
    /// Bind as a texture through `m`, this tensor's texture mirror (see
    /// [`crate::gpu::TexMirror`]; the launch refreshes it from this tensor first).
    pub fn mirrored<'a>(&'a self, m: &'a std::sync::Arc<crate::gpu::TexMirror>) -> Binding<'a> {
        Binding {
            tex: Some(m),
            ..self.bind(Access::Texture)
        }
    }
    fn bind(&self, access: Access) -> Binding<'_> {
        Binding {
            access,
            buffer: &self.inner.buf,
            offset: self.inner.offset,
            size: self.byte_len().max(4),
            half: self.inner.dtype == DType::F16,
            tex: None,
        }
    }
}
