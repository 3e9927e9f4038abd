// L2 normalisation along the middle axis of x viewed as [outer, len, inner] (F.normalize:
// y = x / max(|x|, eps)). One invocation per (outer, inner) vector; vectors are short (the
// feature width or the class count), so no cross-invocation reduction is needed.
// backward: dx = (g - y * <g, y>) / max(|x|, eps)  (and g / eps below the clamp).

struct Params {
    outer: u32, len: u32, inner: u32, _p0: u32,
    eps: f32, beta: f32, _p1: f32, _p2: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> norms: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let v = (wg.x + wg.y * nwg.x) * 64u + lid;
    if (v >= p.outer * p.inner) { return; }
    let base = (v / p.inner) * p.len * p.inner + v % p.inner;
    var s = 0.0;
    for (var k = 0u; k < p.len; k++) { let e = x[base + k * p.inner]; s += e * e; }
    let n = max(sqrt(s), p.eps);
    norms[v] = n;
    for (var k = 0u; k < p.len; k++) { y[base + k * p.inner] = x[base + k * p.inner] / n; }
}

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> by: array<f32>;
@group(0) @binding(2) var<storage, read> bnorms: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> bp: Params;

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let v = (wg.x + wg.y * nwg.x) * 64u + lid;
    if (v >= bp.outer * bp.inner) { return; }
    let base = (v / bp.inner) * bp.len * bp.inner + v % bp.inner;
    let n = bnorms[v];
    var dot = 0.0;
    // Below the clamp the op is x / eps, linear: no projection term.
    if (n > bp.eps) {
        for (var k = 0u; k < bp.len; k++) { dot += g[base + k * bp.inner] * by[base + k * bp.inner]; }
    }
    for (var k = 0u; k < bp.len; k++) {
        let i = base + k * bp.inner;
        let d = (g[i] - by[i] * dot) / n;
        if (bp.beta != 0.0) { dx[i] = dx[i] + d; } else { dx[i] = d; }
    }
}
