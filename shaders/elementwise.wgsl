// Elementwise kernels: out[i] = beta * out[i] + f(a[i], b[i]).
// beta is 0 (overwrite) or 1 (accumulate a gradient); out is never read when beta == 0, so it may
// hold anything. Unary kernels bind `a` twice. a and b are read as I, out written as O (f32 or
// f16, src/shaders.rs); arithmetic in f32.

struct Params {
    n: u32,
    cols: u32,   // row length for add_row (b broadcast along rows)
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<storage, read> a: array<I>;
@group(0) @binding(1) var<storage, read> b: array<I>;
@group(0) @binding(2) var<storage, read_write> out: array<O>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;

fn index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

fn store(i: u32, v: f32) {
    if (p.beta != 0.0) {
        out[i] = O(p.beta * f32(out[i]) + v);
    } else {
        out[i] = O(v);
    }
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store(i, p.alpha * (f32(a[i]) + f32(b[i]))); }
}

@compute @workgroup_size(256)
fn add_row(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store(i, p.alpha * (f32(a[i]) + f32(b[i % p.cols]))); }
}

@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store(i, p.alpha * f32(a[i]) * f32(b[i])); }
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store(i, p.alpha * f32(a[i])); }
}

@compute @workgroup_size(256)
fn relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store(i, max(f32(a[i]), 0.0)); }
}

// a = upstream gradient, b = the relu's input.
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store(i, select(0.0, f32(a[i]), f32(b[i]) > 0.0)); }
}

// A running average, r = (1 - m) r + m x with alpha = m, beta = 1 - m, that skips inf / NaN
// values of x (statistics of an f16 forward that overflowed: a step loss scaling skips).
@compute @workgroup_size(256)
fn ema(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) {
        let v = f32(a[i]);
        if ((bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u) { store(i, p.alpha * v); }
    }
}

// vec4 twins (n counts vec4 here): one storage access per four elements.
@group(0) @binding(0) var<storage, read> a4: array<vec4<I>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<I>>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<O>>;

fn store4(i: u32, v: vec4<f32>) {
    if (p.beta != 0.0) {
        out4[i] = vec4<O>(p.beta * vec4<f32>(out4[i]) + v);
    } else {
        out4[i] = vec4<O>(v);
    }
}

@compute @workgroup_size(256)
fn add4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store4(i, p.alpha * (vec4<f32>(a4[i]) + vec4<f32>(b4[i]))); }
}

@compute @workgroup_size(256)
fn mul4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store4(i, p.alpha * vec4<f32>(a4[i]) * vec4<f32>(b4[i])); }
}

@compute @workgroup_size(256)
fn scale4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store4(i, p.alpha * vec4<f32>(a4[i])); }
}

@compute @workgroup_size(256)
fn relu4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store4(i, max(vec4<f32>(a4[i]), vec4<f32>(0.0))); }
}

@compute @workgroup_size(256)
fn relu_backward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) { store4(i, select(vec4<f32>(0.0), vec4<f32>(a4[i]), vec4<f32>(b4[i]) > vec4<f32>(0.0))); }
}
