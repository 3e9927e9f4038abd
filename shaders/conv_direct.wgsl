// Direct convolution with the weights in a uniform buffer: the forward pass and the input gradient
// of `conv2d` (see src/ops/conv_direct.rs for when it is used and why).
//
// Each invocation computes 16 output channels of PX (4 or 8) neighbouring output pixels of one
// row (4 * PX named vec4 accumulators: llvmpipe keeps dynamically indexed arrays in memory). The
// taps come in rows of KR taps whose input columns are consecutive; per (input channel, tap row)
// the invocation reads one window of (PX - 1) * IS + KR input values from storage, which serves
// all KR taps of all PX pixels, and 4 vec4 of weights per tap from the uniform block. On llvmpipe a
// storage read is a loop over the SIMD lanes and a uniform read one gather, so this keeps both
// kinds of read few per multiply-add.
//
// One dispatch covers one group of 16 output channels and one chunk of input channels (the
// uniform block holds at most 64 KiB of weights); later chunks add into the output (beta = 1).
// The output grid may be a strided sub-grid ("phase class") of the destination: the input
// gradient of a stride-s convolution runs once per class (oy0, ox0), each with only the taps
// that reach it, so no multiply-add is spent on the zeros of the upsampled gradient.

struct Params {
    batch: u32, nch: u32, src_c: u32, src_h: u32,
    src_w: u32, dst_c: u32, dst_h: u32, dst_w: u32,
    chan0: u32, o0: u32, o_end: u32, ni: u32,
    nj: u32, istride: u32, ostride: u32, oy0: u32,
    ox0: u32, nrows: u32, khw: u32, jgroups: u32,
    beta: f32, _p0: f32, _p1: f32, _p2: f32,
    // Tap rows (dy, dx, slot, step): output (i, j) reads input row i * istride + dy, columns
    // j * istride + dx + k for k < KR, with the weights of slot + k * step.
    rows: array<vec4<i32>, 64>,
}

// Binding 0, the input `src`, and its reads come from the window file (conv_direct_win1.wgsli:
// scalars; conv_direct_win4.wgsli: aligned vec4).
@group(0) @binding(1) var<uniform> wu: array<vec4<f32>, 4096>;
// Binding 2, the output `dst`, and the stores come from the output file
// (conv_direct_out1.wgsli: scalars; conv_direct_out4.wgsli: aligned vec4 along the row).
@group(0) @binding(3) var<uniform> p: Params;

override KR: u32 = 3u;   // taps per row
override IS: u32 = 1u;   // input columns between neighbouring output pixels
override PX: u32 = 4u;   // output pixels per invocation: 4 or 8
override R3: u32 = 0u;   // 1: exactly three tap rows of three taps (see tap9)

struct Acc {
    a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
    a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
    a8: vec4<f32>, a9: vec4<f32>, a10: vec4<f32>, a11: vec4<f32>,
    a12: vec4<f32>, a13: vec4<f32>, a14: vec4<f32>, a15: vec4<f32>,
    a16: vec4<f32>, a17: vec4<f32>, a18: vec4<f32>, a19: vec4<f32>,
    a20: vec4<f32>, a21: vec4<f32>, a22: vec4<f32>, a23: vec4<f32>,
    a24: vec4<f32>, a25: vec4<f32>, a26: vec4<f32>, a27: vec4<f32>,
    a28: vec4<f32>, a29: vec4<f32>, a30: vec4<f32>, a31: vec4<f32>,
}

// Window of input values of one tap row: 3 * IS + KR <= 3 * 2 + 7 = 13 values.
struct Win { v: array<f32, 24> }

