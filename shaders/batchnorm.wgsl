// Batch norm over NCHW (per channel c, statistics over batch x H x W), PyTorch semantics:
// normalise with the batch mean and biased variance; running_mean/var follow an EMA with the
// unbiased variance. `stats` holds [mean_0..mean_{C-1}, invstd_0..invstd_{C-1}].
// Reductions: one workgroup per channel, each invocation sums a strided slice, a fixed tree
// combines them: deterministic, any count per channel (tested past 2^17).
// Activations (x, y, dy, dx, the residual) are read as I and written as O, f32 or f16
// (src/shaders.rs); statistics, parameters and every sum stay f32.

struct Params {
    batch: u32,
    channels: u32,
    hw: u32,
    relu: u32,
    eps: f32,
    momentum: f32,
    beta: f32,       // 0 overwrite / 1 accumulate, for gradient outputs
    _p: f32,
    count: u32,      // values per channel over every device's batch (backward_dx's divisor)
    pivot_stride: u32,
    res_beta: f32,   // `beta` of the residual's gradient (backward_dx_res4)
    _q1: u32,
}

const WG: u32 = 256u;
var<workgroup> red0: array<f32, WG>;
var<workgroup> red1: array<f32, WG>;

// The scalar kernels below (H*W not a multiple of 4) walk a channel as images x pixels and
// a plane in runs of RUN elements, like the vec4 ones: an integer division by a uniform value
// is a scalar loop over the lanes on llvmpipe, and decoding every element cost as much as the
// read itself.

// `lanes` for scalar planes: whole planes per lane only while a plane is short (each lane's
// loop stays far under llvmpipe's cap on an invocation's iterations per dispatch).
fn lanes1(lid: u32, hw: u32, batch: u32) -> Lanes {
    if (batch >= WG / 4u && hw <= 4096u) { return Lanes(lid, 0u, 1u, WG); }
    let pv = min(hw, WG);
    return Lanes(lid / pv, lid % pv, pv, WG / pv);
}

// `tree(lid)`: every lane has written red0[lid] and red1[lid]; afterwards red0[0] and red1[0]
// hold the workgroup's sums, visible to every lane. It comes from the prelude, with the four
// entry points that call it (`batchnorm_tree.wgsli`: a workgroup-memory tree;
// `batchnorm_tree_sg.wgsli`: subgroup adds). Their bodies are the `*_body` functions below.

// ---- training statistics: stats, running update
@group(0) @binding(0) var<storage, read> x: array<I>;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// The channel's batch statistics and its running-statistics update (unbiased variance).
fn finish_stats(c: u32, mean: f32, var_b: f32, count: u32) {
    stats[c] = mean;
    stats[p.channels + c] = inverseSqrt(var_b + p.eps);
    let unbiased = select(var_b, var_b * f32(count) / f32(count - 1u), count > 1u);
    // An f16 forward that overflowed (inf / NaN statistics) is a step loss scaling skips: it
    // must not poison the running statistics either.
    let bad = 0x7f800000u;
    if ((bitcast<u32>(mean) & bad) == bad || (bitcast<u32>(unbiased) & bad) == bad) { return; }
    running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * mean;
    running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * unbiased;
}

fn batch_stats_body(c: u32, lid: u32) {
    let count = p.batch * p.hw;
    let l = lanes1(lid, p.hw, p.batch);
    var s = 0.0;
    if (l.lb < l.ipi) {
        for (var b = l.lb; b < p.batch; b += l.ipi) {
            let base = (b * p.channels + c) * p.hw;
            for (var v = l.lv; v < p.hw; v += l.pv) { s += f32(x[base + v]); }
        }
    }
    red0[lid] = s;
    red1[lid] = 0.0;
    tree(lid);
    let mean = red0[0] / f32(count);
    workgroupBarrier();
    // second pass: sum of squared deviations (stabler than E[x^2] - mean^2)
    var q = 0.0;
    if (l.lb < l.ipi) {
        for (var b = l.lb; b < p.batch; b += l.ipi) {
            let base = (b * p.channels + c) * p.hw;
            for (var v = l.lv; v < p.hw; v += l.pv) { let d = f32(x[base + v]) - mean; q += d * d; }
        }
    }
    red0[lid] = q;
    tree(lid);
    if (lid == 0u) {
        finish_stats(c, mean, red0[0] / f32(count), count);
    }
}

@compute @workgroup_size(64)
fn eval_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.channels) { return; }
    stats[c] = running_mean[c];
    stats[p.channels + c] = inverseSqrt(running_var[c] + p.eps);
}

// ---- normalise + affine (+ ReLU)
@group(0) @binding(0) var<storage, read> ax: array<I>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read> astats: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<O>;
@group(0) @binding(5) var<uniform> ap: Params;

