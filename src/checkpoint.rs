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
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {}", tmp.display(), path.display())
    })?;
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

/// Serialise named tensors to a safetensors file, atomically.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            Ok((
                k.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let bytes = safetensors::serialize(views, metadata)?;
    write_atomic(path, &bytes)
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

/// Save the model's weights in PyTorch's naming.
pub fn save_model(gpu: &Gpu, path: &Path, model: &ResNet, num_batches_tracked: i64) -> Result<()> {
    save(path, &state_dict(gpu, model, num_batches_tracked)?, None)
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
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Load PyTorch-named weights into `model` (strict, like `load_state_dict`: every expected key
/// must be present with its shape, and unknown keys are an error). Returns `num_batches_tracked`.
pub fn load_model(gpu: &Gpu, path: &Path, model: &ResNet) -> Result<i64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let mut expected: Vec<String> = Vec::new();
    let flat_t = model.params.flat_values()?;
    let mut flat = vec![0f32; flat_t.numel()];
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|_| anyhow::anyhow!("{}: missing tensor {name}", path.display()))
    };
    for p in model.params.iter() {
        expected.push(p.name.clone());
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
            t.write_f32(gpu, &f32_values(path, key, &get(key)?, t.shape())?)?;
            expected.push(key.to_string());
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
    Ok(tracked)
}
