// C[M, N] = alpha * op(A) op(B) + beta * C, row-major, op = optional transpose.
// A is [M, K] (or [K, M] when TA); B is [K, N] (or [N, K] when TB).
// Tiling: one 64x64 tile of C per workgroup of 8x8 invocations; each invocation holds an 8x8
// block of C in registers (register blocking: 16 workgroup-memory loads feed 64 FMAs). K
// advances in slabs of 16 staged through workgroup memory, each operand loaded along its
// contiguous axis so both layouts coalesce. TA/TB are override constants, so each transpose
// combination is its own specialised pipeline without branches in the inner loop. Edges are
// masked: any M, N, K works. `batch` matrices stacked along the slowest axis run as workgroup z.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,     // matrices stacked along the slowest axis; workgroup z picks one
    alpha: f32,
    beta: f32,
    k_begin: u32,   // this launch covers K values [k_begin, k_end) (long K is split over
    k_end: u32,     // launches: llvmpipe caps an invocation's loop iterations per dispatch)
    a_step: u32,    // distance between op(A)'s K values in a row: M when TA, else 1 (matmul_sg)
    pad: u32,
}

@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

override TA: bool = false;
override TB: bool = false;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;
const R: u32 = 8u;          // register block edge
const THREADS: u32 = 64u;   // (TM / R) * (TN / R)

var<workgroup> As: array<f32, 1024>;   // [TK][TM]
var<workgroup> Bs: array<f32, 1024>;   // [TK][TN]

// Stage element e of the A and B slabs starting at K = k0 into workgroup memory (zeros past
// the edges).
fn stage(e: u32, m0: u32, n0: u32, k0: u32, a_off: u32, b_off: u32) {
    var mm: u32; var kk: u32;
    if (!TA) { kk = e % TK; mm = e / TK; } else { mm = e % TM; kk = e / TM; }
    let gm = m0 + mm;
    let gk = k0 + kk;
    var av = 0.0;
    if (gm < p.m && gk < p.k_end) {
        if (!TA) { av = A[a_off + gm * p.k + gk]; } else { av = A[a_off + gk * p.m + gm]; }
    }
    As[kk * TM + mm] = av;
    var nn: u32; var kb: u32;
    if (!TB) { nn = e % TN; kb = e / TN; } else { kb = e % TK; nn = e / TK; }
    let gn = n0 + nn;
    let gkb = k0 + kb;
    var bv = 0.0;
    if (gn < p.n && gkb < p.k_end) {
        if (!TB) { bv = B[b_off + gkb * p.n + gn]; } else { bv = B[b_off + gn * p.k + gkb]; }
    }
    Bs[kb * TN + nn] = bv;
}

