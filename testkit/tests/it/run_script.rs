//! `scripts/run.sh` (`make run`), with a stand-in `cargo` and stand-in
//! binaries: it must run the binaries where cargo puts them.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

fn executable(path: &Path, script: &str) -> anyhow::Result<()> {
    std::fs::write(path, script)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[test]
fn make_run_starts_the_binaries_from_cargo_target_dir() -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("likes-run-{}", uuid::Uuid::new_v4().simple()));
    let (stubs, target) = (scratch.join("bin"), scratch.join("target"));
    std::fs::create_dir_all(&stubs)?;
    std::fs::create_dir_all(target.join("release"))?;
    executable(&stubs.join("cargo"), "#!/bin/sh\nexit 0\n")?;
    let marker = scratch.join("started");
    for binary in ["likes-api", "likes-worker"] {
        executable(
            &target.join("release").join(binary),
            // Runs a second, so the first to exit does not stop the other
            // before it started (run.sh stops both when either exits).
            &format!(
                "#!/bin/sh\necho {binary} >> '{}'\nsleep 1\n",
                marker.display()
            ),
        )?;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/run.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .env(
            "PATH",
            format!("{}:{}", stubs.display(), std::env::var("PATH")?),
        )
        .env("CARGO_TARGET_DIR", &target)
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("run.sh did not return within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let started = std::fs::read_to_string(&marker).unwrap_or_default();
    std::fs::remove_dir_all(&scratch)?;
    assert!(status.success(), "run.sh exited with {status}");
    assert!(
        started.contains("likes-api"),
        "likes-api not started: {started:?}"
    );
    assert!(
        started.contains("likes-worker"),
        "likes-worker not started: {started:?}"
    );
    Ok(())
}
