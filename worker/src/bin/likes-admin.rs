//! `likes-admin`: the database's operations, run by hand or as a Job.
//!
//! - `migrate` creates the database if missing and runs pending migrations,
//!   once, with a role that may change the schema; api and worker then run
//!   with `database.migrate_on_start = false` and a role that cannot.
//! - `recount [--post ID] [--dry-run]` compares each post's counter with its
//!   liked pairs and repairs the ones that drifted; safe while workers write
//!   (`likes_db::recount` says why).
//!
//! Uses the same settings as the service (`LIKES__DATABASE__*`), and only
//! `database.url` (never a replica).

use anyhow::Context;
use clap::{Parser, Subcommand};
use likes_common::Settings;
use likes_db::recount::{Recount, recount};
use likes_service::{
    cli::{self, ConfigArgs},
    telemetry,
};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "likes-admin",
    version,
    about = "Migrate the likes database; check and repair its counters",
    after_help = cli::SETTINGS_HELP
)]
struct Cli {
    #[command(flatten)]
    settings: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if missing and run the pending migrations.
    Migrate,
    /// Compare each post's counter with its liked pairs and repair drift.
    /// Exit 0 when nothing drifted or all was repaired; 1 when drift was
    /// found in a dry run.
    Recount {
        /// Only this post.
        #[arg(long)]
        post: Option<String>,
        /// Posts compared per statement.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
        /// Report drift without repairing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the settings in effect as TOML (secrets masked) and exit; exit 2
    /// with the error if they are invalid.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings.load() {
        Ok(settings) => settings,
        Err(err) => return cli::settings_failure(&err),
    };
    if let Command::CheckConfig = cli.command {
        return cli.settings.check_config("likes-admin", &settings);
    }
    let outcome = likes_service::runtime::block_on(run(&settings, cli.command))
        .context("starting the tokio runtime")
        .and_then(|outcome| outcome);
    cli::exit_code(outcome)
}

/// Raised by a dry run that found drift: exit 1, the report printed.
#[derive(Debug, thiserror::Error)]
#[error("{0} post(s) drifted (dry run: nothing repaired)")]
struct DriftFound(usize);

async fn run(settings: &Settings, command: Command) -> anyhow::Result<()> {
    telemetry::init(settings.log.format, "warn");
    let database = &settings.database;
    let url = database.url.expose();
    match command {
        Command::Migrate => {
            likes_db::ensure_database(url, &database.tls_ca_file)
                .await
                .with_context(|| format!("creating the database of {}", database.url))?;
            let applied = likes_db::run_migrations(url, &database.tls_ca_file)
                .await
                .with_context(|| format!("migrating {}", database.url))?;
            if applied.is_empty() {
                println!("no pending migration");
            } else {
                println!(
                    "applied {} migration(s): {}",
                    applied.len(),
                    applied.join(", ")
                );
            }
        }
        Command::Recount {
            post,
            batch,
            dry_run,
        } => {
            let mut conn = likes_db::establish(url, &database.tls_ca_file)
                .await
                .with_context(|| format!("connecting to {}", database.url))?;
            let report = recount(
                &mut conn,
                &Recount {
                    post,
                    batch,
                    dry_run,
                },
            )
            .await
            .context("recounting")?;
            for drift in &report.drift {
                let stored = drift
                    .stored
                    .map_or_else(|| "no counter".to_owned(), |count| count.to_string());
                let repaired = drift.repaired.map_or_else(
                    || "not repaired".to_owned(),
                    |count| format!("repaired to {count}"),
                );
                println!(
                    "post {}: counter {stored}, liked pairs {}: {repaired}",
                    drift.post_id, drift.counted
                );
            }
            println!(
                "checked {} post(s), {} drifted",
                report.posts_checked,
                report.drift.len()
            );
            if dry_run && !report.drift.is_empty() {
                return Err(DriftFound(report.drift.len()).into());
            }
        }
        Command::CheckConfig => unreachable!("answered before the runtime starts"),
    }
    Ok(())
}
