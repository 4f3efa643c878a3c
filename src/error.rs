//! Failure kinds and the one exit-code table.
//!
//! Every error that leaves the library carries a [`Kind`]; `main` prints the error's chain on
//! one stderr line and exits with the kind's code. The table [`EXIT_CODES`] is the single
//! source for the man page's EXIT STATUS section and the README (a test compares them).

use std::fmt;

/// What went wrong, coarsely enough for a script to act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bad arguments, an invalid target or header, an unsafe credential file.
    Usage,
    /// The proxy could not be reached: DNS failure, refused or timed-out connection,
    /// no reply within `--connect-timeout`, connection lost during the handshake.
    Unreachable,
    /// The proxy answered the CONNECT with a non-2xx status other than 407.
    Refused,
    /// The proxy wants credentials we do not have, or rejected the ones we sent.
    Auth,
    /// The proxy's reply was not a well-formed HTTP response head.
    Protocol,
    /// The tunnel was up and then failed: reset, idle timeout, stdin/stdout error.
    Tunnel,
    /// A TLS handshake failed: certificate not verified, pin mismatch, protocol error.
    Tls,
}

impl Kind {
    /// The process exit status for this kind.
    pub const fn code(self) -> u8 {
        match self {
            Kind::Usage => 2,
            Kind::Unreachable => 3,
            Kind::Refused => 4,
            Kind::Auth => 5,
            Kind::Protocol => 6,
            Kind::Tunnel => 7,
            Kind::Tls => 8,
        }
    }
}

/// The exit statuses, in order, with the sentence the docs show for each.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (
        0,
        "The tunnel was established and closed cleanly (including when the reader of standard output went away).",
    ),
    (
        Kind::Usage.code(),
        "Usage or configuration error: bad arguments, an invalid host, port or header, an unreadable or unsafe credential, CA or certificate file. Nothing was sent.",
    ),
    (
        Kind::Unreachable.code(),
        "The proxy (or, on a direct route, the destination) could not be reached: name resolution failed, the connection was refused or timed out, or no reply came within --connect-timeout.",
    ),
    (
        Kind::Refused.code(),
        "The proxy refused the CONNECT with a non-2xx status (other than 407), or a SOCKS proxy refused the request (SOCKS5 replies 0x01 to 0x08, SOCKS4 reply 91); the message quotes the status line or names the reply, and in a chain names the hop.",
    ),
    (
        Kind::Auth.code(),
        "Proxy authentication failed: credentials were required and none were available, or the proxy rejected them (for Negotiate: no usable Kerberos ticket, or GSSAPI failed; for SOCKS: no acceptable method 0xff, a rejected RFC 1929 user name and password, SOCKS4 replies 92 and 93 about identd).",
    ),
    (
        Kind::Protocol.code(),
        "The proxy's reply was malformed: not HTTP (or not SOCKS for a SOCKS hop, with a hint when it is the other), truncated, or over the 64 KiB / 100 header limit.",
    ),
    (
        Kind::Tunnel.code(),
        "The tunnel failed after it was established: connection reset, idle timeout, or an error reading standard input or writing standard output.",
    ),
    (
        Kind::Tls.code(),
        "A TLS handshake failed (to an https:// proxy, or to the destination with --tls): the certificate expired, names another host, comes from an unknown authority or does not match the pinned key; the message says which.",
    ),
];

/// An error with its kind. `Display` with `{:#}` prints the whole context chain on one line.
pub struct Error {
    kind: Kind,
    inner: anyhow::Error,
}

impl Error {
    pub fn new(kind: Kind, inner: impl Into<anyhow::Error>) -> Self {
        Error {
            kind,
            inner: inner.into(),
        }
    }

    /// An error whose whole text is `msg`.
    pub fn msg(kind: Kind, msg: impl fmt::Display) -> Self {
        Error::new(kind, anyhow::anyhow!("{msg}"))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Adds an outer "-ing" phrase to the chain, keeping the kind.
    pub fn context(self, ctx: impl fmt::Display + Send + Sync + 'static) -> Self {
        Error {
            kind: self.kind,
            inner: self.inner.context(ctx),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.inner)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:#}", self.kind, self.inner)
    }
}

/// Attach a kind (and usually a context phrase) to any fallible result.
pub trait ResultExt<T> {
    fn kind(self, kind: Kind) -> Result<T, Error>;
    fn kind_ctx<C: fmt::Display + Send + Sync + 'static>(
        self,
        kind: Kind,
        ctx: impl FnOnce() -> C,
    ) -> Result<T, Error>;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T> for Result<T, E> {
    fn kind(self, kind: Kind) -> Result<T, Error> {
        self.map_err(|e| Error::new(kind, e))
    }

    fn kind_ctx<C: fmt::Display + Send + Sync + 'static>(
        self,
        kind: Kind,
        ctx: impl FnOnce() -> C,
    ) -> Result<T, Error> {
        self.map_err(|e| Error::new(kind, e).context(ctx()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_ordered() {
        let codes: Vec<u8> = EXIT_CODES.iter().map(|(c, _)| *c).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted);
    }

    #[test]
    fn context_chain_prints_on_one_line() {
        let e = Error::msg(Kind::Unreachable, "Connection refused")
            .context("connecting to proxy 127.0.0.1:9");
        assert_eq!(
            e.to_string(),
            "connecting to proxy 127.0.0.1:9: Connection refused"
        );
        assert_eq!(e.kind().code(), 3);
    }
}
