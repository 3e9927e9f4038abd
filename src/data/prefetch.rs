//! Decoding a streamed data set's batches ahead of the GPU, on every core, in bounded memory.
//!
//! Worker `w` of `W` decodes batches `w, w + W, w + 2W, ...` of an epoch's plan and hands each
//! to the consumer through its own channel of `depth` slots, so at most `W x (depth + 1)`
//! decoded batches exist at once, batches come out in plan order (the run stays
//! deterministic), and a worker that runs ahead blocks instead of filling memory. Dropping the
//! [`Prefetch`] closes the channels and the workers stop.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use super::{Dataset, Images};

/// What a worker sends: the batch's pixels `[B, C, H, W]` and the seconds it took to decode.
type Decoded = Result<(Vec<u8>, f64)>;

/// Decoded batches of a plan, in order (see the module docs).
pub struct Prefetch {
    rx: Vec<Receiver<Decoded>>,
    plan: Arc<Vec<Vec<usize>>>,
    next: usize,
    /// Images handed out, seconds the workers spent decoding them, and seconds the consumer
    /// waited for a batch that was not ready.
    pub images: usize,
    pub decode_secs: f64,
    pub wait_secs: f64,
    pub workers: usize,
}

impl Prefetch {
    /// Start decoding `plan` (batches of image indices of `d`) with `workers` threads (0: one
    /// per core), each at most `depth` batches ahead. `d` must be a set of files.
    pub fn start(d: &Dataset, plan: &[Vec<usize>], workers: usize, depth: usize) -> Result<Self> {
        let Images::Files { paths, size } = &d.images else {
            return Err(anyhow!("prefetch needs a data set of image files"));
        };
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers
        }
        .clamp(1, plan.len().max(1));
        let plan = Arc::new(plan.to_vec());
        let mut rx = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, r): (SyncSender<Decoded>, _) = sync_channel(depth.max(1));
            rx.push(r);
            let (plan, paths, size) = (plan.clone(), paths.clone(), *size);
            std::thread::spawn(move || {
                for batch in plan.iter().skip(w).step_by(workers) {
                    let t0 = Instant::now();
                    let mut out = Vec::new();
                    let r = batch
                        .iter()
                        .try_for_each(|&i| {
                            out.extend_from_slice(&super::list::decode(&paths[i], size)?);
                            Ok(())
                        })
                        .map(|()| (out, t0.elapsed().as_secs_f64()));
                    let failed = r.is_err();
                    // The consumer is gone (epoch cut short, error): stop.
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        Ok(Self {
            rx,
            plan,
            next: 0,
            images: 0,
            decode_secs: 0.0,
            wait_secs: 0.0,
            workers,
        })
    }

    /// The next batch's pixels, in plan order.
    pub fn next_batch(&mut self) -> Result<Vec<u8>> {
        if self.next >= self.plan.len() {
            return Err(anyhow!(
                "prefetch: all {} batches were taken",
                self.plan.len()
            ));
        }
        let w = self.next % self.rx.len();
        let t0 = Instant::now();
        let got = match self.rx[w].try_recv() {
            Ok(v) => v,
            Err(_) => self.rx[w]
                .recv_timeout(Duration::from_secs(3600))
                .map_err(|_| anyhow!("prefetch: decoding worker {w} stopped"))?,
        };
        self.wait_secs += t0.elapsed().as_secs_f64();
        let (pixels, secs) = got?;
        self.images += self.plan[self.next].len();
        self.next += 1;
        self.decode_secs += secs;
        Ok(pixels)
    }

    /// Decoding throughput of all workers together, images/s (busy time, not waits).
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 * self.workers as f64 / self.decode_secs.max(1e-9)
    }
}
