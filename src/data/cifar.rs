//! CIFAR binary versions: `cifar-10-batches-bin/data_batch_{1..5}.bin` + `test_batch.bin`
//! (records of 1 label byte + 3072 pixel bytes), `cifar-100-binary/train.bin` + `test.bin`
//! (coarse label, fine label, 3072 pixels; the fine label is used).

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Dataset, Splits};

const PIXELS: usize = 3 * 32 * 32;

/// Parse one binary file of records with `label_bytes` leading bytes (the last is the label).
pub fn parse(
    path: &Path,
    b: &[u8],
    label_bytes: usize,
    classes: usize,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let rec = label_bytes + PIXELS;
    if b.is_empty() || !b.len().is_multiple_of(rec) {
        bail!(
            "{}: {} bytes is not a whole number of {rec}-byte CIFAR records (truncated?)",
            path.display(),
            b.len()
        );
    }
    let n = b.len() / rec;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in b.chunks_exact(rec).enumerate() {
        let l = r[label_bytes - 1] as u32;
        if l as usize >= classes {
            bail!(
                "{}: record {i} has label {l}, expected 0..{classes}",
                path.display()
            );
        }
        labels.push(l);
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok((images, labels))
}

fn read(
    dir: &Path,
    files: &[String],
    label_bytes: usize,
    classes: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let p = dir.join(f);
        let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let (i, l) = parse(&p, &b, label_bytes, classes)?;
        images.extend(i);
        labels.extend(l);
    }
    Ok(Dataset {
        images: super::Images::Memory(images),
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes,
        mean: mean.to_vec(),
        std: std.to_vec(),
    })
}

/// CIFAR-10 from `dir` (the `cifar-10-batches-bin` folder, or its parent).
pub fn load10(dir: &Path) -> Result<Splits> {
    let d = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let (m, s) = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]);
    let train: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    Ok(Splits {
        name: "cifar10".into(),
        train: read(&d, &train, 1, 10, m, s)?,
        test: read(&d, &["test_batch.bin".into()], 1, 10, m, s)?,
    })
}

/// CIFAR-100 (fine labels) from `dir` (the `cifar-100-binary` folder, or its parent).
pub fn load100(dir: &Path) -> Result<Splits> {
    let d = if dir.join("cifar-100-binary").is_dir() {
        dir.join("cifar-100-binary")
    } else {
        dir.to_path_buf()
    };
    let (m, s) = ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]);
    Ok(Splits {
        name: "cifar100".into(),
        train: read(&d, &["train.bin".into()], 2, 100, m, s)?,
        test: read(&d, &["test.bin".into()], 2, 100, m, s)?,
    })
}
