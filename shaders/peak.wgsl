// The adapter's own ceilings (`longtail bench --peak`): register-only FMA throughput, streaming
// storage reads and writes, uniform-buffer reads, workgroup-memory reads, and an (almost) empty
// dispatch. Every loop stays far below llvmpipe's 65,535 iterations per invocation and dispatch.

struct Params { n: u32, iters: u32, threads: u32, _p: u32 }

@group(0) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(1) var<uniform> p: Params;

// 8 independent vec4 FMA chains per invocation (enough to hide FMA latency on any GPU and to
// fill AVX lanes on llvmpipe): 64 FLOP per iteration.
@compute @workgroup_size(64)
fn fma_chains(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let s = f32(i & 255u) * 1e-3;
    var a0 = vec4<f32>(s); var a1 = a0 + 0.1; var a2 = a0 + 0.2; var a3 = a0 + 0.3;
    var a4 = a0 + 0.4; var a5 = a0 + 0.5; var a6 = a0 + 0.6; var a7 = a0 + 0.7;
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(1e-3);
    for (var k = 0u; k < p.iters; k++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
    }
    if (i < p.n) {
        out[i] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    }
}

// The same FLOP count with 2 vec4 chains: a CPU adapter maps an f32 op onto one
// SIMD register across lanes, so 8 vec4 chains need 32 registers and spill; 8 floats in flight
// still cover FMA latency there. The ceiling is the better of the two.
@compute @workgroup_size(64)
fn fma_narrow(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let s = f32(i & 255u) * 1e-3;
    var a0 = vec4<f32>(s); var a1 = a0 + 0.1;
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(1e-3);
    // 16 FMA per iteration, half the iterations: a CPU adapter's per-iteration loop overhead
    // (mask and iteration-cap bookkeeping) stays small next to the arithmetic.
    for (var k = 0u; k < p.iters / 2u; k++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c);
    }
    if (i < p.n) {
        out[i] = a0 + a1;
    }
}

// Streaming vec4 writes, grid-stride.
@compute @workgroup_size(256)
fn write_stream(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    for (var i = t; i < p.n; i += p.threads) {
        out[i] = vec4<f32>(f32(i));
    }
}

// An empty launch (the guard is never true): the cost of a dispatch.
@compute @workgroup_size(64)
fn noop(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (p.n == 0xffffffffu && gid.x == 0u) {
        out[0] = vec4<f32>(1.0);
    }
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> q: Params;

// Streaming vec4 reads, grid-stride; one store per invocation keeps the loads alive.
@compute @workgroup_size(256)
fn read_stream(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    var acc = vec4<f32>(0.0);
    for (var i = t; i < q.n; i += q.threads) {
        acc += src[i];
    }
    if (acc.x == 12345.678) { sink[t] = acc; }
}

var<workgroup> tile: array<vec4<f32>, 1024>;

// Workgroup-memory reads: each invocation reads `iters` vec4 at lane-varying addresses.
@compute @workgroup_size(256)
fn wg_read(@builtin(global_invocation_id) gid: vec3<u32>,
           @builtin(local_invocation_index) lid: u32,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    for (var i = lid; i < 1024u; i += 256u) {
        tile[i] = vec4<f32>(f32(i));
    }
    workgroupBarrier();
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < q.iters; k++) {
        acc += tile[(lid * 7u + k) & 1023u];
    }
    if (acc.x == 12345.678) { sink[t] = acc; }
}

@group(0) @binding(0) var<uniform> ublock: array<vec4<f32>, 4096>;
@group(0) @binding(1) var<storage, read_write> usink: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> r: Params;

// Uniform-buffer reads at an address shared by all invocations (how the direct convolutions
// read their weights): `iters` vec4 per invocation from a block of `n` (<= 4096) vec4.
@compute @workgroup_size(256)
fn uniform_read(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < r.iters; k++) {
        acc += ublock[k % r.n];
    }
    if (acc.x == 12345.678) { usink[t] = acc; }
}
