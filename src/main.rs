//! Entry point: parse arguments, run, print at most one error line, exit with its status.
//! `run` returns the status so that drop guards (the stdio flags) run on every path.
//!
//! On glibc Linux the process starts in `src/sys/entry.rs` (no Rust runtime set-up before
//! `main`: start-up is paid per connection); elsewhere in the usual `main`.

#![cfg_attr(all(target_os = "linux", target_env = "gnu", not(test)), no_main)]
#![deny(unsafe_code)]

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(test))))]
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use gimlet::cli::{Cli, help};
use gimlet::config::Config;
use gimlet::error::{Error, Kind};

#[cfg(all(target_os = "linux", target_env = "gnu", not(test)))]
#[allow(unsafe_code)]
#[path = "sys/entry.rs"]
mod entry;

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(test))))]
fn main() -> ExitCode {
    ExitCode::from(run())
}

/// Everything `main` does; returns the exit status.
fn run() -> u8 {
    // The plain ProxyCommand line skips building clap's parser: start-up is paid per connection.
    let cli = match Cli::positional_only(std::env::args_os()).map_or_else(Cli::try_parse, Ok) {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::DisplayHelp => {
            // Asked for: help goes to stdout, as everywhere, with the examples unwrapped.
            let long = gimlet::cli::asks_long_help(std::env::args_os());
            let _ = std::io::Write::write_all(&mut std::io::stdout(), help(long).as_bytes());
            return 0;
        }
        Err(e) if e.kind() == ErrorKind::DisplayVersion => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            let args: Vec<String> = std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            gimlet::report(&Error::msg(
                Kind::Usage,
                gimlet::config::clap_error_line(&e, &args),
            ));
            return Kind::Usage.code();
        }
    };
    gimlet::config::hide_passwords(&cli);
    if let Some(kind) = &cli.generate {
        let mut out = std::io::stdout().lock();
        return match gimlet::generate::generate(kind, &mut out) {
            Ok(()) => 0,
            // The reader went away (`| head`): as with the tunnel, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Err(e) => {
                gimlet::report(&Error::new(Kind::Tunnel, e).context(format!("writing {kind}")));
                Kind::Tunnel.code()
            }
        };
    }
    gimlet::init_diagnostics(cli.verbose, cli.quiet);
    let result = Config::from_cli(cli, |name| std::env::var_os(name)).and_then(gimlet::run);
    match result {
        Ok(()) => 0,
        Err(e) => {
            gimlet::report(&e);
            e.kind().code()
        }
    }
}