@compute @workgroup_size(256)
fn apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    let r = run_start(i, ap.hw);
    if (r.x >= ap.batch * ap.channels) { return; }
    let c = r.x % ap.channels;
    let scale = astats[ap.channels + c] * gamma[c];
    let sh = shift[c] - astats[c] * scale;
    let base = r.x * ap.hw;
    for (var k = 0u; k < RUN; k++) {
        let e = r.y + k;
        if (e < ap.hw) {
            var v = fma(f32(ax[base + e]), scale, sh);
            if (ap.relu != 0u) { v = max(v, 0.0); }
            y[base + e] = O(v);
        }
    }
}

// ---- backward: per-channel sums, then dx
// sums = [sum(dyh)_c, sum(dyh * xhat)_c], dyh = dy masked by the fused ReLU.
@group(0) @binding(0) var<storage, read> bx: array<I>;
@group(0) @binding(1) var<storage, read> by: array<I>;
@group(0) @binding(2) var<storage, read> bdy: array<I>;
@group(0) @binding(3) var<storage, read> bstats: array<f32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> dshift: array<f32>;
@group(0) @binding(7) var<uniform> bp: Params;

fn masked_dy(i: u32, relu: u32) -> f32 {
    if (relu != 0u && f32(by[i]) <= 0.0) { return 0.0; }
    return f32(bdy[i]);
}

// Lane 0 after the tree: the channel's two sums, and the parameter gradients (accumulated when
// beta != 0).
fn finish_sums(c: u32) {
    sums[c] = red0[0];
    sums[bp.channels + c] = red1[0];
    if (bp.beta != 0.0) {
        dgamma[c] += red1[0];
        dshift[c] += red0[0];
    } else {
        dgamma[c] = red1[0];
        dshift[c] = red0[0];
    }
}

fn backward_sums_body(c: u32, lid: u32) {
    let count = bp.batch * bp.hw;
    let mean = bstats[c];
    let inv = bstats[bp.channels + c];
    var s0 = 0.0;
    var s1 = 0.0;
    let l = lanes1(lid, bp.hw, bp.batch);
    if (l.lb < l.ipi) {
        for (var b = l.lb; b < bp.batch; b += l.ipi) {
            let base = (b * bp.channels + c) * bp.hw;
            for (var v = l.lv; v < bp.hw; v += l.pv) {
                let g = masked_dy(base + v, bp.relu);
                s0 += g;
                s1 += g * (f32(bx[base + v]) - mean) * inv;
            }
        }
    }
    red0[lid] = s0;
    red1[lid] = s1;
    tree(lid);
    if (lid == 0u) { finish_sums(c); }
}

@group(0) @binding(0) var<storage, read> dx_x: array<I>;
@group(0) @binding(1) var<storage, read> dx_y: array<I>;
@group(0) @binding(2) var<storage, read> dx_dy: array<I>;
@group(0) @binding(3) var<storage, read> dx_stats: array<f32>;
@group(0) @binding(4) var<storage, read> dx_sums: array<f32>;
@group(0) @binding(5) var<storage, read> dx_gamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<O>;
@group(0) @binding(7) var<uniform> dp: Params;

@compute @workgroup_size(256)
fn backward_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let j = (wg.x + wg.y * nwg.x) * WG + lid;
    let r = run_start(j, dp.hw);
    if (r.x >= dp.batch * dp.channels) { return; }
    let c = r.x % dp.channels;
    let count = f32(dp.count);
    let inv = dx_stats[dp.channels + c];
    let m0 = dx_sums[c] / count;
    let m1 = dx_sums[dp.channels + c] / count;
    let gi = dx_gamma[c] * inv;
    for (var k = 0u; k < RUN; k++) {
        let e = r.y + k;
        if (e >= dp.hw) { break; }
        let i = r.x * dp.hw + e;
        let xhat = (f32(dx_x[i]) - dx_stats[c]) * inv;
        var g = f32(dx_dy[i]);
        if (dp.relu != 0u && f32(dx_y[i]) <= 0.0) { g = 0.0; }
        let v = gi * (g - m0 - xhat * m1);
        if (dp.beta != 0.0) { dx[i] = O(f32(dx[i]) + v); } else { dx[i] = O(v); }
    }
}

// ---- vec4 variants (H*W a multiple of 4). llvmpipe turns every storage access into a loop over
// the SIMD lanes, so a vec4 access costs about what a scalar one does: these read four
// elements per access, and the per-channel values once per run of RUN vec4 instead of once per
// element. The reductions give each lane whole vec4 of a plane (no index division per element).

const RUN: u32 = 4u;

