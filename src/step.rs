//! A training step: forward, loss, backward and the optimizer encoded into one command buffer,
//! submitted without waiting; only the loss is read back.

use anyhow::{Result, bail};

use crate::gpu::{Gpu, map_read};
use crate::optim::Sgd;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// A recorded training step, replayed each iteration.
pub struct TrainStep {
    gpu: Gpu,
    /// The recorded network (forward, loss and backward).
    pub tape: Tape,
    /// The optimizer.
    pub sgd: Sgd,
    loss: Tensor,
    staging: wgpu::Buffer,
}

impl TrainStep {
    /// Wrap a tape whose backward from `loss` is recorded, and the optimizer.
    pub fn new(gpu: &Gpu, tape: Tape, sgd: Sgd, loss: Tensor) -> Result<Self> {
        if loss.numel() != 1 {
            bail!("the loss must be a scalar, got {:?}", loss.shape());
        }
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loss readback"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            gpu: gpu.clone(),
            tape,
            sgd,
            loss,
            staging,
        })
    }

    /// Encode and submit one step (the caller has queued this step's inputs); do not wait.
    pub fn submit(&self) -> wgpu::SubmissionIndex {
        let mut rec = crate::gpu::Recorder::new(&self.gpu);
        self.tape.encode_forward(&mut rec);
        self.tape.encode_backward(&mut rec);
        self.sgd.encode(rec.pass());
        let mut enc = rec.into_encoder();
        enc.copy_buffer_to_buffer(self.loss.buffer(), self.loss.offset(), &self.staging, 0, 4);
        self.gpu.queue.submit([enc.finish()])
    }

    /// The device this step runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Encode the end of a step into `enc`: the optimizer, then the loss's read-back copy (the
    /// data-parallel executor runs the tape's program itself, in segments between collectives).
    pub fn encode_update(&self, enc: &mut wgpu::CommandEncoder) {
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.sgd.encode(&mut pass);
        }
        enc.copy_buffer_to_buffer(self.loss.buffer(), self.loss.offset(), &self.staging, 0, 4);
    }

    /// Run one step and return its loss (the one host sync of the step).
    pub fn run(&self) -> Result<f32> {
        self.submit();
        self.read_loss()
    }

    /// Wait for the last submitted step and read its loss.
    pub fn read_loss(&self) -> Result<f32> {
        let bytes = map_read(&self.gpu, &self.staging, 4)?;
        Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}
