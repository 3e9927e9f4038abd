// Symmetric eigendecomposition by cyclic Jacobi, one workgroup per matrix (n <= 128, see
// src/ops/eigen.rs MAX_N), and the
// ZCA whitening matrix W = U diag(lambda^-1/2) U^T built from it.
//   jacobi_init / jacobi_sweep: a (copy of the input, destroyed), v (eigenvectors, columns),
//             lam (eigenvalues)
//   zca:      w[g, i, j] = sum_k v[g, i, k] v[g, j, k] lam[g, k]^-1/2
//   kmul:     backward core: y = K o x with K_ij = (f(l_i) - f(l_j)) / (l_i - l_j), f = l^-1/2,
//             evaluated in closed form -1 / (sqrt(l_i) sqrt(l_j) (sqrt(l_i) + sqrt(l_j))): no
//             eigenvalue gap in any denominator, so nearly equal eigenvalues are harmless (and
//             i == j gives f'(l_i)).
// Each Jacobi rotation (p, q) zeroes a[p, q]: every invocation k != p, q rotates a[k, p],
// a[k, q] (and their mirrors) and v[k, p], v[k, q]; invocation p updates the 2x2 block. Sweeps
// are split into dispatches of a few thousand rotations and do nothing once the off-diagonal mass
// is below 1e-14 of the total (f32 resolution).

struct Params {
    groups: u32, n: u32, row_begin: u32, row_end: u32,   // jacobi_sweep: pivot rows p in [begin, end)
    beta: f32, floor: f32, _q0: f32, _q1: f32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> lam: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> off_ratio: f32;

// Copy the input and set V = I (one workgroup per matrix).
@compute @workgroup_size(256)
fn jacobi_init(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) k: u32) {
    let n = p.n;
    let base = wg.x * n * n;
    for (var i = k; i < n * n; i += 256u) {
        a[base + i] = src[base + i];
        v[base + i] = select(0.0, 1.0, i / n == i % n);
    }
}

// Part of a cyclic sweep: the rotations of pivot rows [row_begin, row_end), then the eigenvalues.
// Sweeps are split over dispatches because llvmpipe cut short a dispatch of ~65k barriers (a full
// sweep at n = 256). A matrix already diagonal to f32 resolution is left alone.
@compute @workgroup_size(256)
fn jacobi_sweep(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) k: u32) {
    let g = wg.x;
    let n = p.n;
    let base = g * n * n;
    if (k == 0u) {
        var off = 0.0;
        var tot = 0.0;
        for (var i = 0u; i < n; i++) {
            for (var j = 0u; j < n; j++) {
                let e = a[base + i * n + j];
                tot += e * e;
                if (i != j) { off += e * e; }
            }
        }
        off_ratio = select(off / tot, 0.0, tot == 0.0);
    }
    let ratio = workgroupUniformLoad(&off_ratio);
    if (ratio > 1e-14) {
        for (var pp = p.row_begin; pp < min(p.row_end, n - 1u); pp++) {
            for (var q = pp + 1u; q < n; q++) {
                let apq = a[base + pp * n + q];
                let app = a[base + pp * n + pp];
                let aqq = a[base + q * n + q];
                var c = 1.0;
                var s = 0.0;
                var t = 0.0;
                // Rotate only when a[p, q] matters next to the diagonal (the classic Jacobi
                // threshold): a negligible or denormal a[p, q] would give 0/0 below.
                let rotate = abs(apq) > 1e-12 * sqrt(abs(app * aqq)) && abs(apq) > 1e-30;
                if (rotate) {
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
                storageBarrier();
                workgroupBarrier();
                if (rotate && k < n) {
                    if (k != pp && k != q) {
                        let akp = a[base + k * n + pp];
                        let akq = a[base + k * n + q];
                        let nkp = c * akp - s * akq;
                        let nkq = s * akp + c * akq;
                        a[base + k * n + pp] = nkp;
                        a[base + pp * n + k] = nkp;
                        a[base + k * n + q] = nkq;
                        a[base + q * n + k] = nkq;
                    } else if (k == pp) {
                        a[base + pp * n + pp] = app - t * apq;
                        a[base + q * n + q] = aqq + t * apq;
                        a[base + pp * n + q] = 0.0;
                        a[base + q * n + pp] = 0.0;
                    }
                    let vkp = v[base + k * n + pp];
                    let vkq = v[base + k * n + q];
                    v[base + k * n + pp] = c * vkp - s * vkq;
                    v[base + k * n + q] = s * vkp + c * vkq;
                }
                storageBarrier();
                workgroupBarrier();
            }
        }
    }
    for (var i = k; i < n; i += 256u) {
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
