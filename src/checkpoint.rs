//! Model weights in safetensors with PyTorch's names and layouts, so that
//! `model.load_state_dict(safetensors.torch.load_file(path))` works on the usual definition, and
//! PyTorch-exported weights load here. Writes are atomic (temp file + rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, TensorView};

use crate::gpu::Gpu;
use crate::models::resnet::ResNet;

/// Write `bytes` to `path` atomically: a temp file in the same directory, then a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        // On disk before the rename makes it visible, so a power cut cannot publish a hole.
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    crate::rundir::fault_point(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {}", tmp.display(), path.display())
    })?;
    crate::rundir::fault_point(path)?;
    Ok(())
}

/// An owned tensor ready to serialise.
pub struct HostTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    /// f32 values.
    pub fn f32(shape: &[usize], v: &[f32]) -> Self {
        Self {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: bytemuck::cast_slice(v).to_vec(),
        }
    }
    /// A 0-d i64 (PyTorch's `num_batches_tracked`).
    pub fn i64_scalar(v: i64) -> Self {
        Self {
            dtype: Dtype::I64,
            shape: vec![],
            bytes: v.to_le_bytes().to_vec(),
        }
    }
}

/// Serialise named tensors to safetensors bytes.
pub fn to_bytes(
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            Ok((
                k.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

/// Serialise named tensors to a safetensors file, atomically.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomic(path, &to_bytes(tensors, metadata)?)
}

/// The model's state dict (parameters, BN running statistics and `num_batches_tracked`).
pub fn state_dict(
    gpu: &Gpu,
    model: &ResNet,
    num_batches_tracked: i64,
) -> Result<BTreeMap<String, HostTensor>> {
    let mut out = BTreeMap::new();
    // One readback of the flat buffer, then slices.
    let flat = model.params.flat_values()?.to_f32(gpu)?;
    for p in model.params.iter() {
        let off = (p.value.offset() / 4) as usize;
        let v = &flat[off..off + p.value.numel()];
        out.insert(p.name.clone(), HostTensor::f32(p.value.shape(), v));
    }
    for (name, st) in &model.bn {
        let c = st.running_mean.numel();
        out.insert(
            format!("{name}.running_mean"),
            HostTensor::f32(&[c], &st.running_mean.to_f32(gpu)?),
        );
        out.insert(
            format!("{name}.running_var"),
            HostTensor::f32(&[c], &st.running_var.to_f32(gpu)?),
        );
        out.insert(
            format!("{name}.num_batches_tracked"),
            HostTensor::i64_scalar(num_batches_tracked),
        );
    }
    if let Some(w) = &model.whiten {
        let mut put = |name: &str, t: &crate::tensor::Tensor| -> Result<()> {
            out.insert(
                name.to_string(),
                HostTensor::f32(t.shape(), &t.to_f32(gpu)?),
            );
            Ok(())
        };
        put("whiten.running_mean", &w.running_mean)?;
        put("whiten.running_cov", &w.running_cov)?;
        if let Some(rw) = &w.running_wm {
            put("whiten.running_wm", rw)?;
        }
    }
    Ok(out)
}

/// Metadata key holding the run's resolved configuration (TOML), so `eval` of a checkpoint that
/// travelled without its `config.toml` still builds the right model.
pub const CONFIG_KEY: &str = "longtail.config";

/// The model's weights in PyTorch's naming as safetensors bytes, with `config_toml` (if given)
/// in the metadata.
pub fn model_bytes(
    gpu: &Gpu,
    model: &ResNet,
    num_batches_tracked: i64,
    config_toml: Option<&str>,
) -> Result<Vec<u8>> {
    let meta = config_toml.map(|c| HashMap::from([(CONFIG_KEY.to_string(), c.to_string())]));
    to_bytes(&state_dict(gpu, model, num_batches_tracked)?, meta)
}

/// Save the model's weights in PyTorch's naming.
pub fn save_model(gpu: &Gpu, path: &Path, model: &ResNet, num_batches_tracked: i64) -> Result<()> {
    save(path, &state_dict(gpu, model, num_batches_tracked)?, None)
}

/// The configuration stored in a checkpoint's metadata, if any.
pub fn stored_config(path: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    Ok(meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_KEY).cloned()))
}

fn f32_values(file: &Path, name: &str, t: &TensorView<'_>, shape: &[usize]) -> Result<Vec<f32>> {
    if t.dtype() != Dtype::F32 {
        bail!(
            "{}: tensor {name}: dtype {:?}, expected F32",
            file.display(),
            t.dtype()
        );
    }
    if t.shape() != shape {
        bail!(
            "{}: tensor {name}: shape {:?}, expected {shape:?}",
            file.display(),
            t.shape()
        );
    }
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // A NaN weight would only show up epochs later as a NaN loss: refuse it at the door.
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        bail!(
            "{}: tensor {name} holds {x} at flat index {i} ({} non-finite values of {}): the \
             weights are damaged",
            file.display(),
            v.iter().filter(|x| !x.is_finite()).count(),
            v.len()
        );
    }
    Ok(v)
}

