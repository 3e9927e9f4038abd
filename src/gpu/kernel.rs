use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use anyhow::{Result, bail};

use super::texture::TexMirror;
use super::{Gpu, GpuBuffer};
use crate::shaders;

/// How a kernel sees one of its bindings; bindings are numbered in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform>` (kernel parameters)
    Uniform,
    /// `texture_2d<f32>` (unfilterable float): a tensor's [`TexMirror`], read with `textureLoad`.
    Texture,
}

/// One buffer range bound to a kernel.
pub struct Binding<'a> {
    pub access: Access,
    pub buffer: &'a Arc<GpuBuffer>,
    pub offset: u64,
    pub size: u64,
    /// The range holds f16 values: only the half-precision variants of typed shaders may bind
    /// it (a guard against an f32 kernel reading f16 bytes).
    pub half: bool,
    /// For [`Access::Texture`]: the mirror bound (`buffer` is then the tensor's storage, the
    /// copy's source).
    pub tex: Option<&'a Arc<TexMirror>>,
}

/// A kernel: its pipeline (compiled in the background, see [`KernelCache::get`]) plus its
/// explicit bind group layout.
pub struct Kernel {
    pub shader: &'static str,
    pub entry: &'static str,
    pipeline: OnceLock<wgpu::ComputePipeline>,
    /// The compilation still under way, taken by the first [`Kernel::pipeline`] call.
    job: Mutex<Option<JoinHandle<wgpu::ComputePipeline>>>,
    pub layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// The compiled pipeline, waiting for its compilation to finish. A panic of the compiling
    /// thread (wgpu's handler of an invalid pipeline) is raised again here.
    pub fn pipeline(&self) -> &wgpu::ComputePipeline {
        self.pipeline.get_or_init(|| {
            let job = self.job.lock().unwrap().take();
            match job
                .expect("a kernel has either a pipeline or a compilation")
                .join()
            {
                Ok(p) => p,
                Err(e) => std::panic::resume_unwind(e),
            }
        })
    }
}

/// At most this many pipelines compile at once: one per core (on llvmpipe a compilation is
/// single-threaded LLVM work, ~0.1-2 s per pipeline).
fn compile_slots() -> &'static (Mutex<usize>, Condvar) {
    static SLOTS: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (Mutex::new(n), Condvar::new())
    })
}

/// `LONGTAIL_COMPILE_LOG=1` prints every pipeline compilation and its time to stderr (where a
/// first step's seconds go).
fn compile_log() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LONGTAIL_COMPILE_LOG").is_some_and(|v| v != "0"))
}

/// Run `f` holding one of the [`compile_slots`].
fn in_compile_slot<T>(f: impl FnOnce() -> T) -> T {
    let (free, cv) = compile_slots();
    {
        let mut n = free.lock().unwrap();
        while *n == 0 {
            n = cv.wait(n).unwrap();
        }
        *n -= 1;
    }
    // Released on unwind too, so a failed compilation does not shrink the pool.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            let (free, cv) = compile_slots();
            *free.lock().unwrap() += 1;
            cv.notify_one();
        }
    }
    let _release = Release;
    f()
}

type KernelKey = (&'static str, &'static str, Vec<Access>, String);

/// Pipelines and bind group layouts, built once per (shader, entry, signature, constants).
///
/// Layouts are explicit rather than derived from the shader: derived layouts drop bindings an entry
/// point does not use, which would make one bind-group shape per entry point necessary.
pub struct KernelCache {
    device: wgpu::Device,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
}

impl KernelCache {
    pub(crate) fn new(device: wgpu::Device) -> Self {
        Self {
            device,
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
        }
    }

    /// Wait until every pipeline requested so far has compiled (they compile on background
    /// threads): for timings that should count running, not compiling.
    pub fn wait_all(&self) {
        let all: Vec<Arc<Kernel>> = self.kernels.lock().unwrap().values().cloned().collect();
        for k in all {
            k.pipeline();
        }
    }

