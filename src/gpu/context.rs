use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::kernel::KernelCache;

/// Which graphics API to run on. `Auto` tries every backend compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl Backend {
    fn backends(self) -> wgpu::Backends {
        match self {
            Backend::Auto => wgpu::Backends::all(),
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Metal => wgpu::Backends::METAL,
            Backend::Dx12 => wgpu::Backends::DX12,
            Backend::Gl => wgpu::Backends::GL,
        }
    }

    fn tried(self) -> &'static str {
        match self {
            Backend::Auto => "vulkan, metal, dx12, gl",
            Backend::Vulkan => "vulkan",
            Backend::Metal => "metal",
            Backend::Dx12 => "dx12",
            Backend::Gl => "gl",
        }
    }
}

/// How to pick the adapter: the CLI's global `--backend` / `--adapter` flags.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backend filter.
    pub backend: Backend,
    /// Adapter index (as printed by `longtail devices`) or a case-insensitive name substring.
    pub adapter: Option<String>,
}

impl GpuOptions {
    /// Options from `LONGTAIL_BACKEND` / `LONGTAIL_ADAPTER`, for tests and library users.
    pub fn from_env() -> Result<Self> {
        let backend = match std::env::var("LONGTAIL_BACKEND") {
            Ok(s) if !s.is_empty() => {
                <Backend as clap::ValueEnum>::from_str(&s, true).map_err(|_| {
                    anyhow::anyhow!(
                        "LONGTAIL_BACKEND={s:?}: expected one of auto, vulkan, metal, dx12, gl"
                    )
                })?
            }
            _ => Backend::Auto,
        };
        let adapter = std::env::var("LONGTAIL_ADAPTER")
            .ok()
            .filter(|s| !s.is_empty());
        Ok(Self { backend, adapter })
    }
}

/// What `longtail devices` prints about one adapter.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_size: [u32; 3],
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub timestamp_query: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// Fewest and most lanes a subgroup may have on this adapter (wgpu's bounds, 4 and 128,
    /// where the driver does not say).
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
}

