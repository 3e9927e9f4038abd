//! Every WGSL kernel of `shaders/`, embedded at compile time. WGSL has no includes: a shared
//! part lives in a `.wgsli` file and is prepended with `concat!`.

use anyhow::{Result, bail};

/// (name, source) of every shader; `name` is the file stem under `shaders/`.
pub const ALL: &[(&str, &str)] = &[
    ("elementwise", include_str!("../shaders/elementwise.wgsl")),
    ("matmul", include_str!("../shaders/matmul.wgsl")),
    ("conv2d", include_str!("../shaders/conv2d.wgsl")),
    ("conv_direct", include_str!("../shaders/conv_direct.wgsl")),
    ("batchnorm", include_str!("../shaders/batchnorm.wgsl")),
    (
        "batchnorm_split",
        concat!(
            include_str!("../shaders/batchnorm_split_common.wgsli"),
            include_str!("../shaders/batchnorm_split.wgsl")
        ),
    ),
    (
        "batchnorm_subgroup",
        concat!(
            include_str!("../shaders/batchnorm_split_common.wgsli"),
            include_str!("../shaders/batchnorm_subgroup.wgsl")
        ),
    ),
    ("pool", include_str!("../shaders/pool.wgsl")),
    ("shortcut", include_str!("../shaders/shortcut.wgsl")),
    ("normalize", include_str!("../shaders/normalize.wgsl")),
    ("linalg", include_str!("../shaders/linalg.wgsl")),
    ("eigen", include_str!("../shaders/eigen.wgsl")),
    ("reduce", include_str!("../shaders/reduce.wgsl")),
    (
        "cross_entropy",
        include_str!("../shaders/cross_entropy.wgsl"),
    ),
    ("sgd", include_str!("../shaders/sgd.wgsl")),
    ("peak", include_str!("../shaders/peak.wgsl")),
];

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
    let caps = if src.contains("subgroupAdd") {
        naga::valid::Capabilities::SUBGROUP
    } else {
        naga::valid::Capabilities::empty()
    };
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| anyhow::anyhow!("{name}.wgsl: {}", e.emit_to_string(src)))?;
    Ok(())
}
