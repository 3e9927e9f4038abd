//! What the model learned, as pictures: the run report (`longtail report RUN_DIR`, refreshed by
//! `train` at every evaluation), feature diagnostics ([`diagnose`]) and the ablation runner
//! ([`ablate`]). Charts come from [`crate::plot`].

pub mod ablate;
pub mod diagnose;
pub mod html;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::data::names::class_names;
use crate::plot::{self, Labelled, Series};
use crate::train::{EpochMetrics, EvalResult};

/// The files of a run directory a report is made from.
pub struct RunData {
    pub dir: PathBuf,
    pub dataset: String,
    pub metrics: Vec<EpochMetrics>,
    pub final_: Option<EvalResult>,
    pub best: Option<EvalResult>,
    pub best_epoch: Option<usize>,
    pub class_counts: Vec<usize>,
    pub class_names: Vec<String>,
    pub adapter: String,
}

impl RunData {
    /// Read `metrics.jsonl`, `summary.json` and `config.toml` of `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let sp = dir.join("summary.json");
        let text = std::fs::read_to_string(&sp).with_context(|| {
            format!(
                "reading {} (is {} a run directory with at least one evaluation?)",
                sp.display(),
                dir.display()
            )
        })?;
        let s: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is corrupt", sp.display()))?;
        let eval = |k: &str| -> Result<Option<EvalResult>> {
            match s.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => Ok(Some(serde_json::from_value(v.clone()).with_context(
                    || format!("{}: field {k} is not an evaluation", sp.display()),
                )?)),
            }
        };
        let class_counts: Vec<usize> = serde_json::from_value(s["class_counts"].clone())
            .with_context(|| format!("{}: field class_counts", sp.display()))?;
        let mp = dir.join("metrics.jsonl");
        let metrics = match std::fs::read_to_string(&mp) {
            Ok(t) => t
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str(l)
                        .with_context(|| format!("{}:{}: not a metrics row", mp.display(), i + 1))
                })
                .collect::<Result<Vec<_>>>()?,
            Err(_) => Vec::new(),
        };
        let dataset = s["dataset"].as_str().unwrap_or("").to_string();
        Ok(Self {
            dir: dir.to_path_buf(),
            class_names: class_names(&dataset, class_counts.len()),
            dataset,
            metrics,
            final_: eval("final")?,
            best: eval("best")?,
            best_epoch: s["best_epoch"].as_u64().map(|v| v as usize),
            class_counts,
            adapter: s["adapter"].as_str().unwrap_or("").to_string(),
        })
    }
}

/// Loss and accuracy over epochs (two panels).
fn curves(d: &RunData, path: &Path) -> Result<()> {
    plot::save_png(path, 1000, 420, |area| {
        let (l, r) = area.split_horizontally(500);
        let loss = Series {
            name: "training loss".into(),
            points: d.metrics.iter().map(|m| (m.epoch as f64, m.loss)).collect(),
        };
        plot::line_chart(&l, "Training loss", "epoch", "loss", &[loss], None, false)?;
        let acc = |name: &str, f: fn(&EpochMetrics) -> Option<f64>| Series {
            name: name.into(),
            points: d
                .metrics
                .iter()
                .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
                .collect(),
        };
        let series = [
            acc("top-1", |m| m.acc),
            acc("many", |m| m.many),
            acc("medium", |m| m.medium),
            acc("few", |m| m.few),
        ];
        plot::line_chart(
            &r,
            "Test accuracy per evaluation",
            "epoch",
            "accuracy %",
            &series,
            Some((0.0, 100.0)),
            false,
        )
    })
}

/// Per-class accuracy against the class's training count, coloured by shot group.
fn per_class(d: &RunData, e: &EvalResult, path: &Path) -> Result<()> {
    let mut groups: Vec<(String, Vec<Labelled>)> = ["many (>100)", "medium (20-100)", "few (<20)"]
        .iter()
        .map(|n| (n.to_string(), Vec::new()))
        .collect();
    for (c, &acc) in e.per_class.iter().enumerate() {
        let n = d.class_counts.get(c).copied().unwrap_or(0);
        groups[crate::data::longtail::shot_group(n)]
            .1
            .push(Labelled {
                x: n.max(1) as f64,
                y: acc,
                label: d.class_names[c].clone(),
            });
    }
    groups.retain(|g| !g.1.is_empty());
    plot::save_png(path, 900, 560, |area| {
        plot::log_x_scatter(
            area,
            "Per-class test accuracy vs training images",
            "training images of the class (log scale)",
            "test accuracy %",
            &groups,
            Some((-3.0, 103.0)),
        )
    })
}

/// Write `dir/report/` (PNG charts and `index.html`); returns the report folder.
pub fn write(dir: &Path) -> Result<PathBuf> {
    let d = RunData::load(dir)?;
    let out = dir.join("report");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let Some(e) = d.final_.as_ref().or(d.best.as_ref()) else {
        bail!(
            "{}: summary.json holds no evaluation yet",
            dir.join("summary.json").display()
        );
    };
    curves(&d, &out.join("curves.png"))?;
    per_class(&d, e, &out.join("per_class.png"))?;
    let n = e.confusion.len();
    let side = (420 + 34 * n.min(30)) as u32;
    plot::save_png(&out.join("confusion.png"), side + 120, side, |area| {
        plot::heatmap(
            area,
            "Confusion matrix (row-normalised %)",
            &e.confusion,
            &d.class_names,
        )
    })?;
    html::write_run_index(&d, e, &out.join("index.html"))?;
    Ok(out)
}
