// Symmetric eigendecomposition by parallel (round-robin) Jacobi, one workgroup per matrix
// (n <= 512, see src/ops/eigen.rs MAX_N), and the ZCA whitening matrix W = U diag(lambda^-1/2) U^T
// built from it.
//   jacobi_init:   a (copy of the input, destroyed), v = I (eigenvectors, columns)
//   jacobi_rounds: rounds [round_begin, round_end) of the cyclic sweeps (round r is round
//                  r mod (m - 1) of sweep r / (m - 1)), then lam (eigenvalues)
//   zca:           w[g, i, j] = sum_k v[g, i, k] v[g, j, k] lam[g, k]^-1/2
//   kmul:          backward core: y = K o x with K_ij = (f(l_i) - f(l_j)) / (l_i - l_j),
//                  f = l^-1/2, evaluated in closed form -1 / (sqrt(l_i) sqrt(l_j) (sqrt(l_i) +
//                  sqrt(l_j))): no eigenvalue gap in any denominator, so nearly equal eigenvalues
//                  are harmless (and i == j gives f'(l_i)).
// A sweep is m - 1 rounds (m = n rounded up to even); a round pairs all indices into m / 2
// disjoint pairs (the circle method: m - 1 stays, the rest rotate), and its rotations commute,
// so they are applied together: A <- J^T A J block by block (the 2x2 block of pairs i, j only
// needs those two rotations) and V <- V J. Every invocation's loops stay far below llvmpipe's
// cap of 65,535 loop iterations per invocation and dispatch (LP_MAX_TGSI_LOOP_ITERATIONS,
// shared by all loops of a shader; past it loops silently stop): the host sizes each dispatch's
// round range to fit, which is what broke the previous one-rotation-at-a-time kernel at n >= 240.

struct Params {
    groups: u32, n: u32, round_begin: u32, round_end: u32,
    beta: f32, floor: f32, stop: f32, _q1: f32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> lam: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> red_off: array<f32, 256>;
var<workgroup> red_tot: array<f32, 256>;
// Per pair of the current round: (c, s, t) and the indices, (p, q) with p < q. With n odd one
// real index sits out each round (its partner is the padding index n): it is stored as (p, p)
// with the identity rotation, so the blocks it shares with live pairs are still rotated on
// their side (the duplicate index then writes the same value twice).
var<workgroup> rot: array<vec3<f32>, 256>;
var<workgroup> pq: array<vec2<u32>, 256>;

// Copy the input and set V = I (one workgroup per matrix).
@compute @workgroup_size(256)
fn jacobi_init(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) k: u32) {
    let n = p.n;
    let base = wg.x * n * n;
    for (var i = k; i < n * n; i += WG) {
        a[base + i] = src[base + i];
        v[base + i] = select(0.0, 1.0, i / n == i % n);
    }
}

// Pair `i` of round `r` among m indices (circle method); indices >= n are padding.
fn pair(r: u32, i: u32, m: u32) -> vec2<u32> {
    var x: u32;
    var y: u32;
    if (i == 0u) {
        x = m - 1u;
        y = r;
    } else {
        x = (r + i) % (m - 1u);
        y = (r + m - 1u - i) % (m - 1u);
    }
    return vec2<u32>(min(x, y), max(x, y));
}