// Lane layout of a channel reduction over [batch][hw4] vec4: `pv` lanes along the plane,
// `ipi` images side by side. With a large batch each lane walks whole planes (pv = 1): every
// lane then reads one contiguous stream, which llvmpipe (lanes of one SIMD group read one
// after the other) turns into a few sequential streams instead of one 128-byte piece of every
// plane per SIMD group.
struct Lanes { lb: u32, lv: u32, pv: u32, ipi: u32 }

fn lanes(lid: u32, hw4: u32, batch: u32) -> Lanes {
    if (batch >= WG / 4u) { return Lanes(lid, 0u, 1u, WG); }
    let pv = min(hw4, WG);
    let ipi = WG / pv;
    return Lanes(lid / pv, lid % pv, pv, ipi);
}

fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }

// x of batch_stats4 and apply4 / apply_add4 (`ld_x4` at binding 0) and the residual of
// apply_add4 (`ld_res4` at binding 5) come from the loader file too (see below).

// One pass over x: sums of (x - k) and (x - k)^2 around a pivot k, a value of the channel itself
// (its first element), so the variance does not suffer the cancellation of E[x^2] - mean^2 when
// |mean| >> std. Half the reads of a mean-then-deviations pass.
fn batch_stats4_body(c: u32, lid: u32) {
    let count = p.batch * p.hw;
    let hw4 = p.hw / 4u;
    let l = lanes(lid, hw4, p.batch);
    let k = vec4<f32>(ld_x4(c * hw4).x);
    var s = vec4<f32>(0.0);
    var q = vec4<f32>(0.0);
    if (l.lb < l.ipi) {
        for (var b = l.lb; b < p.batch; b += l.ipi) {
            let base = (b * p.channels + c) * hw4;
            for (var v = l.lv; v < hw4; v += l.pv) {
                let d = ld_x4(base + v) - k;
                s += d;
                q = fma(d, d, q);
            }
        }
    }
    red0[lid] = hsum(s);
    red1[lid] = hsum(q);
    tree(lid);
    if (lid == 0u) {
        let m = red0[0] / f32(count);
        let mean = k.x + m;
        finish_stats(c, mean, max(red1[0] / f32(count) - m * m, 0.0), count);
    }
}

@group(0) @binding(4) var<storage, read_write> y4: array<vec4<O>>;

// Invocation i covers vec4 (or, in the scalar kernels, elements) RUN*k .. RUN*k + RUN - 1 of
// plane pl (= b * C + c).
fn run_start(i: u32, hw4: u32) -> vec2<u32> {
    let cpp = (hw4 + RUN - 1u) / RUN;
    return vec2<u32>(i / cpp, (i % cpp) * RUN);
}

@compute @workgroup_size(256)
fn apply4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    let hw4 = ap.hw / 4u;
    let r = run_start(i, hw4);
    if (r.x >= ap.batch * ap.channels) { return; }
    let c = r.x % ap.channels;
    let scale = astats[ap.channels + c] * gamma[c];
    let sh = shift[c] - astats[c] * scale;
    let base = r.x * hw4;
    for (var k = 0u; k < RUN; k++) {
        let v = r.y + k;
        if (v < hw4) {
            var o = fma(ld_x4(base + v), vec4<f32>(scale), vec4<f32>(sh));
            if (ap.relu != 0u) { o = max(o, vec4<f32>(0.0)); }
            y4[base + v] = vec4<O>(o);
        }
    }
}

// x, y and dy of the vec4 backward kernels (`ld_x4`, `ld_y4`, `ld_dy4` at bindings 0-2) come
// from the loader file: batchnorm_ld4_storage.wgsli, or batchnorm_ld4_texture.wgsli (texture
// mirrors, shader `batchnorm_sg_tex`).

fn masked_dy4(i: u32, relu: u32) -> vec4<f32> {
    let g = ld_dy4(i);
    if (relu != 0u) { return select(g, vec4<f32>(0.0), ld_y4(i) <= vec4<f32>(0.0)); }
    return g;
}

fn backward_sums4_body(c: u32, lid: u32) {
    let hw4 = bp.hw / 4u;
    let mean = bstats[c];
    let inv = bstats[bp.channels + c];
    let l = lanes(lid, hw4, bp.batch);
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    if (l.lb < l.ipi) {
        for (var b = l.lb; b < bp.batch; b += l.ipi) {
            let base = (b * bp.channels + c) * hw4;
            for (var v = l.lv; v < hw4; v += l.pv) {
                let g = masked_dy4(base + v, bp.relu);
                s0 += g;
                s1 = fma(g, (ld_x4(base + v) - vec4<f32>(mean)) * inv, s1);
            }
        }
    }
    red0[lid] = hsum(s0);
    red1[lid] = hsum(s1);
    tree(lid);
    if (lid == 0u) { finish_sums(c); }
}

@group(0) @binding(6) var<storage, read_write> dx4: array<vec4<O>>;

