//! gimlet: a stdio tunnel through HTTP proxies.
//!
//! The data path reads top to bottom: `cli` → `config` → `connect` → `handshake` → `relay`,
//! with `error` mapping every failure to an exit status. [`run`] wires those steps.

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod connect;
pub mod credentials;
mod diag;
pub mod error;
pub mod handshake;
pub mod relay;
#[allow(unsafe_code)]
mod sys;

use std::os::fd::AsFd;

use config::Config;
use connect::Dialer;
use credentials::Spec;
use diag::info;
use error::{Error, Kind, ResultExt};
use handshake::{Negotiation, Request};

pub use diag::init as init_diagnostics;

/// Prints the one error line (nothing with `-q`).
pub fn report(e: &Error) {
    diag::error(e);
}

/// Connects, negotiates the tunnel and relays stdio through it until both ends are done.
pub fn run(config: &Config) -> Result<(), Error> {
    let proxy = config.proxy();
    let proxy_name = proxy.endpoint.to_string();
    let credentials = match &config.credentials {
        Spec::None => None,
        Spec::Known(c) => Some(c.clone()),
        Spec::User(user) => Some(
            credentials::prompt(&proxy_name, Some(user))
                .kind_ctx(Kind::Auth, || format!("asking for the password of proxy user {user:?}"))?
                .ok_or_else(|| {
                    Error::msg(
                        Kind::Auth,
                        format_args!(
                            "no terminal to ask for the password of proxy user {user:?} (use --proxy-auth-file or {})",
                            config::AUTH_ENV
                        ),
                    )
                })?,
        ),
    };

    let dialer = Dialer {
        family: config.family,
        timeout: config.connect_timeout,
        keepalive: config.keepalive,
    };
    let stream = dialer.connect(&proxy.endpoint)?;
    info!(
        "connected to proxy {proxy_name}; asking for CONNECT {}",
        config.target
    );
    let established = handshake::negotiate(
        stream,
        Negotiation {
            request: Request {
                target: &config.target,
                user_agent: config.user_agent.as_deref(),
                headers: &config.headers,
            },
            proxy: &proxy_name,
            credentials,
            reconnect: &mut || dialer.connect(&proxy.endpoint),
            ask: &mut || {
                credentials::prompt(&proxy_name, None).kind_ctx(Kind::Auth, || {
                    format!("asking for credentials for proxy {proxy_name}")
                })
            },
        },
    )?;
    info!(
        "tunnel to {} open: {:?}{}",
        config.target,
        established.reply.status_line,
        match established.leftover.len() {
            0 => String::new(),
            n => format!(" ({n} tunnel bytes came with it)"),
        }
    );

    let relaying = || format!("relaying to {} via proxy {proxy_name}", config.target);
    let stream = established
        .stream
        .into_inner()
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .kind_ctx(Kind::Tunnel, relaying)?;
    let mut socket = mio::net::TcpStream::from_std(stream);
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let stats = relay::relay(
        stdin.as_fd(),
        stdout.as_fd(),
        &mut socket,
        &established.leftover,
        config.idle_timeout,
    )
    .kind_ctx(Kind::Tunnel, relaying)?;
    info!(
        "tunnel closed: {} bytes sent, {} bytes received",
        stats.up, stats.down
    );
    Ok(())
}