/// Load PyTorch-named weights into `model` (strict, like `load_state_dict`: every expected key
/// must be present with its shape, and unknown keys are an error). Returns `num_batches_tracked`.
pub fn load_model(gpu: &Gpu, path: &Path, model: &ResNet) -> Result<i64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    load_model_bytes(gpu, &bytes, path, model)
}

/// [`load_model`] from bytes already read; `path` names them in messages.
pub fn load_model_bytes(gpu: &Gpu, bytes: &[u8], path: &Path, model: &ResNet) -> Result<i64> {
    Ok(load_model_bytes_with(gpu, bytes, path, model, false)?.0)
}

/// Load starting weights for `train --init` (e.g. torchvision's, converted to safetensors):
/// the backbone must match, but a classifier of another shape (another class count) or
/// missing whitening statistics keep their fresh initialisation; what was kept is said on
/// stderr.
pub fn load_init(gpu: &Gpu, path: &Path, model: &ResNet) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, kept) = load_model_bytes_with(gpu, &bytes, path, model, true)?;
    if !kept.is_empty() {
        eprintln!(
            "note: --init {}: kept the fresh initialisation of {} (absent or of another shape \
             in the file)",
            path.display(),
            kept.join(", ")
        );
    }
    Ok(())
}

/// Whether tensor `name` may be left at its initialisation by [`load_init`].
fn init_optional(name: &str) -> bool {
    name.starts_with("fc.") || name.starts_with("linear.") || name.starts_with("whiten.")
}

/// The loader: with `lenient`, head and whitening tensors that are missing or of another
/// shape are skipped and returned by name.
fn load_model_bytes_with(
    gpu: &Gpu,
    bytes: &[u8],
    path: &Path,
    model: &ResNet,
    lenient: bool,
) -> Result<(i64, Vec<String>)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let mut expected: Vec<String> = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    let flat_t = model.params.flat_values()?;
    // Lenient loads start from the current values, so skipped tensors keep them.
    let mut flat = if lenient {
        flat_t.to_f32(gpu)?
    } else {
        vec![0f32; flat_t.numel()]
    };
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|_| anyhow::anyhow!("{}: missing tensor {name}", path.display()))
    };
    let skip = |name: &str, shape: &[usize]| {
        lenient && init_optional(name) && st.tensor(name).map_or(true, |t| t.shape() != shape)
    };
    for p in model.params.iter() {
        expected.push(p.name.clone());
        if skip(&p.name, p.value.shape()) {
            kept.push(p.name.clone());
            continue;
        }
        let v = f32_values(path, &p.name, &get(&p.name)?, p.value.shape())?;
        let off = (p.value.offset() / 4) as usize;
        flat[off..off + v.len()].copy_from_slice(&v);
    }
    let mut tracked = 0i64;
    for (name, bn) in &model.bn {
        let c = bn.running_mean.numel();
        for (suffix, t) in [
            ("running_mean", &bn.running_mean),
            ("running_var", &bn.running_var),
        ] {
            let key = format!("{name}.{suffix}");
            t.write_f32(gpu, &f32_values(path, &key, &get(&key)?, &[c])?)?;
            expected.push(key);
        }
        let key = format!("{name}.num_batches_tracked");
        if let Ok(t) = st.tensor(&key) {
            if t.dtype() != Dtype::I64 || t.data().len() != 8 {
                bail!("{}: tensor {key}: expected an i64 scalar", path.display());
            }
            let d = t.data();
            tracked = i64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        }
        expected.push(key);
    }
    if let Some(w) = &model.whiten {
        let mut stats = vec![
            ("whiten.running_mean", &w.running_mean),
            ("whiten.running_cov", &w.running_cov),
        ];
        if let Some(rw) = &w.running_wm {
            stats.push(("whiten.running_wm", rw));
        }
        for (key, t) in stats {
            expected.push(key.to_string());
            if skip(key, t.shape()) {
                kept.push(key.to_string());
                continue;
            }
            t.write_f32(gpu, &f32_values(path, key, &get(key)?, t.shape())?)?;
        }
    }
    let mut unknown: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !expected.iter().any(|e| e == n))
        .map(str::to_string)
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        bail!(
            "{}: unexpected tensors for this model: {}",
            path.display(),
            unknown.join(", ")
        );
    }
    flat_t.write_f32(gpu, &flat)?;
    Ok((tracked, kept))
}

