// Batch norm reductions shaped for GPUs: each channel's sums are split over `splits`
// workgroups (images s, s + S, s + 2S, ...), so a layer of 16 channels still fills 100+
// compute units; a per-channel finish adds the partials in a fixed order (deterministic).
// The fused kernels of batchnorm.wgsl run one workgroup per channel instead (best on CPUs).
// Statistics use the same pivot as batch_stats4 (the channel's first element) so the one-pass
// variance does not cancel when |mean| >> std.

fn tree(lid: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            r0[lid] += r0[lid + s];
            r1[lid] += r1[lid + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn stats_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = stats_share(wg.x, wg.y, lid);
    r0[lid] = t.x;
    r1[lid] = t.y;
    tree(lid);
    if (lid == 0u) {
        part[(wg.x * p.splits + wg.y) * 2u] = r0[0];
        part[(wg.x * p.splits + wg.y) * 2u + 1u] = r1[0];
    }
}

@group(0) @binding(0) var<storage, read> fpiv: array<f32>;
@group(0) @binding(1) var<storage, read> fpart: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(5) var<uniform> fp: Params;

@compute @workgroup_size(64)
fn stats_finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= fp.channels) { return; }
    var a = 0.0;
    var q = 0.0;
    for (var s = 0u; s < fp.splits; s++) {
        a += fpart[(c * fp.splits + s) * 2u];
        q += fpart[(c * fp.splits + s) * 2u + 1u];
    }
    let count = fp.count;
    let m = a / f32(count);
    let mean = fpiv[c * fp.pivot_stride] + m;
    let var_b = max(q / f32(count) - m * m, 0.0);
    stats[c] = mean;
    stats[fp.channels + c] = inverseSqrt(var_b + fp.eps);
    let unbiased = select(var_b, var_b * f32(count) / f32(count - 1u), count > 1u);
    running_mean[c] = (1.0 - fp.momentum) * running_mean[c] + fp.momentum * mean;
    running_var[c] = (1.0 - fp.momentum) * running_var[c] + fp.momentum * unbiased;
}

// ---- several devices: each channel's first value, to be averaged over the devices into the
// shared pivot
@group(0) @binding(0) var<storage, read> px: array<f32>;
@group(0) @binding(1) var<storage, read_write> pout: array<f32>;
@group(0) @binding(2) var<uniform> pp: Params;

@compute @workgroup_size(64)
fn pivot(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= pp.channels) { return; }
    pout[c] = px[c * pp.hw];
}

// ---- backward: the partials, then the per-channel finish
@compute @workgroup_size(256)
fn backward_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = backward_share(wg.x, wg.y, lid);
    r0[lid] = t.x;
    r1[lid] = t.y;
    tree(lid);
    if (lid == 0u) {
        bpart[(wg.x * bp.splits + wg.y) * 2u] = r0[0];
        bpart[(wg.x * bp.splits + wg.y) * 2u + 1u] = r1[0];
    }
}

@group(0) @binding(0) var<storage, read> spart: array<f32>;
@group(0) @binding(1) var<storage, read_write> sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> dshift: array<f32>;
@group(0) @binding(4) var<uniform> sp: Params;

@compute @workgroup_size(64)
fn backward_finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= sp.channels) { return; }
    var s0 = 0.0;
    var s1 = 0.0;
    for (var s = 0u; s < sp.splits; s++) {
        s0 += spart[(c * sp.splits + s) * 2u];
        s1 += spart[(c * sp.splits + s) * 2u + 1u];
    }
    sums[c] = s0;
    sums[sp.channels + c] = s1;
    if (sp.beta != 0.0) {
        dgamma[c] += s1;
        dshift[c] += s0;
    } else {
        dgamma[c] = s1;
        dshift[c] = s0;
    }
}
