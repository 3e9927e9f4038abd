//! `cargo bench`: the same kernel cases as `longtail bench`, under criterion (wall clock around
//! a fence per launch set). Select with `cargo bench -- matmul`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use longtail::bench::{KERNELS, case};
use longtail::gpu::Gpu;

fn kernels(c: &mut Criterion) {
    let gpu = match Gpu::from_env() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipping benches: {e:#}");
            return;
        }
    };
    eprintln!("adapter: {}", gpu.describe());
    for (name, shapes) in KERNELS {
        let mut group = c.benchmark_group(*name);
        group.sample_size(10);
        for shape in *shapes {
            let cs = case(&gpu, name, shape).expect("bench case");
            group.throughput(Throughput::Elements(cs.flops as u64));
            group.bench_function(*shape, |b| b.iter(|| cs.run_once(&gpu).expect("run")));
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