/// The configuration keys a checkpoint's tensor names and shapes imply (model, classifier kind,
/// whitening layout, and a data set guess from channels and classes), for `eval` of weights that
/// came without a config; the text says what was inferred and what had to be assumed.
pub fn infer_config(path: &Path) -> Result<(toml::Table, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let names = st.names();
    let shape = |n: &str| st.tensor(n).ok().map(|t| t.shape().to_vec());
    let hint = "pass --preset or --config (the run's config.toml) to say what it is";
    let conv1 = shape("conv1.weight").with_context(|| {
        format!(
            "{}: no conv1.weight tensor: not a longtail ResNet checkpoint; {hint}",
            path.display()
        )
    })?;
    if conv1.len() != 4 {
        bail!(
            "{}: conv1.weight has shape {conv1:?}, expected 4 dimensions; {hint}",
            path.display()
        );
    }
    let in_channels = conv1[1];
    let (model, head) = if let Some(c2) = shape("layer1.0.conv2.weight")
        && shape("layer1.0.conv3.weight").is_some()
    {
        // torchvision's bottleneck ResNets: blocks per stage give the depth, the grouped 3x3
        // of the first block (width = groups x width per group) the ResNeXt layout.
        let blocks = |l: usize| {
            (0..)
                .take_while(|j| {
                    names
                        .iter()
                        .any(|k| k.starts_with(&format!("layer{l}.{j}.")))
                })
                .count()
        };
        let layers = [blocks(1), blocks(2), blocks(3), blocks(4)];
        let groups = c2[0] / c2[1].max(1);
        let arch = crate::models::resnet::Arch::Bottleneck {
            layers,
            groups,
            width: c2[1],
        };
        let name = arch.name();
        crate::models::resnet::Arch::parse(&name).with_context(|| {
            format!(
                "{}: a bottleneck ResNet with {layers:?} blocks per stage, which this tool does \
                 not build; {hint}",
                path.display()
            )
        })?;
        (name, "fc")
    } else if shape("fc.weight").is_some() {
        ("resnet10".to_string(), "fc")
    } else {
        // CIFAR ResNet-(6n+2): n blocks per stage, named layer1.0 .. layer1.(n-1).
        let n = (0..)
            .take_while(|j| names.iter().any(|k| k.starts_with(&format!("layer1.{j}."))))
            .count();
        if n == 0 {
            bail!(
                "{}: neither fc.weight nor layer1.* tensors: not a ResNet this tool builds; {hint}",
                path.display()
            );
        }
        (format!("resnet{}", 6 * n + 2), "linear")
    };
    let w = shape(&format!("{head}.weight"))
        .with_context(|| format!("{}: no {head}.weight tensor; {hint}", path.display()))?;
    let has_bias = shape(&format!("{head}.bias")).is_some();
    let classes = if has_bias { w[0] } else { w[w.len() - 1] };
    let mut t = toml::Table::new();
    t.insert("model".into(), model.clone().into());
    let mut said = vec![
        format!("model {model}"),
        format!("{in_channels} input channel(s)"),
        format!("{classes} classes"),
    ];
    if !has_bias {
        // Only LDAM uses the normed (cosine) classifier, whose weight is [in, out] with no bias.
        t.insert("loss".into(), "ldam".into());
        said.push("a normed classifier (loss ldam)".into());
    }
    if let Some(cov) = shape("whiten.running_cov") {
        t.insert("whiten".into(), "ns".into());
        let group = if cov[0] == 1 { 0 } else { cov[1] };
        t.insert("whiten_group".into(), (group as i64).into());
        if shape("whiten.running_wm").is_some() {
            t.insert("whiten_track".into(), "w".into());
        }
        said.push(format!(
            "channel whitening in {} group(s) (method not stored: assumed ns; eval uses the running \
             statistics, so only the eigen/ns/iternorm choice can differ)",
            cov[0]
        ));
    }
    let dataset = match (in_channels, classes) {
        (1, _) => None, // the default, fashion-mnist (or pass --dataset mnist)
        (3, 10) => Some("cifar10"),
        (3, 100) => Some("cifar100"),
        _ => Some("imagenet-lt"),
    };
    if let Some(d) = dataset {
        t.insert("dataset".into(), d.into());
        said.push(format!("data set {d} (guessed from channels and classes)"));
    } else {
        said.push(
            "data set fashion-mnist (the default for 1 channel; --dataset mnist otherwise)".into(),
        );
    }
    Ok((
        t,
        format!(
            "{} has no config.toml beside it and no stored config: inferred {}; {hint}",
            path.display(),
            said.join(", ")
        ),
    ))
}
