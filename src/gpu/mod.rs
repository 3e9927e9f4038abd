//! The GPU runtime: adapter selection, the device, buffers with memory accounting, and the
//! compiled-kernel cache.

mod buffer;
mod context;
mod kernel;
mod texture;

pub use buffer::{GpuBuffer, map_read, read_bytes};
pub use context::{
    AdapterSummary, Backend, Gpu, GpuOptions, LLVMPIPE_THREADS_ENV, list_adapters,
    llvmpipe_threads, oversubscribe_llvmpipe,
};
pub use kernel::{Access, Binding, Dispatch, Kernel, KernelCache, Recorder, grid_1d, submit};
pub use texture::{MirrorCache, TEX_WIDTH, TexMirror, can_mirror, mirror_fits};
