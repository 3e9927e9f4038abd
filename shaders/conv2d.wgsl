// 2-D convolution (NCHW activations, OIHW weights, zero padding, no bias) as an implicit GEMM:
// C[M, N] = sum_k A[m, k] B[k, n], where A and B are gathered from the tensors on the fly (no
// im2col buffer). MODE (override constant) picks the product:
//   0 forward: m = co, n = (b, oh, ow), k = (ci, kh, kw):  A = W,  B = X (gathered), C -> Y
//   1 dgrad:   m = ci, n = (b, ih, iw), k = (co, kh, kw):  A = W,  B = dY (gathered), C -> dX
//   2 wgrad:   m = co, n = (ci, kh, kw), k = (b, oh, ow):  A = dY, B = X (gathered), C -> dW
// wgrad has a huge K and a small M x N, so K is split across workgroup z ("split-K"): each split
// writes its partial product to dst[split, M, N] and a reduction sums the splits; with one split
// it writes dW directly.
// Tiling: a 32 x 64 tile of C per workgroup of 8 x 8 invocations, each holding a 4 x 8 block in
// named vec4 registers (llvmpipe keeps loop-indexed arrays in memory); K advances in slabs of 16
// through workgroup memory. Edges are masked: any shape works.

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride: u32, pad: u32, m: u32,
    n: u32, k: u32, kchunk: u32, splits: u32,
    alpha: f32, beta: f32, _p0: f32, _p1: f32,
}

@group(0) @binding(0) var<storage, read> src_a: array<f32>;
@group(0) @binding(1) var<storage, read> src_b: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

override MODE: u32 = 0u;

const TM: u32 = 32u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> As: array<f32, 512>;    // [TK][TM]
var<workgroup> Bs: array<f32, 1024>;   // [TK][TN]

fn load_a(m: u32, k: u32) -> f32 {
    if (MODE == 0u) {
        return src_a[m * p.k + k];
    } else if (MODE == 1u) {
        // m = ci, k = (co, kh, kw): W[co, ci, kh, kw]
        let khw = p.kh * p.kw;
        let co = k / khw;
        let r = k % khw;
        return src_a[(co * p.cin + m) * khw + r];
    }
    // MODE 2: m = co, k = (b, oh, ow): dY[b, co, oh, ow]
    let ohw = p.oh * p.ow;
    let b = k / ohw;
    let r = k % ohw;
    return src_a[(b * p.cout + m) * ohw + r];
}

// Gather X[b, ci, oh*s + kh - pad, ow*s + kw - pad] (zero outside).
fn gather_x(b: u32, ci: u32, oh: u32, ow: u32, kh: u32, kw: u32) -> f32 {
    let ih = i32(oh * p.stride + kh) - i32(p.pad);
    let iw = i32(ow * p.stride + kw) - i32(p.pad);
    if (ih < 0 || iw < 0 || ih >= i32(p.h) || iw >= i32(p.w)) { return 0.0; }
    return src_b[((b * p.cin + ci) * p.h + u32(ih)) * p.w + u32(iw)];
}

fn load_b(k: u32, n: u32) -> f32 {
    if (MODE == 0u) {
        // k = (ci, kh, kw), n = (b, oh, ow)
        let khw = p.kh * p.kw;
        let ci = k / khw;
        let kh = (k % khw) / p.kw;
        let kw = k % p.kw;
        let ohw = p.oh * p.ow;
        let b = n / ohw;
        let oh = (n % ohw) / p.ow;
        let ow = n % p.ow;
        return gather_x(b, ci, oh, ow, kh, kw);
    } else if (MODE == 1u) {
        // k = (co, kh, kw), n = (b, ih, iw): dY[b, co, oh, ow] with ih = oh*s + kh - pad
        let khw = p.kh * p.kw;
        let co = k / khw;
        let kh = (k % khw) / p.kw;
        let kw = k % p.kw;
        let hw = p.h * p.w;
        let b = n / hw;
        let ih = (n % hw) / p.w;
        let iw = n % p.w;
        let th = i32(ih + p.pad) - i32(kh);
        let tw = i32(iw + p.pad) - i32(kw);
        if (th < 0 || tw < 0) { return 0.0; }
        let uh = u32(th);
        let uw = u32(tw);
        if (uh % p.stride != 0u || uw % p.stride != 0u) { return 0.0; }
        let oh = uh / p.stride;
        let ow = uw / p.stride;
        if (oh >= p.oh || ow >= p.ow) { return 0.0; }
        return src_b[((b * p.cout + co) * p.oh + oh) * p.ow + ow];
    }
    // MODE 2: k = (b, oh, ow), n = (ci, kh, kw)
    let ohw = p.oh * p.ow;
    let b = k / ohw;
    let oh = (k % ohw) / p.ow;
    let ow = k % p.ow;
    let khw = p.kh * p.kw;
    let ci = n / khw;
    let kh = (n % khw) / p.kw;
    let kw = n % p.kw;
    return gather_x(b, ci, oh, ow, kh, kw);
}

