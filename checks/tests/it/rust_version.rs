//! The workspace's `rust-version` is what its locked dependencies need: no
//! package that a build compiles declares a newer one, so a `cargo update`
//! that raises the bar fails here rather than on a user's older toolchain.
//! "Compiles" as cargo's `--filter-platform` for this host has it: packages
//! behind a cfg that no build sets (loom's `generator` and its Windows
//! crates, under `cfg(loom)`) never build and are left out.

use crate::repo;
use cargo_metadata::{Metadata, MetadataCommand, semver::Version};
use std::process::Command;

/// The host's target triple, as rustc reports it.
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc).arg("-vV").output().expect("rustc runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// A `rust-version` such as "1.89" as a version (1.89.0).
fn version(text: &str) -> Version {
    let mut parts: Vec<&str> = text.split('.').collect();
    parts.resize(3, "0");
    Version::parse(&parts.join(".")).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// `name version (rust-version)` of every locked dependency that declares
/// a newer Rust than `bar`.
fn needing_more_than(metadata: &Metadata, bar: &Version) -> Vec<String> {
    let members = metadata.workspace_members.clone();
    metadata
        .packages
        .iter()
        .filter(|p| !members.contains(&p.id))
        .filter_map(|p| {
            let needs = p.rust_version.as_ref()?;
            (needs > bar).then(|| format!("{} {} ({needs})", p.name, p.version))
        })
        .collect()
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_the_workspace_declares() {
    let manifest: toml::Table = repo::read("Cargo.toml")
        .parse()
        .expect("Cargo.toml is TOML");
    let declared = version(
        manifest["workspace"]["package"]["rust-version"]
            .as_str()
            .expect("[workspace.package] sets rust-version"),
    );
    let metadata = MetadataCommand::new()
        .manifest_path(repo::root().join("Cargo.toml"))
        .other_options(vec!["--locked".into(), "--filter-platform".into(), host()])
        .exec()
        .expect("cargo metadata --locked");

    for member in metadata.workspace_packages() {
        assert_eq!(
            member.rust_version.as_ref(),
            Some(&declared),
            "{} does not inherit rust-version.workspace = true",
            member.name
        );
    }
    let too_new = needing_more_than(&metadata, &declared);
    assert!(
        too_new.is_empty(),
        "locked dependencies need more than rust-version {declared}: {too_new:?}; \
         raise it to the highest, or keep them at versions that build with it"
    );
    // The check sees real requirements: just below the declared version,
    // something needs more.
    let below = Version::new(declared.major, declared.minor - 1, 0);
    assert!(
        !needing_more_than(&metadata, &below).is_empty(),
        "no dependency needs {declared}: rust-version could be lower"
    );
}
