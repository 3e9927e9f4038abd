// Reductions over the middle axis of x viewed as [outer, len, inner]:
//   sum:       out[o, i] = beta * out[o, i] + alpha * sum_k x[o, k, i]
//   broadcast: out[o, k, i] = beta * out[o, k, i] + alpha * x[o, i]   (the backward of sum)
// `sum`: one workgroup per output element: each invocation sums a strided slice sequentially,
// then a tree in workgroup memory combines the 256 partials. No size limit on `len` beyond u32,
// and no assumption about subgroup size. `sum_short`: one invocation per output element, a
// sequential loop over `len` (for short sums over many outputs, e.g. split-K partials, where a
// workgroup per output would be mostly idle lanes).
// x is read as I, out read and written as O (f32 or f16, src/shaders.rs; e.g. the global
// average pool of f16 activations into f32 features); sums are f32.

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    alpha: f32,
    beta: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<I>;
@group(0) @binding(1) var<storage, read_write> out: array<O>;
@group(0) @binding(2) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let o = wg.x + wg.y * nwg.x;        // output element: (outer index, inner index)
    let valid = o < p.outer * p.inner;
    var acc = 0.0;
    if (valid) {
        let oi = o / p.inner;
        let ii = o % p.inner;
        let base = oi * p.len * p.inner + ii;
        for (var k = lid; k < p.len; k += WG) {
            acc += f32(x[base + k * p.inner]);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (valid && lid == 0u) {
        let v = p.alpha * partial[0];
        if (p.beta != 0.0) {
            out[o] = O(p.beta * f32(out[o]) + v);
        } else {
            out[o] = O(v);
        }
    }
}

@compute @workgroup_size(256)
fn broadcast(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i < p.outer * p.len * p.inner) {
        let oi = i / (p.len * p.inner);
        let ii = i % p.inner;
        let v = p.alpha * f32(x[oi * p.inner + ii]);
        if (p.beta != 0.0) {
            out[i] = O(p.beta * f32(out[i]) + v);
        } else {
            out[i] = O(v);
        }
    }
}

@compute @workgroup_size(64)
fn sum_short(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let o = (wg.x + wg.y * nwg.x) * 64u + lid;
    if (o >= p.outer * p.inner) { return; }
    let oi = o / p.inner;
    let ii = o % p.inner;
    let base = oi * p.len * p.inner + ii;
    var acc = 0.0;
    for (var k = 0u; k < p.len; k++) {
        acc += f32(x[base + k * p.inner]);
    }
    let v = p.alpha * acc;
    if (p.beta != 0.0) {
        out[o] = O(p.beta * f32(out[o]) + v);
    } else {
        out[o] = O(v);
    }
}
