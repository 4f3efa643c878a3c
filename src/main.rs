//! Entry point: parse arguments, run, print at most one error line, exit with its status.
//! `main` returns `ExitCode` so that drop guards (the stdio flags) run on every path.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use gimlet::cli::{Cli, help};
use gimlet::config::Config;
use gimlet::error::{Error, Kind};

fn main() -> ExitCode {
    // The plain ProxyCommand line skips building clap's parser: start-up is paid per connection.
    let cli = match Cli::positional_only(std::env::args_os()).map_or_else(Cli::try_parse, Ok) {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::DisplayHelp => {
            // Asked for: help goes to stdout, as everywhere, with the examples unwrapped.
            let long = gimlet::cli::asks_long_help(std::env::args_os());
            let _ = std::io::Write::write_all(&mut std::io::stdout(), help(long).as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
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
            return ExitCode::from(Kind::Usage.code());
        }
    };
    gimlet::config::hide_passwords(&cli);
    if let Some(kind) = &cli.generate {
        let mut out = std::io::stdout().lock();
        return match gimlet::generate::generate(kind, &mut out) {
            Ok(()) => ExitCode::SUCCESS,
            // The reader went away (`| head`): as with the tunnel, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                gimlet::report(&Error::new(Kind::Tunnel, e).context(format!("writing {kind}")));
                ExitCode::from(Kind::Tunnel.code())
            }
        };
    }
    gimlet::init_diagnostics(cli.verbose, cli.quiet);
    let result = Config::from_cli(cli, |name| std::env::var_os(name)).and_then(gimlet::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            gimlet::report(&e);
            ExitCode::from(e.kind().code())
        }
    }
}