fn dst_index(m: u32, n: u32, split: u32) -> u32 {
    if (MODE == 0u) {
        let ohw = p.oh * p.ow;
        return ((n / ohw) * p.cout + m) * ohw + n % ohw;
    } else if (MODE == 1u) {
        let hw = p.h * p.w;
        return ((n / hw) * p.cin + m) * hw + n % hw;
    }
    return (split * p.m + m) * p.n + n;
}

fn store(m: u32, n: u32, split: u32, v: f32) {
    if (m >= p.m || n >= p.n) { return; }
    let i = dst_index(m, n, split);
    let s = p.alpha * v;
    if (p.beta != 0.0 && p.splits == 1u) { dst[i] = p.beta * dst[i] + s; } else { dst[i] = s; }
}

fn store_row(m: u32, n0: u32, split: u32, lo: vec4<f32>, hi: vec4<f32>) {
    store(m, n0, split, lo.x); store(m, n0 + 1u, split, lo.y);
    store(m, n0 + 2u, split, lo.z); store(m, n0 + 3u, split, lo.w);
    store(m, n0 + 4u, split, hi.x); store(m, n0 + 5u, split, hi.y);
    store(m, n0 + 6u, split, hi.z); store(m, n0 + 7u, split, hi.w);
}

@compute @workgroup_size(8, 8)
fn conv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let split = wg.z;
    let k_begin = split * p.kchunk;
    let k_end = min(p.k, k_begin + p.kchunk);
    let tx = lid3.x;
    let ty = lid3.y;

    var c0a = vec4<f32>(0.0); var c0b = vec4<f32>(0.0);
    var c1a = vec4<f32>(0.0); var c1b = vec4<f32>(0.0);
    var c2a = vec4<f32>(0.0); var c2b = vec4<f32>(0.0);
    var c3a = vec4<f32>(0.0); var c3b = vec4<f32>(0.0);

    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        // A: k fastest (contiguous in every mode): 512 elements, 8 per invocation.
        for (var l = 0u; l < 8u; l++) {
            let e = lid + l * 64u;
            let kk = e % TK;
            let mm = e / TK;
            let gm = m0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < k_end) { v = load_a(gm, gk); }
            As[kk * TM + mm] = v;
        }
        // B: 1024 elements, 16 per invocation; n fastest except in wgrad, where k is contiguous.
        for (var l = 0u; l < 16u; l++) {
            let e = lid + l * 64u;
            var kk: u32; var nn: u32;
            if (MODE == 2u) { kk = e % TK; nn = e / TK; } else { nn = e % TN; kk = e / TN; }
            let gn = n0 + nn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < p.n && gk < k_end) { v = load_b(gk, gn); }
            Bs[kk * TN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ab = kk * TM + ty * 4u;
            let bb = kk * TN + tx * 8u;
            let b0 = vec4<f32>(Bs[bb], Bs[bb + 1u], Bs[bb + 2u], Bs[bb + 3u]);
            let b1 = vec4<f32>(Bs[bb + 4u], Bs[bb + 5u], Bs[bb + 6u], Bs[bb + 7u]);
            let a0 = vec4<f32>(As[ab]);
            let a1 = vec4<f32>(As[ab + 1u]);
            let a2 = vec4<f32>(As[ab + 2u]);
            let a3 = vec4<f32>(As[ab + 3u]);
            c0a = fma(a0, b0, c0a); c0b = fma(a0, b1, c0b);
            c1a = fma(a1, b0, c1a); c1b = fma(a1, b1, c1b);
            c2a = fma(a2, b0, c2a); c2b = fma(a2, b1, c2b);
            c3a = fma(a3, b0, c3a); c3b = fma(a3, b1, c3b);
        }
        workgroupBarrier();
    }

    let m = m0 + ty * 4u;
    let n = n0 + tx * 8u;
    store_row(m, n, split, c0a, c0b);
    store_row(m + 1u, n, split, c1a, c1b);
    store_row(m + 2u, n, split, c2a, c2b);
    store_row(m + 3u, n, split, c3a, c3b);
}
