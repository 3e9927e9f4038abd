//! `mpirun -n 2 longtail train --distributed mpi` on one machine (llvmpipe, one adapter for
//! both processes) against `train --devices 0,0` in one process: the same weights, to the bit
//! (with one device per process the sums are added in the same order), including across an
//! interrupted and resumed MPI run. Built only with `--features mpi`; needs Open MPI's mpirun.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::Command;

fn run(mpi: bool, args: &[&str]) -> (bool, String, String) {
    let exe = env!("CARGO_BIN_EXE_longtail");
    let mut c = if mpi {
        let mut c = Command::new("mpirun");
        // Two processes on a 2-core machine; CI runs as root.
        c.args(["-n", "2", "--oversubscribe", exe]);
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        c
    } else {
        Command::new(exe)
    };
    let out = c.args(args).env("LONGTAIL_TUNE", "off").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The f32 tensors of a safetensors file (weights and running statistics).
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn mpirun_two_processes_match_two_devices_in_one() {
    let dir = common::tmp_dir("mpi");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_idx(&data, 40, 5);
    let (one, mpi) = (dir.join("one"), dir.join("mpi"));
    let mut base = common::parallel_run_args(&data);
    base.push("--sync-bn".into());
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let a = with(&["--devices", "0,0", "--out", one.to_str().unwrap()]);
    let (ok, so, se) = run(false, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{so}\n{se}");
    // The MPI run stops after its first epoch (its steps), then resumes from the run directory
    // that process 0 wrote.
    let half = common::half_steps(&one);
    let b = with(&[
        "--distributed",
        "mpi",
        "--max-steps",
        &half,
        "--out",
        mpi.to_str().unwrap(),
    ]);
    let (ok, so, se) = run(true, &b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{so}\n{se}");
    assert!(so.contains("x 2 processes (MPI)"), "{so}");
    // Process 0 alone reports: one summary line.
    assert_eq!(so.matches("run directory").count(), 1, "{so}");
    let cfg = std::fs::read_to_string(mpi.join("config.toml")).unwrap();
    assert!(cfg.contains("distributed = \"mpi\""), "{cfg}");
    common::forget_max_steps(&mpi);
    let (ok, so, se) = run(
        true,
        &["train", "--resume", mpi.to_str().unwrap(), "--quiet"],
    );
    assert!(ok, "{so}\n{se}");
    let (x, y) = (
        tensors(&one.join("last.safetensors")),
        tensors(&mpi.join("last.safetensors")),
    );
    assert_eq!(x.len(), y.len());
    for ((n, a), (_, b)) in x.iter().zip(&y) {
        assert!(a == b, "{n} differs between mpirun -n 2 and --devices 0,0");
    }
}

#[test]
fn distributed_without_mpirun_is_one_process() {
    // MPI's singleton start: a run of one process, which must still work.
    let dir = common::tmp_dir("mpi-single");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::synthetic_idx(&data, 10, 1);
    let out = dir.join("run");
    let (ok, so, se) = run(
        false,
        &[
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            data.to_str().unwrap(),
            "--rho",
            "1",
            "--model",
            "resnet8",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--eval-batch",
            "10",
            "--report",
            "false",
            "--quiet",
            "--distributed",
            "mpi",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{so}\n{se}");
    assert!(so.contains("x 1 processes (MPI)"), "{so}");
}
