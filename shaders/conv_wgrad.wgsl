// Weight gradient of a 3x3 kernel: dW[co, ci, ky, kx] = sum over (b, oy, ox) of
// dY[b, co, oy, ox] * X[b, ci, oy*s + ky - pad, ox*s + kx - pad].
// dY is first packed into 64 KiB uniform blocks (`pack_dy`), each holding `ipb` images of a group
// of 16 output channels, [image][co][pixel]; one launch per block. An invocation owns one input
// channel ci and a run of `rpi` output rows of the block, and keeps all 9 taps for the 16 output
// channels (36 vec4, as four `Nine`s). Per 4 output pixels of a row it reads three windows of
// 3*s + 3 input values from storage and 16 vec4 of dY from the uniform block (the block reads,
// one gather each on llvmpipe, are the cost: each now feeds 9 taps), for 576 multiply-adds.
// Its sums go to part[rg, co, ci, ky, kx] (rg = its row run; the first block of a channel group
// writes, later ones add); a reduction over rg gives dW.

struct WgParams {
    cin: u32, h: u32, w: u32, oh: u32,
    pad: u32, rpi: u32, nrg: u32, co0: u32,
    cout: u32, nimg: u32, first: u32, b0: u32,
    owp: u32,   // output width rounded up to 4 (block rows)
    // Where dY's pixels ox..ox+3 of (image li of the launch, channel co0 + m, row oy) are:
    // base + m * dch with base = d0 + li * dimg + oy * drow, in vec4 of the uniform block
    // (plain variant: + ox / 4) or in floats of dY itself (subgroup variant: + ox).
    d0: u32, dimg: u32, drow: u32, dch: u32,
    // dcg: from one group of 16 output channels to the next in dY (the launch's third grid
    // dimension runs over the groups where the variant streams dY; else one group). ow: the
    // output width (pixels ow..owp - 1 of a row are zero).
    dcg: u32, ow: u32, _p2: u32,
}

// Binding 0, the input X, and its row windows come from the input file (conv_wgrad_x1.wgsli:
// scalar reads, any row; conv_wgrad_x4.wgsli: aligned vec4). Binding 1, dY (`wg_dy`), comes
// from the variant files: 64 KiB uniform blocks in the plain variant, dY itself as storage in
// the subgroup ones (conv_wgrad_dyq1.wgsli: scalars; conv_wgrad_dyq4.wgsli: aligned vec4).
@group(0) @binding(2) var<storage, read_write> wg_part: array<f32>;
@group(0) @binding(3) var<uniform> wq: WgParams;

override WSTRIDE: u32 = 1u;   // convolution stride (1 or 2)

// The 9 taps (ky, kx) of 4 output channels.
struct Nine { k00: vec4<f32>, k01: vec4<f32>, k02: vec4<f32>, k10: vec4<f32>, k11: vec4<f32>, k12: vec4<f32>, k20: vec4<f32>, k21: vec4<f32>, k22: vec4<f32> }

// Values x[s*p + kx] (p < 4, kx < 3) of one input row for a run of 4 output pixels.
struct Win { v: array<f32, 12> }

struct Row { ok: bool, base: i32 }

fn row_at(ci_base: i32, iy: i32) -> Row {
    return Row(iy >= 0 && iy < i32(wq.h), ci_base + iy * i32(wq.w));
}

