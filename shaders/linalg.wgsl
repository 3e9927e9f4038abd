// Small linear-algebra ops on stacks of matrices, for channel whitening:
//   swap01:       y[b, a, c] = x[a, b, c]             (group <-> batch axis; its own backward)
//   trace:        t[g] = sum_i x[g, i, i]
//   trace_back:   dx[g, i, j] (+)= [i == j] dt[g]
//   add_identity: y[g] (+)= alpha * x[g] + diag * I
//   scale_pow:    y[g, :] (+)= x[g, :] * s[g]^power  (s > 0: a trace)
//   scale_pow_ds: ds[g] (+)= power * s[g]^(power - 1) * sum_i dy[g, i] x[g, i]
// `beta` = 0 overwrites the output, 1 accumulates (gradients).

struct Params {
    d0: u32, d1: u32, d2: u32, _p: u32,
    alpha: f32, beta: f32, power: f32, diag: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> s: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn put(i: u32, v: f32) {
    if (p.beta != 0.0) { y[i] = p.beta * y[i] + v; } else { y[i] = v; }
}

fn linear_id(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// x: [d0, d1, d2] -> y: [d1, d0, d2]
@compute @workgroup_size(256)
fn swap01(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, nwg, lid);
    if (i >= p.d0 * p.d1 * p.d2) { return; }
    let c = i % p.d2;
    let a = (i / p.d2) % p.d0;     // output is [d1, d0, d2]
    let b = i / (p.d2 * p.d0);
    put(i, x[(a * p.d1 + b) * p.d2 + c]);
}

// x: [d0 matrices of d1 x d1] -> y: [d0]
@compute @workgroup_size(64)
fn trace(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    if (g >= p.d0) { return; }
    var t = 0.0;
    for (var i = 0u; i < p.d1; i++) { t += x[(g * p.d1 + i) * p.d1 + i]; }
    put(g, t);
}

// x = dt: [d0] -> y = dx: [d0, d1, d1]
@compute @workgroup_size(256)
fn trace_back(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, nwg, lid);
    let nn = p.d1 * p.d1;
    if (i >= p.d0 * nn) { return; }
    let r = (i % nn) / p.d1;
    let c = i % p.d1;
    put(i, select(0.0, x[i / nn], r == c));
}

// x: [d0, d1, d1]
@compute @workgroup_size(256)
fn add_identity(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, nwg, lid);
    let nn = p.d1 * p.d1;
    if (i >= p.d0 * nn) { return; }
    let r = (i % nn) / p.d1;
    let c = i % p.d1;
    put(i, p.alpha * x[i] + select(0.0, p.diag, r == c));
}

// x: [d0, d1] (d1 values per group), s: [d0]
@compute @workgroup_size(256)
fn scale_pow(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, nwg, lid);
    if (i >= p.d0 * p.d1) { return; }
    put(i, x[i] * pow(s[i / p.d1], p.power));
}

// x = the forward input, s, and the upstream gradient in binding 4: one invocation per group.
@group(0) @binding(0) var<storage, read> fx: array<f32>;
@group(0) @binding(1) var<storage, read> fs: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> ds: array<f32>;
@group(0) @binding(4) var<uniform> q: Params;

@compute @workgroup_size(64)
fn scale_pow_ds(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    if (g >= q.d0) { return; }
    var acc = 0.0;
    for (var i = 0u; i < q.d1; i++) { acc += dy[g * q.d1 + i] * fx[g * q.d1 + i]; }
    let v = q.power * pow(fs[g], q.power - 1.0) * acc;
    if (q.beta != 0.0) { ds[g] = q.beta * ds[g] + v; } else { ds[g] = v; }
}
