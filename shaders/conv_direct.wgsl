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

// ---------------------------------------------------------------------------------------------
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

@group(0) @binding(0) var<storage, read> wg_x: array<f32>;
// Binding 1, dY (`wg_dy`), comes from the variant file: 64 KiB uniform blocks in the plain
// variant, dY itself as storage in the subgroup one.
@group(0) @binding(2) var<storage, read_write> wg_part: array<f32>;
@group(0) @binding(3) var<uniform> wq: WgParams;

override WSTRIDE: u32 = 1u;   // convolution stride (1 or 2)

// The 9 taps (ky, kx) of 4 output channels.
struct Nine { k00: vec4<f32>, k01: vec4<f32>, k02: vec4<f32>, k10: vec4<f32>, k11: vec4<f32>, k12: vec4<f32>, k20: vec4<f32>, k21: vec4<f32>, k22: vec4<f32> }

fn wld(row_ok: bool, row: i32, ix: i32) -> f32 {
    let ok = row_ok && ix >= 0 && ix < i32(wq.w);
    return select(0.0, wg_x[u32(select(0, row + ix, ok))], ok);
}

// Windows x[s*p + kx] (p < 4, kx < 3) of one input row, slid along the row: neighbouring
// 4-pixel steps share the last 3 - s values of a window (2 at stride 1), which move to its
// front instead of being read again. `fill` reads values t0..t1-1 of the window at column ix.
struct Row { ok: bool, base: i32 }

fn row_at(ci_base: i32, iy: i32) -> Row {
    return Row(iy >= 0 && iy < i32(wq.h), ci_base + iy * i32(wq.w));
}

fn fill(x: ptr<function, Win>, r: Row, ix: i32, t0: u32, t1: u32) {
    for (var t = t0; t < t1; t++) {
        (*x).v[t] = wld(r.ok, r.base, ix + i32(t));
    }
}

fn slide(x: ptr<function, Win>) {
    for (var t = 0u; t < 3u - WSTRIDE; t++) {
        (*x).v[t] = (*x).v[t + 4u * WSTRIDE];
    }
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
        let keep = 3u - WSTRIDE;
        var x0: Win;
        var x1: Win;
        var x2: Win;
        fill(&x0, r0, -i32(wq.pad), 0u, keep);
        fill(&x1, r1, -i32(wq.pad), 0u, keep);
        fill(&x2, r2, -i32(wq.pad), 0u, keep);
        for (var ox = 0u; ox < wq.owp; ox += 4u) {
            if (ox > 0u) {
                slide(&x0);
                slide(&x1);
                slide(&x2);
            }
            let ix = i32(ox * WSTRIDE) - i32(wq.pad);
            fill(&x0, r0, ix, keep, 3u * WSTRIDE + 3u);
            fill(&x1, r1, ix, keep, 3u * WSTRIDE + 3u);
            fill(&x2, r2, ix, keep, 3u * WSTRIDE + 3u);
            let e = dy16(dbase, ox, wq.dch, lane);
            n0 = quad(e.m[0], e.m[1], e.m[2], e.m[3], x0, x1, x2, n0);
            n1 = quad(e.m[4], e.m[5], e.m[6], e.m[7], x0, x1, x2, n1);
            n2 = quad(e.m[8], e.m[9], e.m[10], e.m[11], x0, x1, x2, n2);
            n3 = quad(e.m[12], e.m[13], e.m[14], e.m[15], x0, x1, x2, n3);
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
