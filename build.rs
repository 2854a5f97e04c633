//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! the tonic clients, and the service traits when the `server` feature is on.
//! The encoded descriptor set is written next to the code and embedded by
//! `src/api/mod.rs` for reflection and the JSON gateway.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "piqchat/inbox/v1/common.proto",
    "piqchat/inbox/v1/info.proto",
    "piqchat/inbox/v1/exchanges.proto",
    "piqchat/inbox/v1/parcels.proto",
    "piqchat/inbox/v1/accounts.proto",
    "piqchat/inbox/v1/backups.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    // The decoded form drops extension options such as `google.api.http`;
    // the encoded bytes keep them, and those are what the gateway reads.
    let encoded = compiler.encode_file_descriptor_set();
    fs::write(out.join("piqchat_descriptor.bin"), &encoded)?;

    let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())?;
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not tonic's INTERNAL.
        .codec_path("crate::codec::ProtoCodec")
        .build_client(true)
        // A client-only build has no use for the service traits.
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
