//! The `ringgate` binary: `ringgate run CONFIG` serves, `ringgate check CONFIG` validates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off before anything allocates: `.init_array.00100` runs ahead of mimalloc's
/// constructor (priority 101) and of the Rust runtime's first allocations (see the function).
#[used]
#[link_section = ".init_array.00100"]
static THP_OFF: extern "C" fn() = ringgate::server::disable_transparent_huge_pages;

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "A thread-per-core API gateway on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with CONFIG until SIGTERM/SIGINT (then drain in-flight requests and exit 0).
    /// SIGHUP reloads CONFIG, SIGUSR1 reopens the access log, SIGUSR2 starts a new binary on the
    /// same sockets. Exit codes: 0 stopped, 1 config or bind error, 2 usage.
    Run {
        /// The TOML config file (relative paths inside it are relative to its directory).
        config: PathBuf,
        /// Number of workers (overrides `server.workers`).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// Most verbose log level printed (`debug` adds per-connection causes: TLS handshake and
        /// upstream connect failures, accept errors).
        #[arg(long, value_enum, default_value_t = LogLevel::Info)]
        log_level: LogLevel,
        /// Write the serving process's pid to this file once it is ready (replaced atomically; after
        /// a SIGUSR2 upgrade the new process writes its own), and remove it at exit.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Validate CONFIG: print `ok` and a route summary, or every error (exit 1).
    Check {
        /// The TOML config file.
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            workers,
            log_level,
            pid_file,
        } => {
            ringgate::log::set_level(match log_level {
                LogLevel::Error => ringgate::log::Level::Error,
                LogLevel::Warn => ringgate::log::Level::Warn,
                LogLevel::Info => ringgate::log::Level::Info,
                LogLevel::Debug => ringgate::log::Level::Debug,
            });
            let code =
                ringgate::server::run(&config, workers.map(usize::from), pid_file.as_deref());
            // The workers' last lines (drain, errors) are still on their way to stderr.
            ringgate::log::flush(std::time::Duration::from_secs(1));
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Command::Check { config } => match ringgate::config::check(&config) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(report) => {
                eprint!("{report}");
                ExitCode::FAILURE
            }
        },
    }
}
