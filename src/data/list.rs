//! ImageNet-LT-style lists: one `relative/path.jpg label` per line, paths relative to
//! `--data-root`, decoded with `image`, resized (shorter side to `size * 8 / 7`, as the usual
//! 256/224) and centre-cropped to `size` x `size`, RGB. The whole list is decoded up front, on
//! every core (a line reports images/s). iNaturalist 2018 and Places-LT use the same format.

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;

use super::Dataset;

/// Parse a list file into (path, label) pairs.
pub fn parse_list(list: &Path) -> Result<Vec<(String, u32)>> {
    let text =
        std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((path, label)) = line.rsplit_once(char::is_whitespace) else {
            bail!(
                "{}:{}: expected `path label`, got {line:?}",
                list.display(),
                no + 1
            );
        };
        let label: u32 = label.trim().parse().with_context(|| {
            format!(
                "{}:{}: label {label:?} is not a non-negative integer",
                list.display(),
                no + 1
            )
        })?;
        out.push((path.trim().to_string(), label));
    }
    if out.is_empty() {
        bail!("{}: the list holds no images", list.display());
    }
    Ok(out)
}

/// The most pixels one image may have after the resize (an aspect ratio of ~10:1 at 224 px is
/// ~0.6 M; 64 M is far past any photograph).
pub const MAX_RESIZED_PIXELS: u64 = 64 << 20;

/// Decode one image to `size` x `size` RGB, `[3, size, size]`.
pub fn decode(path: &Path, size: usize) -> Result<Vec<u8>> {
    let img =
        image::open(path).with_context(|| format!("cannot decode image {}", path.display()))?;
    let short = (size * 8).div_ceil(7) as u32;
    let (w, h) = (img.width().max(1), img.height().max(1));
    let (nw, nh) = if w < h {
        (short as u64, h as u64 * short as u64 / w as u64)
    } else {
        (w as u64 * short as u64 / h as u64, short as u64)
    };
    // A 1 x 100,000 image would resize to billions of pixels: refuse extreme aspect ratios.
    if nw.saturating_mul(nh) > MAX_RESIZED_PIXELS {
        bail!(
            "image {}: {w}x{h} pixels has an aspect ratio too extreme to resize to a shorter side \
             of {short} (more than {MAX_RESIZED_PIXELS} pixels)",
            path.display()
        );
    }
    let (nw, nh) = (nw as u32, nh as u32);
    let rgb = img
        .resize_exact(
            nw.max(size as u32),
            nh.max(size as u32),
            FilterType::Triangle,
        )
        .to_rgb8();
    let (x0, y0) = (
        (rgb.width() - size as u32) / 2,
        (rgb.height() - size as u32) / 2,
    );
    let mut out = vec![0u8; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let p = rgb.get_pixel(x0 + x as u32, y0 + y as u32);
            for c in 0..3 {
                out[(c * size + y) * size + x] = p[c];
            }
        }
    }
    Ok(out)
}

/// ImageNet's per-channel statistics (torchvision's), used for every list data set.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Load every image of `list` under `root` with `classes` classes (0 = max label + 1).
pub fn load(list: &Path, root: &Path, size: usize, classes: usize) -> Result<Dataset> {
    load_with(list, root, size, classes, false)
}

/// [`load`], or with `stream` only check that every file is there (and that the first one
/// decodes): the images stay files, decoded batch by batch ([`super::prefetch`]), so a set of
/// any size trains in bounded memory.
pub fn load_with(
    list: &Path,
    root: &Path,
    size: usize,
    classes: usize,
    stream: bool,
) -> Result<Dataset> {
    if size == 0 {
        bail!("image size must be positive");
    }
    let entries = parse_list(list)?;
    let classes = if classes == 0 {
        entries.iter().map(|e| e.1).max().unwrap_or(0) as usize + 1
    } else {
        classes
    };
    let mut labels = Vec::with_capacity(entries.len());
    for (path, label) in &entries {
        if *label as usize >= classes {
            bail!(
                "{}: label {label} of {path} is out of range (expected 0..{classes})",
                list.display()
            );
        }
        labels.push(*label);
    }
    let images = if stream {
        files(list, root, size, &entries)?
    } else {
        super::Images::Memory(decode_all(list, root, size, &entries)?)
    };
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: size,
        width: size,
        classes,
        mean: IMAGENET_MEAN.to_vec(),
        std: IMAGENET_STD.to_vec(),
    })
}

/// The listed files, each checked to exist, the first one decoded (a wrong --data-root or
/// format shows now, not in the middle of an epoch).
fn files(
    list: &Path,
    root: &Path,
    size: usize,
    entries: &[(String, u32)],
) -> Result<super::Images> {
    let mut paths = Vec::with_capacity(entries.len());
    for (path, _) in entries {
        let p = root.join(path);
        if !p.is_file() {
            bail!(
                "{}: {} (listed as {path}) is not a readable file; check --data-root",
                list.display(),
                p.display()
            );
        }
        paths.push(p);
    }
    if let Some(p) = paths.first() {
        decode(p, size)?;
    }
    Ok(super::Images::Files {
        paths: std::sync::Arc::new(paths),
        size,
    })
}

/// Every listed image decoded and resized, on every core, in list order.
fn decode_all(list: &Path, root: &Path, size: usize, entries: &[(String, u32)]) -> Result<Vec<u8>> {
    let bytes = entries
        .len()
        .checked_mul(3 * size * size)
        .with_context(|| format!("{}: too many images to hold", list.display()))?;
    let mut images = Vec::new();
    images.try_reserve_exact(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{}: {} images of 3x{size}x{size} need {:.1} GiB of memory, which cannot be allocated",
            list.display(),
            entries.len(),
            bytes as f64 / (1u64 << 30) as f64
        )
    })?;
    // Decode on every core: each worker fills its own contiguous run of images, in list order.
    images.resize(bytes, 0);
    let per = 3 * size * size;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(entries.len().max(1));
    let run = entries.len().div_ceil(workers);
    let t0 = std::time::Instant::now();
    std::thread::scope(|sc| -> Result<()> {
        let jobs: Vec<_> = images
            .chunks_mut(run * per)
            .zip(entries.chunks(run))
            .map(|(dst, ents)| {
                sc.spawn(move || -> Result<()> {
                    for (img, (path, _)) in dst.chunks_mut(per).zip(ents) {
                        img.copy_from_slice(&decode(&root.join(path), size)?);
                    }
                    Ok(())
                })
            })
            .collect();
        for j in jobs {
            j.join()
                .map_err(|_| anyhow::anyhow!("an image decoding thread panicked"))??;
        }
        Ok(())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}: decoded {} images in {secs:.1} s ({:.0} images/s on {workers} threads)",
        list.display(),
        entries.len(),
        entries.len() as f64 / secs.max(1e-9)
    );
    Ok(images)
}
