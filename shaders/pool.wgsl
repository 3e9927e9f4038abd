// Max pooling over NCHW with a KxK window, stride S, padding P (padding never wins the max).
// forward stores the winning input index per output (argmax) for the backward.
// backward gathers instead of scattering: each input element sums the upstream gradients of the
// outputs whose window contains it and chose it, so overlapping windows need no float atomics
// and the result is deterministic.
// Activations are read as I and written as O (f32 or f16, src/shaders.rs); the max and the
// gradient sums are f32.

struct Params {
    batch: u32, channels: u32, h: u32, w: u32,
    oh: u32, ow: u32, k: u32, stride: u32,
    pad: u32, beta: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<I>;
@group(0) @binding(1) var<storage, read_write> y: array<O>;
@group(0) @binding(2) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn max_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= p.batch * p.channels * p.oh * p.ow) { return; }
    let ow = i % p.ow;
    let oh = (i / p.ow) % p.oh;
    let plane = i / (p.ow * p.oh);           // b * channels + c
    var best = -3.4e38;
    var best_i = 0u;
    for (var kh = 0u; kh < p.k; kh++) {
        let ih = i32(oh * p.stride + kh) - i32(p.pad);
        if (ih < 0 || ih >= i32(p.h)) { continue; }
        for (var kw = 0u; kw < p.k; kw++) {
            let iw = i32(ow * p.stride + kw) - i32(p.pad);
            if (iw < 0 || iw >= i32(p.w)) { continue; }
            let idx = (plane * p.h + u32(ih)) * p.w + u32(iw);
            let v = f32(x[idx]);
            if (v > best) { best = v; best_i = idx; }
        }
    }
    y[i] = O(best);
    argmax[i] = best_i;
}

@group(0) @binding(0) var<storage, read> dy: array<I>;
@group(0) @binding(1) var<storage, read> bargmax: array<u32>;
@group(0) @binding(2) var<storage, read_write> dx: array<O>;
@group(0) @binding(3) var<uniform> bp: Params;

@compute @workgroup_size(256)
fn max_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= bp.batch * bp.channels * bp.h * bp.w) { return; }
    let iw = i % bp.w;
    let ih = (i / bp.w) % bp.h;
    let plane = i / (bp.w * bp.h);
    // Outputs whose window covers (ih, iw): oh*s - pad <= ih <= oh*s - pad + k - 1.
    let hp = ih + bp.pad;
    let wp = iw + bp.pad;
    let oh_lo = select(0u, (hp - bp.k + 1u + bp.stride - 1u) / bp.stride, hp + 1u > bp.k);
    let ow_lo = select(0u, (wp - bp.k + 1u + bp.stride - 1u) / bp.stride, wp + 1u > bp.k);
    let oh_hi = min(hp / bp.stride, bp.oh - 1u);
    let ow_hi = min(wp / bp.stride, bp.ow - 1u);
    var g = 0.0;
    for (var oh = oh_lo; oh <= oh_hi; oh++) {
        for (var ow = ow_lo; ow <= ow_hi; ow++) {
            let o = (plane * bp.oh + oh) * bp.ow + ow;
            if (bargmax[o] == i) { g += f32(dy[o]); }
        }
    }
    if (bp.beta != 0.0) { dx[i] = O(f32(dx[i]) + g); } else { dx[i] = O(g); }
}
