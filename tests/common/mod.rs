#![allow(dead_code)] // each test binary uses a different part

use std::sync::OnceLock;

use longtail::gpu::Gpu;

/// One device per test binary, chosen by LONGTAIL_BACKEND / LONGTAIL_ADAPTER.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::from_env() {
        Ok(g) => g,
        Err(e) => panic!("tests need a GPU adapter: {e:#}"),
    })
}
