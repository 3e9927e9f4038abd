//! Data parallel over several devices in one process (`train --devices 0,1`; the same adapter
//! may be opened twice). Every device holds a replica of the recorded step for its slice of the
//! batch; the replicas meet at the program's [`Collective`]s — sync-BN's statistics and
//! gradient sums, channel whitening's mean and covariance, the loss's weighted sums, and at the
//! end the flat gradient buffer — where each device's values are copied to a staging buffer,
//! added on the host in device order (deterministic) and written back to every device. Then
//! every replica runs the same optimizer update on the same summed gradients, so weights and
//! optimizer state stay identical without ever being exchanged.
//!
//! Several processes (MPI, [`crate::distributed`]) add their local sums with one all-reduce
//! per collective; with one device per process the f64 sums are those of one process with
//! several devices (for two processes bitwise: `x0 + x1` either way).
//!
//! wgpu devices share no memory, so a collective is a host round trip: each one ends a command
//! buffer on every device. A ResNet step has 2 (the loss's sums, the gradients), +4 with
//! whitening (mean and covariance, forward and backward), +3 per batch-norm layer with
//! `--sync-bn` (the shared pivot, the statistics, the gradient sums).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::gpu::map_read;
use crate::step::TrainStep;
use crate::tape::{Collective, Item, Tape};

/// The processes of a multi-process run (MPI: [`crate::distributed`]), each with its own
/// devices: a collective adds the processes' sums after its local devices'.
pub trait Processes {
    /// Processes in the run.
    fn size(&self) -> usize;
    /// This process's place, 0-based (process 0 writes the run directory).
    fn rank(&self) -> usize;
    /// This process's place among those on its machine (which adapter it takes).
    fn local_rank(&self) -> usize;
    /// End every process of the run after an error in this one, so that the others do not
    /// wait forever in their next collective (MPI_Abort); the default does nothing.
    fn abort(&self) {}
    /// Replace `v` by its element-wise sum over the processes (the same on every one).
    fn sum(&self, v: &mut [f64]) -> Result<()>;
}

/// Runs replicas of a recorded program (one tape per device) in lockstep, exchanging sums at
/// their collectives.
pub struct Lockstep {
    /// `staging[k][d]`: device d's read-back buffer for collective k.
    staging: Vec<Vec<wgpu::Buffer>>,
    /// Bytes exchanged per collective.
    sizes: Vec<u64>,
    /// The other processes of a multi-process run.
    procs: Option<Rc<dyn Processes>>,
    /// Seconds since creation spent waiting for the devices to reach collectives (their
    /// compute up to there), and exchanging (read-back copies, sums, write-back).
    wait_secs: Cell<f64>,
    exchange_secs: Cell<f64>,
}

