// 2-D convolution (NCHW activations, OIHW weights, zero padding, no bias) as implicit GEMMs
// C[M, N] = sum_k A[m, k] B[k, n], with A and B gathered from the tensors on the fly (no im2col
// buffer in memory):
//   conv_forward: m = co, n = (b, oh, ow), k = (ci, kh, kw):  A = W,  B = X,  C -> Y
//   conv_dgrad:   m = ci, n = (b, ih, iw), k = (co, kh, kw):  A = W,  B = dY, C -> dX
//   conv_wgrad:   m = co, n = (ci, kh, kw), k = (b, oh, ow):  A = dY, B = X,  C -> dW partials
// wgrad has a huge K and a small M x N, so K is split across workgroup z ("split-K"): split z
// writes dst[z, M, N] and a reduction sums the splits (one split writes dW directly).
// Element types (src/shaders.rs): the tensors are read as I and written as O, f32 or f16
// (`--precision f16`: I = O = f16 for forward and dgrad, O = f32 for wgrad into the f32 master
// gradient); tiles and accumulators are f32.
//
// Tiling: a (8*RM) x 64 tile of C per workgroup of 8 x 8 invocations, each holding an RM x 8
// block in named vec4 fields (llvmpipe keeps loop-indexed arrays in memory); K advances in
// slabs of 16 through workgroup memory. RM (override: 2, 4 or 8) fits the tile height to the
// channel count (16, 32, >= 64). Index decoding stays out of the inner loops: each invocation's column (or row of
// K) is decoded once, and `tab` (built on the host per geometry) maps a (channel, kh, kw) index
// to its offsets, so the gathers need no integer division (scalarised and slow on CPUs).

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, stride: u32, pad: u32, m: u32,
    n: u32, k: u32, kchunk: u32, splits: u32,
    alpha: f32, beta: f32, groups: u32, _p1: f32,
}

// Grouped convolutions: m, n, k are per group; workgroup z picks the group (and, for wgrad,
// the split: z = split + splits * group). Channel counts cin / cout in Params are the full ones.
var<private> grp: u32;

@group(0) @binding(0) var<storage, read> src_a: array<I>;
@group(0) @binding(1) var<storage, read> src_b: array<I>;
@group(0) @binding(2) var<storage, read> tab: array<vec4<i32>>;
@group(0) @binding(3) var<storage, read_write> dst: array<O>;
@group(0) @binding(4) var<uniform> p: Params;

override RM: u32 = 4u;   // rows per invocation: 2, 4 or 8

const TN: u32 = 64u;
const TK: u32 = 16u;
const AS: u32 = 64u;   // row stride of As (the largest tile height)

// Read as vec4 in the inner product: llvmpipe turns each workgroup-memory access into a loop over
// the SIMD lanes, so one vec4 access costs about what one scalar does.
var<workgroup> As: array<vec4<f32>, 256>;    // [TK][AS / 4]
var<workgroup> Bs: array<vec4<f32>, 256>;    // [TK][TN / 4]

fn put_a(kk: u32, mm: u32, v: f32) { As[kk * (AS / 4u) + mm / 4u][mm % 4u] = v; }
fn put_b(kk: u32, nn: u32, v: f32) { Bs[kk * (TN / 4u) + nn / 4u][nn % 4u] = v; }

