// Dynamic loss scaling for `--precision f16` (PyTorch GradScaler semantics). The backward pass
// is seeded with `scale` instead of 1, so small f16 gradients do not flush to zero; the f32
// master gradients are then `scale` x the true ones. Per step, after the gradients are summed:
//   check:      found = 1 if any gradient is inf or NaN (bit test: WGSL has no isinf/isnan)
//   sgd step_scaled (sgd.wgsl): skipped when found, else uses g / scale
//   update:     found -> scale / 2, clean = 0, skipped + 1; else clean + 1, and scale x 2 after
//               `growth_interval` clean steps; found reset for the next step.
// The state stays on the GPU (no host decision, no sync); the host reads it with the loss.

struct State {
    scale: f32,
    clean: u32,
    found: atomic<u32>,
    skipped: u32,
}

struct Params {
    n: u32,
    growth_interval: u32,
    max_scale: f32,
    _p: u32,
}

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn check(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= p.n) { return; }
    // Exponent all ones: +-inf or NaN.
    if ((bitcast<u32>(g[i]) & 0x7f800000u) == 0x7f800000u) { atomicOr(&state.found, 1u); }
}

@group(0) @binding(0) var<storage, read_write> ustate: State;
@group(0) @binding(1) var<uniform> up: Params;

@compute @workgroup_size(1)
fn update() {
    if (atomicLoad(&ustate.found) != 0u) {
        ustate.scale = max(ustate.scale * 0.5, 6.1e-5);   // f16's smallest normal: never 0
        ustate.clean = 0u;
        ustate.skipped += 1u;
    } else {
        ustate.clean += 1u;
        if (ustate.clean >= up.growth_interval) {
            ustate.scale = min(ustate.scale * 2.0, up.max_scale);
            ustate.clean = 0u;
        }
    }
    atomicStore(&ustate.found, 0u);
}
