//! Every WGSL kernel of `shaders/`, embedded at compile time. WGSL has no includes: a shared
//! part lives in a `.wgsli` file and is prepended with `concat!`.

use anyhow::{Result, bail};

use crate::tensor::DType;

/// Builds [`ALL`]: each `typed` shader is embedded four times, once per (input, output)
/// element type of its activation tensors. Its source names those types `I` (activations it
/// reads) and `O` (activations it writes); the prelude aliases them to f32 or f16 (with
/// `enable f16;`), and the kernels widen to f32 on load and accumulate in f32. The all-f32
/// variant keeps the plain name; the others are `name:I>O` (see [`typed`]).
macro_rules! shader_table {
    (typed: [$(($tn:literal, $($ts:expr),+)),* $(,)?], plain: [$(($pn:literal, $($ps:expr),+)),* $(,)?] $(,)?) => {
        /// (name, source) of every shader; `name` is the file stem under `shaders/`, plus the
        /// element types for the half-precision variants of typed shaders.
        pub const ALL: &[(&str, &str)] = &[
            $(
                ($tn, concat!("alias I = f32;\nalias O = f32;\n", $($ts),+)),
                (concat!($tn, ":f16>f16"),
                 concat!("enable f16;\nalias I = f16;\nalias O = f16;\n", $($ts),+)),
                (concat!($tn, ":f16>f32"),
                 concat!("enable f16;\nalias I = f16;\nalias O = f32;\n", $($ts),+)),
                (concat!($tn, ":f32>f16"),
                 concat!("enable f16;\nalias I = f32;\nalias O = f16;\n", $($ts),+)),
            )*
            $( ($pn, concat!($($ps),+)), )*
        ];
    };
}

