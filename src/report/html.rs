//! The report's `index.html`: the charts and the summary tables, self-contained (relative image
//! paths, inline style, no scripts or network).

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use super::RunData;
use crate::train::EvalResult;

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.2}"))
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1100px}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 9px;\
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}\
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}";

/// A page with `title`, `body` inside.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>{STYLE}</style></head>\n<body><h1>{t}</h1>\n{body}</body></html>\n",
        t = esc(title)
    )
}

/// `report/index.html` of a run.
pub fn write_run_index(d: &RunData, e: &EvalResult, path: &Path) -> Result<()> {
    let mut b = String::new();
    let name = d
        .dir
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    writeln!(
        b,
        "<p>Run <code>{}</code>: {} ({} training images, {} classes), {} epochs; adapter {}.</p>",
        esc(&name),
        esc(&d.dataset),
        d.class_counts.iter().sum::<usize>(),
        d.class_counts.len(),
        d.metrics.last().map_or(0, |m| m.epoch),
        esc(&d.adapter)
    )?;
    b.push_str("<h2>Summary</h2>\n<table><tr><th></th><th>top-1 %</th><th>many</th><th>medium</th><th>few</th></tr>\n");
    let mut row = |label: String, r: &EvalResult| {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&label),
            r.acc,
            pct(r.many),
            pct(r.medium),
            pct(r.few)
        );
    };
    if let Some(f) = &d.final_ {
        row("final".into(), f);
    }
    if let (Some(bst), Some(ep)) = (&d.best, d.best_epoch) {
        row(format!("best (epoch {ep})"), bst);
    }
    b.push_str("</table>\n");
    for (img, alt) in [
        ("curves.png", "loss and accuracy over epochs"),
        ("per_class.png", "per-class accuracy against training count"),
        ("confusion.png", "confusion matrix"),
    ] {
        writeln!(
            b,
            "<h2>{}</h2>\n<img src=\"{img}\" alt=\"{alt}\">",
            esc(alt)
        )?;
    }
    b.push_str("<h2>Per class</h2>\n<table><tr><th>class</th><th>training images</th><th>test accuracy %</th></tr>\n");
    for (c, a) in e.per_class.iter().enumerate() {
        writeln!(
            b,
            "<tr><td>{} ({c})</td><td>{}</td><td>{a:.2}</td></tr>",
            esc(&d.class_names[c]),
            d.class_counts.get(c).copied().unwrap_or(0)
        )?;
    }
    b.push_str("</table>\n");
    crate::checkpoint::write_atomic(
        path,
        page(&format!("longtail report: {name}"), &b).as_bytes(),
    )
}