// One channel quad: d0..d3 hold 4 pixels of output channels 4q..4q+3; the rows of their
// transpose (pixel p across the quad) are free in llvmpipe's SIMD-of-lanes layout.
fn quad(d0: vec4<f32>, d1: vec4<f32>, d2: vec4<f32>, d3: vec4<f32>,
        x0: Win, x1: Win, x2: Win, acc: Nine) -> Nine {
    let s = WSTRIDE;
    var a = acc;
    let e0 = vec4<f32>(d0.x, d1.x, d2.x, d3.x);
    let e1 = vec4<f32>(d0.y, d1.y, d2.y, d3.y);
    let e2 = vec4<f32>(d0.z, d1.z, d2.z, d3.z);
    let e3 = vec4<f32>(d0.w, d1.w, d2.w, d3.w);
    a.k00 = fma(e0, vec4<f32>(x0.v[0u]), a.k00);
    a.k01 = fma(e0, vec4<f32>(x0.v[0u + 1u]), a.k01);
    a.k02 = fma(e0, vec4<f32>(x0.v[0u + 2u]), a.k02);
    a.k10 = fma(e0, vec4<f32>(x1.v[0u]), a.k10);
    a.k11 = fma(e0, vec4<f32>(x1.v[0u + 1u]), a.k11);
    a.k12 = fma(e0, vec4<f32>(x1.v[0u + 2u]), a.k12);
    a.k20 = fma(e0, vec4<f32>(x2.v[0u]), a.k20);
    a.k21 = fma(e0, vec4<f32>(x2.v[0u + 1u]), a.k21);
    a.k22 = fma(e0, vec4<f32>(x2.v[0u + 2u]), a.k22);
    a.k00 = fma(e1, vec4<f32>(x0.v[1u * s]), a.k00);
    a.k01 = fma(e1, vec4<f32>(x0.v[1u * s + 1u]), a.k01);
    a.k02 = fma(e1, vec4<f32>(x0.v[1u * s + 2u]), a.k02);
    a.k10 = fma(e1, vec4<f32>(x1.v[1u * s]), a.k10);
    a.k11 = fma(e1, vec4<f32>(x1.v[1u * s + 1u]), a.k11);
    a.k12 = fma(e1, vec4<f32>(x1.v[1u * s + 2u]), a.k12);
    a.k20 = fma(e1, vec4<f32>(x2.v[1u * s]), a.k20);
    a.k21 = fma(e1, vec4<f32>(x2.v[1u * s + 1u]), a.k21);
    a.k22 = fma(e1, vec4<f32>(x2.v[1u * s + 2u]), a.k22);
    a.k00 = fma(e2, vec4<f32>(x0.v[2u * s]), a.k00);
    a.k01 = fma(e2, vec4<f32>(x0.v[2u * s + 1u]), a.k01);
    a.k02 = fma(e2, vec4<f32>(x0.v[2u * s + 2u]), a.k02);
    a.k10 = fma(e2, vec4<f32>(x1.v[2u * s]), a.k10);
    a.k11 = fma(e2, vec4<f32>(x1.v[2u * s + 1u]), a.k11);
    a.k12 = fma(e2, vec4<f32>(x1.v[2u * s + 2u]), a.k12);
    a.k20 = fma(e2, vec4<f32>(x2.v[2u * s]), a.k20);
    a.k21 = fma(e2, vec4<f32>(x2.v[2u * s + 1u]), a.k21);
    a.k22 = fma(e2, vec4<f32>(x2.v[2u * s + 2u]), a.k22);
    a.k00 = fma(e3, vec4<f32>(x0.v[3u * s]), a.k00);
    a.k01 = fma(e3, vec4<f32>(x0.v[3u * s + 1u]), a.k01);
    a.k02 = fma(e3, vec4<f32>(x0.v[3u * s + 2u]), a.k02);
    a.k10 = fma(e3, vec4<f32>(x1.v[3u * s]), a.k10);
    a.k11 = fma(e3, vec4<f32>(x1.v[3u * s + 1u]), a.k11);
    a.k12 = fma(e3, vec4<f32>(x1.v[3u * s + 2u]), a.k12);
    a.k20 = fma(e3, vec4<f32>(x2.v[3u * s]), a.k20);
    a.k21 = fma(e3, vec4<f32>(x2.v[3u * s + 1u]), a.k21);
    a.k22 = fma(e3, vec4<f32>(x2.v[3u * s + 2u]), a.k22);
    return a;
}

fn wstore(rg: u32, co: u32, ci: u32, ky: u32, kx: u32, v: f32) {
    if (co >= wq.cout) { return; }
    let at = (((rg * wq.cout + co) * wq.cin + ci) * 3u + ky) * 3u + kx;
    if (wq.first != 0u) { wg_part[at] = v; } else { wg_part[at] = wg_part[at] + v; }
}

// The first output channel of the invocation's group (set by wgrad_main).
var<private> wco0: u32;

fn wstore4(rg: u32, q: u32, ci: u32, ky: u32, kx: u32, v: vec4<f32>) {
    let co = wco0 + 4u * q;
    wstore(rg, co, ci, ky, kx, v.x);
    wstore(rg, co + 1u, ci, ky, kx, v.y);
    wstore(rg, co + 2u, ci, ky, kx, v.z);
    wstore(rg, co + 3u, ci, ky, kx, v.w);
}

