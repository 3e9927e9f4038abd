//! `longtail ablate`: the paper's ablation rows at one preset's scale over several seeds, one run
//! directory each (`OUT/<row>/seed-<s>/`), resumable (finished runs are skipped, a stopped one
//! resumes from its last complete checkpoint set), summarised as `ablation.json`, `ablation.md`
//! (mean ± std of top-1, Many, Medium, Few of the final evaluation) and `ablation.png`.
//!
//! A run's configuration: the preset's table without the method keys, plus the row preset's
//! method keys (so `--preset quick` keeps quick's data, model, epochs and schedule and each row
//! says which loss, DRW, whitening, sampler and BET it uses), the seed, `--scale`, then the flags.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::config::{self, TrainConfig};
use crate::gpu::Gpu;
use crate::plot::{self, BarGroup};

/// The default rows, in the paper's order.
pub const DEFAULT_ROWS: &[&str] = &[
    "ce",
    "ldam-drw",
    "cw-ldam-drw",
    "cw-ldam-drw-b3rs",
    "cw-ldam-drw-b3rs-bet",
];

/// Keys that make up "the method" of a row; everything else comes from the base preset.
pub const METHOD_KEYS: &[&str] = &[
    "loss",
    "tau",
    "ldam_max_margin",
    "ldam_scale",
    "drw",
    "drw_fraction",
    "drw_epoch",
    "drw_beta",
    "whiten",
    "whiten_iters",
    "whiten_eps",
    "whiten_group",
    "whiten_track",
    "sampler",
    "b3rs_groups",
    "b3rs_q",
    "b3rs_r",
    "bet",
    "bet_mode",
    "bet_size",
    "posthoc_tau",
];

/// What to run.
pub struct AblateOptions {
    pub preset: String,
    pub rows: Vec<String>,
    pub seeds: Vec<u64>,
    pub out: PathBuf,
    /// Keep the recipe, shorten it: epochs, warm-up, DRW start and n_max times `scale` (0, 1].
    pub scale: f64,
    /// Flags applied to every run (after the row and the scale).
    pub flags: toml::Table,
    pub quiet: bool,
}

/// The configuration of one (row, seed) run.
pub fn run_config(o: &AblateOptions, row: &str, seed: u64) -> Result<TrainConfig> {
    let mut t = config::preset(&o.preset)?;
    for k in METHOD_KEYS {
        t.remove(*k);
    }
    for (k, v) in config::preset(row)? {
        if METHOD_KEYS.contains(&k.as_str()) {
            t.insert(k, v);
        }
    }
    t.insert("seed".into(), (seed as i64).into());
    if !(o.scale > 0.0 && o.scale <= 1.0) {
        bail!("--scale must be in (0, 1], got {}", o.scale);
    }
    if o.scale < 1.0 {
        // Resolve once to read the preset's values (defaults included), then shorten.
        let full = config::resolve(t.clone(), toml::Table::new(), &o.preset)?;
        let epochs = ((full.epochs as f64 * o.scale).round() as usize).max(1);
        let shrink = |v: usize| ((v as f64 * o.scale).round() as usize).min(epochs - 1);
        t.insert("epochs".into(), (epochs as i64).into());
        t.insert(
            "warmup_epochs".into(),
            (shrink(full.warmup_epochs) as i64).into(),
        );
        if let Some(e) = full.drw_epoch {
            t.insert("drw_epoch".into(), (shrink(e) as i64).into());
        }
        if let Some(n) = full.n_max.or(config::protocol_n_max(&full.dataset)) {
            let n = ((n as f64 * o.scale).round() as usize).max(1);
            t.insert("n_max".into(), (n as i64).into());
        }
        t.insert(
            "eval_every".into(),
            (full.eval_every.min(epochs) as i64).into(),
        );
    }
    config::resolve(
        t,
        o.flags.clone(),
        &format!("preset {} with row {row}", o.preset),
    )
}

/// One run's final figures.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub seed: u64,
    pub dir: String,
    pub acc: f64,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
}

/// Mean and sample standard deviation (0 for one value) of the values present.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

/// Mean ± std of `v`'s present values (None when none is).
pub fn mean_std(v: &[Option<f64>]) -> Option<MeanStd> {
    let x: Vec<f64> = v.iter().flatten().copied().collect();
    if x.is_empty() {
        return None;
    }
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Some(MeanStd {
        mean,
        std: var.sqrt(),
        n,
    })
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct RowResult {
    pub row: String,
    pub runs: Vec<RunResult>,
    pub acc: Option<MeanStd>,
    pub many: Option<MeanStd>,
    pub medium: Option<MeanStd>,
    pub few: Option<MeanStd>,
}

/// `ablation.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Ablation {
    pub preset: String,
    pub scale: f64,
    pub seeds: Vec<u64>,
    pub rows: Vec<RowResult>,
}

fn run_dir(out: &Path, row: &str, seed: u64) -> PathBuf {
    out.join(row).join(format!("seed-{seed}"))
}

/// Whether `dir` holds a finished run (its summary says so).
fn finished(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["finished"].as_bool() == Some(true))
}