fn mma(ty: u32, tx: u32, c: ptr<function, Acc>) {
    for (var kk = 0u; kk < TK; kk++) {
        let bb = kk * (TN / 4u) + tx * 2u;
        let b0 = Bs[bb];
        let b1 = Bs[bb + 1u];
        let ab = kk * (AS / 4u) + (ty * RM) / 4u;
        let av = As[ab];
        if (RM == 2u) {
            // Two rows: one half of the vec4.
            var a0 = av.x; var a1 = av.y;
            if ((ty & 1u) == 1u) { a0 = av.z; a1 = av.w; }
            (*c).r0a = fma(vec4<f32>(a0), b0, (*c).r0a); (*c).r0b = fma(vec4<f32>(a0), b1, (*c).r0b);
            (*c).r1a = fma(vec4<f32>(a1), b0, (*c).r1a); (*c).r1b = fma(vec4<f32>(a1), b1, (*c).r1b);
        } else {
            (*c).r0a = fma(vec4<f32>(av.x), b0, (*c).r0a); (*c).r0b = fma(vec4<f32>(av.x), b1, (*c).r0b);
            (*c).r1a = fma(vec4<f32>(av.y), b0, (*c).r1a); (*c).r1b = fma(vec4<f32>(av.y), b1, (*c).r1b);
            (*c).r2a = fma(vec4<f32>(av.z), b0, (*c).r2a); (*c).r2b = fma(vec4<f32>(av.z), b1, (*c).r2b);
            (*c).r3a = fma(vec4<f32>(av.w), b0, (*c).r3a); (*c).r3b = fma(vec4<f32>(av.w), b1, (*c).r3b);
            if (RM == 8u) {
                let aw = As[ab + 1u];
                (*c).r4a = fma(vec4<f32>(aw.x), b0, (*c).r4a); (*c).r4b = fma(vec4<f32>(aw.x), b1, (*c).r4b);
                (*c).r5a = fma(vec4<f32>(aw.y), b0, (*c).r5a); (*c).r5b = fma(vec4<f32>(aw.y), b1, (*c).r5b);
                (*c).r6a = fma(vec4<f32>(aw.z), b0, (*c).r6a); (*c).r6b = fma(vec4<f32>(aw.z), b1, (*c).r6b);
                (*c).r7a = fma(vec4<f32>(aw.w), b0, (*c).r7a); (*c).r7b = fma(vec4<f32>(aw.w), b1, (*c).r7b);
            }
        }
    }
}

// The RM x 8 accumulator block, as named vec4 fields (never indexed dynamically).
struct Acc {
    r0a: vec4<f32>, r0b: vec4<f32>, r1a: vec4<f32>, r1b: vec4<f32>,
    r2a: vec4<f32>, r2b: vec4<f32>, r3a: vec4<f32>, r3b: vec4<f32>,
    r4a: vec4<f32>, r4b: vec4<f32>, r5a: vec4<f32>, r5b: vec4<f32>,
    r6a: vec4<f32>, r6b: vec4<f32>, r7a: vec4<f32>, r7b: vec4<f32>,
}

