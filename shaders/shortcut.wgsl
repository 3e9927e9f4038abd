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

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= p.batch * p.cout * p.oh * p.ow) { return; }
    let ow = i % p.ow;
    let oh = (i / p.ow) % p.oh;
    let co = (i / (p.ow * p.oh)) % p.cout;
    let b = i / (p.ow * p.oh * p.cout);
    var v = 0.0;
    if (co >= p.pad_lo && co < p.pad_lo + p.cin) {
        let ci = co - p.pad_lo;
        v = f32(src[((b * p.cin + ci) * p.h + oh * p.stride) * p.w + ow * p.stride]);
    }
    put(i, v);
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (i >= p.batch * p.cin * p.h * p.w) { return; }
    let iw = i % p.w;
    let ih = (i / p.w) % p.h;
    let ci = (i / (p.w * p.h)) % p.cin;
    let b = i / (p.w * p.h * p.cin);
    var v = 0.0;
    if (ih % p.stride == 0u && iw % p.stride == 0u) {
        let oh = ih / p.stride;
        let ow = iw / p.stride;
        if (oh < p.oh && ow < p.ow) {
            v = f32(src[((b * p.cout + ci + p.pad_lo) * p.oh + oh) * p.ow + ow]);
        }
    }
    put(i, v);
}