    /// The kernel `entry` of `shaders/<shader>.wgsl` with the given binding signature and
    /// override constants (e.g. tile sizes).
    pub fn get(
        &self,
        shader: &'static str,
        entry: &'static str,
        sig: &[Access],
        constants: &[(&str, f64)],
    ) -> Result<Arc<Kernel>> {
        let ckey = constants
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let key = (shader, entry, sig.to_vec(), ckey);
        if let Some(k) = self.kernels.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        let src = shaders::source(shader)?;
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry(shader)
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(shader),
                            source: wgpu::ShaderSource::Wgsl(src.into()),
                        })
                })
                .clone()
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> = sig
            .iter()
            .enumerate()
            .map(|(i, a)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match a {
                    Access::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Access::Texture => wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: false },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    Access::Read | Access::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *a == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        // The pipeline compiles on its own thread: recording goes on (bind groups need only
        // the layout) and the first submission waits for it. A step's first recording meets
        // dozens of pipelines, and on a CPU adapter compiling them one after the other was
        // most of the first step's time.
        let device = self.device.clone();
        let constants: Vec<(String, f64)> =
            constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let log = compile_log().then(|| format!("{shader}::{entry} [{}]", key.3));
        let job = std::thread::Builder::new()
            .name(format!("compile {shader}::{entry}"))
            .spawn(move || {
                in_compile_slot(|| {
                    let constants: Vec<(&str, f64)> =
                        constants.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                    let t0 = std::time::Instant::now();
                    let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: Some(&pl),
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    });
                    if let Some(what) = log {
                        eprintln!(
                            "compiled {what} in {:.0} ms",
                            t0.elapsed().as_secs_f64() * 1e3
                        );
                    }
                    p
                })
            })?;
        let k = Arc::new(Kernel {
            shader,
            entry,
            pipeline: OnceLock::new(),
            job: Mutex::new(Some(job)),
            layout,
        });
        self.kernels.lock().unwrap().insert(key, k.clone());
        Ok(k)
    }
}

/// Split `n` workgroups into an x/y grid that respects the per-dimension limit. Shaders rebuild
/// the linear index as `wg.x + wg.y * num_workgroups.x` and ignore indices past `n`.
pub fn grid_1d(gpu: &Gpu, n: u32) -> [u32; 3] {
    let max = gpu.limits.max_compute_workgroups_per_dimension.max(1);
    let n = n.max(1);
    if n <= max {
        [n, 1, 1]
    } else {
        let y = n.div_ceil(max);
        [n.div_ceil(y), y, 1]
    }
}

/// One recorded kernel launch: pipeline, bound buffers and grid. Built once, replayed every step.
pub struct Dispatch {
    pub kernel: Arc<Kernel>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// The parameter block, kept so callers can rewrite it (e.g. the learning rate).
    pub params: Option<Arc<GpuBuffer>>,
    /// Every bound buffer: a recorded launch keeps its buffers (and their byte count) alive.
    _bound: Vec<Arc<GpuBuffer>>,
    /// Texture mirrors bound, kept alive with the launch.
    _textures: Vec<Arc<TexMirror>>,
    /// Mirrors to refresh (copy the tensor into) right before this launch: every bound one,
    /// unless the op clears it where an earlier launch of the same op already copied
    /// ([`Dispatch::skip_copies`]).
    copies: Vec<Arc<TexMirror>>,
    /// Bytes of the bound ranges (parameter block excluded): the launch's device-memory
    /// traffic if each is touched once, for the roofline of `bench --model`.
    pub bytes: f64,
    /// Floating-point operations, where the op that recorded the launch set them (matmul,
    /// convolutions); 0 otherwise.
    pub flops: f64,
}

