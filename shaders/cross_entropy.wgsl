// Softmax cross-entropy with per-class weights, margins and logit offsets (one kernel for CE,
// class-weighted CE, LDAM, logit adjustment and balanced softmax):
//   z'_ic = s * (z_ic - [c == y_i] * margin_c) + offset_c
//   loss  = sum_i w[y_i] * (logsumexp(z'_i) - z'_i[y_i]) / sum_i w[y_i]   (PyTorch's weighted mean)
// `cls` is [3, C]: weights, margins, offsets (plain CE: 1, 0, 0).
// forward: one workgroup; invocation t handles rows t, t+256, ...; a fixed tree combines the row
// sums, so the result is deterministic. saved = [lse_0 .. lse_{B-1}, sum_i w l_i, sum_w].
// Several devices (data parallel) add the last two over the devices, then loss_finish divides:
// the loss and its gradient are the whole batch's weighted mean.
// backward: dz_ic = g * s * w[y_i] / sum_w * (softmax(z'_i)_c - [c == y_i]).
// Labels >= C get weight 0 (the host rejects them before they reach here).

struct Params {
    rows: u32,
    classes: u32,
    _p0: u32,
    _p1: u32,
    scale: f32,
    beta: f32,
    _p2: f32,
    _p3: f32,
}

@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<u32>;
@group(0) @binding(2) var<storage, read> cls: array<f32>;
@group(0) @binding(3) var<storage, read_write> saved: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> part_l: array<f32, WG>;
var<workgroup> part_w: array<f32, WG>;

fn logit(r: u32, c: u32, label: u32) -> f32 {
    var v = z[r * p.classes + c];
    if (c == label) { v -= cls[p.classes + c]; }
    return p.scale * v + cls[2u * p.classes + c];
}

@compute @workgroup_size(256)
fn forward(@builtin(local_invocation_index) lid: u32) {
    var wl = 0.0;
    var ws = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let label = y[r];
        var mx = logit(r, 0u, label);
        for (var c = 1u; c < p.classes; c++) { mx = max(mx, logit(r, c, label)); }
        var s = 0.0;
        for (var c = 0u; c < p.classes; c++) { s += exp(logit(r, c, label) - mx); }
        let lse = mx + log(s);
        saved[r] = lse;
        if (label < p.classes) {
            let wt = cls[label];
            wl += wt * (lse - logit(r, label, label));
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
        // The sums, not their ratio: several devices add them up (then loss_finish).
        saved[p.rows] = part_l[0];
        saved[p.rows + 1u] = part_w[0];
        loss[0] = total;
    }
}

@group(0) @binding(0) var<storage, read> bz: array<f32>;
@group(0) @binding(1) var<storage, read> by: array<u32>;
@group(0) @binding(2) var<storage, read> bcls: array<f32>;
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
    if (label < bp.classes) { wt = bcls[label]; }
    let ws = bsaved[bp.rows + 1u];
    var g = 0.0;
    if (ws != 0.0 && wt != 0.0) {
        var v = bz[i];
        if (c == label) { v -= bcls[bp.classes + c]; }
        let zp = bp.scale * v + bcls[2u * bp.classes + c];
        let prob = exp(zp - bsaved[r]);
        g = gloss[0] * bp.scale * wt / ws * (prob - select(0.0, 1.0, c == label));
    }
    if (bp.beta != 0.0) { gz[i] = bp.beta * gz[i] + g; } else { gz[i] = g; }
}

@group(0) @binding(0) var<storage, read> fsaved: array<f32>;
@group(0) @binding(1) var<storage, read_write> floss: array<f32>;
@group(0) @binding(2) var<uniform> fp: Params;

@compute @workgroup_size(1)
fn loss_finish() {
    let ws = fsaved[fp.rows + 1u];
    floss[0] = select(fsaved[fp.rows] / ws, 0.0, ws == 0.0);
}