impl AdapterSummary {
    fn new(index: usize, adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let l = adapter.limits();
        let f = adapter.features();
        Self {
            index,
            name: info.name,
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_compute_workgroup_size: [
                l.max_compute_workgroup_size_x,
                l.max_compute_workgroup_size_y,
                l.max_compute_workgroup_size_z,
            ],
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
        }
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "[{}] {} ({}, {}, driver: {} {})",
            self.index, self.name, self.backend, self.device_type, self.driver, self.driver_info
        )?;
        writeln!(
            f,
            "    storage binding {} MiB, buffer {} MiB, storage buffers/stage {}",
            self.max_storage_buffer_binding_size >> 20,
            self.max_buffer_size >> 20,
            self.max_storage_buffers_per_shader_stage
        )?;
        writeln!(
            f,
            "    workgroup size {:?}, invocations {}, workgroup storage {} B, workgroups/dim {}",
            self.max_compute_workgroup_size,
            self.max_compute_invocations_per_workgroup,
            self.max_compute_workgroup_storage_size,
            self.max_compute_workgroups_per_dimension
        )?;
        write!(
            f,
            "    features: timestamp-query={} shader-f16={} subgroups={} (size {}..{})",
            self.timestamp_query,
            self.shader_f16,
            self.subgroups,
            self.subgroup_min_size,
            self.subgroup_max_size
        )
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Adapters in a stable order: by backend preference (Vulkan, Metal, DX12, GL), then as enumerated.
fn sorted_adapters(backend: Backend) -> Vec<wgpu::Adapter> {
    let inst = instance(backend.backends());
    let mut adapters = pollster::block_on(inst.enumerate_adapters(backend.backends()));
    let rank = |b: wgpu::Backend| match b {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 3,
        _ => 4,
    };
    adapters.sort_by_key(|a| rank(a.get_info().backend));
    adapters
}

/// The variable that sets the size of llvmpipe's compute thread pool (Mesa's software Vulkan
/// driver; no other driver reads it).
pub const LLVMPIPE_THREADS_ENV: &str = "LP_NUM_THREADS";

static LLVMPIPE_THREADS_SET: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `LP_NUM_THREADS` as llvmpipe will read it, and whether [`oversubscribe_llvmpipe`] set it
/// (rather than the user); `None` when it is unset (llvmpipe then takes one thread per core).
pub fn llvmpipe_threads() -> Option<(String, bool)> {
    let v = std::env::var(LLVMPIPE_THREADS_ENV).ok()?;
    Some((
        v,
        LLVMPIPE_THREADS_SET.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

/// Give llvmpipe's compute thread pool two threads per core unless `LP_NUM_THREADS` is set or
/// there is only one core (returns the value it set). llvmpipe hands each of its threads a
/// fixed, equal share of a dispatch's workgroups up front, so a thread that loses its core for
/// a while (the host's load, the driver's own queue thread) leaves the other cores idle at the
/// end of every dispatch; with twice as many threads the kernel's scheduler balances the shares
/// over the cores. Measured on 2 cores (benches/NOTES.md, session 11, alternating rounds): the
/// quick preset's step ~1.08x, ResNet-32's ~1.05x; four threads per core no better than two.
/// The thread count changes no result: workgroups are independent. Mesa clamps the value to its
/// own maximum, as it does its default of one thread per core.
///
/// Call it first thing in `main`, before any other thread exists (it sets an environment
/// variable) and before the first adapter is opened (Mesa reads it then).
pub fn oversubscribe_llvmpipe() -> Option<usize> {
    if std::env::var_os(LLVMPIPE_THREADS_ENV).is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One core: llvmpipe runs dispatches on its queue thread; nothing to balance.
    if cores < 2 {
        return None;
    }
    LLVMPIPE_THREADS_SET.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = 2 * cores;
    // SAFETY: the caller guarantees that no other thread exists yet, so nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var(LLVMPIPE_THREADS_ENV, n.to_string()) };
    Some(n)
}

/// Every adapter visible with this backend filter, numbered as `--adapter` expects.
pub fn list_adapters(backend: Backend) -> Vec<AdapterSummary> {
    sorted_adapters(backend)
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterSummary::new(i, a))
        .collect()
}

fn no_adapter_error(backend: Backend) -> anyhow::Error {
    anyhow::anyhow!(
        "no GPU adapter found (backends tried: {}).\n\
         longtail needs a Vulkan, Metal, DX12 or GL driver. On Debian/Ubuntu without a GPU, install \
         Mesa's software Vulkan driver:\n    sudo apt-get install mesa-vulkan-drivers\n\
         On a machine with a GPU, install its vendor's Vulkan driver. `longtail devices` lists what \
         is visible.",
        backend.tried()
    )
}

fn pick_adapter(opts: &GpuOptions) -> Result<(usize, wgpu::Adapter)> {
    // `auto` prefers the native APIs; GL (which probes EGL/X and may print warnings) is tried
    // only when none of them has an adapter, or when an adapter is named explicitly.
    let mut adapters = if opts.backend == Backend::Auto && opts.adapter.is_none() {
        let inst = instance(wgpu::Backends::PRIMARY);
        pollster::block_on(inst.enumerate_adapters(wgpu::Backends::PRIMARY))
    } else {
        Vec::new()
    };
    if adapters.is_empty() {
        adapters = sorted_adapters(opts.backend);
    }
    if adapters.is_empty() {
        return Err(no_adapter_error(opts.backend));
    }
    if let Some(sel) = &opts.adapter {
        if let Ok(i) = sel.parse::<usize>() {
            let n = adapters.len();
            return adapters
                .into_iter()
                .enumerate()
                .nth(i)
                .with_context(|| format!("--adapter {i}: only {n} adapter(s) (indices 0..{n})"));
        }
        let needle = sel.to_lowercase();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .enumerate()
            .find(|(_, a)| a.get_info().name.to_lowercase().contains(&needle))
            .with_context(|| {
                format!("--adapter {sel:?}: no adapter name contains it; adapters: {names:?}")
            });
    }
    // Prefer real GPUs over software rasterisers; ties keep the backend order.
    let score = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let best = adapters
        .iter()
        .enumerate()
        .min_by_key(|(i, a)| (score(a), *i))
        .map(|(i, _)| i)
        .unwrap_or(0);
    Ok(adapters
        .into_iter()
        .enumerate()
        .nth(best)
        .expect("index in range"))
}

/// The host CPU as a CPU adapter's tune cache keys it: the model name (Linux's /proc/cpuinfo)
/// and the vector extensions llvmpipe compiles for.
fn host_cpu() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[cfg(target_arch = "x86_64")]
    let isa = if std::arch::is_x86_feature_detected!("avx512f") {
        "avx512"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        "avx2"
    } else {
        "sse"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let isa = std::env::consts::ARCH;
    format!("{model} {isa}")
}

/// The device everything runs on. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

/// Shared state behind [`Gpu`].
pub struct GpuInner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub kernels: KernelCache,
    /// Which kernel variant each op records (see [`crate::tune`]).
    pub tuner: crate::tune::Tuner,
    pub(crate) bytes_in_use: Arc<AtomicU64>,
    /// Texture mirrors of tensors alive on this device (see [`crate::gpu::TexMirror`]).
    pub mirrors: super::MirrorCache,
    /// How the adapter was chosen (replicas are opened with the same backend).
    opts: GpuOptions,
}

impl std::ops::Deref for Gpu {
    type Target = GpuInner;
    fn deref(&self) -> &GpuInner {
        &self.inner
    }
}

impl Gpu {
    /// Open the adapter chosen by `opts` with its full limits (not the downlevel defaults), so
    /// large buffers and workgroups work.
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        let (index, adapter) = pick_adapter(opts)?;
        let summary = AdapterSummary::new(index, &adapter);
        let limits = adapter.limits();
        // Subgroups where offered: the subgroup batch-norm variant is then a tuning candidate;
        // shader-f16 for `--precision f16`.
        let features = adapter.features()
            & (wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::SUBGROUP
                | wgpu::Features::SHADER_F16);
        let desc = wgpu::DeviceDescriptor {
            label: Some("longtail"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .with_context(|| format!("opening device {:?}", summary.name))?;
        if limits.max_storage_buffers_per_shader_stage < 8 {
            bail!(
                "adapter {:?} allows only {} storage buffers per shader stage; longtail needs 8",
                summary.name,
                limits.max_storage_buffers_per_shader_stage
            );
        }
        let kernels = KernelCache::new(device.clone());
        // A CPU adapter's kernels are the host's instructions: llvmpipe's code (and so the best
        // variant) differs between hosts with and without AVX-512 behind the same adapter name,
        // so its tune cache is per host kind too.
        let driver = if summary.device_type == "Cpu" {
            format!("{} on {}", summary.driver_info, host_cpu())
        } else {
            summary.driver_info.clone()
        };
        let tuner = crate::tune::Tuner::new(&summary.name, &summary.backend, &driver);
        Ok(Self {
            inner: Arc::new(GpuInner {
                device,
                queue,
                summary,
                limits,
                features,
                kernels,
                tuner,
                bytes_in_use: Arc::new(AtomicU64::new(0)),
                mirrors: Default::default(),
                opts: opts.clone(),
            }),
        })
    }

    /// How this device's adapter was chosen.
    pub fn options(&self) -> &GpuOptions {
        &self.opts
    }

    /// Open `adapter` (an index from `longtail devices` or a name part; the same adapter as
    /// this one gives a second device on it) with this device's backend, for a replica of a
    /// data-parallel step. Its tuner starts off: a replica of the same adapter records this
    /// device's choices (pins them), another adapter is configured to tune for itself.
    pub fn open_replica(&self, adapter: &str) -> Result<Gpu> {
        Gpu::new(&GpuOptions {
            backend: self.opts.backend,
            adapter: Some(adapter.to_string()),
        })
        .with_context(|| format!("opening device {adapter:?} of --devices"))
    }

    /// Open the device chosen by `LONGTAIL_BACKEND` / `LONGTAIL_ADAPTER` (tests, benches).
    pub fn from_env() -> Result<Self> {
        Self::new(&GpuOptions::from_env()?)
    }

    /// Bytes of GPU buffers currently alive that were allocated through [`crate::gpu::GpuBuffer`].
    pub fn bytes_in_use(&self) -> u64 {
        self.bytes_in_use.load(Ordering::Relaxed)
    }

    /// One-line description of the adapter, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {}, {})",
            self.summary.name,
            self.summary.backend,
            self.summary.device_type,
            self.summary.driver_info
        )
    }

    /// Whether the adapter is a CPU (llvmpipe, WARP, SwiftShader): the ops' CPU-shaped
    /// heuristics key on it.
    pub fn is_cpu(&self) -> bool {
        self.summary.device_type == "Cpu"
    }

    /// Whether subgroup operations are enabled on this device.
    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Whether f16 shaders (`shader-f16`) are enabled on this device: `--precision f16`.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether GPU timestamp queries are enabled on this device.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))?;
        Ok(())
    }
}
