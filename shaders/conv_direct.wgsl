// Direct convolution with the weights in a uniform buffer: the forward pass and the input gradient
// of `conv2d` (see src/ops/conv_direct.rs for when it is used and why).
//
// Each invocation computes 16 output channels of PX (4, 8 or 16) neighbouring output pixels of
// one row (4 * PX named vec4 accumulators: llvmpipe keeps dynamically indexed arrays in memory). The
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
override PX: u32 = 4u;   // output pixels per invocation: 4, 8 or (nine-tap body only) 16

struct Acc {
    a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
    a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
    a8: vec4<f32>, a9: vec4<f32>, a10: vec4<f32>, a11: vec4<f32>,
    a12: vec4<f32>, a13: vec4<f32>, a14: vec4<f32>, a15: vec4<f32>,
    a16: vec4<f32>, a17: vec4<f32>, a18: vec4<f32>, a19: vec4<f32>,
    a20: vec4<f32>, a21: vec4<f32>, a22: vec4<f32>, a23: vec4<f32>,
    a24: vec4<f32>, a25: vec4<f32>, a26: vec4<f32>, a27: vec4<f32>,
    a28: vec4<f32>, a29: vec4<f32>, a30: vec4<f32>, a31: vec4<f32>,
    a32: vec4<f32>, a33: vec4<f32>, a34: vec4<f32>, a35: vec4<f32>,
    a36: vec4<f32>, a37: vec4<f32>, a38: vec4<f32>, a39: vec4<f32>,
    a40: vec4<f32>, a41: vec4<f32>, a42: vec4<f32>, a43: vec4<f32>,
    a44: vec4<f32>, a45: vec4<f32>, a46: vec4<f32>, a47: vec4<f32>,
    a48: vec4<f32>, a49: vec4<f32>, a50: vec4<f32>, a51: vec4<f32>,
    a52: vec4<f32>, a53: vec4<f32>, a54: vec4<f32>, a55: vec4<f32>,
    a56: vec4<f32>, a57: vec4<f32>, a58: vec4<f32>, a59: vec4<f32>,
    a60: vec4<f32>, a61: vec4<f32>, a62: vec4<f32>, a63: vec4<f32>,
}

// Window of input values of one tap row: (PX - 1) * IS + KR <= 15 * 1 + 3 = 18 (nine-tap body)
// or 7 * 2 + 7 = 21 values (any kernel, PX 8).
struct Win { v: array<f32, 24> }

// The 16 weights (4 vec4) of one tap: `wblock` of the variant file (conv_direct_gather.wgsli
// or conv_direct_subgroup.wgsli).
struct W4 { w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32> }
// Two taps' weights: `wblock2` of the variant file.
struct W8 { a: W4, b: W4 }

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
    let cbase = i32(b * p.src_c + p.chan0) * plane;

    let z = vec4<f32>(0.0);
    var c = Acc(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z,
                z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
    // The multiply-adds over the launch's input channels: `channels` of the taps file
    // (conv_direct_rows.wgsli: any kernel, a loop over tap rows; conv_direct_nine.wgsli: a 3x3
    // kernel's nine taps per accumulator in a row).
    channels(&c, cbase, plane, iy0, ix0, lane);
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
