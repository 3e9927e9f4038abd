//! Per-adapter choice of kernel variants, by measurement.
//!
//! Ops with more than one verified variant (convolution forward / dgrad / wgrad, matmul, batch
//! norm) ask [`Tuner::choose`] which one to record. The answer depends on the mode:
//!
//! - [`TuneMode::Off`]: the built-in heuristic (the first candidate the op lists), no timing.
//! - [`TuneMode::Cached`]: the choice stored in the cache for this (adapter, driver, backend,
//!   kernel sources, op, shape); on a miss the candidates are timed once and the winner stored.
//! - [`TuneMode::Full`]: time every candidate again and overwrite the cache.
//!
//! Choices pinned from a run directory (`tune.json`, see [`Tuner::pin`]) win over all three, so a
//! resumed run records the same kernels it started with.
//!
//! The cache is one JSON file per adapter in the user cache directory
//! (`$XDG_CACHE_HOME/longtail/tune` or `~/.cache/longtail/tune`; `--tune-cache DIR` or
//! `LONGTAIL_TUNE_CACHE` override). Its key includes a hash of every embedded shader, so a
//! changed kernel is timed again rather than trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Measures one candidate: (variant, best seconds so far) to seconds, or `None` when the
/// variant does not apply at the shape.
pub type TimeFn<'a> = dyn FnMut(&str, Option<f64>) -> Result<Option<f64>> + 'a;

/// How variants are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TuneMode {
    /// The built-in heuristic; nothing is timed or written.
    #[default]
    Off,
    /// The cached choice; time the candidates on a miss and store the winner.
    Cached,
    /// Time every candidate again and overwrite the cached choices.
    Full,
}

impl std::fmt::Display for TuneMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TuneMode::Off => "off",
            TuneMode::Cached => "cached",
            TuneMode::Full => "full",
        })
    }
}

/// One decision: the variant and, when it was measured, every candidate's median milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub variant: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ms: BTreeMap<String, f64>,
    /// `measured`, `cache`, `heuristic` or `pinned`.
    #[serde(default)]
    pub source: String,
}

/// The on-disk cache of one adapter.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CacheFile {
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    /// Hash of the embedded shader sources the timings were taken with.
    pub kernels: String,
    /// `op shape` -> choice.
    pub entries: BTreeMap<String, Choice>,
}

struct State {
    mode: TuneMode,
    dir: Option<PathBuf>,
    cache: Option<CacheFile>,
    pinned: BTreeMap<String, String>,
    used: BTreeMap<String, Choice>,
}

/// The variant chooser of one device (see the module docs).
pub struct Tuner {
    adapter: String,
    backend: String,
    driver: String,
    state: Mutex<State>,
}

/// The cache directory when neither `--tune-cache` nor `LONGTAIL_TUNE_CACHE` is given.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("LONGTAIL_TUNE_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("longtail").join("tune")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("longtail").join("tune")))
}

