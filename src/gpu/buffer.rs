use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;

use super::Gpu;

/// A GPU storage buffer whose size is counted in [`Gpu::bytes_in_use`] while it lives.
///
/// Every buffer is at least 4 bytes: some drivers reject zero-sized bindings.
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    size: u64,
    counter: Arc<AtomicU64>,
}

impl GpuBuffer {
    /// A zero-filled storage buffer of `size` bytes (rounded up to a multiple of 4, at least 4).
    pub fn new(gpu: &Gpu, label: &str, size: u64, extra: wgpu::BufferUsages) -> Result<Self> {
        let size = size.max(4).div_ceil(4) * 4;
        if size > gpu.limits.max_buffer_size {
            anyhow::bail!(
                "buffer {label:?} needs {size} bytes; the adapter allows at most {} per buffer",
                gpu.limits.max_buffer_size
            );
        }
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST
                | extra,
            mapped_at_creation: false,
        });
        gpu.bytes_in_use.fetch_add(size, Ordering::Relaxed);
        Ok(Self {
            buffer,
            size,
            counter: gpu.bytes_in_use.clone(),
        })
    }

    /// A small uniform buffer holding `data` (kernel parameters).
    pub fn uniform(gpu: &Gpu, label: &str, data: &[u8]) -> Self {
        let size = (data.len() as u64).max(16).div_ceil(16) * 16;
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&buffer, 0, data);
        gpu.bytes_in_use.fetch_add(size, Ordering::Relaxed);
        Self {
            buffer,
            size,
            counter: gpu.bytes_in_use.clone(),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// Copy `size` bytes at `offset` of `src` back to the host. Blocks on the GPU: use it only for
/// what the caller asked for, once per step.
pub fn read_bytes(gpu: &Gpu, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
    let size = size.div_ceil(4) * 4;
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: size.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    gpu.queue.submit([enc.finish()]);
    map_read(gpu, &staging, size)
}

/// Map an already-filled MAP_READ buffer and return its first `size` bytes.
pub fn map_read(gpu: &Gpu, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    let slice = staging.slice(..size.max(4));
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait()?;
    rx.recv()
        .map_err(|_| anyhow::anyhow!("buffer map callback never ran"))?
        .map_err(|e| anyhow::anyhow!("mapping a readback buffer: {e}"))?;
    let data = slice
        .get_mapped_range()
        .map_err(|e| anyhow::anyhow!("reading a mapped buffer: {e}"))?
        .to_vec();
    staging.unmap();
    Ok(data[..size as usize].to_vec())
}
