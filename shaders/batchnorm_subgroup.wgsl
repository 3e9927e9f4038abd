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

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> part: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn stats_partial_sg(@builtin(workgroup_id) wg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32,
                    @builtin(subgroup_id) sg: u32,
                    @builtin(subgroup_invocation_id) lane: u32,
                    @builtin(num_subgroups) nsg: u32) {
    let c = wg.x;
    let s = wg.y;
    let k = x[c * p.hw];
    var a = 0.0;
    var q = 0.0;
    for (var i = lid; i < split_count(s, p); i += WG) {
        let d = x[split_elem(c, s, i, p)] - k;
        a += d;
        q = fma(d, d, q);
    }
    let t = reduce2(a, q, lid, sg, lane, nsg);
    if (lid == 0u) {
        part[(c * p.splits + s) * 2u] = t.x;
        part[(c * p.splits + s) * 2u + 1u] = t.y;
    }
}

@group(0) @binding(0) var<storage, read> bx: array<f32>;
@group(0) @binding(1) var<storage, read> by: array<f32>;
@group(0) @binding(2) var<storage, read> bdy: array<f32>;
@group(0) @binding(3) var<storage, read> bstats: array<f32>;
@group(0) @binding(4) var<storage, read_write> bpart: array<f32>;
@group(0) @binding(5) var<uniform> bp: Params;

@compute @workgroup_size(256)
fn backward_partial_sg(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32,
                       @builtin(subgroup_id) sg: u32,
                       @builtin(subgroup_invocation_id) lane: u32,
                       @builtin(num_subgroups) nsg: u32) {
    let c = wg.x;
    let s = wg.y;
    let mean = bstats[c];
    let inv = bstats[bp.channels + c];
    var s0 = 0.0;
    var s1 = 0.0;
    for (var i = lid; i < split_count(s, bp); i += WG) {
        let e = split_elem(c, s, i, bp);
        var g = bdy[e];
        if (bp.relu != 0u && by[e] <= 0.0) { g = 0.0; }
        s0 += g;
        s1 = fma(g, (bx[e] - mean) * inv, s1);
    }
    let t = reduce2(s0, s1, lid, sg, lane, nsg);
    if (lid == 0u) {
        bpart[(c * bp.splits + s) * 2u] = t.x;
        bpart[(c * bp.splits + s) * 2u + 1u] = t.y;
    }
}