fn fmt_dur(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Run (or skip, or resume) every (row, seed), then write the summary files.
pub fn run(gpu: &Gpu, o: &AblateOptions) -> Result<Ablation> {
    if o.rows.is_empty() || o.seeds.is_empty() {
        bail!("ablate needs at least one row and one seed");
    }
    // Every configuration is checked before the first run starts.
    let mut jobs = Vec::new();
    for row in &o.rows {
        for &seed in &o.seeds {
            jobs.push((row.clone(), seed, run_config(o, row, seed)?));
        }
    }
    crate::rundir::check_writable(&o.out)?;
    let total = jobs.len();
    let t0 = Instant::now();
    let mut timed = 0usize;
    let mut done = 0usize;
    for (i, (row, seed, cfg)) in jobs.iter().enumerate() {
        let dir = run_dir(&o.out, row, *seed);
        if finished(&dir) {
            println!(
                "ablate [{}/{total}] {row} seed {seed}: finished already, skipped",
                i + 1
            );
            done += 1;
            continue;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let eta = if timed > 0 {
            fmt_dur(elapsed / timed as f64 * (total - done) as f64)
        } else {
            "after the first run".into()
        };
        println!(
            "ablate [{}/{total}] {row} seed {seed} -> {} | elapsed {} | ETA {eta}",
            i + 1,
            dir.display(),
            fmt_dur(elapsed)
        );
        let resume = dir.join("config.toml").exists();
        if !resume {
            std::fs::create_dir_all(&dir)?;
        }
        crate::train::train(gpu, cfg, &dir, resume, o.quiet)
            .with_context(|| format!("ablation run {row} seed {seed} ({})", dir.display()))?;
        timed += 1;
        done += 1;
    }
    let ab = collect(o)?;
    write_outputs(&ab, &o.out)?;
    println!(
        "ablate: {total} runs in {}; {}",
        fmt_dur(t0.elapsed().as_secs_f64()),
        o.out.join("ablation.md").display()
    );
    Ok(ab)
}

/// Read the finished runs of `o` into the table.
pub fn collect(o: &AblateOptions) -> Result<Ablation> {
    let mut rows = Vec::new();
    for row in &o.rows {
        let mut runs = Vec::new();
        for &seed in &o.seeds {
            let dir = run_dir(&o.out, row, seed);
            let p = dir.join("summary.json");
            let s: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{} is corrupt", p.display()))?;
            let f = &s["final"];
            let acc = f["acc"]
                .as_f64()
                .with_context(|| format!("{}: no final evaluation", p.display()))?;
            runs.push(RunResult {
                seed,
                dir: dir.display().to_string(),
                acc,
                many: f["many"].as_f64(),
                medium: f["medium"].as_f64(),
                few: f["few"].as_f64(),
            });
        }
        let col =
            |g: fn(&RunResult) -> Option<f64>| mean_std(&runs.iter().map(g).collect::<Vec<_>>());
        rows.push(RowResult {
            row: row.clone(),
            acc: col(|r| Some(r.acc)),
            many: col(|r| r.many),
            medium: col(|r| r.medium),
            few: col(|r| r.few),
            runs,
        });
    }
    Ok(Ablation {
        preset: o.preset.clone(),
        scale: o.scale,
        seeds: o.seeds.clone(),
        rows,
    })
}

fn cell(m: Option<MeanStd>) -> String {
    m.map_or("–".into(), |m| format!("{:.2} ± {:.2}", m.mean, m.std))
}

/// The Markdown table.
pub fn markdown(ab: &Ablation) -> String {
    let seeds: Vec<String> = ab.seeds.iter().map(|s| s.to_string()).collect();
    let mut s = format!(
        "Ablation at preset `{}`, scale {}, seeds {} (final evaluation, mean ± sample std, %)\n\n\
         | row | top-1 | Many | Medium | Few |\n|---|---|---|---|---|\n",
        ab.preset,
        ab.scale,
        seeds.join(", ")
    );
    for r in &ab.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.row,
            cell(r.acc),
            cell(r.many),
            cell(r.medium),
            cell(r.few)
        ));
    }
    s
}

/// `ablation.json`, `ablation.md`, `ablation.png` into `out`.
pub fn write_outputs(ab: &Ablation, out: &Path) -> Result<()> {
    crate::checkpoint::write_atomic(
        &out.join("ablation.json"),
        serde_json::to_string_pretty(ab)?.as_bytes(),
    )?;
    crate::checkpoint::write_atomic(&out.join("ablation.md"), markdown(ab).as_bytes())?;
    let groups: Vec<BarGroup> = ab
        .rows
        .iter()
        .map(|r| BarGroup {
            name: r.row.clone(),
            bars: [r.acc, r.many, r.medium, r.few]
                .iter()
                .map(|m| m.map(|m| (m.mean, m.std)))
                .collect(),
        })
        .collect();
    let w = (300 + 190 * groups.len()) as u32;
    plot::save_png(&out.join("ablation.png"), w.max(700), 520, |area| {
        plot::grouped_bars(
            area,
            &format!("Ablation ({}, {} seed(s))", ab.preset, ab.seeds.len()),
            "test accuracy % (final)",
            &groups,
            &["top-1", "many", "medium", "few"],
            // Headroom above 100 % for the legend.
            (0.0, 128.0),
        )
    })
}
