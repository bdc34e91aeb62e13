//! Test tools that are not Rust crates, which `make tools` installs into the
//! project's own folder, never the user's Python or Node or the machine's
//! packages (the Makefile's `tools` target says what and from where).
//! `LIKES_TOOLS_DIR` names another folder than `<workspace>/target/tools`.

use std::path::PathBuf;

/// Where `make tools` puts them.
pub fn dir() -> PathBuf {
    std::env::var_os("LIKES_TOOLS_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tools")),
        PathBuf::from,
    )
}

/// Where the tools' programs are: the virtualenv's, the ones unpacked from
/// Debian's prometheus package, and single programs (buf).
const BIN_DIRS: [&str; 3] = ["venv/bin", "prometheus/usr/bin", "bin"];

/// The tool program `name`. Tests that need one are marked `#[ignore]` with
/// the reason, so a plain `cargo test` reports them ignored; `make test`
/// installs the tools and runs them (`--include-ignored`), and there a
/// missing tool fails the test.
pub fn require(name: &str) -> PathBuf {
    let dir = dir();
    BIN_DIRS
        .iter()
        .map(|bin| dir.join(bin).join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is missing from {}: run `make tools`", dir.display()))
}
