// Softmax cross-entropy over logits [B, C] with integer labels, as a (optionally class-weighted)
// mean: loss = sum_i w[y_i] l_i / sum_i w[y_i], l_i = logsumexp(z_i) - z_i[y_i] (PyTorch's rule).
// forward: one workgroup; invocation t handles rows t, t+256, ...; the row sums are combined by a
// fixed tree, so the result is deterministic. saved = [lse_0 .. lse_{B-1}, loss, sum_w].
// backward: dz[i, c] = g * w[y_i] / sum_w * (softmax(z_i)[c] - [c == y_i]).
// Labels >= C get weight 0 (the host rejects them before they reach here).

struct Params {
    rows: u32,
    classes: u32,
    has_weights: u32,
    _pad: u32,
    beta: f32,
    _p1: f32,
    _p2: f32,
    _p3: f32,
}

@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> saved: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> part_l: array<f32, WG>;
var<workgroup> part_w: array<f32, WG>;

fn class_weight(label: u32) -> f32 {
    if (label >= p.classes) { return 0.0; }
    if (p.has_weights != 0u) { return w[label]; }
    return 1.0;
}

@compute @workgroup_size(256)
fn forward(@builtin(local_invocation_index) lid: u32) {
    var wl = 0.0;
    var ws = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let base = r * p.classes;
        var mx = z[base];
        for (var c = 1u; c < p.classes; c++) { mx = max(mx, z[base + c]); }
        var s = 0.0;
        for (var c = 0u; c < p.classes; c++) { s += exp(z[base + c] - mx); }
        let lse = mx + log(s);
        saved[r] = lse;
        let label = y[r];
        let wt = class_weight(label);
        if (wt != 0.0) {
            wl += wt * (lse - z[base + label]);
            ws += wt;
        }
    }
    part_l[lid] = wl;
    part_w[lid] = ws;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            part_l[lid] += part_l[lid + s];
            part_w[lid] += part_w[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        // An all-zero weight batch gives loss 0 rather than NaN.
        let total = select(part_l[0] / part_w[0], 0.0, part_w[0] == 0.0);
        saved[p.rows] = total;
        saved[p.rows + 1u] = part_w[0];
        loss[0] = total;
    }
}

@group(0) @binding(0) var<storage, read> bz: array<f32>;
@group(0) @binding(1) var<storage, read> by: array<u32>;
@group(0) @binding(2) var<storage, read> bw: array<f32>;
@group(0) @binding(3) var<storage, read> bsaved: array<f32>;
@group(0) @binding(4) var<storage, read> gloss: array<f32>;
@group(0) @binding(5) var<storage, read_write> gz: array<f32>;
@group(0) @binding(6) var<uniform> bp: Params;

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if (i >= bp.rows * bp.classes) { return; }
    let r = i / bp.classes;
    let c = i % bp.classes;
    let label = by[r];
    var wt = 0.0;
    if (label < bp.classes) { wt = select(1.0, bw[label], bp.has_weights != 0u); }
    let ws = bsaved[bp.rows + 1u];
    var g = 0.0;
    if (ws != 0.0) {
        let prob = exp(bz[i] - bsaved[r]);
        g = gloss[0] * wt / ws * (prob - select(0.0, 1.0, c == label));
    }
    if (bp.beta != 0.0) { gz[i] = bp.beta * gz[i] + g; } else { gz[i] = g; }
}
