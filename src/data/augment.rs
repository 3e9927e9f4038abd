//! Batch assembly: per-channel normalisation and, for training, random crop with zero padding
//! and horizontal flip, all seeded.

use std::ops::Range;

use super::Dataset;
use crate::rng::Rng64;

/// Training augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding of the random crop (0: no crop).
    pub pad: usize,
    pub flip: bool,
}

impl Augment {
    /// Crop with 4 px padding and flip (the CIFAR recipe).
    pub const STANDARD: Augment = Augment { pad: 4, flip: true };
    /// None.
    pub const NONE: Augment = Augment {
        pad: 0,
        flip: false,
    };
}

/// Write the normalised (and, with `aug`, augmented) images `indices` of `d` into `out`
/// (`[B, C, H, W]`), and their labels into `labels`.
pub fn assemble(
    d: &Dataset,
    indices: &[usize],
    aug: Option<(Augment, &mut Rng64)>,
    out: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) {
    assemble_part(d, indices, 0..indices.len(), aug, out, labels)
}

/// [`assemble`] of the images `keep` of the batch only (one process's share of a distributed
/// run): the augmentation draws are those of the whole batch, so the part equals the same
/// rows of the whole batch.
pub fn assemble_part(
    d: &Dataset,
    indices: &[usize],
    keep: Range<usize>,
    aug: Option<(Augment, &mut Rng64)>,
    out: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) {
    assemble_from(d, indices, keep, |b| d.image(indices[b]), aug, out, labels)
}

/// [`assemble_part`] from the pixels of the kept images only (`raw`: `keep.len()` images,
/// `[B, C, H, W]` u8, e.g. from [`super::prefetch::Prefetch`]) instead of an in-memory set's.
pub fn assemble_raw_part(
    d: &Dataset,
    raw: &[u8],
    indices: &[usize],
    keep: Range<usize>,
    aug: Option<(Augment, &mut Rng64)>,
    out: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) {
    let n = d.image_len();
    let first = keep.start;
    let pixels = |b: usize| &raw[(b - first) * n..(b - first + 1) * n];
    assemble_from(d, indices, keep, pixels, aug, out, labels)
}

fn assemble_from<'a>(
    d: &Dataset,
    indices: &[usize],
    keep: Range<usize>,
    pixels: impl Fn(usize) -> &'a [u8],
    aug: Option<(Augment, &mut Rng64)>,
    out: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) {
    let (c, h, w) = (d.channels, d.height, d.width);
    out.clear();
    labels.clear();
    out.resize(keep.len() * c * h * w, 0.0);
    let scale: Vec<f32> = d.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = d.mean.iter().zip(&d.std).map(|(m, s)| -m / s).collect();
    let mut aug = aug;
    for (b, &i) in indices.iter().enumerate() {
        let (dy, dx, flip) = match aug.as_mut() {
            Some((a, rng)) => {
                let p = a.pad as isize;
                let dy = if p > 0 {
                    rng.below(2 * a.pad + 1) as isize - p
                } else {
                    0
                };
                let dx = if p > 0 {
                    rng.below(2 * a.pad + 1) as isize - p
                } else {
                    0
                };
                (dy, dx, a.flip && rng.uniform() < 0.5)
            }
            None => (0, 0, false),
        };
        if !keep.contains(&b) {
            continue; // its draws are made: the kept images get the whole batch's
        }
        let img = pixels(b);
        let b = b - keep.start;
        for ch in 0..c {
            let base = (b * c + ch) * h * w;
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x } as isize + dx;
                    // Padding is zero in pixel space, as torchvision's RandomCrop(padding=4).
                    let v = if sy < 0 || xx < 0 || sy >= h as isize || xx >= w as isize {
                        0.0
                    } else {
                        img[(ch * h + sy as usize) * w + xx as usize] as f32
                    };
                    out[base + y * w + x] = v * scale[ch] + shift[ch];
                }
            }
        }
        labels.push(d.labels[i]);
    }
}
