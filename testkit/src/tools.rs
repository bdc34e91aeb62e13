//! Test tools that are not Rust crates, which `make tools` installs into the
//! project's own folder, never the user's Python or Node: a virtualenv with
//! grpcurl and check-jsonschema (PyPI), and the Compose specification's JSON
//! schema (npm). `LIKES_TOOLS_DIR` names another folder than
//! `<workspace>/target/tools`.

use std::path::PathBuf;

/// Where `make tools` puts them.
pub fn dir() -> PathBuf {
    std::env::var_os("LIKES_TOOLS_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tools")),
        PathBuf::from,
    )
}

/// The tool `name` of the virtualenv. Tests that need one are marked
/// `#[ignore]` with the reason, so a plain `cargo test` reports them
/// ignored; `make test` installs the tools and runs them
/// (`--include-ignored`), and there a missing tool fails the test.
pub fn require(name: &str) -> PathBuf {
    let path = dir().join("venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make tools`",
        path.display()
    );
    path
}