// The 16 vec4 of dY for pixels ox..ox+3 of channels m < 16 (m * qs apart) of the row at
// `base`: `dy16` of the variant file.
struct D16 { m: array<vec4<f32>, 16> }

// The weight-gradient kernel for input channel ci0 and row run rg0 (`live` false: past the
// grid, computes on clamped indices and stores nothing). The row run is clamped on its own:
// in the subgroup variant it is the workgroup's, shared by live and idle lanes alike.
fn wgrad_main(ci0: u32, rg0: u32, cg: u32, live: bool, lane: u32) {
    wco0 = wq.co0 + 16u * cg;
    let ci = select(0u, ci0, live);
    let rg = min(rg0, wq.nrg - 1u);
    let z = vec4<f32>(0.0);
    var n0 = Nine(z, z, z, z, z, z, z, z, z);
    var n1 = n0;
    var n2 = n0;
    var n3 = n0;
    let r_end = min((rg + 1u) * wq.rpi, wq.nimg * wq.oh);
    for (var r = rg * wq.rpi; r < r_end; r++) {
        let li = r / wq.oh;
        let oy = r % wq.oh;
        let iy = i32(oy * WSTRIDE) - i32(wq.pad);
        let ci_base = i32(((wq.b0 + li) * wq.cin + ci) * wq.h * wq.w);
        // Index of (image li, channel 16 cg, row oy) in the block (vec4) or dY (floats).
        let dbase = wq.d0 + cg * wq.dcg + li * wq.dimg + oy * wq.drow;
        // Pixels past ow have dY = 0 (block row padding; masked in the streamed reads): they
        // add nothing.
        let r0 = row_at(ci_base, iy);
        let r1 = row_at(ci_base, iy + 1);
        let r2 = row_at(ci_base, iy + 2);
        var x0 = xrow_begin(r0);
        var x1 = xrow_begin(r1);
        var x2 = xrow_begin(r2);
        for (var ox = 0u; ox < wq.owp; ox += 4u) {
            let w0 = xrow_window(&x0, r0, ox);
            let w1 = xrow_window(&x1, r1, ox);
            let w2 = xrow_window(&x2, r2, ox);
            let e = dy16(dbase, ox, wq.dch, lane);
            n0 = quad(e.m[0], e.m[1], e.m[2], e.m[3], w0, w1, w2, n0);
            n1 = quad(e.m[4], e.m[5], e.m[6], e.m[7], w0, w1, w2, n1);
            n2 = quad(e.m[8], e.m[9], e.m[10], e.m[11], w0, w1, w2, n2);
            n3 = quad(e.m[12], e.m[13], e.m[14], e.m[15], w0, w1, w2, n3);
        }
    }
    if (!live) { return; }
    wstore4(rg, 0u, ci, 0u, 0u, n0.k00);
    wstore4(rg, 0u, ci, 0u, 1u, n0.k01);
    wstore4(rg, 0u, ci, 0u, 2u, n0.k02);
    wstore4(rg, 0u, ci, 1u, 0u, n0.k10);
    wstore4(rg, 0u, ci, 1u, 1u, n0.k11);
    wstore4(rg, 0u, ci, 1u, 2u, n0.k12);
    wstore4(rg, 0u, ci, 2u, 0u, n0.k20);
    wstore4(rg, 0u, ci, 2u, 1u, n0.k21);
    wstore4(rg, 0u, ci, 2u, 2u, n0.k22);
    wstore4(rg, 1u, ci, 0u, 0u, n1.k00);
    wstore4(rg, 1u, ci, 0u, 1u, n1.k01);
    wstore4(rg, 1u, ci, 0u, 2u, n1.k02);
    wstore4(rg, 1u, ci, 1u, 0u, n1.k10);
    wstore4(rg, 1u, ci, 1u, 1u, n1.k11);
    wstore4(rg, 1u, ci, 1u, 2u, n1.k12);
    wstore4(rg, 1u, ci, 2u, 0u, n1.k20);
    wstore4(rg, 1u, ci, 2u, 1u, n1.k21);
    wstore4(rg, 1u, ci, 2u, 2u, n1.k22);
    wstore4(rg, 2u, ci, 0u, 0u, n2.k00);
    wstore4(rg, 2u, ci, 0u, 1u, n2.k01);
    wstore4(rg, 2u, ci, 0u, 2u, n2.k02);
    wstore4(rg, 2u, ci, 1u, 0u, n2.k10);
    wstore4(rg, 2u, ci, 1u, 1u, n2.k11);
    wstore4(rg, 2u, ci, 1u, 2u, n2.k12);
    wstore4(rg, 2u, ci, 2u, 0u, n2.k20);
    wstore4(rg, 2u, ci, 2u, 1u, n2.k21);
    wstore4(rg, 2u, ci, 2u, 2u, n2.k22);
    wstore4(rg, 3u, ci, 0u, 0u, n3.k00);
    wstore4(rg, 3u, ci, 0u, 1u, n3.k01);
    wstore4(rg, 3u, ci, 0u, 2u, n3.k02);
    wstore4(rg, 3u, ci, 1u, 0u, n3.k10);
    wstore4(rg, 3u, ci, 1u, 1u, n3.k11);
    wstore4(rg, 3u, ci, 1u, 2u, n3.k12);
    wstore4(rg, 3u, ci, 2u, 0u, n3.k20);
    wstore4(rg, 3u, ci, 2u, 1u, n3.k21);
    wstore4(rg, 3u, ci, 2u, 2u, n3.k22);
}