// Tap k (a constant after inlining) of a row: pixel px reads window value px * IS + k; the 16
// weights of the tap's slot are 4 vec4 of the uniform block.
fn tap(c: ptr<function, Acc>, w: Win, k: u32, slot: i32, lane: u32) {
    let q = wblock(u32(slot) * 4u, lane);
    let w0 = q.w0;
    let w1 = q.w1;
    let w2 = q.w2;
    let w3 = q.w3;
    let v = vec4<f32>(w.v[k], w.v[IS + k], w.v[2u * IS + k], w.v[3u * IS + k]);
    (*c).a0 = fma(vec4<f32>(v.x), w0, (*c).a0);
    (*c).a1 = fma(vec4<f32>(v.x), w1, (*c).a1);
    (*c).a2 = fma(vec4<f32>(v.x), w2, (*c).a2);
    (*c).a3 = fma(vec4<f32>(v.x), w3, (*c).a3);
    (*c).a4 = fma(vec4<f32>(v.y), w0, (*c).a4);
    (*c).a5 = fma(vec4<f32>(v.y), w1, (*c).a5);
    (*c).a6 = fma(vec4<f32>(v.y), w2, (*c).a6);
    (*c).a7 = fma(vec4<f32>(v.y), w3, (*c).a7);
    (*c).a8 = fma(vec4<f32>(v.z), w0, (*c).a8);
    (*c).a9 = fma(vec4<f32>(v.z), w1, (*c).a9);
    (*c).a10 = fma(vec4<f32>(v.z), w2, (*c).a10);
    (*c).a11 = fma(vec4<f32>(v.z), w3, (*c).a11);
    (*c).a12 = fma(vec4<f32>(v.w), w0, (*c).a12);
    (*c).a13 = fma(vec4<f32>(v.w), w1, (*c).a13);
    (*c).a14 = fma(vec4<f32>(v.w), w2, (*c).a14);
    (*c).a15 = fma(vec4<f32>(v.w), w3, (*c).a15);
    if (PX == 8u) {
        let u = vec4<f32>(w.v[4u * IS + k], w.v[5u * IS + k], w.v[6u * IS + k], w.v[7u * IS + k]);
        (*c).a16 = fma(vec4<f32>(u.x), w0, (*c).a16);
        (*c).a17 = fma(vec4<f32>(u.x), w1, (*c).a17);
        (*c).a18 = fma(vec4<f32>(u.x), w2, (*c).a18);
        (*c).a19 = fma(vec4<f32>(u.x), w3, (*c).a19);
        (*c).a20 = fma(vec4<f32>(u.y), w0, (*c).a20);
        (*c).a21 = fma(vec4<f32>(u.y), w1, (*c).a21);
        (*c).a22 = fma(vec4<f32>(u.y), w2, (*c).a22);
        (*c).a23 = fma(vec4<f32>(u.y), w3, (*c).a23);
        (*c).a24 = fma(vec4<f32>(u.z), w0, (*c).a24);
        (*c).a25 = fma(vec4<f32>(u.z), w1, (*c).a25);
        (*c).a26 = fma(vec4<f32>(u.z), w2, (*c).a26);
        (*c).a27 = fma(vec4<f32>(u.z), w3, (*c).a27);
        (*c).a28 = fma(vec4<f32>(u.w), w0, (*c).a28);
        (*c).a29 = fma(vec4<f32>(u.w), w1, (*c).a29);
        (*c).a30 = fma(vec4<f32>(u.w), w2, (*c).a30);
        (*c).a31 = fma(vec4<f32>(u.w), w3, (*c).a31);
    }
}

