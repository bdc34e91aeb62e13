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

/// The tool `name` of the virtualenv, if installed; otherwise says how to
/// install it and returns `None`, except under CI (`CI` set), where a
/// missing tool fails the test instead of skipping it.
pub fn installed(name: &str) -> Option<PathBuf> {
    let path = dir().join("venv/bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI: run `make tools`",
        path.display()
    );
    eprintln!("SKIPPED: {} is not installed (make tools)", path.display());
    None
}
