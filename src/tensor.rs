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
    /// Labels and indices.
    U32,
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
        let bytes = shape.iter().product::<usize>() as u64 * 4;
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
        let n = shape.iter().product::<usize>() as u64;
        let buf = Arc::new(GpuBuffer::new(
            gpu,
            "tensor",
            n * 4,
            wgpu::BufferUsages::empty(),
        )?);
        Self::view(buf, 0, shape, dtype, false)
    }

    /// An f32 tensor holding `data`.
    pub fn from_f32(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Self> {
        let t = Self::zeros(gpu, shape, DType::F32)?;
        t.write_f32(gpu, data)?;
        Ok(t)
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

    /// Overwrite the contents (queued; takes effect before the next submission).
    pub fn write_f32(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        self.check_len(data.len(), DType::F32)?;
        gpu.queue.write_buffer(
            &self.inner.buf.buffer,
            self.inner.offset,
            bytemuck::cast_slice(data),
        );
        Ok(())
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

    /// Read the values back (blocks on the GPU).
    pub fn to_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = crate::gpu::read_bytes(
            gpu,
            &self.inner.buf.buffer,
            self.inner.offset,
            self.numel() as u64 * 4,
        )?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
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
    fn bind(&self, access: Access) -> Binding<'_> {
        Binding {
            access,
            buffer: &self.inner.buf,
            offset: self.inner.offset,
            size: (self.numel() as u64 * 4).max(4),
        }
    }
}