impl Dispatch {
    /// Record a launch of `kernel` over `bindings` (in binding order) with `workgroups`.
    pub fn new(
        gpu: &Gpu,
        kernel: Arc<Kernel>,
        bindings: &[Binding<'_>],
        params: Option<Arc<GpuBuffer>>,
        workgroups: [u32; 3],
    ) -> Result<Self> {
        let max = gpu.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            bail!(
                "kernel {} needs {workgroups:?} workgroups; the adapter allows {max} per dimension",
                kernel.entry
            );
        }
        if bindings.iter().any(|b| b.half) && !kernel.shader.contains("f16") {
            bail!(
                "kernel {}::{} takes f32 tensors and was given an f16 one",
                kernel.shader,
                kernel.entry
            );
        }
        let max_bind = gpu.limits.max_storage_buffer_binding_size;
        let mut entries = Vec::with_capacity(bindings.len() + 1);
        for (i, b) in bindings.iter().enumerate() {
            if let Some(m) = b.tex {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: wgpu::BindingResource::TextureView(&m.view),
                });
                continue;
            }
            if b.access == Access::Texture {
                bail!(
                    "kernel {} binding {i}: a texture binding without its mirror",
                    kernel.entry
                );
            }
            if b.access != Access::Uniform && b.size > max_bind {
                bail!(
                    "kernel {} binding {i}: {} bytes exceed the adapter's storage binding limit \
                     of {max_bind} bytes",
                    kernel.entry,
                    b.size
                );
            }
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &b.buffer.buffer,
                    offset: b.offset,
                    size: std::num::NonZeroU64::new(b.size.max(4)),
                }),
            });
        }
        // The parameter block rides last in `bindings` when there is one: not traffic.
        let data = bindings.len() - usize::from(params.is_some() && !bindings.is_empty());
        let bytes = bindings[..data].iter().map(|b| b.size as f64).sum();
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &kernel.layout,
            entries: &entries,
        });
        Ok(Self {
            kernel,
            bind_group,
            workgroups,
            params,
            _bound: bindings.iter().map(|b| b.buffer.clone()).collect(),
            _textures: bindings.iter().filter_map(|b| b.tex.cloned()).collect(),
            copies: bindings.iter().filter_map(|b| b.tex.cloned()).collect(),
            bytes,
            flops: 0.0,
        })
    }

    /// Compile (or fetch) `shader::entry` and record a launch over `bindings`, with `params`
    /// (a `#[repr(C)]` struct's bytes) bound last as a uniform block.
    pub fn build(
        gpu: &Gpu,
        shader: &'static str,
        entry: &'static str,
        bindings: &[Binding<'_>],
        params: &[u8],
        workgroups: [u32; 3],
    ) -> Result<Self> {
        Self::build_with(gpu, shader, entry, bindings, params, workgroups, &[])
    }

    /// [`Dispatch::build`] with override constants (tile sizes).
    pub fn build_with(
        gpu: &Gpu,
        shader: &'static str,
        entry: &'static str,
        bindings: &[Binding<'_>],
        params: &[u8],
        workgroups: [u32; 3],
        constants: &[(&str, f64)],
    ) -> Result<Self> {
        let mut sig: Vec<Access> = bindings.iter().map(|b| b.access).collect();
        sig.push(Access::Uniform);
        let kernel = gpu.kernels.get(shader, entry, &sig, constants)?;
        let pbuf = Arc::new(GpuBuffer::uniform(gpu, entry, params));
        let mut all: Vec<Binding<'_>> = bindings
            .iter()
            .map(|b| Binding {
                access: b.access,
                buffer: b.buffer,
                offset: b.offset,
                size: b.size,
                half: b.half,
                tex: b.tex,
            })
            .collect();
        all.push(Binding {
            access: Access::Uniform,
            buffer: &pbuf,
            offset: 0,
            size: pbuf.size(),
            half: false,
            tex: None,
        });
        Self::new(gpu, kernel, &all, Some(pbuf.clone()), workgroups)
    }

    /// Rewrite the parameter block (queued before the next submission).
    pub fn set_params(&self, gpu: &Gpu, params: &[u8]) {
        if let Some(p) = &self.params {
            gpu.queue.write_buffer(&p.buffer, 0, params);
        }
    }

    /// Whether this launch copies into texture mirrors first (it must then be recorded with
    /// [`Dispatch::record`], not [`Dispatch::encode`]).
    pub fn has_copies(&self) -> bool {
        !self.copies.is_empty()
    }

    /// Drop this launch's mirror refreshes: an earlier launch of the same op, with nothing
    /// writing the tensor in between, already copied it.
    pub fn skip_copies(&mut self) {
        self.copies.clear();
    }

    /// Keep only the refreshes of `mirrors` (the others were refreshed by an earlier launch of
    /// the same op, with nothing writing their tensors in between).
    pub fn keep_copies_of(&mut self, mirrors: &[Arc<TexMirror>]) {
        self.copies
            .retain(|c| mirrors.iter().any(|m| Arc::ptr_eq(c, m)));
    }

    /// Record this launch: its mirrors' copies (between compute passes), then the launch.
    pub fn record(&self, rec: &mut Recorder) {
        if !self.copies.is_empty() {
            let enc = rec.encoder();
            for m in &self.copies {
                m.encode_copy(enc);
            }
        }
        self.encode_launch(rec.pass());
    }

    /// Encode this launch into a compute pass. Launches that refresh texture mirrors need the
    /// encoder between passes: use [`Dispatch::record`] for them.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        assert!(
            self.copies.is_empty(),
            "kernel {}::{} refreshes a texture mirror: record it with Dispatch::record",
            self.kernel.shader,
            self.kernel.entry
        );
        self.encode_launch(pass);
    }

    fn encode_launch(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Encode `dispatches` into a fresh command buffer and submit it, without waiting.
pub fn submit(gpu: &Gpu, dispatches: &[&Dispatch]) -> wgpu::SubmissionIndex {
    let mut rec = Recorder::new(gpu);
    for d in dispatches {
        d.record(&mut rec);
    }
    gpu.queue.submit([rec.finish()])
}

/// A command encoder that opens compute passes as launches need them and closes the open one
/// where a copy must go between passes (texture mirrors' refreshes, staging copies).
pub struct Recorder {
    // Declared first so the open pass drops before the encoder it was begun on.
    pass: Option<wgpu::ComputePass<'static>>,
    enc: wgpu::CommandEncoder,
}

impl Recorder {
    /// A recorder over a fresh command encoder.
    pub fn new(gpu: &Gpu) -> Self {
        Self {
            pass: None,
            enc: gpu.device.create_command_encoder(&Default::default()),
        }
    }

    /// The open compute pass (opened here if none is).
    pub fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            // forget_lifetime: the encoder stays locked until the pass drops, which
            // `encoder` and `finish` do first.
            self.pass = Some(
                self.enc
                    .begin_compute_pass(&Default::default())
                    .forget_lifetime(),
            );
        }
        self.pass.as_mut().expect("opened above")
    }

    /// The encoder, for copies: closes the open pass.
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.enc
    }

    /// An empty pass that writes GPU timestamps `begin` at its start and `end` at its end
    /// into `qs` (brackets for timing what is recorded between two such passes).
    pub fn timestamps(&mut self, qs: &wgpu::QuerySet, begin: Option<u32>, end: Option<u32>) {
        self.pass = None;
        let _ = self.enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("timestamps"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: begin,
                end_of_pass_write_index: end,
            }),
        });
    }

    /// Close the open pass and hand back the encoder.
    pub fn into_encoder(mut self) -> wgpu::CommandEncoder {
        self.pass = None;
        self.enc
    }

    /// Close the open pass and finish the command buffer.
    pub fn finish(self) -> wgpu::CommandBuffer {
        self.into_encoder().finish()
    }
}
