//! Generates the containerd 2.3 bootstrap messages from `specs/containerd/bootstrap.proto` with
//! the pure-Rust protobuf-codegen (no protoc), at the protobuf version the rest of the shim uses.

use std::env;
use std::io;
use std::path::PathBuf;

fn main() -> io::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(io::Error::other)?);
    let spec_dir = manifest_dir.join("../specs/containerd");
    let proto = spec_dir.join("bootstrap.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    protobuf_codegen::Codegen::new()
        .pure()
        .cargo_out_dir("bootstrap")
        .input(&proto)
        .include(&spec_dir)
        .run()
        .map_err(io::Error::other)
}
