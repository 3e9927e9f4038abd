//! The run directory's checkpoint sets: what `--resume` continues from, saved so that a kill at
//! any point leaves either the previous complete set or the new one, never a mix.
//!
//! Each finished epoch writes `checkpoints/epoch-NNNNN/` (the model, the optimizer state,
//! `state.json`, `metrics.jsonl` and, when the epoch is a new best, `best.safetensors`), then
//! `MANIFEST.json` last, holding every file's size and SHA-256: the manifest's rename is the
//! commit point. Only after it are the user-facing copies at the top of the run directory
//! (`last.safetensors`, `best.safetensors`, `state.json`, `metrics.jsonl`) replaced, and older
//! sets pruned (the newest two stay, plus the one holding the best weights). `--resume` takes the
//! newest set whose manifest verifies, says which ones it skipped and why, and republishes the
//! top-level copies from it.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Folder of the checkpoint sets inside a run directory.
pub const SETS: &str = "checkpoints";
/// The commit record of a set.
pub const MANIFEST: &str = "MANIFEST.json";
/// Environment hook for crash tests: stop the process (exit code [`FAULT_EXIT_CODE`]) right
/// after the N-th write point of a run's files. Tests only.
pub const FAULT_ENV: &str = "LONGTAIL_FAULT_AFTER_WRITES";
/// Exit code of a process stopped by [`FAULT_ENV`].
pub const FAULT_EXIT_CODE: i32 = 86;

thread_local! {
    /// Write points passed so far on this thread, the one to stop at (0: none), and whether to
    /// exit the process there. Per thread: a run writes its files on the thread that trains, and
    /// tests running side by side in one process must not trip each other's hooks.
    static FAULT: Cell<(usize, usize, bool)> = const { Cell::new((0, 0, false)) };
}

/// Tests: make the `n`-th write point from now, on this thread, fail as a crash would (`None`:
/// never). The failing write returns an error and nothing is cleaned up, so the files are left
/// exactly as a kill at that point would leave them.
pub fn set_fault_after(n: Option<usize>) {
    FAULT.set((0, n.unwrap_or(0), false));
}

/// Read [`FAULT_ENV`] (the CLI calls this once, on its main thread): the process then exits at
/// that write point.
pub fn fault_from_env() {
    if let Some(n) = std::env::var(FAULT_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        FAULT.set((0, n, true));
    }
}

/// A place where a crash could happen (after a temp file is written, after a rename).
pub fn fault_point(what: &Path) -> Result<()> {
    let (done, at, exit) = FAULT.get();
    if at == 0 {
        return Ok(());
    }
    let n = done + 1;
    FAULT.set((n, at, exit));
    if n == at {
        if exit {
            eprintln!(
                "{FAULT_ENV}: stopping at write point {n} ({})",
                what.display()
            );
            std::process::exit(FAULT_EXIT_CODE);
        }
        bail!("simulated crash at write point {n} ({})", what.display());
    }
    Ok(())
}

/// Fail early, with the reason, when files cannot be created in `dir` (before an epoch of work
/// is spent).
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the run directory {}", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("the run directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    sha256: String,
}

/// `MANIFEST.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    epoch: usize,
    /// The set whose `best.safetensors` holds the best weights so far (None: no evaluation yet).
    best_from: Option<usize>,
    files: Vec<FileEntry>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn set_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join(SETS).join(format!("epoch-{epoch:05}"))
}

/// What one finished epoch leaves: file names (inside the set) and their bytes.
pub struct SetFiles {
    pub epoch: usize,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub state: Vec<u8>,
    pub metrics: Vec<u8>,
    /// The model's bytes again when this epoch is a new best.
    pub best: Option<Vec<u8>>,
    /// The epoch whose set holds the best weights (this one when `best` is given).
    pub best_from: Option<usize>,
}