@compute @workgroup_size(8, 8)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let a_off = wg.z * p.m * p.k;
    let b_off = wg.z * p.k * p.n;
    let c_off = wg.z * p.m * p.n;
    let tx = lid3.x;
    let ty = lid3.y;

    var c0a = vec4<f32>(0.0); var c0b = vec4<f32>(0.0);
    var c1a = vec4<f32>(0.0); var c1b = vec4<f32>(0.0);
    var c2a = vec4<f32>(0.0); var c2b = vec4<f32>(0.0);
    var c3a = vec4<f32>(0.0); var c3b = vec4<f32>(0.0);
    var c4a = vec4<f32>(0.0); var c4b = vec4<f32>(0.0);
    var c5a = vec4<f32>(0.0); var c5b = vec4<f32>(0.0);
    var c6a = vec4<f32>(0.0); var c6b = vec4<f32>(0.0);
    var c7a = vec4<f32>(0.0); var c7b = vec4<f32>(0.0);

    for (var k0 = p.k_begin; k0 < p.k_end; k0 += TK) {
        for (var l = 0u; l < (TM * TK) / THREADS; l++) {
            stage(lid + l * THREADS, m0, n0, k0, a_off, b_off);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ab = kk * TM + ty * R;
            let bb = kk * TN + tx * R;
            let b0 = vec4<f32>(Bs[bb], Bs[bb + 1u], Bs[bb + 2u], Bs[bb + 3u]);
            let b1 = vec4<f32>(Bs[bb + 4u], Bs[bb + 5u], Bs[bb + 6u], Bs[bb + 7u]);
            let a0 = As[ab + 0u]; c0a = fma(vec4<f32>(a0), b0, c0a); c0b = fma(vec4<f32>(a0), b1, c0b);
            let a1 = As[ab + 1u]; c1a = fma(vec4<f32>(a1), b0, c1a); c1b = fma(vec4<f32>(a1), b1, c1b);
            let a2 = As[ab + 2u]; c2a = fma(vec4<f32>(a2), b0, c2a); c2b = fma(vec4<f32>(a2), b1, c2b);
            let a3 = As[ab + 3u]; c3a = fma(vec4<f32>(a3), b0, c3a); c3b = fma(vec4<f32>(a3), b1, c3b);
            let a4 = As[ab + 4u]; c4a = fma(vec4<f32>(a4), b0, c4a); c4b = fma(vec4<f32>(a4), b1, c4b);
            let a5 = As[ab + 5u]; c5a = fma(vec4<f32>(a5), b0, c5a); c5b = fma(vec4<f32>(a5), b1, c5b);
            let a6 = As[ab + 6u]; c6a = fma(vec4<f32>(a6), b0, c6a); c6b = fma(vec4<f32>(a6), b1, c6b);
            let a7 = As[ab + 7u]; c7a = fma(vec4<f32>(a7), b0, c7a); c7b = fma(vec4<f32>(a7), b1, c7b);
        }
        workgroupBarrier();
    }

    store_row(c_off, m0 + ty * R + 0u, n0 + tx * R, c0a, c0b);
    store_row(c_off, m0 + ty * R + 1u, n0 + tx * R, c1a, c1b);
    store_row(c_off, m0 + ty * R + 2u, n0 + tx * R, c2a, c2b);
    store_row(c_off, m0 + ty * R + 3u, n0 + tx * R, c3a, c3b);
    store_row(c_off, m0 + ty * R + 4u, n0 + tx * R, c4a, c4b);
    store_row(c_off, m0 + ty * R + 5u, n0 + tx * R, c5a, c5b);
    store_row(c_off, m0 + ty * R + 6u, n0 + tx * R, c6a, c6b);
    store_row(c_off, m0 + ty * R + 7u, n0 + tx * R, c7a, c7b);
}

fn store_row(c_off: u32, gm: u32, gn0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    store4(c_off, gm, gn0, lo);
    store4(c_off, gm, gn0 + 4u, hi);
}

fn store4(c_off: u32, gm: u32, gn0: u32, v4: vec4<f32>) {
    if (gm >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        let gn = gn0 + j;
        if (gn < p.n) {
            let idx = c_off + gm * p.n + gn;
            let v = p.alpha * v4[j];
            if (p.beta != 0.0) { C[idx] = p.beta * C[idx] + v; } else { C[idx] = v; }
        }
    }
}

// The GPU-shaped variant: the same 64x64 tile and slabs, 16x16 = 256 invocations with a 4x4
// register block each (4 vec4 accumulators): four times the invocations per workgroup, a
// quarter of the registers per invocation, so a GPU keeps more warps resident per SM.
@compute @workgroup_size(16, 16)
fn matmul16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let a_off = wg.z * p.m * p.k;
    let b_off = wg.z * p.k * p.n;
    let c_off = wg.z * p.m * p.n;
    let tx = lid3.x;
    let ty = lid3.y;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += TK) {
        for (var l = 0u; l < (TM * TK) / 256u; l++) {
            stage(lid + l * 256u, m0, n0, k0, a_off, b_off);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ab = kk * TM + ty * 4u;
            let bb = kk * TN + tx * 4u;
            let b0 = vec4<f32>(Bs[bb], Bs[bb + 1u], Bs[bb + 2u], Bs[bb + 3u]);
            c0 = fma(vec4<f32>(As[ab]), b0, c0);
            c1 = fma(vec4<f32>(As[ab + 1u]), b0, c1);
            c2 = fma(vec4<f32>(As[ab + 2u]), b0, c2);
            c3 = fma(vec4<f32>(As[ab + 3u]), b0, c3);
        }
        workgroupBarrier();
    }
    store4(c_off, m0 + ty * 4u, n0 + tx * 4u, c0);
    store4(c_off, m0 + ty * 4u + 1u, n0 + tx * 4u, c1);
    store4(c_off, m0 + ty * 4u + 2u, n0 + tx * 4u, c2);
    store4(c_off, m0 + ty * 4u + 3u, n0 + tx * 4u, c3);
}