/// Short hash of every embedded shader: cached timings are only trusted for the same kernels.
pub fn kernels_hash() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, src) in crate::shaders::ALL {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(src.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_name(adapter: &str, backend: &str, driver: &str) -> String {
    let raw = format!("{adapter}-{backend}-{driver}");
    let mut s: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // Long names keep their start and a hash of the whole: two hosts whose CPU names differ
    // only past the cut (see the CPU adapters' driver key in src/gpu/context.rs) get two files.
    if s.len() > 120 {
        use sha2::{Digest, Sha256};
        let h: String = Sha256::digest(raw.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        s.truncate(100);
        s = format!("{s}_{h}");
    }
    format!("{s}.json")
}

impl Tuner {
    /// A tuner for the adapter described by these strings, in [`TuneMode::Off`].
    pub fn new(adapter: &str, backend: &str, driver: &str) -> Self {
        Self {
            adapter: adapter.into(),
            backend: backend.into(),
            driver: driver.into(),
            state: Mutex::new(State {
                mode: TuneMode::Off,
                dir: None,
                cache: None,
                pinned: BTreeMap::new(),
                used: BTreeMap::new(),
            }),
        }
    }

    /// Set the mode and the cache directory (`None`: [`default_cache_dir`]).
    pub fn configure(&self, mode: TuneMode, dir: Option<PathBuf>) -> Result<()> {
        let dir = dir.or_else(default_cache_dir);
        if mode != TuneMode::Off && dir.is_none() {
            bail!(
                "--tune {mode} needs a cache directory: set HOME or XDG_CACHE_HOME, or pass \
                 --tune-cache DIR"
            );
        }
        let mut s = self.state.lock().unwrap();
        s.mode = mode;
        s.dir = dir;
        s.cache = None;
        Ok(())
    }

    /// Take `other`'s mode and cache directory (a device opened for the same run).
    pub fn configure_like(&self, other: &Tuner) -> Result<()> {
        let (mode, dir) = {
            let s = other.state.lock().unwrap();
            (s.mode, s.dir.clone())
        };
        self.configure(mode, dir)
    }

    /// The current mode.
    pub fn mode(&self) -> TuneMode {
        self.state.lock().unwrap().mode
    }

    /// The cache file of this adapter (whether or not it exists yet).
    pub fn cache_path(&self) -> Option<PathBuf> {
        let s = self.state.lock().unwrap();
        s.dir
            .as_ref()
            .map(|d| d.join(file_name(&self.adapter, &self.backend, &self.driver)))
    }

    /// Force these choices (`op shape` -> variant), e.g. those a run directory recorded.
    pub fn pin(&self, choices: BTreeMap<String, String>) {
        self.state.lock().unwrap().pinned.extend(choices);
    }

    /// Every choice made since the device was opened (what a run directory records).
    pub fn used(&self) -> BTreeMap<String, Choice> {
        self.state.lock().unwrap().used.clone()
    }

    fn load(&self, s: &mut State) -> Result<()> {
        if s.cache.is_some() {
            return Ok(());
        }
        let fresh = CacheFile {
            adapter: self.adapter.clone(),
            backend: self.backend.clone(),
            driver: self.driver.clone(),
            kernels: kernels_hash(),
            entries: BTreeMap::new(),
        };
        let path = s
            .dir
            .as_ref()
            .map(|d| d.join(file_name(&self.adapter, &self.backend, &self.driver)));
        let cache = match path {
            Some(p) if p.exists() => {
                let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                match serde_json::from_slice::<CacheFile>(&text) {
                    Ok(c) if c.kernels == fresh.kernels && c.adapter == fresh.adapter => c,
                    // Other kernels (a new build) or a damaged file: start over, say so once.
                    Ok(_) => {
                        eprintln!(
                            "note: tune cache {} was measured with other kernels: tuning again",
                            p.display()
                        );
                        fresh
                    }
                    Err(e) => {
                        eprintln!(
                            "warning: tune cache {} is not valid ({e}): tuning again",
                            p.display()
                        );
                        fresh
                    }
                }
            }
            _ => fresh,
        };
        s.cache = Some(cache);
        Ok(())
    }

    fn store(&self, s: &State) -> Result<()> {
        let (Some(dir), Some(cache)) = (&s.dir, &s.cache) else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the tune cache directory {}", dir.display()))?;
        let path = dir.join(file_name(&self.adapter, &self.backend, &self.driver));
        crate::checkpoint::write_atomic(&path, &serde_json::to_vec_pretty(cache)?)
    }

    /// Which of `candidates` (in heuristic order: the first is the default) to record for `op`
    /// at `shape`. `time(variant)` measures one candidate in seconds, or `None` when the variant
    /// does not apply at this shape; it is only called when the mode asks for a measurement.
    pub fn choose(
        &self,
        op: &str,
        shape: &str,
        candidates: &[&str],
        time: &mut TimeFn<'_>,
    ) -> Result<String> {
        let key = format!("{op} {shape}");
        let Some(first) = candidates.first() else {
            bail!("{op}: no kernel variant to choose from");
        };
        let decided = {
            let mut s = self.state.lock().unwrap();
            if let Some(v) = s.pinned.get(&key).cloned() {
                if !candidates.contains(&v.as_str()) {
                    bail!(
                        "the run pins kernel variant {v:?} for {key}, which this build does not \
                         have (variants: {}); delete tune.json from the run directory to re-tune",
                        candidates.join(", ")
                    );
                }
                Some(Choice {
                    variant: v,
                    ms: BTreeMap::new(),
                    source: "pinned".into(),
                })
            } else if let Some(c) = s.used.get(&key) {
                // Decided earlier in this process: every layer of one shape runs one variant.
                Some(c.clone())
            } else if candidates.len() == 1 || s.mode == TuneMode::Off {
                Some(Choice {
                    variant: first.to_string(),
                    ms: BTreeMap::new(),
                    source: "heuristic".into(),
                })
            } else if s.mode == TuneMode::Cached {
                self.load(&mut s)?;
                let c = s.cache.as_ref().and_then(|c| c.entries.get(&key)).cloned();
                c.filter(|c| candidates.contains(&c.variant.as_str()))
                    .map(|c| Choice {
                        source: "cache".into(),
                        ..c
                    })
            } else {
                None
            }
        };
        let choice = match decided {
            Some(c) => c,
            None => {
                // Measure without holding the lock: timing records and runs kernels.
                let mut ms = BTreeMap::new();
                let mut best: Option<(f64, &str)> = None;
                for &v in candidates {
                    if let Some(t) = time(v, best.map(|b| b.0))? {
                        ms.insert(v.to_string(), t * 1e3);
                        if best.is_none_or(|b| t < b.0) {
                            best = Some((t, v));
                        }
                    }
                }
                let Some((_, v)) = best else {
                    bail!("{key}: none of the variants {candidates:?} applies");
                };
                let c = Choice {
                    variant: v.to_string(),
                    ms,
                    source: "measured".into(),
                };
                let mut s = self.state.lock().unwrap();
                self.load(&mut s)?;
                if let Some(cache) = s.cache.as_mut() {
                    cache.entries.insert(key.clone(), c.clone());
                }
                self.store(&s)?;
                c
            }
        };
        let v = choice.variant.clone();
        self.state.lock().unwrap().used.insert(key, choice);
        Ok(v)
    }
}

/// Write the choices a run used to `RUN_DIR/tune.json` (atomic).
pub fn record(dir: &Path, tuner: &Tuner) -> Result<()> {
    #[derive(Serialize)]
    struct Rec<'a> {
        adapter: &'a str,
        backend: &'a str,
        driver: &'a str,
        kernels: String,
        mode: TuneMode,
        choices: BTreeMap<String, Choice>,
    }
    let s = tuner.state.lock().unwrap();
    let rec = Rec {
        adapter: &tuner.adapter,
        backend: &tuner.backend,
        driver: &tuner.driver,
        kernels: kernels_hash(),
        mode: s.mode,
        choices: s.used.clone(),
    };
    drop(s);
    crate::checkpoint::write_atomic(&dir.join("tune.json"), &serde_json::to_vec_pretty(&rec)?)
}

/// The choices recorded in `RUN_DIR/tune.json`, when there is one (for [`Tuner::pin`]).
pub fn recorded(dir: &Path) -> Result<Option<BTreeMap<String, String>>> {
    #[derive(Deserialize)]
    struct Rec {
        choices: BTreeMap<String, Choice>,
    }
    let p = dir.join("tune.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let rec: Rec = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: not a tune record (expected {{\"choices\": {{\"op shape\": {{\"variant\": ...}}}}}})",
            p.display()
        )
    })?;
    Ok(Some(
        rec.choices
            .into_iter()
            .map(|(k, c)| (k, c.variant))
            .collect(),
    ))
}