// The input gradient of run element e (vec4), and the ReLU-masked upstream gradient.
fn dx4_at(e: u32, relu: u32, mean: f32, inv: f32, k: f32, m: vec2<f32>) -> array<vec4<f32>, 2> {
    let xhat = (ld_x4(e) - vec4<f32>(mean)) * inv;
    var g = ld_dy4(e);
    if (relu != 0u) { g = select(g, vec4<f32>(0.0), ld_y4(e) <= vec4<f32>(0.0)); }
    return array<vec4<f32>, 2>(k * (g - vec4<f32>(m.x) - xhat * m.y), g);
}

fn put_dx4(e: u32, o: vec4<f32>, beta: f32) {
    if (beta != 0.0) { dx4[e] = vec4<O>(vec4<f32>(dx4[e]) + o); } else { dx4[e] = vec4<O>(o); }
}

@compute @workgroup_size(256)
fn backward_dx4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    let hw4 = dp.hw / 4u;
    let r = run_start(i, hw4);
    if (r.x >= dp.batch * dp.channels) { return; }
    let c = r.x % dp.channels;
    let count = f32(dp.count);
    let inv = dx_stats[dp.channels + c];
    let m = vec2<f32>(dx_sums[c], dx_sums[dp.channels + c]) / count;
    let base = r.x * hw4;
    for (var j = 0u; j < RUN; j++) {
        let v = r.y + j;
        if (v < hw4) {
            let e = base + v;
            put_dx4(e, dx4_at(e, dp.relu, dx_stats[c], inv, dx_gamma[c] * inv, m)[0], dp.beta);
        }
    }
}

// backward_dx4 of the end of a residual block (apply_add4) that also writes the residual's
// gradient, the masked upstream gradient it has in hand: one pass over dy and y instead of two.
// Its eight storage bindings put the parameters at binding 8, hence its own copy of
// backward_dx4's loop: a function shared by both would make backward_dx4 use binding 7 as
// storage and as uniform.
@group(0) @binding(7) var<storage, read_write> dres4: array<vec4<O>>;
@group(0) @binding(8) var<uniform> dq: Params;

@compute @workgroup_size(256)
fn backward_dx_res4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    let hw4 = dq.hw / 4u;
    let r = run_start(i, hw4);
    if (r.x >= dq.batch * dq.channels) { return; }
    let c = r.x % dq.channels;
    let count = f32(dq.count);
    let inv = dx_stats[dq.channels + c];
    let m = vec2<f32>(dx_sums[c], dx_sums[dq.channels + c]) / count;
    let base = r.x * hw4;
    for (var j = 0u; j < RUN; j++) {
        let v = r.y + j;
        if (v < hw4) {
            let e = base + v;
            let og = dx4_at(e, dq.relu, dx_stats[c], inv, dx_gamma[c] * inv, m);
            put_dx4(e, og[0], dq.beta);
            if (dq.res_beta != 0.0) {
                dres4[e] = vec4<O>(vec4<f32>(dres4[e]) + og[1]);
            } else {
                dres4[e] = vec4<O>(og[1]);
            }
        }
    }
}

// ---- normalise + affine + residual add + ReLU (the end of a residual block) in one pass:
// y = max(gamma * xhat + beta + r, 0). Its backward is the ReLU-fused one (the mask reads y).
@group(0) @binding(5) var<storage, read> res: array<I>;
@group(0) @binding(6) var<uniform> rp: Params;

@compute @workgroup_size(256)
fn apply_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    let r = run_start(i, rp.hw);
    if (r.x >= rp.batch * rp.channels) { return; }
    let c = r.x % rp.channels;
    let scale = astats[rp.channels + c] * gamma[c];
    let sh = shift[c] - astats[c] * scale;
    let base = r.x * rp.hw;
    for (var k = 0u; k < RUN; k++) {
        let e = r.y + k;
        if (e < rp.hw) {
            y[base + e] = O(max(fma(f32(ax[base + e]), scale, sh) + f32(res[base + e]), 0.0));
        }
    }
}

@compute @workgroup_size(256)
fn apply_add4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    let hw4 = rp.hw / 4u;
    let cpp = (hw4 + RUN - 1u) / RUN;
    let pl = i / cpp;
    if (pl >= rp.batch * rp.channels) { return; }
    let v0 = (i % cpp) * RUN;
    let c = pl % rp.channels;
    let scale = astats[rp.channels + c] * gamma[c];
    let sh = shift[c] - astats[c] * scale;
    let base = pl * hw4;
    for (var k = 0u; k < RUN; k++) {
        let v = v0 + k;
        if (v < hw4) {
            let o = fma(ld_x4(base + v), vec4<f32>(scale), vec4<f32>(sh)) + ld_res4(base + v);
            y4[base + v] = vec4<O>(max(o, vec4<f32>(0.0)));
        }
    }
}
