//! What the model learned (issue 10): spectrum statistics on constructed covariances, the run
//! report, `diagnose` and `ablate` (resumable) end to end on a small synthetic set.

mod common;

use std::path::Path;

use longtail::ops::whiten::reference::{mm, tr, zca};
use longtail::plot;
use longtail::report::ablate::mean_std;
use longtail::report::diagnose::{covariance, spectrum_stats, whitening_error};
use longtail::rng::Rng64;

/// Eigen and ratio figures are computed in f64 by Jacobi on well-separated spectra: far below
/// this.
const TOL: f64 = 1e-9;

/// A random orthogonal d x d matrix (Gram–Schmidt of a Gaussian matrix).
fn orthogonal(d: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng64::new(seed);
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        for u in &q {
            let p: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= p * b);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if n > 1e-6 {
            q.push(v.iter().map(|a| a / n).collect());
        }
    }
    (0..d * d).map(|i| q[i / d][i % d]).collect()
}

/// Q diag(l) Q^T.
fn with_spectrum(l: &[f64], seed: u64) -> Vec<f64> {
    let d = l.len();
    let q = orthogonal(d, seed);
    let mut ql = q.clone();
    for i in 0..d {
        for j in 0..d {
            ql[i * d + j] *= l[j];
        }
    }
    mm(&ql, &tr(&q, d), d)
}

#[test]
fn constructed_covariances_give_their_known_spectrum_rank_and_condition() {
    // Spectrum 1..=16 (rotated): condition 16, effective rank exp(H(l / 136)).
    let l: Vec<f64> = (1..=16).map(|v| v as f64).collect();
    let s = spectrum_stats(&with_spectrum(&l, 3), 16);
    let mut want = l.clone();
    want.reverse();
    for (a, b) in s.eigenvalues.iter().zip(&want) {
        assert!((a - b).abs() < TOL * 16.0, "{:?}", s.eigenvalues);
    }
    assert!((s.condition.unwrap() - 16.0).abs() < 1e-8);
    let total: f64 = l.iter().sum();
    let h: f64 = l.iter().map(|v| -(v / total) * (v / total).ln()).sum();
    assert!(
        (s.effective_rank - h.exp()).abs() < 1e-9,
        "{}",
        s.effective_rank
    );
    // Isotropic: effective rank d, condition 1, no correlation.
    let s = spectrum_stats(&with_spectrum(&[2.0; 8], 5), 8);
    assert!((s.effective_rank - 8.0).abs() < 1e-9 && (s.condition.unwrap() - 1.0).abs() < 1e-9);
    assert!(s.mean_abs_offdiag_corr < 1e-9);
    // Rank one: effective rank 1, singular.
    let s = spectrum_stats(&[1.0, 1.0, 1.0, 1.0], 2);
    assert!((s.effective_rank - 1.0).abs() < 1e-9 && s.condition.is_none());
    assert_eq!(s.zero_eigenvalues, 1);
    assert!((s.condition_nonzero.unwrap() - 1.0).abs() < 1e-9);
    assert!((s.mean_abs_offdiag_corr - 1.0).abs() < 1e-12);
    // A dead channel next to a spectrum of 4 and 1: singular, but 4 on what is left.
    let s = spectrum_stats(&with_spectrum(&[4.0, 1.0, 0.0], 11), 3);
    assert_eq!(s.zero_eigenvalues, 1);
    assert!(s.condition.is_none() && (s.condition_nonzero.unwrap() - 4.0).abs() < 1e-8);
    // A known correlation: [[4, -1.2], [-1.2, 1]] has |corr| = 0.6.
    let s = spectrum_stats(&[4.0, -1.2, -1.2, 1.0], 2);
    assert!((s.mean_abs_offdiag_corr - 0.6).abs() < 1e-12);
}

#[test]
fn covariance_and_whitening_error_are_right() {
    // Rows (1, 2), (3, 6): mean (2, 4), covariance /n = [[1, 2], [2, 4]].
    let c = covariance(&[1.0, 2.0, 3.0, 6.0], 2, 2);
    assert_eq!(c, vec![1.0, 2.0, 2.0, 4.0]);
    // ZCA whitens exactly; the identity leaves max |S - I|.
    let s = with_spectrum(&[5.0, 2.0, 0.5, 0.1], 9);
    let w = zca(&s, 4);
    assert!(whitening_error(&w, &s, 4) < 1e-9);
    let id: Vec<f64> = (0..16)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    let want = s
        .iter()
        .zip(&id)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!((whitening_error(&id, &s, 4) - want).abs() < 1e-12);
    // Two groups of 2: each block is checked.
    let s2 = vec![2.0, 0.5, 0.5, 1.0];
    let ws = [zca(&s2, 2), vec![1.0, 0.0, 0.0, 1.0]].concat();
    let ss = [s2, vec![1.0, 0.0, 0.0, 3.0]].concat();
    assert!((whitening_error(&ws, &ss, 2) - 2.0).abs() < 1e-12);
}

#[test]
fn mean_and_sample_std() {
    let m = mean_std(&[Some(1.0), None, Some(3.0)]).unwrap();
    assert_eq!((m.mean, m.std, m.n), (2.0, 2f64.sqrt(), 2));
    let m = mean_std(&[Some(5.0)]).unwrap();
    assert_eq!((m.mean, m.std), (5.0, 0.0));
    assert!(mean_std(&[None]).is_none());
}

#[test]
fn a_blank_png_is_told_apart_from_a_chart() {
    let d = common::tmp_dir("report-blank");
    let p = d.join("blank.png");
    image::RgbImage::from_pixel(50, 40, image::Rgb([255, 255, 255]))
        .save(&p)
        .unwrap();
    assert!(!plot::png_is_drawn(&p).unwrap());
}

