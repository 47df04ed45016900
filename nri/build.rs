//! Generates the NRI message types and ttrpc service bindings from
//! `specs/nri/api.proto` with the pure-Rust ttrpc-codegen (no protoc).

use std::env;
use std::fs;
use std::io;
use std::path::PathBuf;

fn main() -> io::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(io::Error::other)?);
    let spec_dir = manifest_dir.join("../specs/nri");
    let proto = spec_dir.join("api.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    let gen_dir = out_dir.join("gen");
    fs::create_dir_all(&gen_dir)?;

    ttrpc_codegen::Codegen::new()
        .out_dir(&gen_dir)
        .input(&proto)
        .include(&spec_dir)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()?;

    // The generated files start with inner attributes, which `include!` does
    // not accept at the top level. Wrapping each file in an inline module
    // keeps them valid, and lets lib.rs put lint allowances on the parent.
    let mut combined = String::new();
    for module in ["api", "api_ttrpc"] {
        let text = fs::read_to_string(gen_dir.join(format!("{module}.rs")))?;
        combined.push_str(&format!("pub mod {module} {{\n{text}\n}}\n"));
    }
    fs::write(out_dir.join("nri_generated.rs"), combined)
}
