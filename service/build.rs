//! Says so at build time when the workspace's `--cfg tokio_unstable`
//! (`.cargo/config.toml`) did not reach the build: a `RUSTFLAGS` variable
//! replaces that file's flags, and the binaries then keep tokio's LIFO slot
//! (see `src/runtime.rs`). A warning, not an error: such a build is correct,
//! only slower.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if std::env::var_os("CARGO_CFG_TOKIO_UNSTABLE").is_none() {
        println!(
            "cargo:warning=built without --cfg tokio_unstable (a RUSTFLAGS variable replaces \
             .cargo/config.toml's flags): the binaries keep tokio's LIFO slot, about 10% fewer likes/s"
        );
    }
}