fn collectives<'a>(program: &'a [Item<'a>]) -> Vec<&'a Collective> {
    program
        .iter()
        .filter_map(|i| match i {
            Item::Collective(c) => Some(*c),
            Item::Launch(_) => None,
        })
        .collect()
}

fn bytes_of(c: &Collective) -> u64 {
    c.tensors.iter().map(|t| t.numel() as u64 * 4).sum()
}

impl Lockstep {
    /// Check that `tapes` (this process's devices, recorded by the same code, each
    /// replicated for every device of every process) meet at the same collectives, and
    /// allocate the read-back buffers.
    pub fn new(tapes: &[&Tape], procs: Option<Rc<dyn Processes>>) -> Result<Self> {
        let Some(first) = tapes.first() else {
            bail!("data parallel needs at least one device");
        };
        let total = tapes.len() * procs.as_ref().map_or(1, |p| p.size());
        for t in tapes {
            if t.replication().devices != total {
                bail!(
                    "a replica was recorded for {} devices, but {total} run",
                    t.replication().devices,
                );
            }
        }
        let p0 = first.program();
        let c0 = collectives(&p0);
        let sizes: Vec<u64> = c0.iter().map(|c| bytes_of(c)).collect();
        for (d, t) in tapes.iter().enumerate().skip(1) {
            let p = t.program();
            let c = collectives(&p);
            // Launches may differ (another adapter picks other kernel variants); the
            // collectives must match one to one.
            let same = c.len() == c0.len() && c.iter().zip(&sizes).all(|(c, &s)| bytes_of(c) == s);
            if !same {
                bail!(
                    "device {d} recorded other collectives ({}) than device 0 ({}): the replicas \
                     must record the same network",
                    c.len(),
                    c0.len()
                );
            }
        }
        let staging = sizes
            .iter()
            .map(|&size| {
                tapes
                    .iter()
                    .map(|t| {
                        t.gpu().device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("collective read-back"),
                            size: size.max(4),
                            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        })
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            staging,
            sizes,
            procs,
            wait_secs: Cell::new(0.0),
            exchange_secs: Cell::new(0.0),
        })
    }

    /// Collectives per run.
    pub fn collectives(&self) -> usize {
        self.sizes.len()
    }

    /// Bytes each device sends per run (all collectives).
    pub fn bytes_per_run(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// Seconds so far (waiting for the devices to reach collectives, i.e. their compute; the
    /// exchange itself: read-back copies, sums over devices and processes, write-back).
    pub fn secs(&self) -> (f64, f64) {
        (self.wait_secs.get(), self.exchange_secs.get())
    }

    /// Run every tape's program once, then `finish(d, encoder)` in device d's last command
    /// buffer. Submits without waiting after the last collective.
    pub fn run(
        &self,
        tapes: &[&Tape],
        finish: impl Fn(usize, &mut wgpu::CommandEncoder),
    ) -> Result<()> {
        if tapes.len() != self.staging.first().map_or(tapes.len(), Vec::len) {
            bail!("lockstep prepared for another number of devices");
        }
        let programs: Vec<Vec<Item<'_>>> = tapes.iter().map(|t| t.program()).collect();
        let colls: Vec<Vec<&Collective>> = programs.iter().map(|p| collectives(p)).collect();
        if colls.iter().any(|c| c.len() != self.sizes.len()) {
            bail!("lockstep prepared for another program");
        }
        let mut pos = vec![0usize; tapes.len()];
        for k in 0..=self.sizes.len() {
            for (d, t) in tapes.iter().enumerate() {
                let prog = &programs[d];
                let mut rec = crate::gpu::Recorder::new(t.gpu());
                while pos[d] < prog.len() {
                    let item = &prog[pos[d]];
                    pos[d] += 1;
                    match item {
                        Item::Launch(l) => l.record(&mut rec),
                        Item::Collective(_) => break,
                    }
                }
                let mut enc = rec.into_encoder();
                if k < self.sizes.len() {
                    let mut at = 0;
                    for t in &colls[d][k].tensors {
                        let n = t.numel() as u64 * 4;
                        enc.copy_buffer_to_buffer(
                            t.buffer(),
                            t.offset(),
                            &self.staging[k][d],
                            at,
                            n,
                        );
                        at += n;
                    }
                } else {
                    finish(d, &mut enc);
                }
                t.gpu().queue.submit([enc.finish()]);
            }
            if k < self.sizes.len() {
                let t = Instant::now();
                let waited = self.exchange(k, tapes, &colls)?;
                let all = t.elapsed().as_secs_f64();
                self.wait_secs.set(self.wait_secs.get() + waited);
                self.exchange_secs
                    .set(self.exchange_secs.get() + all - waited);
            }
        }
        Ok(())
    }

    /// Wait for every device's copy of collective `k`, add them up in device order (then over
    /// the processes) and write the scaled sum back to every device. Returns the seconds spent
    /// waiting for the devices.
    fn exchange(&self, k: usize, tapes: &[&Tape], colls: &[Vec<&Collective>]) -> Result<f64> {
        let size = self.sizes[k];
        let mut sum = vec![0f64; size as usize / 4];
        let mut waited = 0.0;
        for (d, t) in tapes.iter().enumerate() {
            let w = Instant::now();
            t.gpu().wait()?;
            waited += w.elapsed().as_secs_f64();
            let bytes = map_read(t.gpu(), &self.staging[k][d], size)?;
            for (s, v) in sum.iter_mut().zip(bytes.chunks_exact(4)) {
                *s += f32::from_le_bytes([v[0], v[1], v[2], v[3]]) as f64;
            }
        }
        if let Some(p) = &self.procs {
            p.sum(&mut sum)?;
        }
        let scale = colls[0][k].scale as f64;
        let out: Vec<f32> = sum.iter().map(|v| (v * scale) as f32).collect();
        for (d, t) in tapes.iter().enumerate() {
            let mut at = 0;
            for x in &colls[d][k].tensors {
                let n = x.numel();
                t.gpu().queue.write_buffer(
                    x.buffer(),
                    x.offset(),
                    bytemuck::cast_slice(&out[at..at + n]),
                );
                at += n;
            }
        }
        Ok(waited)
    }
}

/// Replicas of one training step on several devices, run in lockstep.
pub struct DataParallel {
    replicas: Vec<TrainStep>,
    lockstep: Lockstep,
}

impl DataParallel {
    /// Run `replicas` (one per local device, see [`Lockstep::new`]) in lockstep, with the
    /// other processes' when `procs` is given.
    pub fn new(replicas: Vec<TrainStep>, procs: Option<Rc<dyn Processes>>) -> Result<Self> {
        let tapes: Vec<&Tape> = replicas.iter().map(|r| &r.tape).collect();
        let lockstep = Lockstep::new(&tapes, procs)?;
        Ok(Self { replicas, lockstep })
    }

    /// The replicas, device order.
    pub fn replicas(&self) -> &[TrainStep] {
        &self.replicas
    }

    /// Collectives per step.
    pub fn collectives(&self) -> usize {
        self.lockstep.collectives()
    }

    /// The executor (collective counts, bytes, time spent at collectives).
    pub fn lockstep(&self) -> &Lockstep {
        &self.lockstep
    }

    /// Set every replica's learning rate.
    pub fn set_lr(&mut self, lr: f32) {
        for r in &mut self.replicas {
            let gpu = r.gpu().clone();
            r.sgd.set_lr(&gpu, lr);
        }
    }

    /// Run one step (the caller has written each device's slice of the batch) and return the
    /// loss of the whole batch.
    pub fn run(&self) -> Result<f32> {
        let tapes: Vec<&Tape> = self.replicas.iter().map(|r| &r.tape).collect();
        self.lockstep
            .run(&tapes, |d, enc| self.replicas[d].encode_update(enc))?;
        self.replicas[0].read_loss()
    }
}