// dY into uniform blocks of 4096 vec4: block (image group ig, channel group cg) holds
// [li][co_l][oy][ox < owp] = dY[ig*ipb + li, cg*16 + co_l, oy, ox], zero outside the tensor and
// in the row padding (ow rounded up to owp, a multiple of 4).
struct PdParams {
    batch: u32, cout: u32, ohw: u32, ipb: u32,   // ohw: oh * owp (padded rows)
    cgroups: u32, blocks: u32, ow: u32, owp: u32,
}

// vec4 over pixels when rows are a multiple of 4 pixels (owp = ow): a quarter of the storage
// accesses of a scalar copy.
@group(0) @binding(0) var<storage, read> pd_src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> pd_dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> pd: PdParams;

// Block vec4 e: (source plane b * cout + co, vec4 index in the padded plane, 1 if the plane
// exists / 0 for the zero fill past the batch or the channels).
fn pd_slot(e: u32) -> vec3<u32> {
    let ohw4 = pd.ohw / 4u;
    let blk = e / 4096u;
    let r = e % 4096u;
    let li = r / (ohw4 * 16u);
    let b = (blk / pd.cgroups) * pd.ipb + li;
    let co = (blk % pd.cgroups) * 16u + (r / ohw4) % 16u;
    let ok = li < pd.ipb && b < pd.batch && co < pd.cout;
    return vec3<u32>(b * pd.cout + co, r % ohw4, u32(ok));
}

@compute @workgroup_size(64)
fn pack_dy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let e = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (e >= pd.blocks * 4096u) { return; }
    let sl = pd_slot(e);
    var v = vec4<f32>(0.0);
    if (sl.z != 0u) { v = pd_src[sl.x * (pd.ohw / 4u) + sl.y]; }
    pd_dst[e] = v;
}

// Rows that are no multiple of 4 pixels: four scalar reads per vec4 of the block, zero in the
// row padding.
@group(0) @binding(0) var<storage, read> pdp_src: array<f32>;

@compute @workgroup_size(64)
fn pack_dy_pad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (e >= pd.blocks * 4096u) { return; }
    let sl = pd_slot(e);
    let oy = (4u * sl.y) / pd.owp;
    let ox = (4u * sl.y) % pd.owp;
    var v = vec4<f32>(0.0);
    if (sl.z != 0u) {
        let row = (sl.x * (pd.ohw / pd.owp) + oy) * pd.ow;
        if (ox < pd.ow) { v.x = pdp_src[row + ox]; }
        if (ox + 1u < pd.ow) { v.y = pdp_src[row + ox + 1u]; }
        if (ox + 2u < pd.ow) { v.z = pdp_src[row + ox + 2u]; }
        if (ox + 3u < pd.ow) { v.w = pdp_src[row + ox + 3u]; }
    }
    pd_dst[e] = v;
}