@compute @workgroup_size(256)
fn jacobi_rounds(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) k: u32) {
    let g = wg.x;
    let n = p.n;
    let m = n + (n & 1u);
    let half = m / 2u;
    let base = g * n * n;
    // Off-diagonal mass relative to the total: once below `stop` the matrix is diagonal to f32
    // resolution and the rounds are skipped.
    var off = 0.0;
    var tot = 0.0;
    for (var e = k; e < n * n; e += WG) {
        let x = a[base + e];
        tot += x * x;
        if (e / n != e % n) { off += x * x; }
    }
    red_off[k] = off;
    red_tot[k] = tot;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w /= 2u) {
        if (k < w) {
            red_off[k] += red_off[k + w];
            red_tot[k] += red_tot[k + w];
        }
        workgroupBarrier();
    }
    let total = workgroupUniformLoad(&red_tot[0]);
    let ratio = select(red_off[0] / total, 0.0, total == 0.0);
    if (ratio > p.stop) {
        for (var r = p.round_begin; r < p.round_end; r++) {
            if (k < half) {
                let ij = pair(r % (m - 1u), k, m);
                var c = 1.0;
                var s = 0.0;
                var t = 0.0;
                var live = ij;
                if (ij.y >= n) {
                    live = vec2<u32>(ij.x, ij.x);
                } else {
                    let app = a[base + ij.x * n + ij.x];
                    let aqq = a[base + ij.y * n + ij.y];
                    let apq = a[base + ij.x * n + ij.y];
                    // The classic Jacobi threshold: rotate only when a[p, q] matters next to the
                    // diagonal (a negligible or denormal one would give 0/0 below).
                    if (abs(apq) > 1e-12 * sqrt(abs(app * aqq)) && abs(apq) > 1e-30) {
                        let theta = (aqq - app) / (2.0 * apq);
                        // For huge theta, t ~ 1 / (2 theta); avoid squaring it into infinity.
                        if (abs(theta) > 1e15) {
                            t = 0.5 / theta;
                        } else {
                            t = sign(theta) / (abs(theta) + sqrt(1.0 + theta * theta));
                        }
                        if (theta == 0.0) { t = 1.0; }
                        c = inverseSqrt(1.0 + t * t);
                        s = t * c;
                    }
                }
                rot[k] = vec3<f32>(c, s, t);
                pq[k] = live;
            }
            // The reads of a above happen before any write below.
            storageBarrier();
            workgroupBarrier();
            // A <- J^T A J on the blocks (i, j), i <= j, mirrored into (j, i). (Walking all
            // half^2 and skipping i > j costs one loop iteration per skipped block; unranking
            // i <= j directly would need a loop per block.)
            for (var b = k; b < half * half; b += WG) {
                let i = b / half;
                let j = b % half;
                if (i > j) { continue; }
                let pi = pq[i];
                let pj = pq[j];
                let ri = rot[i];
                let rj = rot[j];
                if (i == j) {
                    if (pi.x == pi.y) { continue; }
                    let app = a[base + pi.x * n + pi.x];
                    let aqq = a[base + pi.y * n + pi.y];
                    let apq = a[base + pi.x * n + pi.y];
                    a[base + pi.x * n + pi.x] = app - ri.z * apq;
                    a[base + pi.y * n + pi.y] = aqq + ri.z * apq;
                    a[base + pi.x * n + pi.y] = 0.0;
                    a[base + pi.y * n + pi.x] = 0.0;
                } else {
                    let b00 = a[base + pi.x * n + pj.x];
                    let b01 = a[base + pi.x * n + pj.y];
                    let b10 = a[base + pi.y * n + pj.x];
                    let b11 = a[base + pi.y * n + pj.y];
                    // Columns by J_j, then rows by J_i^T.
                    let c00 = rj.x * b00 - rj.y * b01;
                    let c01 = rj.y * b00 + rj.x * b01;
                    let c10 = rj.x * b10 - rj.y * b11;
                    let c11 = rj.y * b10 + rj.x * b11;
                    let d00 = ri.x * c00 - ri.y * c10;
                    let d01 = ri.x * c01 - ri.y * c11;
                    let d10 = ri.y * c00 + ri.x * c10;
                    let d11 = ri.y * c01 + ri.x * c11;
                    a[base + pi.x * n + pj.x] = d00;
                    a[base + pi.x * n + pj.y] = d01;
                    a[base + pi.y * n + pj.x] = d10;
                    a[base + pi.y * n + pj.y] = d11;
                    a[base + pj.x * n + pi.x] = d00;
                    a[base + pj.y * n + pi.x] = d01;
                    a[base + pj.x * n + pi.y] = d10;
                    a[base + pj.y * n + pi.y] = d11;
                }
            }
            // V <- V J: row kk, pair j.
            for (var e = k; e < n * half; e += WG) {
                let kk = e / half;
                let j = e % half;
                let pj = pq[j];
                if (pj.x == pj.y) { continue; }
                let rj = rot[j];
                let vkp = v[base + kk * n + pj.x];
                let vkq = v[base + kk * n + pj.y];
                v[base + kk * n + pj.x] = rj.x * vkp - rj.y * vkq;
                v[base + kk * n + pj.y] = rj.y * vkp + rj.x * vkq;
            }
            storageBarrier();
            workgroupBarrier();
        }
    }
    for (var i = k; i < n; i += WG) {
        lam[g * n + i] = max(a[base + i * n + i], p.floor);
    }
}

@group(0) @binding(0) var<storage, read> zv: array<f32>;
@group(0) @binding(1) var<storage, read> zlam: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<uniform> zp: Params;

@compute @workgroup_size(256)
fn zca(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let idx = (wg.x + wg.y * nwg.x) * 256u + lid;
    let n = zp.n;
    if (idx >= zp.groups * n * n) { return; }
    let g = idx / (n * n);
    let i = (idx / n) % n;
    let j = idx % n;
    let base = g * n * n;
    var acc = 0.0;
    for (var kk = 0u; kk < n; kk++) {
        acc += zv[base + i * n + kk] * zv[base + j * n + kk] * inverseSqrt(zlam[g * n + kk]);
    }
    w[idx] = acc;
}

@compute @workgroup_size(256)
fn kmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // zv = x (U^T dW U), zlam = eigenvalues, w = y
    let idx = (wg.x + wg.y * nwg.x) * 256u + lid;
    let n = zp.n;
    if (idx >= zp.groups * n * n) { return; }
    let g = idx / (n * n);
    let i = (idx / n) % n;
    let j = idx % n;
    let si = sqrt(zlam[g * n + i]);
    let sj = sqrt(zlam[g * n + j]);
    let kij = -1.0 / (si * sj * (si + sj));
    let val = kij * zv[idx];
    if (zp.beta != 0.0) { w[idx] = zp.beta * w[idx] + val; } else { w[idx] = val; }
}
