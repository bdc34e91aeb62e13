//! `likes-loadtest`: parses the command line and runs the load test (no
//! subcommand) or one of the tools built on it: `bench`, `ceiling …`. Exit status of a load test: 0 when verification
//! passed, 1 when it found a difference, 2 when the test could not run,
//! 130 when interrupted.

/// mimalloc: the request path allocates many small, short-lived buffers
/// (protobuf, HTTP/2 frames, AMQP frames); glibc's malloc cost about 10% of
/// the CPU in profiles of `make loadtest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use likes_loadtest::{Options, ProgressView, bench, ceiling::CeilingCommand};
use std::{io::IsTerminal, process::ExitCode};

#[derive(Debug, Parser)]
#[command(
    name = "likes-loadtest",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: Options,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every figure of BENCHMARKS.md in one run, with the ceilings measured
    /// right before (make bench).
    Bench(bench::BenchOptions),
    /// What RabbitMQ and PostgreSQL, or gRPC, allow on this machine at best.
    #[command(subcommand)]
    Ceiling(CeilingCommand),
}

fn main() -> ExitCode {
    match likes_service::runtime::block_on(run()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("likes-loadtest: cannot start the tokio runtime: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    likes_service::telemetry::init(likes_common::config::LogFormat::Text, "warn");
    let outcome = match cli.command {
        None => return load_test(&cli.load).await,
        Some(Command::Bench(options)) => bench::run(&options).await,
        Some(Command::Ceiling(command)) => {
            likes_loadtest::ceiling::run(&command).await.map(|()| true)
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("likes-loadtest: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn load_test(options: &Options) -> ExitCode {
    let view = if options.json || !std::io::stderr().is_terminal() {
        ProgressView::Hidden
    } else {
        ProgressView::Bar
    };
    // Dropping the run on Ctrl-C drops its TestEnv, which removes the
    // database and queues it made.
    let outcome = tokio::select! {
        outcome = likes_loadtest::run(options, view) => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("likes-loadtest: interrupted; removing what it made");
            return ExitCode::from(130);
        }
    };
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("likes-loadtest: {error:#}");
            return ExitCode::from(2);
        }
    };
    if options.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("likes-loadtest: cannot encode the report: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{report}");
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
