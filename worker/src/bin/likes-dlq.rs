//! `likes-dlq`: list, inspect and replay the dead-letter queue.
//!
//! Uses the same settings as the service (`LIKES__AMQP__*`). Messages stay in
//! the dead-letter queue unless replayed; a replayed message goes back to the
//! event queue, and if it still cannot be written the worker dead-letters it
//! again, with a replay count in `x-likes-replays`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use likes_common::Settings;
use likes_queue::dead_letters;
use likes_service::{
    cli::{self, ConfigArgs},
    telemetry,
};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "likes-dlq",
    version,
    about = "List, inspect and replay dead-lettered likes",
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
    #[command(flatten)]
    Letters(Letters),
    /// Print the settings in effect as TOML (secrets masked) and exit; exit 2
    /// with the error if they are invalid.
    CheckConfig,
}

/// The commands on the dead-letter queue.
#[derive(Debug, Subcommand)]
enum Letters {
    /// One line per dead letter: message id, replays, reason, event.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Every header and property of one dead letter.
    Inspect {
        /// The message id (the event id) shown by `list`.
        message_id: String,
    },
    /// Moves dead letters back to the event queue for another try.
    Replay {
        /// Only the message with this id.
        #[arg(long)]
        message_id: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = u32::MAX)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings.load() {
        Ok(settings) => settings,
        Err(err) => return cli::settings_failure(&err),
    };
    let letters = match cli.command {
        Command::CheckConfig => return cli.settings.check_config("likes-dlq", &settings),
        Command::Letters(letters) => letters,
    };
    let outcome = likes_service::runtime::block_on(run(&settings, letters))
        .context("starting the tokio runtime")
        .and_then(|outcome| outcome);
    cli::exit_code(outcome)
}

async fn run(settings: &Settings, command: Letters) -> anyhow::Result<()> {
    telemetry::init(settings.log.format, "warn");
    let connection = likes_queue::connect(&settings.amqp, "likes-dlq")
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", settings.amqp.url))?;
    let channel = likes_queue::confirm_channel(&connection).await?;
    likes_queue::declare_topology(&connection, &settings.amqp).await?;
    let queue = &settings.amqp.dead_letter_queue;
    match command {
        Letters::List { limit } => {
            let letters = dead_letters::list(&channel, &settings.amqp, limit).await?;
            println!("{} dead letter(s) in {queue}", letters.len());
            for letter in letters {
                println!(
                    "{}  replays={}  {}  reason: {}",
                    letter.message_id.as_deref().unwrap_or("<no id>"),
                    letter.replays,
                    letter
                        .event
                        .unwrap_or_else(|| format!("<{} undecodable bytes>", letter.body_len)),
                    letter.reason.as_deref().unwrap_or("<none>"),
                );
            }
        }
        Letters::Inspect { message_id } => {
            let letters = dead_letters::list(&channel, &settings.amqp, u32::MAX).await?;
            let letter = letters
                .into_iter()
                .find(|l| l.message_id.as_deref() == Some(message_id.as_str()))
                .with_context(|| format!("no message {message_id} in {queue}"))?;
            println!("message id: {message_id}");
            println!("body: {} bytes", letter.body_len);
            println!(
                "event: {}",
                letter.event.as_deref().unwrap_or("<undecodable>")
            );
            for (name, value) in letter.headers {
                println!("header {name}: {value}");
            }
        }
        Letters::Replay { message_id, limit } => {
            let outcome =
                dead_letters::replay(&channel, &settings.amqp, message_id.as_deref(), limit)
                    .await?;
            println!(
                "replayed {} message(s) to {}; {} left in {queue}",
                outcome.replayed, settings.amqp.queue, outcome.kept
            );
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