fn zero_acc() -> Acc {
    let z = vec4<f32>(0.0);
    return Acc(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
}

// The input pixel of tap t = (offset, kh, kw, _) for the output pixel whose top-left input corner
// is (ih0, iw0) at flat offset xoff; zero in the padding.
fn gather_x(t: vec4<i32>, xoff: i32, ih0: i32, iw0: i32) -> f32 {
    let ih = ih0 + t.y;
    let iw = iw0 + t.z;
    if (ih >= 0 && iw >= 0 && ih < i32(p.h) && iw < i32(p.w)) { return f32(src_b[u32(xoff + t.x)]); }
    return 0.0;
}

// Output element index for (m, n) in each mode.
fn out_index(mode: u32, m: u32, n: u32, split: u32) -> u32 {
    let gm = grp * p.m + m;
    if (mode == 0u) {
        let ohw = p.oh * p.ow;
        return ((n / ohw) * p.cout + gm) * ohw + n % ohw;
    } else if (mode == 1u) {
        let hw = p.h * p.w;
        return ((n / hw) * p.cin + gm) * hw + n % hw;
    }
    return (split * p.groups * p.m + gm) * p.n + n;
}

fn store(mode: u32, m: u32, n: u32, split: u32, v: f32) {
    if (m >= p.m || n >= p.n) { return; }
    let i = out_index(mode, m, n, split);
    let s = p.alpha * v;
    if (p.beta != 0.0 && p.splits == 1u) { dst[i] = O(p.beta * f32(dst[i]) + s); } else { dst[i] = O(s); }
}

fn store_row(mode: u32, m: u32, n0: u32, split: u32, lo: vec4<f32>, hi: vec4<f32>) {
    store(mode, m, n0, split, lo.x); store(mode, m, n0 + 1u, split, lo.y);
    store(mode, m, n0 + 2u, split, lo.z); store(mode, m, n0 + 3u, split, lo.w);
    store(mode, m, n0 + 4u, split, hi.x); store(mode, m, n0 + 5u, split, hi.y);
    store(mode, m, n0 + 6u, split, hi.z); store(mode, m, n0 + 7u, split, hi.w);
}

fn store_all(mode: u32, m0: u32, n0: u32, ty: u32, tx: u32, split: u32, c: Acc) {
    let m = m0 + ty * RM;
    let n = n0 + tx * 8u;
    store_row(mode, m, n, split, c.r0a, c.r0b);
    store_row(mode, m + 1u, n, split, c.r1a, c.r1b);
    if (RM >= 4u) {
        store_row(mode, m + 2u, n, split, c.r2a, c.r2b);
        store_row(mode, m + 3u, n, split, c.r3a, c.r3b);
    }
    if (RM == 8u) {
        store_row(mode, m + 4u, n, split, c.r4a, c.r4b);
        store_row(mode, m + 5u, n, split, c.r5a, c.r5b);
        store_row(mode, m + 6u, n, split, c.r6a, c.r6b);
        store_row(mode, m + 7u, n, split, c.r7a, c.r7b);
    }
}

// Forward. tab[k] = (ci*H*W + kh*W + kw, kh, kw, 0) for k = (ci, kh, kw).
@compute @workgroup_size(8, 8)
fn conv_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) l3: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let tm = 8u * RM;
    let m0 = wg.y * tm;
    let n0 = wg.x * TN;
    grp = wg.z;
    let a_off = grp * p.m * p.k;
    // This invocation always loads column n = n0 + lid of B: decode its pixel once.
    let n = n0 + lid;
    let ohw = p.oh * p.ow;
    let b = n / ohw;
    let ih0 = i32(((n % ohw) / p.ow) * p.stride) - i32(p.pad);
    let iw0 = i32((n % p.ow) * p.stride) - i32(p.pad);
    let xoff = i32((b * p.cin + grp * (p.cin / p.groups)) * p.h * p.w) + ih0 * i32(p.w) + iw0;
    let nvalid = n < p.n;
    let kk_a = lid % TK;
    let mm_a = lid / TK;

    var acc = zero_acc();
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var l = 0u; l < 2u * RM; l++) {
            let mm = mm_a + 4u * l;
            let gm = m0 + mm;
            let gk = k0 + kk_a;
            var v = 0.0;
            if (gm < p.m && gk < p.k) { v = f32(src_a[a_off + gm * p.k + gk]); }
            put_a(kk_a, mm, v);
        }
        for (var l = 0u; l < TK; l++) {
            let gk = k0 + l;
            var v = 0.0;
            if (nvalid && gk < p.k) {
                v = gather_x(tab[gk], xoff, ih0, iw0);
            }
            put_b(l, lid, v);
        }
        workgroupBarrier();
        mma(l3.y, l3.x, &acc);
        workgroupBarrier();
    }
    store_all(0u, m0, n0, l3.y, l3.x, 0u, acc);
}

