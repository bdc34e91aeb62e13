//! The command line the binaries share: where the settings come from
//! (`--config FILE`, else `LIKES_CONFIG`), `check-config` to show them, and
//! how a settings error ends the process. Each binary's `main` flattens
//! [`ConfigArgs`] into its own clap parser, so all of them read settings
//! the same way.

use likes_common::{Settings, config::ConfigError};
use std::{fmt, path::PathBuf, process::ExitCode};

/// The end of every binary's `--help`: where settings come from and what a
/// typo does.
pub const SETTINGS_HELP: &str = "\
Settings: the built-in defaults (config/default.toml), then the file given by \
--config (or LIKES_CONFIG), then LIKES__SECTION__KEY environment variables, \
e.g. LIKES__WORKER__BATCH_SIZE=1000. A key of the file or a LIKES__ variable \
that is not a setting stops the program (exit code 2) with the nearest \
setting's name; `check-config` prints the settings in effect.";

/// Exit code of a usage or settings error, as clap uses for usage errors.
pub const USAGE_ERROR: u8 = 2;

/// Where the settings come from.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Settings file (TOML) over the built-in defaults; LIKES__* variables
    /// override it. The flag wins over the LIKES_CONFIG variable.
    #[arg(long, value_name = "FILE", env = "LIKES_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// The defaults, then the file, then the process's `LIKES__*` variables.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        Settings::load_from(self.config.clone(), None)
    }

    /// `check-config`: prints [`Self::report`] on stdout (exit 0), or the
    /// error on stderr (exit 2).
    pub fn check_config(&self, program: &str, settings: &Settings) -> ExitCode {
        match self.report(program, settings) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => settings_failure(&err),
        }
    }

    /// What `check-config` prints: a comment naming the sources, then the
    /// settings as a TOML file, secrets masked.
    pub fn report(&self, program: &str, settings: &Settings) -> Result<String, ConfigError> {
        let file = match &self.config {
            Some(path) => format!("{}, then ", path.display()),
            None => String::new(),
        };
        Ok(format!(
            "# Settings of {program} in effect: the built-in defaults, then {file}LIKES__* \
             variables.\n# Secrets are shown as ***: put the real ones back before using \
             this as a settings file.\n\n{}",
            settings.to_toml()?
        ))
    }
}

/// The command line of a service binary (`likes-api`, `likes-worker`):
/// settings, and the health check a container runtime runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub settings: ConfigArgs,
    /// Exit 0 if this process's metrics endpoint (api.metrics_listen or
    /// worker.metrics_listen) answers GET /healthz: alive, whatever the
    /// broker does (for container health checks); starts nothing else.
    #[arg(long)]
    pub health_check: bool,
    /// With --health-check: ask GET /readyz instead; exit 0 only while the
    /// api is connected to RabbitMQ, or the worker consumes every queue of
    /// worker.shards.
    #[arg(long, requires = "health_check")]
    pub ready: bool,
}

/// The subcommands of a service binary.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServiceCommand {
    /// Print the settings in effect as TOML (secrets masked) and exit; exit 2
    /// with the error if they are invalid.
    CheckConfig,
}

/// What a service binary was started to do, once its settings loaded.
#[derive(Debug)]
pub enum Start {
    /// Run the service.
    Serve,
    /// Run the health check (`ready`: the readiness check) and exit.
    HealthCheck { ready: bool },
}

impl ServiceArgs {
    /// Refuses `--health-check` with a subcommand (a clap usage error, exit
    /// 2, for `Cli`, the binary's parser), loads the settings, and runs
    /// `check-config`. `Err` is the exit code when the process is done.
    pub fn start<Cli: clap::CommandFactory>(
        &self,
        program: &str,
        command: Option<&ServiceCommand>,
    ) -> Result<(Settings, Start), ExitCode> {
        if self.health_check && command.is_some() {
            // Not `args_conflicts_with_subcommands`: that refuses `--config` too.
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--health-check cannot be used with a command",
                )
                .exit();
        }
        let settings = self.settings.load().map_err(|err| settings_failure(&err))?;
        if let Some(ServiceCommand::CheckConfig) = command {
            return Err(self.settings.check_config(program, &settings));
        }
        let start = if self.health_check {
            Start::HealthCheck { ready: self.ready }
        } else {
            Start::Serve
        };
        Ok((settings, start))
    }
}

/// Prints a settings error as one line on stderr, as clap prints a usage
/// error, and gives the exit code of one.
pub fn settings_failure(err: &ConfigError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(USAGE_ERROR)
}

/// The exit code of a run: 0, or 1 after printing its error on one line of
/// stderr (`{:#}`: with an `anyhow::Error`, the context chain joined by `: `).
pub fn exit_code<E: fmt::Display>(outcome: Result<(), E>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