/// Save a complete set for `f.epoch`, then publish the top-level copies and prune old sets.
pub fn save(out: &Path, f: &SetFiles) -> Result<()> {
    let dir = set_dir(out, f.epoch);
    if dir.exists() {
        // A crashed earlier attempt at the same epoch (resume redid the epoch): start clean.
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the incomplete set {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files: Vec<(&str, &[u8])> = vec![
        ("model.safetensors", &f.model),
        ("optimizer.safetensors", &f.optimizer),
        ("state.json", &f.state),
        ("metrics.jsonl", &f.metrics),
    ];
    if let Some(b) = &f.best {
        files.push(("best.safetensors", b));
    }
    let mut entries = Vec::new();
    for (name, bytes) in &files {
        crate::checkpoint::write_atomic(&dir.join(name), bytes)?;
        entries.push(FileEntry {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        });
    }
    let manifest = Manifest {
        epoch: f.epoch,
        best_from: f.best_from,
        files: entries,
    };
    crate::checkpoint::write_atomic(
        &dir.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    // Committed. Publish the copies users read; a crash from here on is repaired by --resume.
    crate::checkpoint::write_atomic(&out.join("last.safetensors"), &f.model)?;
    if let Some(b) = &f.best {
        crate::checkpoint::write_atomic(&out.join("best.safetensors"), b)?;
    }
    crate::checkpoint::write_atomic(&out.join("metrics.jsonl"), &f.metrics)?;
    crate::checkpoint::write_atomic(&out.join("state.json"), &f.state)?;
    prune(out, f.epoch, f.best_from);
    Ok(())
}

/// Keep the newest two sets and the one holding the best weights; pruning is best-effort (a
/// failure costs disk, never correctness).
fn prune(out: &Path, newest: usize, best_from: Option<usize>) {
    let Ok(list) = list_sets(out) else { return };
    let keep_from = newest.saturating_sub(1);
    for (epoch, dir) in list {
        if epoch < keep_from && Some(epoch) != best_from {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The set folders of `out`, (epoch, path), newest first.
fn list_sets(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = out.join(SETS);
    let mut v = Vec::new();
    if !root.is_dir() {
        return Ok(v);
    }
    for e in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("epoch-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            v.push((n, e.path()));
        }
    }
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(v)
}

/// A verified set, read back.
pub struct LoadedSet {
    pub epoch: usize,
    pub dir: PathBuf,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub state: Vec<u8>,
    pub metrics: Vec<u8>,
    /// The best weights, from the set that holds them.
    pub best: Option<Vec<u8>>,
}

fn read_verified(dir: &Path, m: &Manifest, name: &str) -> Result<Vec<u8>> {
    let e = m
        .files
        .iter()
        .find(|e| e.name == name)
        .with_context(|| format!("{MANIFEST} does not list {name}"))?;
    let p = dir.join(name);
    let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    if b.len() as u64 != e.bytes || sha256_hex(&b) != e.sha256 {
        bail!(
            "{}: {} bytes that do not match the manifest ({} bytes, SHA-256 {})",
            p.display(),
            b.len(),
            e.bytes,
            e.sha256
        );
    }
    Ok(b)
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("no {MANIFEST}: the save of this set was interrupted"))?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", p.display()))
}

fn load_set(out: &Path, dir: &Path) -> Result<LoadedSet> {
    let m = read_manifest(dir)?;
    let best = match m.best_from {
        Some(e) if e == m.epoch => Some(read_verified(dir, &m, "best.safetensors")?),
        Some(e) => {
            let bdir = set_dir(out, e);
            let bm = read_manifest(&bdir).with_context(|| {
                format!("the set of the best epoch ({}) is missing", bdir.display())
            })?;
            Some(read_verified(&bdir, &bm, "best.safetensors")?)
        }
        None => None,
    };
    Ok(LoadedSet {
        epoch: m.epoch,
        dir: dir.to_path_buf(),
        model: read_verified(dir, &m, "model.safetensors")?,
        optimizer: read_verified(dir, &m, "optimizer.safetensors")?,
        state: read_verified(dir, &m, "state.json")?,
        metrics: read_verified(dir, &m, "metrics.jsonl")?,
        best,
    })
}

/// The newest complete set of `out` (None: the run has none yet), after printing a line for
/// each newer one that is incomplete or damaged. The top-level copies are rewritten from it, so
/// they agree with what training continues from.
pub fn load_latest(out: &Path) -> Result<Option<LoadedSet>> {
    for (epoch, dir) in list_sets(out)? {
        match load_set(out, &dir) {
            Ok(s) => {
                crate::checkpoint::write_atomic(&out.join("last.safetensors"), &s.model)?;
                if let Some(b) = &s.best {
                    crate::checkpoint::write_atomic(&out.join("best.safetensors"), b)?;
                }
                crate::checkpoint::write_atomic(&out.join("metrics.jsonl"), &s.metrics)?;
                crate::checkpoint::write_atomic(&out.join("state.json"), &s.state)?;
                return Ok(Some(s));
            }
            Err(e) => eprintln!(
                "checkpoint set {} (epoch {epoch}) is not usable: {e:#}; falling back to the previous one",
                dir.display()
            ),
        }
    }
    Ok(None)
}

/// Describe what is on disk for messages: the newest complete set, if any.
pub fn describe_latest(out: &Path) -> String {
    let found = list_sets(out)
        .ok()
        .and_then(|l| l.into_iter().find(|(_, d)| read_manifest(d).is_ok()));
    match found {
        Some((e, d)) => format!(
            "the last complete checkpoint set is {} (after epoch {e}); --resume {} continues from it",
            d.display(),
            out.display()
        ),
        None => format!(
            "no checkpoint was written yet (none is saved before the first epoch ends), so {} \
             holds no weights to keep",
            out.display()
        ),
    }
}