/// Deterministic values in [-1, 1) of `shape`: the inputs candidates are timed on (timing does
/// not depend on the values, only NaN/denormal-free data matters).
pub fn scratch(gpu: &crate::gpu::Gpu, shape: &[usize]) -> Result<crate::tensor::Tensor> {
    scratch_as(gpu, shape, crate::tensor::DType::F32)
}

/// [`scratch`] of element type `dtype` (f32 or f16).
pub fn scratch_as(
    gpu: &crate::gpu::Gpu,
    shape: &[usize],
    dtype: crate::tensor::DType,
) -> Result<crate::tensor::Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect();
    crate::tensor::Tensor::from_f32_as(gpu, shape, &v, dtype)
}

/// Time one candidate's launches: compile and warm up, then stop early when one run is already
/// 3x slower than `best` (seconds); slow candidates (> 50 ms) take the median of 3 wall-clock
/// runs, fast ones [`crate::bench::time_case`]'s median of 3 timed samples. Seconds per set.
pub fn time_launches(
    gpu: &crate::gpu::Gpu,
    case: &crate::bench::Case,
    best: Option<f64>,
) -> Result<f64> {
    case.run_once(gpu)?; // pipeline compilation, first touch
    let one = case.run_once(gpu)?;
    if best.is_some_and(|b| one > 3.0 * b) {
        return Ok(one);
    }
    if one > 0.05 {
        let mut t = [one, case.run_once(gpu)?, case.run_once(gpu)?];
        t.sort_by(f64::total_cmp);
        return Ok(t[1]);
    }
    Ok(crate::bench::time_case(gpu, case, 3)?.ms * 1e-3)
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_cache_names_stay_distinct_and_short() {
        let long = "x".repeat(150);
        let a = super::file_name("llvmpipe", "vulkan", &format!("{long} avx2"));
        let b = super::file_name("llvmpipe", "vulkan", &format!("{long} avx512"));
        assert_ne!(a, b);
        assert!(a.len() <= 120 + ".json".len(), "{a}");
        assert_eq!(super::file_name("a b", "vulkan", "d"), "a_b_vulkan_d.json");
    }
}
