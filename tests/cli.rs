//! The binary: `devices`, `bench --json`, `mlp`, and clear errors on bad input.

use std::process::Command;

fn longtail(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_longtail"))
        .args(args)
        .env("LONGTAIL_TUNE", "off") // tests/tune.rs covers tuning; keep these fast
        .output()
        .expect("run longtail");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// On a CPU adapter `devices` says how many compute threads llvmpipe gets: two per core unless
/// the user set LP_NUM_THREADS, which is then left alone.
#[test]
fn llvmpipe_threads_default_to_two_per_core_and_respect_the_user() {
    let run = |threads: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_longtail"));
        c.arg("devices");
        match threads {
            Some(t) => c.env("LP_NUM_THREADS", t),
            None => c.env_remove("LP_NUM_THREADS"),
        };
        let out = c.output().expect("run longtail");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(None);
    if !out.contains("(Cpu,") && !out.contains(", Cpu,") {
        return; // a real GPU: llvmpipe is not in the list
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        let want = format!("LP_NUM_THREADS={} (set by longtail", 2 * cores);
        assert!(out.contains(&want), "{out}");
    }
    let out = run(Some("3"));
    assert!(
        out.contains("LP_NUM_THREADS=3 (from the environment)"),
        "{out}"
    );
}

#[test]
fn devices_lists_an_adapter_as_text_and_json() {
    let (ok, out, err) = longtail(&["devices"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("[0] "), "{out}");
    assert!(out.contains("storage binding"), "{out}");
    let (ok, out, err) = longtail(&["devices", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first = &v.as_array().unwrap()[0];
    for key in [
        "name",
        "backend",
        "device_type",
        "max_storage_buffer_binding_size",
        "max_compute_invocations_per_workgroup",
        "timestamp_query",
    ] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
}

#[test]
fn bench_json_reports_gflops() {
    let (ok, out, err) = longtail(&[
        "bench",
        "--kernel",
        "matmul",
        "--shape",
        "96x80x70",
        "--samples",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["kernel"], "matmul");
    assert_eq!(v["shape"], "96x80x70");
    assert!(v["ms"].as_f64().unwrap() > 0.0);
    assert!(v["gflops"].as_f64().unwrap() > 0.0);
    assert!(v["gbs"].as_f64().unwrap() > 0.0);
    assert!(v["timer"].is_string());
    // Each row is quoted against the adapter's measured roofline.
    let pct = v["pct_peak"].as_f64().unwrap();
    assert!(pct > 0.0 && v["bound_ms"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bench_peak_measures_every_ceiling() {
    let (ok, out, err) = longtail(&["bench", "--peak", "--samples", "1", "--json"]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |k: &str| rows.iter().find(|r| r["kernel"] == k).cloned();
    for k in ["peak_fma", "peak_fma_narrow"] {
        assert!(row(k).unwrap()["gflops"].as_f64().unwrap() > 0.0, "{k}");
    }
    for k in ["peak_read", "peak_write", "peak_workgroup"] {
        assert!(row(k).unwrap()["gbs"].as_f64().unwrap() > 0.0, "{k}");
    }
    let p = &rows.last().unwrap()["peaks"];
    for k in [
        "fma_gflops",
        "read_gbs",
        "write_gbs",
        "workgroup_gbs",
        "dispatch_us",
        "submit_us",
    ] {
        assert!(p[k].as_f64().unwrap() > 0.0, "{k}: {p}");
    }
    // The FMA ceiling is the better of the two kernels.
    let best = row("peak_fma").unwrap()["gflops"]
        .as_f64()
        .unwrap()
        .max(row("peak_fma_narrow").unwrap()["gflops"].as_f64().unwrap());
    assert_eq!(p["fma_gflops"].as_f64().unwrap(), best);
}

#[test]
fn bench_rejects_unknown_kernel_and_bad_shape() {
    let (ok, _, err) = longtail(&["bench", "--kernel", "nope"]);
    assert!(!ok);
    assert!(
        err.contains("unknown kernel") && err.contains("matmul"),
        "{err}"
    );
    let (ok, _, err) = longtail(&["bench", "--kernel", "matmul", "--shape", "12x3"]);
    assert!(!ok);
    assert!(err.contains("12x3") && err.contains("expected 3"), "{err}");
}

#[test]
fn unknown_adapter_is_a_clear_error() {
    let (ok, _, err) = longtail(&["--adapter", "no-such-gpu", "mlp", "--steps", "1"]);
    assert!(!ok);
    assert!(
        err.contains("no-such-gpu") && err.contains("adapters"),
        "{err}"
    );
    let (ok, _, err) = longtail(&["--adapter", "99", "mlp", "--steps", "1"]);
    assert!(!ok);
    assert!(err.contains("--adapter 99"), "{err}");
}

#[test]
fn mlp_demo_trains() {
    let (ok, out, err) = longtail(&["mlp", "--steps", "60"]);
    assert!(ok, "{err}");
    assert!(out.contains("loss") && out.contains("->"), "{out}");
}

/// `bench --kernel NAME@VARIANT` times one pinned variant; kernels without variants and
/// unknown variants are clear errors.
#[test]
fn bench_pins_a_variant() {
    for (k, shape) in [
        ("matmul@t16", "8x8x8"),
        ("conv_wgrad@gemm-wide", "2x4x8x8x4x3x1"),
        ("batchnorm@split", "2x3x4x4"),
    ] {
        let (ok, out, err) = longtail(&[
            "bench",
            "--kernel",
            k,
            "--shape",
            shape,
            "--samples",
            "1",
            "--no-peak",
            "--json",
        ]);
        assert!(ok, "{k}: {err}");
        let row: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(row["kernel"], k, "{out}");
    }
    let (ok, _, err) = longtail(&["bench", "--kernel", "add@x", "--no-peak"]);
    assert!(
        !ok && err.contains("has one variant") && err.contains("matmul@b8|t16"),
        "{err}"
    );
    let (ok, _, err) = longtail(&["bench", "--kernel", "matmul@zz", "--no-peak"]);
    assert!(!ok && err.contains("unknown matmul variant"), "{err}");
}
