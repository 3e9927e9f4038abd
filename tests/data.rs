//! Data readers on files the tests generate (each format, broken ones included), the
//! long-tailed subset on the real Fashion-MNIST, and batch assembly.

mod common;

use std::io::Write;
use std::path::Path;

use longtail::data::augment::{Augment, assemble};
use longtail::data::longtail::{Profile, class_sizes, subset_indices};
use longtail::data::{cifar, idx, list};
use longtail::rng::Rng64;

fn tmp(name: &str) -> common::TmpDir {
    common::tmp_dir(&format!("data-{name}"))
}

fn gz(path: &Path) {
    let raw = std::fs::read(path).unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    std::fs::write(
        path.with_extension(format!(
            "{}gz",
            path.extension()
                .map_or(String::new(), |x| format!("{}.", x.to_string_lossy()))
        )),
        e.finish().unwrap(),
    )
    .unwrap();
    std::fs::remove_file(path).unwrap();
}

fn write_idx(dir: &Path, n_train: usize, n_test: usize) {
    let img = |n: usize| {
        (0..n * 28 * 28)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
    };
    let lab = |n: usize| (0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>();
    idx::write(dir, "train", 28, 28, &img(n_train), &lab(n_train)).unwrap();
    idx::write(dir, "t10k", 28, 28, &img(n_test), &lab(n_test)).unwrap();
}

fn err(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn idx_plain_and_gzipped() {
    let d = tmp("idx");
    write_idx(&d, 30, 20);
    let s = idx::load(&d, false).unwrap();
    assert_eq!(
        (
            s.train.len(),
            s.test.len(),
            s.train.height,
            s.train.channels
        ),
        (30, 20, 28, 1)
    );
    assert_eq!(s.train.labels[13], 3);
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        gz(&d.join(f));
    }
    let s2 = idx::load(&d, true).unwrap();
    assert_eq!(s2.train.images, s.train.images);
    assert_eq!(s2.train.mean, vec![0.2860]);
}

#[test]
fn idx_broken_files() {
    let d = tmp("idxbad");
    write_idx(&d, 30, 20);
    // Truncated images.
    let p = d.join("train-images-idx3-ubyte");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 5]).unwrap();
    let e = err(idx::load(&d, false));
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(&p, &b).unwrap();
    // Bad magic in the labels.
    let lp = d.join("train-labels-idx1-ubyte");
    let mut l = std::fs::read(&lp).unwrap();
    l[3] = 9;
    std::fs::write(&lp, &l).unwrap();
    let e = err(idx::load(&d, false));
    assert!(e.contains("magic") && e.contains("labels"), "{e}");
    // Label out of range.
    l[3] = 1;
    l[8] = 12;
    std::fs::write(&lp, &l).unwrap();
    let e = err(idx::load(&d, false));
    assert!(e.contains("label 12") && e.contains("out of range"), "{e}");
    // Corrupt gzip.
    std::fs::remove_file(&lp).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte.gz"), b"not gzip at all").unwrap();
    let e = err(idx::load(&d, false));
    assert!(e.contains("gzip"), "{e}");
    // Missing files and folder; the Fashion-MNIST folder names its package.
    let e = err(idx::load(&d.join("nope"), false));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    let e = err(idx::load(&tmp("empty"), false));
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    let e = err(idx::load(&d.join("no-fashion-here"), true));
    assert!(
        e.contains("no-fashion-here") && e.contains("apt-get install dataset-fashion-mnist"),
        "{e}"
    );
}

#[test]
fn cifar10_and_100_binaries() {
    let d = tmp("cifar");
    let rec = |label: &[u8], fill: u8| {
        let mut r = label.to_vec();
        r.extend(std::iter::repeat_n(fill, 3072));
        r
    };
    let c10 = d.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&c10).unwrap();
    for i in 1..=5 {
        let b: Vec<u8> = (0..3)
            .flat_map(|k| rec(&[(i + k) as u8 % 10], k as u8))
            .collect();
        std::fs::write(c10.join(format!("data_batch_{i}.bin")), b).unwrap();
    }
    std::fs::write(c10.join("test_batch.bin"), rec(&[7], 9)).unwrap();
    let s = cifar::load10(&d).unwrap();
    assert_eq!(
        (
            s.train.len(),
            s.test.len(),
            s.train.channels,
            s.test.labels[0]
        ),
        (15, 1, 3, 7)
    );
    assert_eq!(s.train.image(1)[0], 1);
    // Truncated and out-of-range records.
    std::fs::write(c10.join("test_batch.bin"), &rec(&[7], 9)[..3000]).unwrap();
    let e = err(cifar::load10(&d));
    assert!(
        e.contains("test_batch.bin") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(c10.join("test_batch.bin"), rec(&[11], 9)).unwrap();
    let e = err(cifar::load10(&d));
    assert!(e.contains("label 11"), "{e}");

    let c100 = d.join("cifar-100-binary");
    std::fs::create_dir_all(&c100).unwrap();
    std::fs::write(
        c100.join("train.bin"),
        [rec(&[3, 42], 1), rec(&[4, 99], 2)].concat(),
    )
    .unwrap();
    std::fs::write(c100.join("test.bin"), rec(&[0, 5], 3)).unwrap();
    let s = cifar::load100(&d).unwrap();
    assert_eq!(s.train.labels, vec![42, 99], "fine labels");
    assert_eq!(s.train.classes, 100);
}

