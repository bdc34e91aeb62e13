//! The api binary's command line: `--help`, `--version`, `check-config`,
//! `--config`, and a start refused over a misspelt setting. The settings
//! are a test env's, so a binary that started anyway would bind an
//! ephemeral port and use the env's own queues.

use crate::API;
use likes_testkit::{
    TestEnv,
    process::{CliOutput, cli_command, run_cli, settings_file},
};
use std::{path::Path, process::Command};

/// `likes-api` with `env`'s settings.
fn api(env: &TestEnv) -> Command {
    cli_command(Path::new(API), &env.settings)
}

#[test]
fn help_lists_the_commands_and_says_the_flag_wins_over_likes_config() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = api(&env);
    command.arg("--help");
    let help = run_cli(command)?.succeeded()?;
    for words in [
        "check-config",
        "--health-check",
        "--config <FILE>",
        "wins over the LIKES_CONFIG variable",
        "LIKES__SECTION__KEY",
    ] {
        assert!(help.contains(words), "no {words:?} in:\n{help}");
    }
    Ok(())
}

#[test]
fn version_prints_the_crate_version() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = api(&env);
    command.arg("--version");
    let stdout = run_cli(command)?.succeeded()?;
    assert_eq!(
        stdout.trim(),
        format!("likes-api {}", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}

#[test]
fn check_config_prints_the_settings_with_passwords_and_token_masked() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = api(&env);
    command
        .arg("check-config")
        .env(
            "LIKES__AMQP__URL",
            "amqp://guest:amqp-pw-4711@127.0.0.1:5672/%2f",
        )
        .env(
            "LIKES__DATABASE__URL",
            "postgres://postgres:db-pw-4711@127.0.0.1:5432/likes",
        )
        .env("LIKES__API__AUTH_TOKEN", "token-4711")
        .env("LIKES__WORKER__BATCH_SIZE", "321");
    let shown = run_cli(command)?.succeeded()?;
    for line in [
        "url = \"amqp://guest:***@127.0.0.1:5672/%2f\"",
        "url = \"postgres://postgres:***@127.0.0.1:5432/likes\"",
        "auth_token = \"***\"",
        "batch_size = 321",
        "[worker]",
    ] {
        assert!(shown.lines().any(|l| l == line), "no {line:?} in:\n{shown}");
    }
    assert!(!shown.contains("4711"), "a secret is shown:\n{shown}");
    // What it prints is TOML with the settings' sections.
    let table: toml::Table = shown.parse()?;
    let mut sections: Vec<&String> = table.keys().collect();
    sections.sort();
    assert_eq!(
        sections,
        ["amqp", "api", "database", "log", "telemetry", "worker"]
    );
    Ok(())
}

#[test]
fn the_config_flag_wins_over_likes_config() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let by_variable = settings_file("api-by-variable", "[worker]\nretry_budget_ms = 1111\n")?;
    let by_flag = settings_file("api-by-flag", "[worker]\nretry_budget_ms = 2222\n")?;

    let mut command = api(&env);
    command
        .arg("check-config")
        .env("LIKES_CONFIG", &by_variable);
    let CliOutput {
        stdout: shown,
        stderr,
        ..
    } = run_cli(command)?;
    assert!(
        shown.contains("\nretry_budget_ms = 1111\n"),
        "{shown}{stderr}"
    );

    let mut command = api(&env);
    command
        .arg("--config")
        .arg(&by_flag)
        .arg("check-config")
        .env("LIKES_CONFIG", &by_variable);
    let output = run_cli(command)?;
    std::fs::remove_file(&by_variable)?;
    std::fs::remove_file(&by_flag)?;
    let shown = output.succeeded()?;
    assert!(shown.contains("\nretry_budget_ms = 2222\n"), "{shown}");
    assert!(shown.contains(&by_flag.display().to_string()), "{shown}");
    Ok(())
}

#[test]
fn check_config_of_invalid_settings_exits_2_with_the_error() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = api(&env);
    command
        .arg("check-config")
        .env("LIKES__WORKER__BATCH_SIZE", "0");
    let CliOutput {
        status,
        stdout,
        stderr,
    } = run_cli(command)?;
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "error: cannot read settings: invalid value: integer `0`, expected a nonzero u16 \
         for key `worker.batch_size`\n"
    );
    assert!(stdout.is_empty(), "{stdout}");
    Ok(())
}

#[test]
fn a_misspelt_variable_stops_the_start_naming_the_nearest_setting() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let mut command = api(&env);
    command.env("LIKES__API__CONFIRM_TIMEOUT", "100");
    let CliOutput { status, stderr, .. } = run_cli(command)?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "error: LIKES__API__CONFIRM_TIMEOUT is not a setting; \
         did you mean LIKES__API__CONFIRM_TIMEOUT_MS?\n"
    );
    Ok(())
}

#[test]
fn an_unknown_key_in_the_config_file_stops_the_start_naming_the_file() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let file = settings_file("api-unknown-key", "[api]\nlisen = \"127.0.0.1:1\"\n")?;
    let mut command = api(&env);
    command.arg("--config").arg(&file);
    let CliOutput { status, stderr, .. } = run_cli(command)?;
    std::fs::remove_file(&file)?;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: {}: api.lisen is not a setting; did you mean api.listen?\n",
            file.display()
        )
    );
    Ok(())
}