// A 3x3 kernel's nine taps (three tap rows of three), accumulator by accumulator: each
// accumulator takes the nine multiply-adds of an input channel in a row, in the order of the
// tap-row loop (the same sums to the bit). With 4 * PX vec4 accumulators most live in memory on
// a CPU (llvmpipe: 32 vec4 are 128 SIMD registers); this loads and stores each once per input
// channel instead of once per tap, while the weights and window values, which are only read,
// are what waits in memory.
fn tap9(c: ptr<function, Acc>, x0: Win, x1: Win, x2: Win, s0: i32, s1: i32, s2: i32,
        step: vec3<i32>, lane: u32) {
    let q00 = wblock(u32(s0) * 4u, lane);
    let q01 = wblock(u32(s0 + step.x) * 4u, lane);
    let q02 = wblock(u32(s0 + 2 * step.x) * 4u, lane);
    let q10 = wblock(u32(s1) * 4u, lane);
    let q11 = wblock(u32(s1 + step.y) * 4u, lane);
    let q12 = wblock(u32(s1 + 2 * step.y) * 4u, lane);
    let q20 = wblock(u32(s2) * 4u, lane);
    let q21 = wblock(u32(s2 + step.z) * 4u, lane);
    let q22 = wblock(u32(s2 + 2 * step.z) * 4u, lane);
    let p0 = 0u * IS;
    (*c).a0 = m3(m3(m3((*c).a0, x0, p0, q00.w0, q01.w0, q02.w0),
        x1, p0, q10.w0, q11.w0, q12.w0), x2, p0, q20.w0, q21.w0, q22.w0);
    (*c).a1 = m3(m3(m3((*c).a1, x0, p0, q00.w1, q01.w1, q02.w1),
        x1, p0, q10.w1, q11.w1, q12.w1), x2, p0, q20.w1, q21.w1, q22.w1);
    (*c).a2 = m3(m3(m3((*c).a2, x0, p0, q00.w2, q01.w2, q02.w2),
        x1, p0, q10.w2, q11.w2, q12.w2), x2, p0, q20.w2, q21.w2, q22.w2);
    (*c).a3 = m3(m3(m3((*c).a3, x0, p0, q00.w3, q01.w3, q02.w3),
        x1, p0, q10.w3, q11.w3, q12.w3), x2, p0, q20.w3, q21.w3, q22.w3);
    let p1 = 1u * IS;
    (*c).a4 = m3(m3(m3((*c).a4, x0, p1, q00.w0, q01.w0, q02.w0),
        x1, p1, q10.w0, q11.w0, q12.w0), x2, p1, q20.w0, q21.w0, q22.w0);
    (*c).a5 = m3(m3(m3((*c).a5, x0, p1, q00.w1, q01.w1, q02.w1),
        x1, p1, q10.w1, q11.w1, q12.w1), x2, p1, q20.w1, q21.w1, q22.w1);
    (*c).a6 = m3(m3(m3((*c).a6, x0, p1, q00.w2, q01.w2, q02.w2),
        x1, p1, q10.w2, q11.w2, q12.w2), x2, p1, q20.w2, q21.w2, q22.w2);
    (*c).a7 = m3(m3(m3((*c).a7, x0, p1, q00.w3, q01.w3, q02.w3),
        x1, p1, q10.w3, q11.w3, q12.w3), x2, p1, q20.w3, q21.w3, q22.w3);
    let p2 = 2u * IS;
    (*c).a8 = m3(m3(m3((*c).a8, x0, p2, q00.w0, q01.w0, q02.w0),
        x1, p2, q10.w0, q11.w0, q12.w0), x2, p2, q20.w0, q21.w0, q22.w0);
    (*c).a9 = m3(m3(m3((*c).a9, x0, p2, q00.w1, q01.w1, q02.w1),
        x1, p2, q10.w1, q11.w1, q12.w1), x2, p2, q20.w1, q21.w1, q22.w1);
    (*c).a10 = m3(m3(m3((*c).a10, x0, p2, q00.w2, q01.w2, q02.w2),
        x1, p2, q10.w2, q11.w2, q12.w2), x2, p2, q20.w2, q21.w2, q22.w2);
    (*c).a11 = m3(m3(m3((*c).a11, x0, p2, q00.w3, q01.w3, q02.w3),
        x1, p2, q10.w3, q11.w3, q12.w3), x2, p2, q20.w3, q21.w3, q22.w3);
    let p3 = 3u * IS;
    (*c).a12 = m3(m3(m3((*c).a12, x0, p3, q00.w0, q01.w0, q02.w0),
        x1, p3, q10.w0, q11.w0, q12.w0), x2, p3, q20.w0, q21.w0, q22.w0);
    (*c).a13 = m3(m3(m3((*c).a13, x0, p3, q00.w1, q01.w1, q02.w1),
        x1, p3, q10.w1, q11.w1, q12.w1), x2, p3, q20.w1, q21.w1, q22.w1);
    (*c).a14 = m3(m3(m3((*c).a14, x0, p3, q00.w2, q01.w2, q02.w2),
        x1, p3, q10.w2, q11.w2, q12.w2), x2, p3, q20.w2, q21.w2, q22.w2);
    (*c).a15 = m3(m3(m3((*c).a15, x0, p3, q00.w3, q01.w3, q02.w3),
        x1, p3, q10.w3, q11.w3, q12.w3), x2, p3, q20.w3, q21.w3, q22.w3);
    if (PX == 8u) {
        let p4 = 4u * IS;
        (*c).a16 = m3(m3(m3((*c).a16, x0, p4, q00.w0, q01.w0, q02.w0),
            x1, p4, q10.w0, q11.w0, q12.w0), x2, p4, q20.w0, q21.w0, q22.w0);
        (*c).a17 = m3(m3(m3((*c).a17, x0, p4, q00.w1, q01.w1, q02.w1),
            x1, p4, q10.w1, q11.w1, q12.w1), x2, p4, q20.w1, q21.w1, q22.w1);
        (*c).a18 = m3(m3(m3((*c).a18, x0, p4, q00.w2, q01.w2, q02.w2),
            x1, p4, q10.w2, q11.w2, q12.w2), x2, p4, q20.w2, q21.w2, q22.w2);
        (*c).a19 = m3(m3(m3((*c).a19, x0, p4, q00.w3, q01.w3, q02.w3),
            x1, p4, q10.w3, q11.w3, q12.w3), x2, p4, q20.w3, q21.w3, q22.w3);
        let p5 = 5u * IS;
        (*c).a20 = m3(m3(m3((*c).a20, x0, p5, q00.w0, q01.w0, q02.w0),
            x1, p5, q10.w0, q11.w0, q12.w0), x2, p5, q20.w0, q21.w0, q22.w0);
        (*c).a21 = m3(m3(m3((*c).a21, x0, p5, q00.w1, q01.w1, q02.w1),
            x1, p5, q10.w1, q11.w1, q12.w1), x2, p5, q20.w1, q21.w1, q22.w1);
        (*c).a22 = m3(m3(m3((*c).a22, x0, p5, q00.w2, q01.w2, q02.w2),
            x1, p5, q10.w2, q11.w2, q12.w2), x2, p5, q20.w2, q21.w2, q22.w2);
        (*c).a23 = m3(m3(m3((*c).a23, x0, p5, q00.w3, q01.w3, q02.w3),
            x1, p5, q10.w3, q11.w3, q12.w3), x2, p5, q20.w3, q21.w3, q22.w3);
        let p6 = 6u * IS;
        (*c).a24 = m3(m3(m3((*c).a24, x0, p6, q00.w0, q01.w0, q02.w0),
            x1, p6, q10.w0, q11.w0, q12.w0), x2, p6, q20.w0, q21.w0, q22.w0);
        (*c).a25 = m3(m3(m3((*c).a25, x0, p6, q00.w1, q01.w1, q02.w1),
            x1, p6, q10.w1, q11.w1, q12.w1), x2, p6, q20.w1, q21.w1, q22.w1);
        (*c).a26 = m3(m3(m3((*c).a26, x0, p6, q00.w2, q01.w2, q02.w2),
            x1, p6, q10.w2, q11.w2, q12.w2), x2, p6, q20.w2, q21.w2, q22.w2);
        (*c).a27 = m3(m3(m3((*c).a27, x0, p6, q00.w3, q01.w3, q02.w3),
            x1, p6, q10.w3, q11.w3, q12.w3), x2, p6, q20.w3, q21.w3, q22.w3);
        let p7 = 7u * IS;
        (*c).a28 = m3(m3(m3((*c).a28, x0, p7, q00.w0, q01.w0, q02.w0),
            x1, p7, q10.w0, q11.w0, q12.w0), x2, p7, q20.w0, q21.w0, q22.w0);
        (*c).a29 = m3(m3(m3((*c).a29, x0, p7, q00.w1, q01.w1, q02.w1),
            x1, p7, q10.w1, q11.w1, q12.w1), x2, p7, q20.w1, q21.w1, q22.w1);
        (*c).a30 = m3(m3(m3((*c).a30, x0, p7, q00.w2, q01.w2, q02.w2),
            x1, p7, q10.w2, q11.w2, q12.w2), x2, p7, q20.w2, q21.w2, q22.w2);
        (*c).a31 = m3(m3(m3((*c).a31, x0, p7, q00.w3, q01.w3, q02.w3),
            x1, p7, q10.w3, q11.w3, q12.w3), x2, p7, q20.w3, q21.w3, q22.w3);
    }
}