#[test]
fn imagenet_lt_lists() {
    let d = tmp("inet");
    std::fs::create_dir_all(d.join("train")).unwrap();
    for (i, (w, h)) in [(40u32, 30u32), (20, 50), (64, 64)].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, i as u8 * 80])
        });
        img.save(d.join(format!("train/{i}.png"))).unwrap();
    }
    std::fs::write(
        d.join("list.txt"),
        "train/0.png 0\ntrain/1.png 2\n\ntrain/2.png 1\n",
    )
    .unwrap();
    let ds = list::load(&d.join("list.txt"), &d, 16, 0).unwrap();
    assert_eq!(
        (ds.len(), ds.classes, ds.height, ds.channels),
        (3, 3, 16, 3)
    );
    assert_eq!(ds.image(2)[2 * 256], 160, "blue channel of image 2");
    // An undecodable image is named.
    std::fs::write(d.join("train/bad.png"), b"garbage").unwrap();
    std::fs::write(d.join("bad.txt"), "train/0.png 0\ntrain/bad.png 1\n").unwrap();
    let e = err(list::load(&d.join("bad.txt"), &d, 16, 0));
    assert!(e.contains("bad.png") && e.contains("decode"), "{e}");
    // A malformed line is named with its number.
    std::fs::write(d.join("bad2.txt"), "train/0.png zero\n").unwrap();
    let e = err(list::load(&d.join("bad2.txt"), &d, 16, 0));
    assert!(e.contains("bad2.txt:1") && e.contains("zero"), "{e}");
    // A label past the class count.
    let e = err(list::load(&d.join("list.txt"), &d, 16, 2));
    assert!(e.contains("label 2") && e.contains("out of range"), "{e}");
    // Decoded on several threads, in list order: the same bytes as one decode per image.
    let mut lines = String::new();
    for i in 0..13 {
        lines.push_str(&format!("train/{}.png {}\n", i % 3, i % 4));
    }
    std::fs::write(d.join("long.txt"), lines).unwrap();
    let ds = list::load(&d.join("long.txt"), &d, 16, 0).unwrap();
    for i in 0..13 {
        let one = list::decode(&d.join(format!("train/{}.png", i % 3)), 16).unwrap();
        assert_eq!(ds.image(i), &one[..], "image {i}");
        assert_eq!(ds.labels[i], (i % 4) as u32);
    }
    // Streamed: the same pixels, decoded per batch; the prefetch threads hand the batches of
    // a plan out in order whatever the thread count, and the set's subset keeps its files.
    let streamed = list::load_with(&d.join("long.txt"), &d, 16, 0, true).unwrap();
    assert!(streamed.is_streamed() && !ds.is_streamed());
    assert_eq!(streamed.labels, ds.labels);
    let plan: Vec<Vec<usize>> = vec![vec![3, 1, 4], vec![1, 5], vec![9, 2, 6, 5], vec![12]];
    for workers in [1, 2, 3] {
        let mut p =
            longtail::data::prefetch::Prefetch::start(&streamed, &plan, workers, 1).unwrap();
        for b in &plan {
            assert_eq!(
                p.next_batch().unwrap(),
                ds.gather(b).unwrap(),
                "{workers} workers {b:?}"
            );
        }
        assert!(p.next_batch().is_err(), "a fifth batch of four");
        assert_eq!(p.images, 10);
    }
    let sub = streamed.subset(&[12, 0]);
    assert_eq!(sub.gather(&[0, 1]).unwrap(), ds.gather(&[12, 0]).unwrap());
    // A missing file is named when the list is read, not in the middle of an epoch; an
    // undecodable one by the batch that meets it.
    std::fs::write(
        d.join("missing.txt"),
        "train/0.png 0
train/nope.png 1
",
    )
    .unwrap();
    let e = err(list::load_with(&d.join("missing.txt"), &d, 16, 0, true));
    assert!(e.contains("nope.png") && e.contains("--data-root"), "{e}");
    let bad = list::load_with(&d.join("bad.txt"), &d, 16, 0, true).unwrap();
    let mut p = longtail::data::prefetch::Prefetch::start(&bad, &[vec![0], vec![1]], 2, 1).unwrap();
    assert!(p.next_batch().is_ok());
    let e = err(p.next_batch());
    assert!(e.contains("bad.png"), "{e}");
    // An aspect ratio no resize should follow (1 x 20,000 pixels) is refused, not allocated.
    image::GrayImage::new(1, 20_000)
        .save(d.join("train/thin.png"))
        .unwrap();
    std::fs::write(d.join("thin.txt"), "train/thin.png 0\n").unwrap();
    let e = err(list::load(&d.join("thin.txt"), &d, 224, 0));
    assert!(e.contains("thin.png") && e.contains("aspect ratio"), "{e}");
}

