// Option-A ResNet shortcut (He et al.; LDAM-DRW's resnet_cifar LambdaLayer):
//   y = pad_channels(x[:, :, ::2, ::2], pad_lo = (cout - cin) / 2 before, the rest after)
// forward gathers from x (zeros in the padded channels); backward gathers from dy (zeros at the
// dropped odd pixels).
// Read as I, written as O (f32 or f16, src/shaders.rs).

struct Params {
    batch: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, pad_lo: u32,
    stride: u32, beta: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<I>;
@group(0) @binding(1) var<storage, read_write> dst: array<O>;
@group(0) @binding(2) var<uniform> p: Params;

fn put(i: u32, v: f32) {
    if (p.beta != 0.0) { dst[i] = O(f32(dst[i]) + v); } else { dst[i] = O(v); }
}

// One invocation per row: the row's indices are decoded once (an integer division by a
// uniform value is a scalar loop over the lanes on llvmpipe: decoding every element made this
// copy cost as much as a batch-norm pass), then the row is a loop.
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = (wg.x + wg.y * nwg.x) * 256u + lid;   // (b, co, oy)
    if (r >= p.batch * p.cout * p.oh) { return; }
    let oy = r % p.oh;
    let co = (r / p.oh) % p.cout;
    let b = r / (p.oh * p.cout);
    let out = r * p.ow;
    if (co < p.pad_lo || co >= p.pad_lo + p.cin) {
        for (var ox = 0u; ox < p.ow; ox++) { put(out + ox, 0.0); }
        return;
    }
    let src_row = ((b * p.cin + co - p.pad_lo) * p.h + oy * p.stride) * p.w;
    for (var ox = 0u; ox < p.ow; ox++) { put(out + ox, f32(src[src_row + ox * p.stride])); }
}

// One invocation per row of dx. Adding to dx (beta != 0) touches only the kept pixels; writing
// it also zeroes the dropped ones.
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = (wg.x + wg.y * nwg.x) * 256u + lid;   // (b, ci, iy)
    if (r >= p.batch * p.cin * p.h) { return; }
    let iy = r % p.h;
    let ci = (r / p.h) % p.cin;
    let b = r / (p.h * p.cin);
    let out = r * p.w;
    let kept = iy % p.stride == 0u;
    if (p.beta == 0.0) {
        for (var ix = 0u; ix < p.w; ix++) { dst[out + ix] = O(0.0); }
    }
    if (!kept) { return; }
    let src_row = ((b * p.cout + ci + p.pad_lo) * p.oh + iy / p.stride) * p.ow;
    for (var ox = 0u; ox < p.ow; ox++) {
        let i = out + ox * p.stride;
        let v = f32(src[src_row + ox]);
        if (p.beta != 0.0) { dst[i] = O(f32(dst[i]) + v); } else { dst[i] = O(v); }
    }
}
