//! Every shader parses and validates with naga, and every file in shaders/ is embedded.

use longtail::shaders;

#[test]
fn every_shader_validates_with_naga() {
    assert!(!shaders::ALL.is_empty());
    for (name, src) in shaders::ALL {
        if let Err(e) = shaders::validate(name, src) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_shader_file_is_embedded() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                shaders::ALL.iter().any(|(n, _)| *n == stem),
                "{} is not listed in src/shaders.rs",
                path.display()
            );
        }
    }
}

#[test]
fn validation_rejects_a_broken_shader() {
    let bad = "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }";
    assert!(shaders::validate("bad", bad).is_err());
}
