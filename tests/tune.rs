//! The variant tuner: modes, the per-adapter cache, pinned choices, and the CLI around it.

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;

use common::{run_bin, tmp_dir};
use longtail::tune::{TuneMode, Tuner};

/// A tuner whose candidates "take" the given seconds; counts the measurements.
fn choose(t: &Tuner, key: &str, times: &[(&str, f64)], calls: &Cell<usize>) -> String {
    let names: Vec<&str> = times.iter().map(|x| x.0).collect();
    t.choose("conv_fwd", key, &names, &mut |v, _| {
        calls.set(calls.get() + 1);
        Ok(times.iter().find(|x| x.0 == v).map(|x| x.1))
    })
    .unwrap()
}

#[test]
fn off_takes_the_first_candidate_without_timing() {
    let t = Tuner::new("adapter", "vulkan", "driver 1");
    let calls = Cell::new(0);
    let v = choose(&t, "s1", &[("direct", 2.0), ("gemm", 1.0)], &calls);
    assert_eq!((v.as_str(), calls.get()), ("direct", 0));
    assert_eq!(t.used()["conv_fwd s1"].source, "heuristic");
}

#[test]
fn cached_measures_once_then_reads_the_cache() {
    let dir = tmp_dir("tune-cached");
    let t = Tuner::new("adapter", "vulkan", "driver 1");
    t.configure(TuneMode::Cached, Some(dir.to_path_buf()))
        .unwrap();
    let calls = Cell::new(0);
    let v = choose(&t, "s1", &[("direct", 2.0), ("gemm", 1.0)], &calls);
    assert_eq!((v.as_str(), calls.get()), ("gemm", 2));
    let c = &t.used()["conv_fwd s1"];
    assert_eq!(c.source, "measured");
    assert_eq!(c.ms["direct"], 2000.0);
    // Same key again in this process: no new measurement.
    choose(&t, "s1", &[("direct", 2.0), ("gemm", 1.0)], &calls);
    assert_eq!(calls.get(), 2);
    // A new process (new tuner) on the same adapter reads the file.
    let t2 = Tuner::new("adapter", "vulkan", "driver 1");
    t2.configure(TuneMode::Cached, Some(dir.to_path_buf()))
        .unwrap();
    let v = choose(&t2, "s1", &[("direct", 0.1), ("gemm", 1.0)], &calls);
    assert_eq!((v.as_str(), calls.get()), ("gemm", 2));
    assert_eq!(t2.used()["conv_fwd s1"].source, "cache");
    // Another driver is another adapter: measured again.
    let t3 = Tuner::new("adapter", "vulkan", "driver 2");
    t3.configure(TuneMode::Cached, Some(dir.to_path_buf()))
        .unwrap();
    let v = choose(&t3, "s1", &[("direct", 0.1), ("gemm", 1.0)], &calls);
    assert_eq!((v.as_str(), calls.get()), ("direct", 4));
    // Full re-measures even with a cached entry.
    let t4 = Tuner::new("adapter", "vulkan", "driver 1");
    t4.configure(TuneMode::Full, Some(dir.to_path_buf()))
        .unwrap();
    let v = choose(&t4, "s1", &[("direct", 0.1), ("gemm", 1.0)], &calls);
    assert_eq!((v.as_str(), calls.get()), ("direct", 6));
    // ...and overwrites it.
    let t5 = Tuner::new("adapter", "vulkan", "driver 1");
    t5.configure(TuneMode::Cached, Some(dir.to_path_buf()))
        .unwrap();
    assert_eq!(
        choose(&t5, "s1", &[("direct", 9.0), ("gemm", 1.0)], &calls),
        "direct"
    );
    assert_eq!(calls.get(), 6);
}

