//! The worker's and likes-dlq's command lines: `--help`, `--version`,
//! `check-config`, `--config`, `--pid` only with `--health-check`, and a
//! start refused over a misspelt setting. The settings are a test env's, so
//! a worker that started anyway would consume the env's own queues.

use crate::{DLQ, WORKER};
use likes_testkit::{
    TestEnv,
    process::{CliOutput, cli_command, run_cli, settings_file},
};
use std::{path::Path, process::Command};

/// `binary` with `env`'s settings.
fn binary(binary: &str, env: &TestEnv) -> Command {
    cli_command(Path::new(binary), &env.settings)
}

#[test]
fn worker_help_lists_the_health_check_and_the_commands() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = binary(WORKER, &env);
    command.arg("--help");
    let help = run_cli(command)?.succeeded()?;
    for words in [
        "check-config",
        "--health-check",
        "--pid <N>",
        "--config <FILE>",
        "wins over the LIKES_CONFIG variable",
    ] {
        assert!(help.contains(words), "no {words:?} in:\n{help}");
    }
    Ok(())
}

#[test]
fn worker_and_dlq_print_the_crate_version() -> anyhow::Result<()> {
    let env = TestEnv::new();
    for name in [WORKER, DLQ] {
        let mut command = binary(name, &env);
        command.arg("--version");
        let stdout = run_cli(command)?.succeeded()?;
        let program = Path::new(name)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert_eq!(
            stdout.trim(),
            format!("{program} {}", env!("CARGO_PKG_VERSION"))
        );
    }
    Ok(())
}

#[test]
fn pid_without_health_check_is_a_usage_error() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = binary(WORKER, &env);
    command.args(["--pid", "1"]);
    let CliOutput { status, stderr, .. } = run_cli(command)?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--health-check"), "{stderr}");
    Ok(())
}

#[test]
fn worker_check_config_masks_the_database_password() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = binary(WORKER, &env);
    command.arg("check-config").env(
        "LIKES__DATABASE__URL",
        "postgres://likes:db-pw-0815@db.internal:5432/likes",
    );
    let shown = run_cli(command)?.succeeded()?;
    assert!(
        shown
            .lines()
            .any(|l| l == "url = \"postgres://likes:***@db.internal:5432/likes\""),
        "{shown}"
    );
    assert!(!shown.contains("0815"), "the password is shown:\n{shown}");
    Ok(())
}

#[test]
fn dlq_reads_the_config_flag_and_checks_its_keys() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let good = settings_file("worker-dlq-good", "[amqp]\nshards = 7\n")?;
    let bad = settings_file("worker-dlq-bad", "[amqp]\ndead_leter_queue = \"x\"\n")?;

    let mut command = binary(DLQ, &env);
    command.arg("check-config").arg("--config").arg(&good);
    let shown = run_cli(command)?.succeeded()?;
    assert!(shown.contains("\nshards = 7\n"), "{shown}");

    let mut command = binary(DLQ, &env);
    command.arg("--config").arg(&bad).arg("list");
    let CliOutput { status, stderr, .. } = run_cli(command)?;
    std::fs::remove_file(&good)?;
    std::fs::remove_file(&bad)?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: {}: amqp.dead_leter_queue is not a setting; \
             did you mean amqp.dead_letter_queue?\n",
            bad.display()
        )
    );
    Ok(())
}

#[test]
fn a_misspelt_variable_stops_the_worker_naming_the_nearest_setting() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = binary(WORKER, &env);
    command.env("LIKES__WORKER__BATCH_SIZ", "10");
    let CliOutput { status, stderr, .. } = run_cli(command)?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "error: LIKES__WORKER__BATCH_SIZ is not a setting; \
         did you mean LIKES__WORKER__BATCH_SIZE?\n"
    );
    Ok(())
}