shader_table! {
    typed: [
        ("conv2d", include_str!("../shaders/conv2d.wgsl")),
        (
            "batchnorm",
            include_str!("../shaders/batchnorm_tree.wgsli"),
            include_str!("../shaders/batchnorm_ld4_storage.wgsli"),
            include_str!("../shaders/batchnorm.wgsl")
        ),
        (
            "batchnorm_sg",
            include_str!("../shaders/batchnorm_sg_sum.wgsli"),
            include_str!("../shaders/batchnorm_tree_sg.wgsli"),
            include_str!("../shaders/batchnorm_ld4_storage.wgsli"),
            include_str!("../shaders/batchnorm.wgsl")
        ),
        ("shortcut", include_str!("../shaders/shortcut.wgsl")),
        ("pool", include_str!("../shaders/pool.wgsl")),
        ("reduce", include_str!("../shaders/reduce.wgsl")),
        ("cast", include_str!("../shaders/cast.wgsl")),
        ("elementwise", include_str!("../shaders/elementwise.wgsl")),
    ],
    plain: [
        ("matmul", include_str!("../shaders/matmul.wgsl")),
        (
            "matmul_subgroup",
            include_str!("../shaders/matmul.wgsl"),
            include_str!("../shaders/matmul_subgroup.wgsli")
        ),
        (
            "conv_direct",
            include_str!("../shaders/conv_direct_gather.wgsli"),
            include_str!("../shaders/conv_direct_win1.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_r3",
            include_str!("../shaders/conv_direct_gather.wgsli"),
            include_str!("../shaders/conv_direct_win1.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_v4",
            include_str!("../shaders/conv_direct_gather.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_v4_r3",
            include_str!("../shaders/conv_direct_gather.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_v4o4",
            include_str!("../shaders/conv_direct_gather.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out4.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_v4o4_r3",
            include_str!("../shaders/conv_direct_gather.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out4.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_win1.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_r3",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_win1.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_v4",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_v4_r3",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_v4o4",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out4.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_v4o4_r3",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_win4.wgsli"),
            include_str!("../shaders/conv_direct_out4.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_t",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_wint.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_t_r3",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_wint.wgsli"),
            include_str!("../shaders/conv_direct_out1.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_to4",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_wint.wgsli"),
            include_str!("../shaders/conv_direct_out4.wgsli"),
            include_str!("../shaders/conv_direct_rows.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_direct_subgroup_to4_r3",
            include_str!("../shaders/conv_direct_subgroup.wgsli"),
            include_str!("../shaders/conv_direct_wint.wgsli"),
            include_str!("../shaders/conv_direct_out4.wgsli"),
            include_str!("../shaders/conv_direct_nine.wgsli"),
            include_str!("../shaders/conv_direct.wgsl")
        ),
        (
            "conv_wgrad",
            include_str!("../shaders/conv_wgrad_block.wgsli"),
            include_str!("../shaders/conv_wgrad_x1_storage.wgsli"),
            include_str!("../shaders/conv_wgrad_x1.wgsli"),
            include_str!("../shaders/conv_wgrad.wgsl")
        ),
        (
            "conv_wgrad_subgroup",
            include_str!("../shaders/conv_wgrad_subgroup.wgsli"),
            include_str!("../shaders/conv_wgrad_dyq1.wgsli"),
            include_str!("../shaders/conv_wgrad_x1_storage.wgsli"),
            include_str!("../shaders/conv_wgrad_x1.wgsli"),
            include_str!("../shaders/conv_wgrad.wgsl")
        ),
        (
            "conv_wgrad_subgroup_v4",
            include_str!("../shaders/conv_wgrad_subgroup.wgsli"),
            include_str!("../shaders/conv_wgrad_dyq4.wgsli"),
            include_str!("../shaders/conv_wgrad_x4_storage.wgsli"),
            include_str!("../shaders/conv_wgrad_x4.wgsli"),
            include_str!("../shaders/conv_wgrad.wgsl")
        ),
        (
            "conv_wgrad_subgroup_t1",
            include_str!("../shaders/conv_wgrad_subgroup.wgsli"),
            include_str!("../shaders/conv_wgrad_texel.wgsli"),
            include_str!("../shaders/conv_wgrad_x1_texture.wgsli"),
            include_str!("../shaders/conv_wgrad_dyq1t.wgsli"),
            include_str!("../shaders/conv_wgrad_x1.wgsli"),
            include_str!("../shaders/conv_wgrad.wgsl")
        ),
        (
            "conv_wgrad_subgroup_t4",
            include_str!("../shaders/conv_wgrad_subgroup.wgsli"),
            include_str!("../shaders/conv_wgrad_texel.wgsli"),
            include_str!("../shaders/conv_wgrad_x4_texture.wgsli"),
            include_str!("../shaders/conv_wgrad_dyq4t.wgsli"),
            include_str!("../shaders/conv_wgrad_x4.wgsli"),
            include_str!("../shaders/conv_wgrad.wgsl")
        ),
        (
            "batchnorm_sg_tex",
            include_str!("../shaders/batchnorm_ld4_texture.wgsli"),
            include_str!("../shaders/batchnorm_sg_sum.wgsli"),
            include_str!("../shaders/batchnorm_tree_sg.wgsli"),
            include_str!("../shaders/batchnorm.wgsl")
        ),
        (
            "batchnorm_split",
            include_str!("../shaders/batchnorm_split_common.wgsli"),
            include_str!("../shaders/batchnorm_split.wgsl")
        ),
        (
            "batchnorm_subgroup",
            include_str!("../shaders/batchnorm_split_common.wgsli"),
            include_str!("../shaders/batchnorm_sg_sum.wgsli"),
            include_str!("../shaders/batchnorm_subgroup.wgsl")
        ),
        ("normalize", include_str!("../shaders/normalize.wgsl")),
        ("linalg", include_str!("../shaders/linalg.wgsl")),
        ("eigen", include_str!("../shaders/eigen.wgsl")),
        ("cross_entropy", include_str!("../shaders/cross_entropy.wgsl")),
        ("sgd", include_str!("../shaders/sgd.wgsl")),
        ("loss_scale", include_str!("../shaders/loss_scale.wgsl")),
        ("peak", include_str!("../shaders/peak.wgsl")),
    ],
}

fn type_name(t: DType) -> Result<&'static str> {
    match t {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::U32 => bail!("activations are f32 or f16, not u32"),
    }
}

/// The variant of typed shader `base` that reads activations of type `input` and writes
/// `output` (the plain name for f32 to f32).
pub fn typed(base: &str, input: DType, output: DType) -> Result<&'static str> {
    let name = if input == DType::F32 && output == DType::F32 {
        base.to_string()
    } else {
        format!("{base}:{}>{}", type_name(input)?, type_name(output)?)
    };
    match ALL.iter().find(|(n, _)| *n == name) {
        Some((n, _)) => Ok(n),
        None => bail!("no shader {name:?}: {base} has no variant for {input:?} -> {output:?}"),
    }
}

/// The WGSL source of shader `name`.
pub fn source(name: &str) -> Result<&'static str> {
    match ALL.iter().find(|(n, _)| *n == name) {
        Some((_, s)) => Ok(s),
        None => bail!("no shader named {name:?} is embedded"),
    }
}

/// Parse and validate one WGSL source with naga, as the device would.
pub fn validate(name: &str, src: &str) -> Result<()> {
    let module = naga::front::wgsl::parse_str(src)
        .map_err(|e| anyhow::anyhow!("{name}.wgsl: {}", e.emit_to_string(src)))?;
    // Shaders that enable subgroups are only built on adapters with the feature.
    let mut caps = naga::valid::Capabilities::empty();
    if src.contains("subgroupAdd") || src.contains("subgroupBroadcast") {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    // Half-precision variants are only built on adapters with shader-f16.
    if src.starts_with("enable f16;") {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| anyhow::anyhow!("{name}.wgsl: {}", e.emit_to_string(src)))?;
    Ok(())
}
