//! `likes-loadtest`: parses the options, runs the load test, prints the
//! report. Exit status: 0 when verification passed, 1 when it found a
//! difference, 2 when the test could not run, 130 when interrupted.

/// mimalloc: the request path allocates many small, short-lived buffers
/// (protobuf, HTTP/2 frames, AMQP frames); glibc's malloc cost about 10% of
/// the CPU in profiles of `make loadtest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use likes_loadtest::{Options, ProgressView};
use std::{io::IsTerminal, process::ExitCode};

fn main() -> ExitCode {
    match likes_common::runtime::block_on(run()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("likes-loadtest: cannot start the tokio runtime: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> ExitCode {
    let options = Options::parse();
    likes_common::telemetry::init(likes_common::config::LogFormat::Text, "warn");
    let view = if options.json || !std::io::stderr().is_terminal() {
        ProgressView::Hidden
    } else {
        ProgressView::Bar
    };
    // Dropping the run on Ctrl-C drops its TestEnv, which removes the
    // database and queues it made.
    let outcome = tokio::select! {
        outcome = likes_loadtest::run(&options, view) => outcome,
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
