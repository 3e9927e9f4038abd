// The split batch-norm partials of batchnorm_split.wgsl with the workgroup reduction done by
// subgroup adds (`sg_sum2`, batchnorm_sg_sum.wgsli). Only built where the adapter has the
// `subgroups` feature.

@compute @workgroup_size(256)
fn stats_partial_sg(@builtin(workgroup_id) wg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32,
                    @builtin(subgroup_id) sg: u32,
                    @builtin(subgroup_invocation_id) lane: u32,
                    @builtin(num_subgroups) nsg: u32) {
    let v = stats_share(wg.x, wg.y, lid);
    let t = sg_sum2(v.x, v.y, lid, sg, lane, nsg);
    if (lid == 0u) {
        part[(wg.x * p.splits + wg.y) * 2u] = t.x;
        part[(wg.x * p.splits + wg.y) * 2u + 1u] = t.y;
    }
}

@compute @workgroup_size(256)
fn backward_partial_sg(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32,
                       @builtin(subgroup_id) sg: u32,
                       @builtin(subgroup_invocation_id) lane: u32,
                       @builtin(num_subgroups) nsg: u32) {
    let v = backward_share(wg.x, wg.y, lid);
    let t = sg_sum2(v.x, v.y, lid, sg, lane, nsg);
    if (lid == 0u) {
        bpart[(wg.x * bp.splits + wg.y) * 2u] = t.x;
        bpart[(wg.x * bp.splits + wg.y) * 2u + 1u] = t.y;
    }
}
