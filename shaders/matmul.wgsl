// C[M, N] = alpha * op(A) op(B) + beta * C, row-major, op = optional transpose.
// A is [M, K] (or [K, M] when ta = 1); B is [K, N] (or [N, K] when tb = 1).
// Tiling: a 64x64 tile of C per workgroup of 16x16 invocations; each invocation keeps a 4x4 block
// of C in registers (register blocking). K advances in slabs of 16 staged through workgroup
// memory, loaded along the contiguous axis of each operand so that both layouts coalesce.
// Edges are masked, so any M, N, K works. `batch` > 1 multiplies `batch` independent matrices
// stacked along the slowest axis (strides M*K, K*N, M*N).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    ta: u32,
    tb: u32,
    batch: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> As: array<f32, 1024>;   // [TK][TM]
var<workgroup> Bs: array<f32, 1024>;   // [TK][TN]

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let bi = wg.z;
    let a_off = bi * p.m * p.k;
    let b_off = bi * p.k * p.n;
    let c_off = bi * p.m * p.n;
    let tx = lid3.x;
    let ty = lid3.y;

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var l = 0u; l < 4u; l++) {
            let e = lid + l * 256u;
            // A tile element (mm, kk)
            var mm: u32; var kk: u32;
            if (p.ta == 0u) { kk = e % TK; mm = e / TK; } else { mm = e % TM; kk = e / TM; }
            let gm = m0 + mm;
            let gk = k0 + kk;
            var av = 0.0;
            if (gm < p.m && gk < p.k) {
                if (p.ta == 0u) { av = A[a_off + gm * p.k + gk]; } else { av = A[a_off + gk * p.m + gm]; }
            }
            As[kk * TM + mm] = av;
            // B tile element (kk2, nn)
            var nn: u32; var kk2: u32;
            if (p.tb == 0u) { nn = e % TN; kk2 = e / TN; } else { kk2 = e % TK; nn = e / TK; }
            let gn = n0 + nn;
            let gk2 = k0 + kk2;
            var bv = 0.0;
            if (gn < p.n && gk2 < p.k) {
                if (p.tb == 0u) { bv = B[b_off + gk2 * p.n + gn]; } else { bv = B[b_off + gn * p.k + gk2]; }
            }
            Bs[kk2 * TN + nn] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let b = vec4<f32>(Bs[kk * TN + tx * 4u], Bs[kk * TN + tx * 4u + 1u],
                              Bs[kk * TN + tx * 4u + 2u], Bs[kk * TN + tx * 4u + 3u]);
            let ab = kk * TM + ty * 4u;
            acc[0] += As[ab] * b;
            acc[1] += As[ab + 1u] * b;
            acc[2] += As[ab + 2u] * b;
            acc[3] += As[ab + 3u] * b;
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let gm = m0 + ty * 4u + i;
        if (gm < p.m) {
            for (var j = 0u; j < 4u; j++) {
                let gn = n0 + tx * 4u + j;
                if (gn < p.n) {
                    let idx = c_off + gm * p.n + gn;
                    let v = p.alpha * acc[i][j];
                    if (p.beta != 0.0) { C[idx] = p.beta * C[idx] + v; } else { C[idx] = v; }
                }
            }
        }
    }
}