#[test]
fn inapplicable_variants_are_skipped_and_a_damaged_cache_is_replaced() {
    let dir = tmp_dir("tune-damaged");
    let t = Tuner::new("adapter", "vulkan", "driver 1");
    t.configure(TuneMode::Cached, Some(dir.to_path_buf()))
        .unwrap();
    let path = t.cache_path().unwrap();
    std::fs::write(&path, b"{ not json").unwrap();
    let calls = Cell::new(0);
    // `None`: the variant does not apply at this shape.
    let names = ["direct", "gemm"];
    let v = t
        .choose("conv_wgrad", "s", &names, &mut |v, _| {
            calls.set(calls.get() + 1);
            Ok((v == "gemm").then_some(1.0))
        })
        .unwrap();
    assert_eq!(v, "gemm");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("conv_wgrad s"), "{text}");
    // A cached variant this build does not list is ignored (measured again).
    let t2 = Tuner::new("adapter", "vulkan", "driver 1");
    t2.configure(TuneMode::Cached, Some(dir.to_path_buf()))
        .unwrap();
    let calls = Cell::new(0);
    let v = choose(&t2, "s", &[("direct", 1.0), ("tiled", 0.5)], &calls);
    assert_eq!((v.as_str(), calls.get()), ("tiled", 2));
}

#[test]
fn pinned_choices_win_and_unknown_pins_are_errors() {
    let t = Tuner::new("adapter", "vulkan", "driver 1");
    t.pin(BTreeMap::from([(
        "conv_fwd s1".to_string(),
        "gemm".to_string(),
    )]));
    let calls = Cell::new(0);
    assert_eq!(
        choose(&t, "s1", &[("direct", 1.0), ("gemm", 2.0)], &calls),
        "gemm"
    );
    assert_eq!(t.used()["conv_fwd s1"].source, "pinned");
    let t = Tuner::new("adapter", "vulkan", "driver 1");
    t.pin(BTreeMap::from([(
        "conv_fwd s1".to_string(),
        "old".to_string(),
    )]));
    let err = t
        .choose("conv_fwd", "s1", &["direct", "gemm"], &mut |_, _| {
            Ok(Some(1.0))
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"old\"") && err.contains("tune.json"),
        "{err}"
    );
}

#[test]
fn tune_command_fills_the_cache_and_train_records_its_choices() {
    let exe = env!("CARGO_BIN_EXE_longtail");
    let dir = tmp_dir("tune-cli");
    let cache = dir.join("cache");
    let c = cache.to_str().unwrap();
    let args = [
        "--tune",
        "cached",
        "--tune-cache",
        c,
        "tune",
        "--model",
        "resnet8",
        "--batch",
        "4",
        "--size",
        "8",
        "--channels",
        "1",
    ];
    let (code, out, err) = run_bin(exe, &args);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("conv_wgrad b4 16x8x8 -> 16 k3x3 s1 p1"),
        "{out}"
    );
    assert!(out.contains("measured"), "{out}");
    // Second time: every choice from the cache.
    let (code, out, err) = run_bin(exe, &args);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        !out.contains("measured") && out.contains(" cache "),
        "{out}"
    );
    // --tune off has nothing to measure.
    let (code, _, err) = run_bin(exe, &["--tune", "off", "tune", "--model", "resnet8"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--tune cached"), "{err}");

    // A training run records what it used; resuming pins it.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_idx(&data, 6, 2);
    let run = dir.join("run");
    let train = |extra: &[&str]| {
        let mut a = vec!["--tune", "off", "train"];
        a.extend_from_slice(extra);
        run_bin(exe, &a)
    };
    let (code, out, err) = train(&[
        "--dataset",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--model",
        "resnet8",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "8",
        "--rho",
        "2",
        "--quiet",
        "--report",
        "false",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("tune.json")).unwrap()).unwrap();
    let choices = rec["choices"].as_object().unwrap();
    assert!(
        choices.keys().any(|k| k.starts_with("conv_wgrad b8 ")),
        "{rec}"
    );
    assert!(
        choices.values().all(|c| c["source"] == "heuristic"),
        "{rec}"
    );
    // Pin a variant the heuristic would not pick; the resumed run must use (and record) it.
    let key = choices
        .keys()
        .find(|k| k.starts_with("conv_fwd b8 "))
        .unwrap()
        .clone();
    let mut edited = rec.clone();
    edited["choices"][&key]["variant"] = "gemm".into();
    std::fs::write(run.join("tune.json"), serde_json::to_vec(&edited).unwrap()).unwrap();
    let (code, out, err) = train(&[
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "2",
        "--quiet",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("tune.json")).unwrap()).unwrap();
    assert_eq!(rec["choices"][&key]["variant"], "gemm", "{rec}");
    assert_eq!(rec["choices"][&key]["source"], "pinned", "{rec}");
}