fn longtail(args: &[&str]) -> (Option<i32>, String, String) {
    common::run_bin(env!("CARGO_BIN_EXE_longtail"), args)
}

fn assert_pngs(dir: &Path, names: &[&str]) {
    for n in names {
        let p = dir.join(n);
        assert!(
            plot::png_is_drawn(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display())),
            "{} is blank",
            p.display()
        );
    }
}

const SMALL: &[&str] = &[
    "--dataset",
    "mnist",
    "--n-max",
    "40",
    "--rho",
    "10",
    "--model",
    "resnet8",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--warmup-epochs",
    "0",
    "--lr",
    "0.05",
    "--eval-batch",
    "50",
    "--test-per-class",
    "3",
    "--quiet",
];

#[test]
fn train_writes_a_report_and_diagnose_reads_the_checkpoint() {
    let data = common::tmp_dir("report-data");
    common::synthetic_idx(&data, 40, 3);
    let run = common::tmp_dir("report-run");
    let mut a = vec!["train", "--data-dir", data.to_str().unwrap()];
    a.extend(SMALL);
    a.extend([
        "--whiten",
        "ns",
        "--loss",
        "ldam",
        "--out",
        run.to_str().unwrap(),
    ]);
    let (code, out, err) = longtail(&a);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let rep = run.join("report");
    assert_pngs(&rep, &["curves.png", "per_class.png", "confusion.png"]);
    let html = std::fs::read_to_string(rep.join("index.html")).unwrap();
    for want in [
        "curves.png",
        "confusion.png",
        "per_class.png",
        "<table>",
        "top-1",
    ] {
        assert!(html.contains(want), "index.html lacks {want}");
    }
    assert!(!html.contains("http"), "index.html must work offline");
    // `report` redraws it on demand; a folder that is not a run is a clear error.
    std::fs::remove_dir_all(&rep).unwrap();
    let (code, out, err) = longtail(&["report", run.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("index.html") && rep.join("confusion.png").exists());
    let (code, _, err) = longtail(&["report", data.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("summary.json"), "{err}");
    // --report false: no report folder.
    let run2 = common::tmp_dir("report-off");
    let mut a = vec!["train", "--data-dir", data.to_str().unwrap()];
    a.extend(SMALL);
    a.extend(["--report", "false", "--out", run2.to_str().unwrap()]);
    assert_eq!(longtail(&a).0, Some(0));
    assert!(!run2.join("report").exists());

    // diagnose: JSON with spectra before and after whitening, and two drawn PNGs.
    let ck = run.join("last.safetensors");
    let dg = run.join("dg");
    let (code, out, err) = longtail(&[
        "diagnose",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--split",
        "train",
        "--out",
        dg.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["feature_dim"], 64);
    for side in ["before", "after"] {
        let er = j[side]["effective_rank"].as_f64().unwrap();
        assert!((1.0..=64.0).contains(&er), "{side}: {er}");
        assert_eq!(j[side]["eigenvalues"].as_array().unwrap().len(), 64);
    }
    assert!(j["whitening_error_running"].as_f64().is_some());
    assert_eq!(j["classes"].as_array().unwrap().len(), 10);
    assert_pngs(&dg, &["spectrum.png", "norms.png"]);
    assert!(dg.join("diagnose.json").exists());
    let (code, _, err) = longtail(&[
        "diagnose",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--split",
        "val",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--split must be train or test"), "{err}");
}

#[test]
fn ablate_runs_rows_over_seeds_skips_finished_runs_and_resumes_a_stopped_one() {
    let data = common::tmp_dir("ablate-data");
    common::synthetic_idx(&data, 40, 2);
    let out = common::tmp_dir("ablate-out");
    let mut a = vec![
        "ablate",
        "--preset",
        "quick",
        "--rows",
        "ce,cw-ldam-drw",
        "--seeds",
        "0,1",
        "--scale",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    a.extend(SMALL);
    a.extend(["--report", "false"]);
    let (code, stdout, err) = longtail(&a);
    assert_eq!(code, Some(0), "{stdout}\n{err}");
    assert!(
        stdout.contains("ablate [4/4]") && stdout.contains("ETA"),
        "{stdout}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 2);
    assert_eq!(j["rows"][1]["row"], "cw-ldam-drw");
    assert_eq!(j["rows"][0]["runs"].as_array().unwrap().len(), 2);
    assert!(j["rows"][0]["acc"]["mean"].as_f64().is_some());
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(md.contains("| cw-ldam-drw |") && md.contains("±"), "{md}");
    assert_pngs(&out, &["ablation.png"]);
    // The row's method and the preset's scale: whitening on in cw-ldam-drw, off in ce.
    let cfg = std::fs::read_to_string(out.join("cw-ldam-drw/seed-1/config.toml")).unwrap();
    assert!(
        cfg.contains("whiten = \"ns\"") && cfg.contains("seed = 1"),
        "{cfg}"
    );
    let cfg = std::fs::read_to_string(out.join("ce/seed-0/config.toml")).unwrap();
    assert!(
        cfg.contains("whiten = \"none\"") && cfg.contains("loss = \"ce\""),
        "{cfg}"
    );
    // Again: everything is finished, so everything is skipped.
    let (code, stdout, _) = longtail(&a);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.matches("skipped").count(), 4, "{stdout}");
    // One run stopped after its first epoch: only it runs, and it resumes.
    let stopped = out.join("ce/seed-1");
    std::fs::remove_dir_all(stopped.join("checkpoints/epoch-00002")).unwrap();
    std::fs::remove_file(stopped.join("summary.json")).unwrap();
    let (code, stdout, err) = longtail(&a);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(stdout.matches("skipped").count(), 3, "{stdout}");
    assert!(stdout.contains("resuming after epoch 1"), "{stdout}");
}
