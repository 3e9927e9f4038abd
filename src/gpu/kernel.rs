use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};

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
}

/// A compiled kernel: pipeline plus its explicit bind group layout.
pub struct Kernel {
    pub shader: &'static str,
    pub entry: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
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
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let k = Arc::new(Kernel {
            shader,
            entry,
            pipeline,
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
            })
            .collect();
        all.push(Binding {
            access: Access::Uniform,
            buffer: &pbuf,
            offset: 0,
            size: pbuf.size(),
            half: false,
        });
        Self::new(gpu, kernel, &all, Some(pbuf.clone()), workgroups)
    }

    /// Rewrite the parameter block (queued before the next submission).
    pub fn set_params(&self, gpu: &Gpu, params: &[u8]) {
        if let Some(p) = &self.params {
            gpu.queue.write_buffer(&p.buffer, 0, params);
        }
    }

    /// Encode this launch into a compute pass.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Encode `dispatches` into one compute pass of a fresh command buffer and submit it, without
/// waiting.
pub fn submit(gpu: &Gpu, dispatches: &[&Dispatch]) -> wgpu::SubmissionIndex {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for d in dispatches {
            d.encode(&mut pass);
        }
    }
    gpu.queue.submit([enc.finish()])
}
