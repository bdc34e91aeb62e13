//! Compiles `likes.proto` with the protoc shipped by `protoc-bin-vendored`, so no
//! system protoc is needed, and writes the descriptor set that reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("likes_descriptor.bin"))
        .codec_path("crate::codec::LikesCodec")
        .compile_with_config(config, &["proto/likes/v1/likes.proto"], &["proto"])?;
    // The service's internal messages: compiled apart, so reflection (which
    // serves the descriptor set above) shows only the public API.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_with_config(
            config,
            &[
                "proto/likes/events/v1/counts.proto",
                "proto/likes/events/v1/events.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
