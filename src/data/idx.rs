//! IDX files (MNIST, Fashion-MNIST), gzipped or not: `train-images-idx3-ubyte[.gz]`,
//! `train-labels-idx1-ubyte[.gz]`, `t10k-*`. Debian's `dataset-fashion-mnist` installs them under
//! `/usr/share/datasets/fashion-mnist`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Dataset, Splits};

/// Where Debian's `dataset-fashion-mnist` puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The most one gzipped data file may decompress to (16 GiB: ImageNet-scale IDX sets fit; more
/// is a corrupt or hostile header).
pub const MAX_DECOMPRESSED: u64 = 16 << 30;

/// The largest image side an IDX header may claim (MNIST is 28; 4096 leaves room for anything
/// real while keeping `n x rows x cols` far from overflow).
pub const MAX_SIDE: usize = 4096;

/// Read a whole file, un-gzipping when it ends in `.gz`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    read_maybe_gz_limited(path, MAX_DECOMPRESSED)
}

/// [`read_maybe_gz`] with the decompressed size capped at `limit` bytes.
pub fn read_maybe_gz_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        // A few bytes of gzip can claim any size: read at most the limit plus one byte, so a
        // bomb ends in a message rather than an out-of-memory abort.
        flate2::read::GzDecoder::new(&raw[..])
            .take(limit + 1)
            .read_to_end(&mut out)
            .with_context(|| {
                format!(
                    "{}: not a valid gzip file (truncated or corrupt?)",
                    path.display()
                )
            })?;
        if out.len() as u64 > limit {
            bail!(
                "{}: decompresses to more than {limit} bytes, the limit for one data file",
                path.display()
            );
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse an IDX3 image file: (count, rows, cols, pixels).
pub fn parse_images(path: &Path, b: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if b.len() < 16 {
        bail!(
            "{}: {} bytes is too short for an IDX3 header (16 bytes)",
            path.display(),
            b.len()
        );
    }
    let magic = be32(b, 0);
    if magic != 0x0000_0803 {
        bail!(
            "{}: magic number {magic:#010x}, expected 0x00000803 (IDX3 unsigned bytes)",
            path.display()
        );
    }
    let (n, r, c) = (
        be32(b, 4) as usize,
        be32(b, 8) as usize,
        be32(b, 12) as usize,
    );
    for (field, v) in [("rows", r), ("columns", c)] {
        if v == 0 || v > MAX_SIDE {
            bail!(
                "{}: header field {field} = {v}, expected 1..={MAX_SIDE}",
                path.display()
            );
        }
    }
    // Checked: a hostile header can make n x rows x cols wrap around (2^22 x 2^21 x 2^21 = 2^64).
    let want = n
        .checked_mul(r)
        .and_then(|v| v.checked_mul(c))
        .and_then(|v| v.checked_add(16));
    if want != Some(b.len()) {
        let want_s = want.map_or("more than 2^64".to_string(), |w| w.to_string());
        bail!(
            "{}: header says {n} images of {r}x{c} ({want_s} bytes), the file has {} bytes \
             (truncated or corrupt header?)",
            path.display(),
            b.len()
        );
    }
    Ok((n, r, c, b[16..].to_vec()))
}

/// Parse an IDX1 label file.
pub fn parse_labels(path: &Path, b: &[u8]) -> Result<Vec<u32>> {
    if b.len() < 8 {
        bail!(
            "{}: {} bytes is too short for an IDX1 header (8 bytes)",
            path.display(),
            b.len()
        );
    }
    let magic = be32(b, 0);
    if magic != 0x0000_0801 {
        bail!(
            "{}: magic number {magic:#010x}, expected 0x00000801 (IDX1 unsigned bytes)",
            path.display()
        );
    }
    let n = be32(b, 4) as usize;
    if n.checked_add(8) != Some(b.len()) {
        bail!(
            "{}: header says {n} labels, the file has {} label bytes (truncated?)",
            path.display(),
            b.len() - 8
        );
    }
    Ok(b[8..].iter().map(|&v| v as u32).collect())
}

/// `dir/stem` or `dir/stem.gz`, whichever exists.
fn find(dir: &Path, stem: &str, hint: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{}: missing {stem}[.gz]{hint}", dir.display())
}

fn split(
    dir: &Path,
    prefix: &str,
    classes: usize,
    mean: f32,
    std: f32,
    hint: &str,
) -> Result<Dataset> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"), hint)?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"), hint)?;
    let (n, r, c, images) = parse_images(&ip, &read_maybe_gz(&ip)?)?;
    let labels = parse_labels(&lp, &read_maybe_gz(&lp)?)?;
    if labels.len() != n {
        bail!(
            "{} has {n} images but {} has {} labels",
            ip.display(),
            lp.display(),
            labels.len()
        );
    }
    let d = Dataset {
        images: super::Images::Memory(images),
        labels,
        channels: 1,
        height: r,
        width: c,
        classes,
        mean: vec![mean],
        std: vec![std],
    };
    d.check_labels(&lp.display().to_string())?;
    Ok(d)
}

/// Fashion-MNIST (or MNIST, same format) from `dir`. `fashion` picks the normalisation and the
/// install hint.
pub fn load(dir: &Path, fashion: bool) -> Result<Splits> {
    let hint = if fashion {
        " (Fashion-MNIST comes with Debian's dataset-fashion-mnist: sudo apt-get install \
         dataset-fashion-mnist installs it under /usr/share/datasets/fashion-mnist; or pass --data-dir)"
    } else {
        ""
    };
    if !dir.is_dir() {
        bail!("data directory {} does not exist{hint}", dir.display());
    }
    // Fashion-MNIST statistics (METHOD.md §6); MNIST's usual ones.
    let (mean, std) = if fashion {
        (0.2860, 0.3530)
    } else {
        (0.1307, 0.3081)
    };
    Ok(Splits {
        name: if fashion { "fashion-mnist" } else { "mnist" }.into(),
        train: split(dir, "train", 10, mean, std, hint)?,
        test: split(dir, "t10k", 10, mean, std, hint)?,
    })
}

/// Write an IDX3 image file and IDX1 label file (tests and fixtures).
pub fn write(
    dir: &Path,
    prefix: &str,
    rows: usize,
    cols: usize,
    images: &[u8],
    labels: &[u8],
) -> Result<()> {
    let n = labels.len();
    let mut b = vec![0, 0, 8, 3];
    for v in [n, rows, cols] {
        b.extend_from_slice(&(v as u32).to_be_bytes());
    }
    b.extend_from_slice(images);
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), &b)?;
    let mut l = vec![0, 0, 8, 1];
    l.extend_from_slice(&(n as u32).to_be_bytes());
    l.extend_from_slice(labels);
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), &l)?;
    Ok(())
}
