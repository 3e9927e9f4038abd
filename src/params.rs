//! Parameters in one flat GPU buffer (and their gradients in another), so the optimizer updates
//! every parameter with a single dispatch and a step allocates nothing.

use std::sync::Arc;

use anyhow::{Result, bail};

use crate::gpu::{Gpu, GpuBuffer};
use crate::tape::Tape;
use crate::tensor::{DType, Tensor};

/// One named parameter and its gradient, both views into the flat buffers.
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
}

/// Collects parameters with their initial values, then lays them out in flat buffers.
#[derive(Default)]
pub struct ParamsBuilder {
    items: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ParamsBuilder {
    /// Add a parameter `name` of `shape` with initial values `init`.
    pub fn add(&mut self, name: &str, shape: &[usize], init: Vec<f32>) -> Result<()> {
        if init.len() != shape.iter().product::<usize>() {
            bail!(
                "parameter {name}: {} values for shape {shape:?}",
                init.len()
            );
        }
        if self.items.iter().any(|(n, _, _)| n == name) {
            bail!("parameter {name} added twice");
        }
        self.items.push((name.to_string(), shape.to_vec(), init));
        Ok(())
    }

    /// Allocate the flat buffers and upload the initial values.
    pub fn build(self, gpu: &Gpu) -> Result<Params> {
        // Each view starts at a multiple of the adapter's storage offset alignment.
        let align = (gpu.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
        let mut offsets = Vec::with_capacity(self.items.len());
        let mut total = 0usize;
        for (_, shape, _) in &self.items {
            offsets.push(total);
            total += shape.iter().product::<usize>().div_ceil(align) * align;
        }
        let total = total.max(1);
        let values = Arc::new(GpuBuffer::new(
            gpu,
            "params",
            total as u64 * 4,
            wgpu::BufferUsages::empty(),
        )?);
        let grads = Arc::new(GpuBuffer::new(
            gpu,
            "grads",
            total as u64 * 4,
            wgpu::BufferUsages::empty(),
        )?);
        let mut host = vec![0f32; total];
        let mut list = Vec::with_capacity(self.items.len());
        for ((name, shape, init), off) in self.items.into_iter().zip(offsets) {
            host[off..off + init.len()].copy_from_slice(&init);
            let value = Tensor::view(values.clone(), off as u64 * 4, &shape, DType::F32, true)?;
            let grad = Tensor::view(grads.clone(), off as u64 * 4, &shape, DType::F32, false)?;
            list.push(Param { name, value, grad });
        }
        gpu.queue
            .write_buffer(&values.buffer, 0, bytemuck::cast_slice(&host));
        Ok(Params {
            list,
            values,
            grads,
            len: total,
        })
    }
}

/// The model's parameters.
pub struct Params {
    list: Vec<Param>,
    values: Arc<GpuBuffer>,
    grads: Arc<GpuBuffer>,
    len: usize,
}

impl Params {
    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.list
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.value)
            .ok_or_else(|| anyhow::anyhow!("no parameter named {name:?}"))
    }
    /// All parameters in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.list.iter()
    }
    /// Route every parameter's gradient into the flat gradient buffer.
    pub fn attach(&self, tape: &mut Tape) -> Result<()> {
        for p in &self.list {
            tape.set_grad(&p.value, p.grad.clone())?;
        }
        Ok(())
    }
    /// The whole flat value buffer as a 1-D tensor (padding included).
    pub fn flat_values(&self) -> Result<Tensor> {
        Tensor::view(self.values.clone(), 0, &[self.len], DType::F32, false)
    }
    /// The whole flat gradient buffer as a 1-D tensor.
    pub fn flat_grads(&self) -> Result<Tensor> {
        Tensor::view(self.grads.clone(), 0, &[self.len], DType::F32, false)
    }
    /// Number of real parameter values (padding excluded).
    pub fn count(&self) -> usize {
        self.list.iter().map(|p| p.value.numel()).sum()
    }
}
