// Element type conversion for `--precision f16`: out = beta * out + x, read as I and written
// as O (src/shaders.rs). The f16 copy of a convolution's f32 master weights, made each step;
// images to f16 at the network's input. f32 -> f16 rounds to nearest; a value past the f16
// range becomes infinite, which is what dynamic loss scaling detects.

struct Params {
    n: u32,
    beta: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<I>;
@group(0) @binding(1) var<storage, read_write> out: array<O>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn convert(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= p.n) { return; }
    var v = f32(x[i]);
    if (p.beta != 0.0) { v = p.beta * f32(out[i]) + v; }
    out[i] = O(v);
}