#[test]
fn long_tailed_profile_and_subset() {
    // CIFAR-10-LT / Fashion-MNIST-LT at rho = 100: 12,406 images.
    let sizes = class_sizes(10, 5000, 100.0, Profile::Exp).unwrap();
    assert_eq!(
        sizes,
        vec![5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    );
    assert_eq!(sizes.iter().sum::<usize>(), 12_406);
    assert_eq!(
        class_sizes(10, 500, 10.0, Profile::Step).unwrap(),
        vec![500, 500, 500, 500, 500, 50, 50, 50, 50, 50]
    );
    let e = err(class_sizes(10, 5000, 0.5, Profile::Exp));
    assert!(e.contains("rho"), "{e}");
    if Path::new(idx::FASHION_MNIST_DIR).exists() {
        let s = idx::load(Path::new(idx::FASHION_MNIST_DIR), true).unwrap();
        let keep = subset_indices(&s.train, &sizes).unwrap();
        assert_eq!(keep.len(), 12_406);
        assert!(keep.windows(2).all(|w| w[0] < w[1]), "file order kept");
        let sub = s.train.subset(&keep);
        assert_eq!(sub.class_counts(), sizes);
        // First n_c of each class: the last kept image of class 9 is its 50th in file order.
        let nines: Vec<usize> = (0..s.train.len())
            .filter(|&i| s.train.labels[i] == 9)
            .collect();
        assert_eq!(
            *keep.iter().rfind(|&&i| s.train.labels[i] == 9).unwrap(),
            nines[49]
        );
        assert_eq!(
            (s.test.len(), s.test.class_counts()),
            (10_000, vec![1000; 10])
        );
    } else {
        eprintln!("(Fashion-MNIST not installed: skipping the real-data part)");
    }
}

#[test]
fn augmentation_is_seeded_and_normalises() {
    let d = tmp("aug");
    write_idx(&d, 10, 10);
    let s = idx::load(&d, true).unwrap();
    let (mut a, mut la, mut b, mut lb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    assemble(
        &s.train,
        &[0, 3],
        Some((Augment::STANDARD, &mut Rng64::new(5))),
        &mut a,
        &mut la,
    );
    assemble(
        &s.train,
        &[0, 3],
        Some((Augment::STANDARD, &mut Rng64::new(5))),
        &mut b,
        &mut lb,
    );
    assert_eq!(a, b);
    assert_eq!(la, vec![0, 3]);
    let mut c = Vec::new();
    assemble(&s.train, &[0], None, &mut c, &mut la);
    let px = s.train.image(0)[5] as f32;
    assert!((c[5] - (px / 255.0 - 0.2860) / 0.3530).abs() < 1e-5);
}

/// A distributed run's process assembles only its share of each batch: the same rows as the
/// whole batch, augmentation included (every image's random draws are still made), from
/// memory or from the kept images' pixels only.
#[test]
fn a_part_of_a_batch_is_those_rows_of_the_whole() {
    let d = tmp("part");
    write_idx(&d, 10, 10);
    let s = idx::load(&d, true).unwrap();
    let idx = [0, 3, 5, 7, 8, 1];
    let (mut all, mut la) = (Vec::new(), Vec::new());
    let aug = || Some((Augment::STANDARD, Rng64::new(9)));
    let (a, mut r) = aug().unwrap();
    assemble(&s.train, &idx, Some((a, &mut r)), &mut all, &mut la);
    let n = s.train.image_len();
    for keep in [0..2, 2..4, 4..6, 1..5] {
        let (mut p, mut lp) = (Vec::new(), Vec::new());
        let (a, mut r) = aug().unwrap();
        longtail::data::augment::assemble_part(
            &s.train,
            &idx,
            keep.clone(),
            Some((a, &mut r)),
            &mut p,
            &mut lp,
        );
        assert_eq!(p[..], all[keep.start * n..keep.end * n], "{keep:?}");
        assert_eq!(lp[..], la[keep.clone()]);
        let raw: Vec<u8> = idx[keep.clone()]
            .iter()
            .flat_map(|&i| s.train.image(i).to_vec())
            .collect();
        let (a, mut r) = aug().unwrap();
        longtail::data::augment::assemble_raw_part(
            &s.train,
            &raw,
            &idx,
            keep.clone(),
            Some((a, &mut r)),
            &mut p,
            &mut lp,
        );
        assert_eq!(p[..], all[keep.start * n..keep.end * n], "raw {keep:?}");
    }
}