// Input gradient. tab[k] = (co*OH*OW, kh, kw, co*Cin*KH*KW + kh*KW + kw) for k = (co, kh, kw).
@compute @workgroup_size(8, 8)
fn conv_dgrad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) l3: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let tm = 8u * RM;
    let m0 = wg.y * tm;
    let n0 = wg.x * TN;
    grp = wg.z;
    let cout_g = p.cout / p.groups;
    let a_off = grp * cout_g * p.m * p.kh * p.kw;
    let n = n0 + lid;
    let hw = p.h * p.w;
    let b = n / hw;
    let hp = i32((n % hw) / p.w + p.pad);
    let wp = i32(n % p.w + p.pad);
    let yoff = i32((b * p.cout + grp * cout_g) * p.oh * p.ow);
    let nvalid = n < p.n;
    let khw = p.kh * p.kw;
    let kk_a = lid % TK;
    let mm_a = lid / TK;

    var acc = zero_acc();
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        let gka = k0 + kk_a;
        var wbase = 0;
        if (gka < p.k) { wbase = tab[gka].w; }
        for (var l = 0u; l < 2u * RM; l++) {
            let mm = mm_a + 4u * l;
            let gm = m0 + mm;
            var v = 0.0;
            if (gm < p.m && gka < p.k) { v = f32(src_a[a_off + u32(wbase) + gm * khw]); }
            put_a(kk_a, mm, v);
        }
        for (var l = 0u; l < TK; l++) {
            let gk = k0 + l;
            var v = 0.0;
            if (nvalid && gk < p.k) {
                let t = tab[gk];
                var th = hp - t.y;
                var tw = wp - t.z;
                var ok = th >= 0 && tw >= 0;
                if (p.stride == 2u) {
                    ok = ok && (th & 1) == 0 && (tw & 1) == 0;
                    th = th >> 1u;
                    tw = tw >> 1u;
                } else if (p.stride != 1u) {
                    let s = i32(p.stride);
                    ok = ok && th % s == 0 && tw % s == 0;
                    th = th / s;
                    tw = tw / s;
                }
                if (ok && th < i32(p.oh) && tw < i32(p.ow)) {
                    v = f32(src_b[u32(yoff + t.x + th * i32(p.ow) + tw)]);
                }
            }
            put_b(l, lid, v);
        }
        workgroupBarrier();
        mma(l3.y, l3.x, &acc);
        workgroupBarrier();
    }
    store_all(1u, m0, n0, l3.y, l3.x, 0u, acc);
}

// Weight gradient. tab[n] = (ci*H*W + kh*W + kw, kh, kw, 0) for n = (ci, kh, kw).
@compute @workgroup_size(8, 8)
fn conv_wgrad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) l3: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let tm = 8u * RM;
    let m0 = wg.y * tm;
    let n0 = wg.x * TN;
    let split = wg.z % p.splits;
    grp = wg.z / p.splits;
    let cin_off = grp * (p.cin / p.groups);
    let cout_off = grp * p.m;
    let k_begin = split * p.kchunk;
    let k_end = min(p.k, k_begin + p.kchunk);
    let ohw = p.oh * p.ow;
    // Both operands are loaded k-fastest: this invocation's k within a slab is fixed.
    let kk = lid % TK;
    let row = lid / TK;

    var acc = zero_acc();
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        let gk = k0 + kk;
        let kvalid = gk < k_end;
        // Decode k = (b, oh, ow) once per slab.
        let b = gk / ohw;
        let r = gk % ohw;
        let ih0 = i32((r / p.ow) * p.stride) - i32(p.pad);
        let iw0 = i32((r % p.ow) * p.stride) - i32(p.pad);
        let xoff = i32((b * p.cin + cin_off) * p.h * p.w) + ih0 * i32(p.w) + iw0;
        let dyoff = (b * p.cout + cout_off) * ohw + r;
        for (var l = 0u; l < 2u * RM; l++) {
            let mm = row + 4u * l;
            let gm = m0 + mm;
            var v = 0.0;
            if (gm < p.m && kvalid) { v = f32(src_a[dyoff + gm * ohw]); }
            put_a(kk, mm, v);
        }
        for (var l = 0u; l < TK; l++) {
            let nn = row + 4u * l;
            let gn = n0 + nn;
            var v = 0.0;
            if (gn < p.n && kvalid) {
                v = gather_x(tab[gn], xoff, ih0, iw0);
            }
            put_b(kk, nn, v);
        }
        workgroupBarrier();
        mma(l3.y, l3.x, &acc);
        workgroupBarrier();
    }
    store_all(2u, m0, n0, l3.y, l3.x, split, acc);
}
