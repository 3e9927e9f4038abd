//! Data: readers for IDX (Fashion-MNIST, MNIST), CIFAR-10/100 binary and ImageNet-LT-style
//! lists; the long-tailed subset; augmentation and batch assembly.
//!
//! Images are kept as u8 `[N, C, H, W]` on the host (60k Fashion-MNIST images are 47 MB) and
//! normalised when a batch is assembled; list data sets (ImageNet-LT, iNaturalist, Places-LT)
//! can instead stay as files, decoded a few batches ahead of the GPU ([`prefetch`]).

pub mod augment;
pub mod cifar;
pub mod idx;
pub mod list;
pub mod longtail;
pub mod names;
pub mod prefetch;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};

/// Where a data set's pixels are.
#[derive(Clone, Debug, PartialEq)]
pub enum Images {
    /// Decoded, `[N, C, H, W]`.
    Memory(Vec<u8>),
    /// RGB image files, decoded (resized and centre-cropped to `size`) when a batch needs them.
    Files {
        paths: Arc<Vec<PathBuf>>,
        size: usize,
    },
}

/// An image classification set.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The pixels, in memory or as files.
    pub images: Images,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
    /// Per-channel normalisation (of pixels scaled to [0, 1]).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// Pixels of image `i` of an in-memory set (empty for a set of files: use
    /// [`Dataset::gather`] or [`prefetch::Prefetch`]).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        match &self.images {
            Images::Memory(v) => &v[i * n..(i + 1) * n],
            Images::Files { .. } => &[],
        }
    }
    /// Whether the pixels stay as files until a batch needs them.
    pub fn is_streamed(&self) -> bool {
        matches!(self.images, Images::Files { .. })
    }
    /// The pixels of images `indices`, in that order (`[len, C, H, W]`); files are decoded here,
    /// on the calling thread.
    pub fn gather(&self, indices: &[usize]) -> Result<Vec<u8>> {
        let n = self.image_len();
        let mut out = Vec::with_capacity(indices.len() * n);
        match &self.images {
            Images::Memory(_) => {
                for &i in indices {
                    out.extend_from_slice(self.image(i));
                }
            }
            Images::Files { paths, size } => {
                for &i in indices {
                    out.extend_from_slice(&list::decode(&paths[i], *size)?);
                }
            }
        }
        Ok(out)
    }
    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
    /// The subset at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let images = match &self.images {
            Images::Memory(_) => {
                let n = self.image_len();
                let mut v = Vec::with_capacity(indices.len() * n);
                for &i in indices {
                    v.extend_from_slice(self.image(i));
                }
                Images::Memory(v)
            }
            Images::Files { paths, size } => Images::Files {
                paths: Arc::new(indices.iter().map(|&i| paths[i].clone()).collect()),
                size: *size,
            },
        };
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone_meta()
        }
    }
    fn clone_meta(&self) -> Dataset {
        Dataset {
            images: Images::Memory(Vec::new()),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
    /// Fail unless every label is below `classes` (`source` names the file for the message).
    pub fn check_labels(&self, source: &str) -> Result<()> {
        if let Some((i, l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= self.classes)
        {
            bail!(
                "{source}: label {l} of image {i} is out of range (expected 0..{})",
                self.classes
            );
        }
        Ok(())
    }
}

/// Train and test splits of one data set.
pub struct Splits {
    pub name: String,
    pub train: Dataset,
    pub test: Dataset,
}
