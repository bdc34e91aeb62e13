//! The repository checked against itself: the compose files, the
//! Kubernetes example, the alert rules, the protobuf contract, the docs and the dashboard agree
//! with the code and
//! the committed defaults, the service config in the docs is usable, and the
//! workspace's `rust-version` is what its dependencies need.

mod alerts;
mod buf;
mod compose;
mod docs;
mod k8s;
mod rust_version;
mod service_config;

/// Files of the workspace.
mod repo {
    use std::path::PathBuf;

    pub fn root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    /// A file of the workspace as text (a path relative to its root).
    pub fn read(path: &str) -> String {
        let path = path.trim_start_matches("./");
        std::fs::read_to_string(root().join(path))
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }
}
