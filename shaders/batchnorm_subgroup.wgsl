// The split batch-norm partials of batchnorm_split.wgsl with the workgroup reduction done by
// subgroup adds (one per subgroup, then one workgroup-memory slot per subgroup, summed in
// subgroup order by lane 0): log2(subgroup size) fewer barriers. Only built where the adapter
// has the `subgroups` feature (naga 30 rejects `enable subgroups;`: the device feature is what
// gates them); no subgroup size is assumed (1 to 128 all work).

// (sum a, sum q) of the workgroup, valid in lane 0.
fn reduce2(a: f32, q: f32, lid: u32, sg: u32, lane: u32, nsg: u32) -> vec2<f32> {
    let sa = subgroupAdd(a);
    let sq = subgroupAdd(q);
    if (lane == 0u) {
        r0[sg] = sa;
        r1[sg] = sq;
    }
    workgroupBarrier();
    var t = vec2<f32>(0.0);
    if (lid == 0u) {
        for (var i = 0u; i < nsg; i++) { t += vec2<f32>(r0[i], r1[i]); }
    }
    return t;
}

@compute @workgroup_size(256)
fn stats_partial_sg(@builtin(workgroup_id) wg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32,
                    @builtin(subgroup_id) sg: u32,
                    @builtin(subgroup_invocation_id) lane: u32,
                    @builtin(num_subgroups) nsg: u32) {
    let v = stats_share(wg.x, wg.y, lid);
    let t = reduce2(v.x, v.y, lid, sg, lane, nsg);
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
    let t = reduce2(v.x, v.y, lid, sg, lane, nsg);
    if (lid == 0u) {
        bpart[(wg.x * bp.splits + wg.y) * 2u] = t.x;
        bpart[(wg.x * bp.splits + wg.y) * 2u + 1u] = t.y;
    }
}
