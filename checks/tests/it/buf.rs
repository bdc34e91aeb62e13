//! The protobuf contract (`buf.yaml`): `buf lint` passes, and `buf breaking`
//! finds nothing against the last release in CHANGELOG.md. A release's
//! commit is its tag `vX.Y.Z` or, in a clone without tags, the commit that
//! added the release's heading to the changelog (so the history is needed:
//! not a shallow clone).

use crate::repo;
use likes_testkit::tools;
use std::process::{Command, Output};

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo::root())
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn buf(args: &[&str]) -> Output {
    run(tools::require("buf").to_str().expect("UTF-8 path"), args)
}

/// The newest released version in CHANGELOG.md (the first `## [x.y.z]`).
fn last_release() -> String {
    repo::read("CHANGELOG.md")
        .lines()
        .filter_map(|line| line.strip_prefix("## ["))
        .filter_map(|rest| rest.split_once(']'))
        .map(|(version, _)| version.to_owned())
        .find(|version| version != "Unreleased")
        .expect("CHANGELOG.md names a release")
}

/// The commit of release `version`.
fn release_commit(version: &str) -> String {
    let tag = run(
        "git",
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("v{version}^{{commit}}"),
        ],
    );
    if tag.status.success() {
        return String::from_utf8_lossy(&tag.stdout).trim().to_owned();
    }
    let heading = format!("## [{version}]");
    let added = run(
        "git",
        &[
            "log",
            "--reverse",
            "--format=%H",
            "-S",
            &heading,
            "--",
            "CHANGELOG.md",
        ],
    );
    String::from_utf8_lossy(&added.stdout)
        .lines()
        .next()
        .unwrap_or_else(|| {
            panic!(
                "no tag v{version} and no commit adding `{heading}` to CHANGELOG.md \
                 (a shallow clone? `git fetch --unshallow --tags`): {}",
                text(&added)
            )
        })
        .to_owned()
}

/// `buf breaking` of the working tree against the proto files of `commit`.
fn breaking_against(commit: &str) -> Output {
    let release = tempfile::tempdir().expect("temp dir");
    let archive = run("git", &["archive", "--format=tar", commit, "proto/proto"]);
    assert!(archive.status.success(), "git archive: {}", text(&archive));
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(release.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("tar runs");
    std::io::Write::write_all(&mut tar.stdin.take().expect("stdin"), &archive.stdout)
        .expect("tar reads the archive");
    assert!(tar.wait().expect("tar ends").success());
    let against = release.path().join("proto/proto");
    buf(&[
        "breaking",
        "--against",
        against.to_str().expect("UTF-8 path"),
    ])
}

#[test]
#[ignore = "needs buf from `make tools`; `make test` runs it"]
fn the_contract_passes_buf_lint() {
    let output = buf(&["lint"]);
    assert!(output.status.success(), "buf lint:\n{}", text(&output));
}

#[test]
#[ignore = "needs buf from `make tools`; `make test` runs it"]
fn the_contract_breaks_nothing_since_the_last_release() {
    let version = last_release();
    let output = breaking_against(&release_commit(&version));
    assert!(
        output.status.success(),
        "buf breaking against {version} (a breaking change needs a new major \
         version, or a new minor one before 1.0, in CHANGELOG.md):\n{}",
        text(&output)
    );
}

/// The check sees a break: 0.2.0 moved the queue's messages out of
/// `likes.v1`, which is what `buf breaking` reports against 0.1.0.
#[test]
#[ignore = "needs buf from `make tools`; `make test` runs it"]
fn buf_breaking_reports_the_messages_that_left_likes_v1_since_0_1_0() {
    let output = breaking_against(&release_commit("0.1.0"));
    assert!(!output.status.success(), "no break reported");
    let mut reported: Vec<_> = text(&output)
        .lines()
        .filter_map(|line| line.split('"').nth(1).map(str::to_owned))
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        ["LikeEvent", "LikeEvent.Action", "LikeEventBatch"],
        "{}",
        text(&output)
    );
}