// a + the three taps of one row at window position t (w0, w1, w2: their weights).
fn m3(a: vec4<f32>, x: Win, t: u32, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>) -> vec4<f32> {
    let b = fma(vec4<f32>(x.v[t + 1u]), w1, fma(vec4<f32>(x.v[t]), w0, a));
    return fma(vec4<f32>(x.v[t + 2u]), w2, b);
}

// The 16 weights (4 vec4) of one tap: `wblock` of the variant file (conv_direct_gather.wgsli
// or conv_direct_subgroup.wgsli).
struct W4 { w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32> }

// The forward / input-gradient kernel for invocation `idx0` (`lane`: its subgroup lane, for the
// subgroup variant). Invocations past the grid run on a clamped index and store nothing: every
// invocation of a subgroup takes the same path through the loops, as subgroup operations need.
fn direct_main(idx0: u32, lane: u32) {
    let live = idx0 < p.batch * p.ni * p.jgroups;
    let idx = select(0u, idx0, live);
    let jg = idx % p.jgroups;
    let bi = idx / p.jgroups;
    let i = bi % p.ni;
    let b = bi / p.ni;
    let j0 = jg * PX;
    let plane = i32(p.src_h * p.src_w);
    let iy0 = i32(i * p.istride);
    let ix0 = i32(j0 * p.istride);
    var cbase = i32(b * p.src_c + p.chan0) * plane;

    let z = vec4<f32>(0.0);
    var c = Acc(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
    if (R3 != 0u) {
        // Three tap rows of three taps: their parameters at constant offsets (a scalar load
        // each on llvmpipe; an index that varies in a loop makes a uniform read a gather).
        let t0 = p.rows[0];
        let t1 = p.rows[1];
        let t2 = p.rows[2];
        let ok0 = iy0 + t0.x >= 0 && iy0 + t0.x < i32(p.src_h);
        let ok1 = iy0 + t1.x >= 0 && iy0 + t1.x < i32(p.src_h);
        let ok2 = iy0 + t2.x >= 0 && iy0 + t2.x < i32(p.src_h);
        for (var ch = 0u; ch < p.nch; ch++) {
            let x0 = window_at(ok0, cbase + (iy0 + t0.x) * i32(p.src_w), ix0 + t0.y);
            let x1 = window_at(ok1, cbase + (iy0 + t1.x) * i32(p.src_w), ix0 + t1.y);
            let x2 = window_at(ok2, cbase + (iy0 + t2.x) * i32(p.src_w), ix0 + t2.y);
            let wb = i32(ch * p.khw);
            let step = vec3<i32>(t0.w, t1.w, t2.w);
            tap9(&c, x0, x1, x2, wb + t0.z, wb + t1.z, wb + t2.z, step, lane);
            cbase += plane;
        }
        if (!live) { return; }
        epilogue(c, b, i, j0);
        return;
    }
    for (var ch = 0u; ch < p.nch; ch++) {
        for (var r = 0u; r < p.nrows; r++) {
            let tr = p.rows[r];
            let iy = iy0 + tr.x;
            let row_ok = iy >= 0 && iy < i32(p.src_h);
            let row = cbase + iy * i32(p.src_w);
            let ix = ix0 + tr.y;
            let w = window_at(row_ok, row, ix);
            let wb = i32(ch * p.khw) + tr.z;
            tap(&c, w, 0u, wb, lane);
            if (KR > 1u) { tap(&c, w, 1u, wb + tr.w, lane); }
            if (KR > 2u) { tap(&c, w, 2u, wb + 2 * tr.w, lane); }
            if (KR > 3u) { tap(&c, w, 3u, wb + 3 * tr.w, lane); }
            if (KR > 4u) { tap(&c, w, 4u, wb + 4 * tr.w, lane); }
            if (KR > 5u) { tap(&c, w, 5u, wb + 5 * tr.w, lane); }
            if (KR > 6u) { tap(&c, w, 6u, wb + 6 * tr.w, lane); }
        }
        cbase += plane;
    }
    if (!live) { return; }
    epilogue(c, b, i, j0);
}

// Packing of the weights into uniform blocks of 4096 vec4 (64 KiB), one per (output group,
// input chunk): block element ((cl * khw + kidx) * CO + ol) = w[o * so + c * sc + kidx] with
// o = group * CO + ol and c = chunk * cch + cl, zero outside the tensor. The forward pass packs
// W[co, ci] (so = Cin*KHW, sc = KHW), the input gradient its transpose (so = KHW, sc = Cin*KHW).
struct PackParams {
    co: u32, cch: u32, khw: u32, nchunks: u32,
    o_total: u32, c_total: u32, so: u32, sc: u32,
    blocks: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<storage, read> pw_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> pw_dst: array<f32>;
@group(0) @binding(2) var<uniform> pp: PackParams;

// One invocation per (block, cl, kidx): the pp.co consecutive values of its output channels, so
// the index decode (integer divisions by uniform values: scalar loops over the lanes on
// llvmpipe) is paid once per pp.co values. pp.co divides the 16384 floats of a block.
@compute @workgroup_size(64)
fn pack_weights(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let q = (wg.y * nwg.x + wg.x) * 64u + lid;
    let per_block = 16384u / pp.co;
    if (q >= pp.blocks * per_block) { return; }
    let blk = q / per_block;
    let rr = q % per_block;
    let group = blk / pp.nchunks;
    let chunk = blk % pp.nchunks;
    let kidx = rr % pp.khw;
    let cl = rr / pp.khw;
    let c = chunk * pp.cch + cl;
    let ok = cl < pp.cch && c < pp.c_total;
    let out = q * pp.co;
    for (var ol = 0u; ol < pp.co; ol++) {
        let o = group * pp.co + ol;
        var v = 0.0;
        if (ok && o < pp.o_total) {
            v = pw_src[o * pp.so + c * pp.sc + kidx];
        }
        pw_dst[out + ol] = v;
    }
}
