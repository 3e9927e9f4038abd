//! The long-tailed training subset (METHOD.md §6): class c keeps its first `n_c` images in file
//! order, the subset keeps file order.

use anyhow::{Result, bail};

use super::Dataset;

/// Shape of the class-size profile.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// `n_c = floor(n_max * (1/rho)^(c / (C - 1)))`.
    Exp,
    /// The first half of the classes keep `n_max`, the rest `floor(n_max / rho)`.
    Step,
}

/// Per-class sizes for `classes` classes, largest class `n_max`, imbalance ratio `rho >= 1`.
pub fn class_sizes(classes: usize, n_max: usize, rho: f64, profile: Profile) -> Result<Vec<usize>> {
    if rho.is_nan() || rho < 1.0 || !rho.is_finite() {
        bail!("imbalance ratio rho must be a number >= 1, got {rho}");
    }
    if classes == 0 {
        bail!("no classes");
    }
    Ok((0..classes)
        .map(|c| match profile {
            Profile::Exp if classes == 1 => n_max,
            Profile::Exp => {
                (n_max as f64 * (1.0 / rho).powf(c as f64 / (classes - 1) as f64)).floor() as usize
            }
            Profile::Step if c < classes / 2 => n_max,
            Profile::Step => (n_max as f64 / rho).floor() as usize,
        })
        .collect())
}

/// Indices of the long-tailed subset of `d`: for each class its first `sizes[c]` images, in file
/// order. Fails if a class has fewer images than asked for.
pub fn subset_indices(d: &Dataset, sizes: &[usize]) -> Result<Vec<usize>> {
    let have = d.class_counts();
    for (c, (&want, &n)) in sizes.iter().zip(&have).enumerate() {
        if want > n {
            bail!(
                "class {c} has {n} training images, the long-tailed profile asks for {want} (lower --n-max)"
            );
        }
    }
    let mut taken = vec![0usize; d.classes];
    Ok((0..d.len())
        .filter(|&i| {
            let c = d.labels[i] as usize;
            let keep = taken[c] < sizes[c];
            taken[c] += keep as usize;
            keep
        })
        .collect())
}

/// Many / Medium / Few split of the classes by training count: > 100, 20..=100, < 20.
pub fn shot_group(count: usize) -> usize {
    if count > 100 {
        0
    } else if count >= 20 {
        1
    } else {
        2
    }
}
