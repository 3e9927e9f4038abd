// SGD with momentum over one flat parameter buffer (PyTorch torch.optim.SGD semantics):
//   d = g + wd * w;  v = momentum * v + d;  w -= lr * (nesterov ? d + momentum * v : v)
// The momentum buffer starts at zero, so the first step sets v = d as PyTorch does.

struct Params {
    n: u32,
    nesterov: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _p0: f32,
    _p1: f32,
    _p2: f32,
}

@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// Update element i with gradient `grad` under the parameters `q` (the two entries bind their
// parameter blocks at different slots).
fn update(i: u32, grad: f32, q: Params) {
    let d = grad + q.weight_decay * w[i];
    let vn = q.momentum * v[i] + d;
    v[i] = vn;
    var upd = vn;
    if (q.nesterov != 0u) { upd = d + q.momentum * vn; }
    w[i] = w[i] - q.lr * upd;
}

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= p.n) { return; }
    update(i, g[i], p);
}

// The step under dynamic loss scaling (loss_scale.wgsl): g holds scale x the gradient; a step
// whose gradients overflowed changes nothing (weights and momentum as before).
struct ScaleState {
    scale: f32,
    clean: u32,
    found: u32,
    skipped: u32,
}

@group(0) @binding(3) var<storage, read> sstate: ScaleState;
@group(0) @binding(4) var<uniform> sp: Params;

@compute @workgroup_size(256)
fn step_scaled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= sp.n || sstate.found != 0u) { return; }
    update(i, g[i] / sstate.scale, sp);
}
