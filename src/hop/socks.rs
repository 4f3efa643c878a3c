//! SOCKS4 (the 1992 NEC protocol), SOCKS4a (its hostname extension) and SOCKS5 (RFC 1928)
//! with username/password authentication (RFC 1929): the client side, sans-IO.
//!
//! [`Socks::new`] checks what can be sent, [`Socks::start`] gives the first message, and
//! [`Socks::feed`] takes reply bytes in whatever pieces they arrive and says what to do next:
//! read more ([`Step::Need`], with the exact count so `--fdpass` never reads a tunnel byte),
//! send a follow-up message, supply credentials, or go: [`Step::Done`] carries the bytes that
//! came after the final reply, which belong to the tunnel. Every SOCKS reply has a length the
//! client can compute from its first bytes, so no read ever has to guess.
//!
//! Failures are [`Error`]s with the exit-status kind: a reply code that refuses the request is
//! `Refused`, a rejected or missing authentication is `Auth`, bytes that are not SOCKS are
//! `Protocol` (with a hint when they are an HTTP proxy's answer).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zeroize::Zeroizing;

use crate::config::{Endpoint, Host};
use crate::credentials::Credentials;
use crate::error::{Error, Kind};
use crate::handshake::printable;

/// Which SOCKS dialect a hop speaks; the URL scheme names it, curl's way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `socks4://`: IPv4 addresses only; gimlet resolves names.
    V4,
    /// `socks4a://`: the proxy resolves names.
    V4a,
    /// `socks5://`: gimlet resolves names, sends the address.
    V5,
    /// `socks5h://`: the proxy resolves names.
    V5h,
}

impl Version {
    /// The URL scheme, as the user writes it.
    pub fn scheme(self) -> &'static str {
        match self {
            Version::V4 => "socks4",
            Version::V4a => "socks4a",
            Version::V5 => "socks5",
            Version::V5h => "socks5h",
        }
    }

    /// Whether the proxy resolves host names (4a, 5h) rather than gimlet (4, 5).
    pub fn proxy_resolves(self) -> bool {
        matches!(self, Version::V4a | Version::V5h)
    }

    fn is_v5(self) -> bool {
        matches!(self, Version::V5 | Version::V5h)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// The port every SOCKS scheme defaults to.
pub const DEFAULT_PORT: u16 = 1080;

/// What to do after feeding bytes.
#[derive(Debug)]
pub enum Step {
    /// Read more: exactly this many bytes complete the next piece of the reply.
    Need(usize),
    /// Send these bytes (the authentication or the CONNECT request), then read again.
    Send(Zeroizing<Vec<u8>>),
    /// The proxy chose username/password (RFC 1929) and no credentials are known yet: call
    /// [`Socks::authenticate`] with some.
    NeedCredentials,
    /// The tunnel is open.
    Done(Done),
}

/// A granted request.
#[derive(Debug)]
pub struct Done {
    /// The address the proxy bound for us, printable (for `-v`); `None` for SOCKS4.
    pub bound: Option<String>,
    /// Bytes after the reply: the start of the tunnel.
    pub leftover: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// SOCKS4/4a: waiting for the 8-byte reply.
    Reply4,
    /// SOCKS5: waiting for the method selection (2 bytes).
    Method,
    /// SOCKS5: the proxy chose username/password; waiting for credentials from the caller.
    Credentials,
    /// SOCKS5: waiting for the RFC 1929 status (2 bytes).
    Auth,
    /// SOCKS5: waiting for the CONNECT reply.
    Reply5,
    Done,
}

/// One SOCKS client handshake.
pub struct Socks {
    version: Version,
    target: Endpoint,
    credentials: Option<Credentials>,
    state: State,
    buf: Vec<u8>,
    /// SOCKS5 offered only "no authentication" and the proxy accepted none.
    wants_credentials: bool,
}

impl fmt::Debug for Socks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socks")
            .field("version", &self.version)
            .field("target", &self.target)
            .field("credentials", &self.credentials)
            .field("state", &self.state)
            .finish()
    }
}

const SOCKS5: u8 = 0x05;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xFF;
const CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_NAME: u8 = 0x03;
const ATYP_V6: u8 = 0x04;
const SOCKS4_GRANTED: u8 = 90;

impl Socks {
    /// A handshake asking for `target`. For `socks4` and `socks5` the caller resolves a name
    /// first and passes the address (curl's meaning of those schemes); a name passed anyway is
    /// sent as a name with SOCKS5 and refused with SOCKS4. `credentials` are the user name for
    /// SOCKS4's USERID field, or the RFC 1929 pair SOCKS5 offers.
    pub fn new(
        version: Version,
        target: &Endpoint,
        credentials: Option<Credentials>,
    ) -> Result<Socks, Error> {
        let usage = |m: String| Err(Error::msg(Kind::Usage, m));
        match (&target.host, version) {
            (Host::Ip(IpAddr::V6(_)), Version::V4 | Version::V4a) => {
                return usage(format!(
                    "{version} cannot carry the IPv6 address {}: use socks5:// or socks5h://",
                    target.host
                ));
            }
            (Host::Name(name), Version::V4) => {
                return usage(format!(
                    "socks4 sends addresses, not names: resolve {name} first, or use socks4a://"
                ));
            }
            (Host::Scoped(..), _) => {
                return usage(format!(
                    "{} has a zone id, which names an interface on this machine and means nothing to the SOCKS server",
                    target.host
                ));
            }
            (Host::Name(name), _) if name.len() > 255 => {
                return usage(format!(
                    "the host name {name:?} is longer than the 255 bytes SOCKS can carry"
                ));
            }
            _ => {}
        }
        if let Some(c) = &credentials {
            if c.user.contains('\0') {
                return usage("the SOCKS user name contains a NUL byte".into());
            }
            if version.is_v5() {
                check_rfc1929(c)?;
            }
        }
        Ok(Socks {
            version,
            target: target.clone(),
            credentials,
            state: if version.is_v5() {
                State::Method
            } else {
                State::Reply4
            },
            buf: Vec::new(),
            wants_credentials: false,
        })
    }

    /// The first message: the SOCKS4 request, or the SOCKS5 method offer.
    pub fn start(&self) -> Zeroizing<Vec<u8>> {
        match self.version {
            Version::V4 | Version::V4a => self.request4(),
            Version::V5 | Version::V5h => Zeroizing::new(match self.credentials {
                // RFC 1928 §3: offer username/password only when we can answer it, so a proxy
                // that allows both never makes us authenticate for nothing.
                Some(_) => vec![SOCKS5, 2, NO_AUTH, USER_PASS],
                None => vec![SOCKS5, 1, NO_AUTH],
            }),
        }
    }

    /// The exact number of bytes that would complete the next piece of the reply.
    pub fn wanted(&self) -> usize {
        match self.needed() {
            Ok(Some(n)) => n.saturating_sub(self.buf.len()).max(1),
            _ => 1,
        }
    }

    /// After a failure with kind `Auth`: whether the proxy refused to go on without
    /// credentials we did not offer (ask for some and try again on a new connection).
    pub fn wants_credentials(&self) -> bool {
        self.wants_credentials
    }

    /// The proxy closed the connection: say how far it got.
    pub fn eof(&self) -> Error {
        let (kind, msg) = match (self.state, self.buf.len()) {
            (State::Method, 0) => (Kind::Protocol, "the proxy closed the connection without answering the SOCKS5 greeting".to_owned()),
            (State::Auth, 0) => (Kind::Protocol, "the proxy closed the connection after the user name and password (it probably rejected them)".to_owned()),
            // The request was read and not granted: OpenSSH's `ssh -D` says "refused" this
            // way when the destination does not answer or refuses.
            (State::Reply4 | State::Reply5, 0) => (Kind::Refused, "the proxy closed the connection without replying to the request".to_owned()),
            (_, 0) => (Kind::Protocol, "the proxy closed the connection without replying".to_owned()),
            (_, n) => (Kind::Protocol, format!("the proxy closed the connection in the middle of its reply (after {n} bytes)")),
        };
        Error::msg(kind, msg)
    }

    /// Credentials for the RFC 1929 subnegotiation, after [`Step::NeedCredentials`].
    pub fn authenticate(&mut self, credentials: Credentials) -> Result<Step, Error> {
        if self.state != State::Credentials {
            return Err(Error::msg(
                Kind::Protocol,
                "credentials supplied when the proxy did not ask for them",
            ));
        }
        check_rfc1929(&credentials)?;
        self.credentials = Some(credentials);
        self.state = State::Auth;
        Ok(Step::Send(self.auth_request()))
    }

    /// Adds reply bytes and advances as far as they allow. After [`Step::Send`], send the
    /// bytes and call `feed` again (with an empty slice if nothing new was read): reply bytes
    /// that came early are kept and processed then.
    pub fn feed(&mut self, data: &[u8]) -> Result<Step, Error> {
        self.buf.extend_from_slice(data);
        loop {
            if self.state == State::Credentials {
                return Ok(Step::NeedCredentials);
            }
            if self.state == State::Done {
                return Ok(Step::Done(Done {
                    bound: None,
                    leftover: std::mem::take(&mut self.buf),
                }));
            }
            let Some(len) = self.needed()? else {
                return Ok(Step::Need(self.wanted()));
            };
            if self.buf.len() < len {
                return Ok(Step::Need(len - self.buf.len()));
            }
            let rest = self.buf.split_off(len);
            let piece = std::mem::replace(&mut self.buf, rest);
            match self.advance(&piece)? {
                Some(step) => return Ok(step),
                None => continue,
            }
        }
    }

    /// The length of the piece the current state waits for, once enough of it is here to
    /// tell. Errors that the first bytes already show (a refusal) come out here, so a proxy
    /// that sends a short error reply and closes is still understood.
    fn needed(&self) -> Result<Option<usize>, Error> {
        if let Some(n) = self.http_reply()? {
            return Ok(Some(n));
        }
        let b = &self.buf;
        match self.state {
            State::Reply4 => {
                if b.len() >= 2 {
                    check_reply4(b[0], b[1])?;
                }
                Ok(Some(8))
            }
            State::Method | State::Auth => Ok(Some(2)),
            State::Reply5 => {
                if b.len() >= 2 {
                    check_reply5(b[0], b[1])?;
                }
                if b.len() < 4 {
                    return Ok(Some(4 + 1));
                }
                let addr = match b[3] {
                    ATYP_V4 => 4,
                    ATYP_V6 => 16,
                    ATYP_NAME if b.len() >= 5 => 1 + b[4] as usize,
                    ATYP_NAME => return Ok(None),
                    other => {
                        return Err(Error::msg(
                            Kind::Protocol,
                            format_args!(
                                "malformed SOCKS5 reply: unknown address type 0x{other:02x}"
                            ),
                        ));
                    }
                };
                Ok(Some(4 + addr + 2))
            }
            State::Credentials | State::Done => Ok(Some(0)),
        }
    }

    /// Handles one complete piece of the reply.
    fn advance(&mut self, piece: &[u8]) -> Result<Option<Step>, Error> {
        match self.state {
            State::Reply4 => {
                // needed() has checked the version and the code.
                self.state = State::Done;
                Ok(Some(Step::Done(Done {
                    bound: None,
                    leftover: std::mem::take(&mut self.buf),
                })))
            }
            State::Method => {
                if piece[0] != SOCKS5 {
                    return Err(not_socks(piece, "SOCKS5 method selection"));
                }
                match (piece[1], &self.credentials) {
                    (NO_AUTH, _) => {
                        self.state = State::Reply5;
                        Ok(Some(Step::Send(self.request5())))
                    }
                    (USER_PASS, Some(_)) => {
                        self.state = State::Auth;
                        Ok(Some(Step::Send(self.auth_request())))
                    }
                    (USER_PASS, None) => {
                        // Only reachable if a proxy picks a method we did not offer; give the
                        // caller the chance to supply credentials all the same.
                        self.state = State::Credentials;
                        Ok(Some(Step::NeedCredentials))
                    }
                    (NO_ACCEPTABLE, Some(_)) => Err(Error::msg(
                        Kind::Auth,
                        "the proxy accepts neither no authentication nor a user name and password (SOCKS5 method 0xff)",
                    )),
                    (NO_ACCEPTABLE, None) => {
                        self.wants_credentials = true;
                        Err(Error::msg(
                            Kind::Auth,
                            "the proxy requires authentication (SOCKS5 method 0xff for \"no authentication\"); give a user name and password",
                        ))
                    }
                    (other, _) => Err(Error::msg(
                        Kind::Protocol,
                        format_args!(
                            "the proxy chose the SOCKS5 authentication method 0x{other:02x} ({}), which was not offered",
                            method_name(other)
                        ),
                    )),
                }
            }
            State::Auth => {
                // RFC 1929 §2 says VER is 0x01; some servers echo 0x05. Only STATUS matters.
                if !matches!(piece[0], 0x01 | SOCKS5) {
                    return Err(not_socks(piece, "SOCKS5 authentication reply"));
                }
                if piece[1] != 0 {
                    let user = self.credentials.as_ref().map_or("", |c| c.user.as_str());
                    return Err(Error::msg(
                        Kind::Auth,
                        format_args!(
                            "the proxy rejected the user name and password for {user:?} (RFC 1929 status 0x{:02x})",
                            piece[1]
                        ),
                    ));
                }
                self.state = State::Reply5;
                Ok(Some(Step::Send(self.request5())))
            }
            State::Reply5 => {
                self.state = State::Done;
                Ok(Some(Step::Done(Done {
                    bound: Some(bound_address(piece)),
                    leftover: std::mem::take(&mut self.buf),
                })))
            }
            State::Credentials | State::Done => Ok(None),
        }
    }

    /// A reply that starts like "HTTP/" comes from an HTTP proxy: read its status line (up to
    /// 256 bytes, one byte at a time for exact readers) and say so instead of "bad version".
    fn http_reply(&self) -> Result<Option<usize>, Error> {
        let b = &self.buf;
        if b.first() != Some(&b'H') {
            return Ok(None);
        }
        if b.len() < 5 {
            return Ok(Some(5));
        }
        if !b.starts_with(b"HTTP/") {
            return Ok(None);
        }
        match b.iter().position(|&c| c == b'\n') {
            None if b.len() < 256 => Ok(Some(b.len() + 1)),
            _ => Err(Error::msg(
                Kind::Protocol,
                format_args!(
                    "the proxy answered in HTTP, not SOCKS: {:?}; it is an HTTP proxy: give it as http://HOST:PORT",
                    printable(b.split(|&c| c == b'\n').next().unwrap_or(b))
                ),
            )),
        }
    }

    /// SOCKS4: VN=4 CD=1 DSTPORT DSTIP USERID NUL, and for 4a with a name DSTIP=0.0.0.1
    /// followed by the host name and NUL.
    fn request4(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(64));
        out.extend_from_slice(&[4, CONNECT]);
        out.extend_from_slice(&self.target.port.to_be_bytes());
        let name = match &self.target.host {
            Host::Ip(IpAddr::V4(a)) => {
                out.extend_from_slice(&a.octets());
                None
            }
            Host::Name(n) => {
                out.extend_from_slice(&Ipv4Addr::new(0, 0, 0, 1).octets());
                Some(n)
            }
            Host::Ip(IpAddr::V6(_)) | Host::Scoped(..) => unreachable!("refused by Socks::new"),
        };
        if let Some(c) = &self.credentials {
            out.extend_from_slice(c.user.as_bytes());
        }
        out.push(0);
        if let Some(n) = name {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        out
    }

    /// SOCKS5 CONNECT (RFC 1928 §4): VER CMD RSV ATYP DST.ADDR DST.PORT.
    fn request5(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(32));
        out.extend_from_slice(&[SOCKS5, CONNECT, 0]);
        match &self.target.host {
            Host::Ip(IpAddr::V4(a)) => {
                out.push(ATYP_V4);
                out.extend_from_slice(&a.octets());
            }
            Host::Ip(IpAddr::V6(a)) => {
                out.push(ATYP_V6);
                out.extend_from_slice(&a.octets());
            }
            Host::Scoped(..) => unreachable!("refused by Socks::new"),
            Host::Name(n) => {
                out.push(ATYP_NAME);
                out.push(n.len() as u8);
                out.extend_from_slice(n.as_bytes());
            }
        }
        out.extend_from_slice(&self.target.port.to_be_bytes());
        out
    }

    /// RFC 1929 §2: VER=1 ULEN UNAME PLEN PASSWD. Zeroed on drop.
    fn auth_request(&self) -> Zeroizing<Vec<u8>> {
        let c = self.credentials.as_ref().expect("checked by the caller");
        let (user, pass) = (c.user.as_bytes(), c.password.expose().as_bytes());
        let mut out = Zeroizing::new(Vec::with_capacity(3 + user.len() + pass.len()));
        out.push(0x01);
        out.push(user.len() as u8);
        out.extend_from_slice(user);
        out.push(pass.len() as u8);
        out.extend_from_slice(pass);
        out
    }
}

/// RFC 1929 carries each of user name and password in 1 to 255 bytes.
fn check_rfc1929(c: &Credentials) -> Result<(), Error> {
    let too_long = |what: &str| {
        Err(Error::msg(
            Kind::Usage,
            format_args!("the SOCKS5 {what} is longer than 255 bytes (RFC 1929)"),
        ))
    };
    if c.user.len() > 255 {
        return too_long("user name");
    }
    if c.password.expose().len() > 255 {
        return too_long("password");
    }
    Ok(())
}

/// SOCKS4 reply: VN must be 0, CD 90 means granted (91–93 are the documented refusals).
fn check_reply4(vn: u8, cd: u8) -> Result<(), Error> {
    if vn != 0 {
        return Err(not_socks(&[vn, cd], "SOCKS4 reply"));
    }
    let (kind, why) = match cd {
        SOCKS4_GRANTED => return Ok(()),
        91 => (Kind::Refused, "request rejected or failed"),
        92 => (
            Kind::Auth,
            "request rejected because the proxy cannot reach identd on this machine",
        ),
        93 => (
            Kind::Auth,
            "request rejected because identd reports a different user id",
        ),
        _ => (Kind::Protocol, "unknown reply code"),
    };
    Err(Error::msg(kind, format_args!("{why} (SOCKS4 reply {cd})")))
}

/// SOCKS5 reply (RFC 1928 §6): REP 0 succeeded, 1–8 the named failures.
fn check_reply5(ver: u8, rep: u8) -> Result<(), Error> {
    if ver != SOCKS5 {
        return Err(not_socks(&[ver, rep], "SOCKS5 reply"));
    }
    if rep == 0 {
        return Ok(());
    }
    Err(Error::msg(
        Kind::Refused,
        format_args!("{} (SOCKS5 reply 0x{rep:02x})", reply5_name(rep)),
    ))
}

/// RFC 1928 §6's names for the reply codes.
pub fn reply5_name(rep: u8) -> &'static str {
    match rep {
        0x00 => "succeeded",
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused by destination host",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unassigned reply code",
    }
}

fn method_name(method: u8) -> &'static str {
    match method {
        0x00 => "no authentication",
        0x01 => "GSSAPI",
        0x02 => "username/password",
        0x03..=0x7F => "IANA assigned",
        _ => "private method",
    }
}

/// A reply whose version byte is wrong.
fn not_socks(bytes: &[u8], what: &str) -> Error {
    Error::msg(
        Kind::Protocol,
        format_args!(
            "malformed {what}: version byte 0x{:02x}, expected 0x{:02x}{}",
            bytes[0],
            match what {
                "SOCKS4 reply" => 0,
                "SOCKS5 authentication reply" => 1,
                _ => SOCKS5,
            },
            if bytes[0] == 0x04 && what.starts_with("SOCKS5") {
                " (the proxy speaks SOCKS4: use socks4a://)"
            } else {
                ""
            }
        ),
    )
}

/// BND.ADDR:BND.PORT of a complete SOCKS5 reply, printable.
fn bound_address(reply: &[u8]) -> String {
    let port = u16::from_be_bytes([reply[reply.len() - 2], reply[reply.len() - 1]]);
    let addr = &reply[4..reply.len() - 2];
    let host = match reply[3] {
        ATYP_V4 => Host::Ip(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        ATYP_V6 => {
            let octets: [u8; 16] = addr.try_into().unwrap_or([0; 16]);
            Host::Ip(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => Host::Name(printable(&addr[1..])),
    };
    format!("{host}:{port}")
}

/// What an HTTP proxy's reply to a SOCKS proxy's first bytes looks like, for the HTTP side's
/// hint: a SOCKS4 refusal (`00 5b`), a SOCKS5 answer (`05 ..`), or a SOCKS4 version byte.
/// `None` when `first` does not look like SOCKS.
pub fn looks_like_socks(first: &[u8]) -> Option<&'static str> {
    match first {
        [0x00, 90..=93, ..] => Some("SOCKS4"),
        [SOCKS5, ..] => Some("SOCKS5"),
        [0x04, ..] => Some("SOCKS4"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: crate::config::parse_host(host).unwrap(),
            port,
        }
    }

    fn creds(user: &str, pass: &str) -> Option<Credentials> {
        Some(Credentials::new(user.into(), pass.into()).unwrap())
    }

    /// Everything the handshake sent, and how it ended.
    #[derive(Debug)]
    struct Outcome {
        sent: Vec<Vec<u8>>,
        result: Result<Done, (Kind, String)>,
    }

    /// Drives a handshake with the proxy's bytes cut into `pieces`; asks for credentials with
    /// `ask` when the proxy wants them.
    fn drive(mut s: Socks, pieces: &[&[u8]], ask: Option<Credentials>) -> Outcome {
        let mut sent = vec![s.start().to_vec()];
        let mut ask = ask;
        for (i, piece) in pieces.iter().enumerate() {
            let mut step = s.feed(piece);
            loop {
                match step {
                    Err(e) => {
                        return Outcome {
                            sent,
                            result: Err((e.kind(), e.to_string())),
                        };
                    }
                    Ok(Step::Need(n)) => {
                        assert!(n >= 1);
                        break;
                    }
                    Ok(Step::Send(b)) => {
                        sent.push(b.to_vec());
                        step = s.feed(&[]);
                    }
                    Ok(Step::NeedCredentials) => {
                        step = s.authenticate(ask.take().expect("asked once"));
                    }
                    Ok(Step::Done(mut d)) => {
                        // What the proxy sent after the reply is the tunnel's, however cut.
                        d.leftover.extend(pieces[i + 1..].concat());
                        return Outcome {
                            sent,
                            result: Ok(d),
                        };
                    }
                }
            }
        }
        let e = s.eof();
        Outcome {
            sent,
            result: Err((e.kind(), e.to_string())),
        }
    }

    /// Feeds `reply` whole, byte by byte, and split in two at every offset; every way must
    /// give the same outcome.
    fn every_split(make: impl Fn() -> Socks, reply: &[u8]) -> Outcome {
        let whole = drive(make(), &[reply], None);
        let bytes: Vec<&[u8]> = reply.chunks(1).collect();
        let by_byte = drive(make(), &bytes, None);
        assert_eq!(
            format!("{whole:?}"),
            format!("{by_byte:?}"),
            "byte by byte differs"
        );
        for i in 1..reply.len() {
            let (a, b) = reply.split_at(i);
            let split = drive(make(), &[a, b], None);
            assert_eq!(
                format!("{whole:?}"),
                format!("{split:?}"),
                "split at {i} differs"
            );
        }
        whole
    }

    /// Feeds the reply the way `--fdpass` reads it: never more than `wanted()` at a time.
    fn exact(mut s: Socks, reply: &[u8]) -> (usize, Result<Done, Kind>) {
        let _ = s.start();
        let mut at = 0;
        while at < reply.len() {
            let n = s.wanted().min(reply.len() - at);
            match s.feed(&reply[at..at + n]) {
                Ok(Step::Done(d)) => return (at + n, Ok(d)),
                Ok(Step::Need(_)) | Ok(Step::Send(_)) => at += n,
                Ok(Step::NeedCredentials) => panic!("no credentials in this test"),
                Err(e) => return (at + n, Err(e.kind())),
            }
        }
        (at, Err(Kind::Protocol))
    }

    /// A table row's expectation: the tunnel's first bytes, or the failure's kind and text.
    type Want<T, M> = Result<T, (Kind, M)>;
    type Row4 = (&'static [u8], Want<&'static [u8], &'static str>);
    type Row5 = (Vec<u8>, Want<(&'static str, &'static [u8]), String>);

    const V4_OK: &[u8] = &[0, 90, 0, 22, 10, 0, 0, 1];
    const V5_OK_V4: &[u8] = &[5, 0, 0, 1, 192, 0, 2, 7, 0x1f, 0x90];

    #[test]
    fn socks4_request_carries_port_address_and_user() {
        let s = Socks::new(Version::V4, &ep("192.0.2.7", 22), creds("alice", "pw")).unwrap();
        assert_eq!(
            s.start().to_vec(),
            b"\x04\x01\x00\x16\xc0\x00\x02\x07alice\x00".to_vec()
        );
    }

    #[test]
    fn socks4a_sends_the_name_after_a_marker_address() {
        let s = Socks::new(Version::V4a, &ep("git.example", 443), None).unwrap();
        assert_eq!(
            s.start().to_vec(),
            b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00git.example\x00".to_vec()
        );
    }

    #[test]
    fn socks4_refuses_names_and_ipv6() {
        let e = Socks::new(Version::V4, &ep("h.example", 22), None).unwrap_err();
        assert_eq!(e.kind(), Kind::Usage);
        assert!(e.to_string().contains("socks4a://"), "{e}");
        let e = Socks::new(Version::V4a, &ep("::1", 22), None).unwrap_err();
        assert!(e.to_string().contains("socks5"), "{e}");
    }

    #[test]
    fn socks5_offers_user_pass_only_with_credentials() {
        let t = ep("h.example", 22);
        assert_eq!(
            Socks::new(Version::V5h, &t, None).unwrap().start().to_vec(),
            vec![5, 1, 0]
        );
        assert_eq!(
            Socks::new(Version::V5h, &t, creds("u", "p"))
                .unwrap()
                .start()
                .to_vec(),
            vec![5, 2, 0, 2]
        );
    }

    #[test]
    fn socks5_requests_each_address_type() {
        let cases: &[(&str, &[u8])] = &[
            ("192.0.2.7", &[5, 1, 0, 1, 192, 0, 2, 7, 0, 22]),
            (
                "2001:db8::1",
                &[
                    5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 22,
                ],
            ),
            ("h.example", b"\x05\x01\x00\x03\x09h.example\x00\x16"),
        ];
        for (host, request) in cases {
            let out = drive(
                Socks::new(Version::V5h, &ep(host, 22), None).unwrap(),
                &[&[5, 0]],
                None,
            );
            assert_eq!(out.sent[1], request.to_vec(), "{host}");
        }
    }

    #[test]
    fn socks5_refuses_names_over_255_bytes() {
        let long = Endpoint {
            host: Host::Name(format!("{}.example", "a".repeat(250))),
            port: 22,
        };
        let e = Socks::new(Version::V5h, &long, None).unwrap_err();
        assert_eq!(e.kind(), Kind::Usage);
    }

    #[test]
    fn socks4_replies_table() {
        let cases: &[Row4] = &[
            (V4_OK, Ok(b"")),
            (b"\x00\x5a\x00\x16\x0a\x00\x00\x01SSH-2.0", Ok(b"SSH-2.0")),
            // Some servers put the version 4 in VN: not what the protocol says; named.
            (
                &[4, 90, 0, 0, 0, 0, 0, 0],
                Err((Kind::Protocol, "malformed SOCKS4 reply: version byte 0x04")),
            ),
            (
                &[0, 91, 0, 0, 0, 0, 0, 0],
                Err((
                    Kind::Refused,
                    "request rejected or failed (SOCKS4 reply 91)",
                )),
            ),
            (
                &[0, 92, 0, 0, 0, 0, 0, 0],
                Err((
                    Kind::Auth,
                    "cannot reach identd on this machine (SOCKS4 reply 92)",
                )),
            ),
            (
                &[0, 93, 0, 0, 0, 0, 0, 0],
                Err((
                    Kind::Auth,
                    "identd reports a different user id (SOCKS4 reply 93)",
                )),
            ),
            (
                &[0, 17, 0, 0, 0, 0, 0, 0],
                Err((Kind::Protocol, "unknown reply code (SOCKS4 reply 17)")),
            ),
            // A refusal is understood from its first two bytes, even when the proxy closes.
            (
                &[0, 91],
                Err((
                    Kind::Refused,
                    "request rejected or failed (SOCKS4 reply 91)",
                )),
            ),
            (
                &[0, 90, 0],
                Err((Kind::Protocol, "in the middle of its reply (after 3 bytes)")),
            ),
            (
                b"HTTP/1.1 400 Bad Request\r\n\r\n",
                Err((Kind::Protocol, "it is an HTTP proxy: give it as http://")),
            ),
        ];
        for (reply, want) in cases {
            let make = || Socks::new(Version::V4, &ep("10.0.0.1", 22), None).unwrap();
            let out = every_split(make, reply);
            match (&out.result, want) {
                (Ok(d), Ok(left)) => assert_eq!(d.leftover, left.to_vec(), "{reply:?}"),
                (Err((k, m)), Err((wk, wm))) => {
                    assert_eq!(k, wk, "{reply:?}: {m}");
                    assert!(m.contains(wm), "{reply:?}: {m:?} lacks {wm:?}");
                }
                (got, want) => panic!("{reply:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn socks5_replies_table() {
        let mut cases: Vec<Row5> = vec![
            (
                [&[5, 0][..], V5_OK_V4].concat(),
                Ok(("192.0.2.7:8080", b"")),
            ),
            (
                [&[5, 0][..], V5_OK_V4, b"SSH-2.0-x\r\n"].concat(),
                Ok(("192.0.2.7:8080", b"SSH-2.0-x\r\n")),
            ),
            (
                [
                    &[5, 0, 5, 0, 0, 4][..],
                    &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    &[0, 22],
                ]
                .concat(),
                Ok(("[2001:db8::1]:22", b"")),
            ),
            (
                [&[5, 0, 5, 0, 0, 3, 7][..], b"gw.test", &[4, 0], b"x"].concat(),
                Ok(("gw.test:1024", b"x")),
            ),
            (
                vec![5, 0xff],
                Err((
                    Kind::Auth,
                    "the proxy requires authentication (SOCKS5 method 0xff".into(),
                )),
            ),
            (
                vec![5, 0x01],
                Err((
                    Kind::Protocol,
                    "method 0x01 (GSSAPI), which was not offered".into(),
                )),
            ),
            (
                vec![4, 0],
                Err((
                    Kind::Protocol,
                    "(the proxy speaks SOCKS4: use socks4a://)".into(),
                )),
            ),
            (
                b"HTTP/1.0 400 Bad request\r\n\r\n".to_vec(),
                Err((
                    Kind::Protocol,
                    "answered in HTTP, not SOCKS: \"HTTP/1.0 400 Bad request\"".into(),
                )),
            ),
            (
                vec![5, 0, 5, 0, 0, 9, 0, 0],
                Err((
                    Kind::Protocol,
                    "malformed SOCKS5 reply: unknown address type 0x09".into(),
                )),
            ),
            (
                vec![5, 0, 6, 0],
                Err((
                    Kind::Protocol,
                    "malformed SOCKS5 reply: version byte 0x06".into(),
                )),
            ),
            (
                vec![],
                Err((
                    Kind::Protocol,
                    "closed the connection without answering the SOCKS5 greeting".into(),
                )),
            ),
            // Closed after reading the request: how `ssh -D` refuses.
            (
                vec![5, 0],
                Err((
                    Kind::Refused,
                    "closed the connection without replying to the request".into(),
                )),
            ),
            (
                vec![5, 0, 5, 0, 0, 1, 1],
                Err((
                    Kind::Protocol,
                    "in the middle of its reply (after 5 bytes)".into(),
                )),
            ),
        ];
        // Every RFC 1928 reply code, each a refusal that names it; a short reply suffices.
        for rep in 1..=9u8 {
            let name = reply5_name(rep);
            cases.push((
                vec![5, 0, 5, rep, 0, 1, 0, 0, 0, 0, 0, 0],
                Err((Kind::Refused, format!("{name} (SOCKS5 reply 0x{rep:02x})"))),
            ));
            cases.push((
                vec![5, 0, 5, rep],
                Err((Kind::Refused, format!("{name} (SOCKS5 reply 0x{rep:02x})"))),
            ));
        }
        for (reply, want) in &cases {
            let make = || Socks::new(Version::V5h, &ep("h.example", 22), None).unwrap();
            let out = if reply.is_empty() {
                drive(make(), &[], None)
            } else {
                every_split(make, reply)
            };
            match (&out.result, want) {
                (Ok(d), Ok((bound, left))) => {
                    assert_eq!(d.bound.as_deref(), Some(*bound), "{reply:?}");
                    assert_eq!(d.leftover, left.to_vec(), "{reply:?}");
                }
                (Err((k, m)), Err((wk, wm))) => {
                    assert_eq!(k, wk, "{reply:?}: {m}");
                    assert!(m.contains(wm.as_str()), "{reply:?}: {m:?} lacks {wm:?}");
                }
                (got, want) => panic!("{reply:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn reply_codes_have_their_rfc_names() {
        assert_eq!(reply5_name(5), "connection refused by destination host");
        assert_eq!(reply5_name(2), "connection not allowed by ruleset");
        assert_eq!(reply5_name(0x42), "unassigned reply code");
    }

    #[test]
    fn socks5_user_pass_subnegotiation_table() {
        let make =
            || Socks::new(Version::V5, &ep("192.0.2.7", 22), creds("alice", "s3:cr@t")).unwrap();
        let ok = [&[5, 2, 1, 0][..], V5_OK_V4].concat();
        let out = every_split(make, &ok);
        assert!(out.result.is_ok(), "{out:?}");
        assert_eq!(out.sent[1], b"\x01\x05alice\x07s3:cr@t".to_vec());
        assert_eq!(out.sent[2], vec![5, 1, 0, 1, 192, 0, 2, 7, 0, 22]);
        // A server that echoes version 5 in the auth reply is tolerated.
        let out = every_split(make, &[&[5, 2, 5, 0][..], V5_OK_V4].concat());
        assert!(out.result.is_ok(), "{out:?}");
        // Rejected: authentication failure naming the user, never the password.
        let out = every_split(make, &[5, 2, 1, 1]);
        let (kind, msg) = out.result.unwrap_err();
        assert_eq!(kind, Kind::Auth);
        assert!(
            msg.contains("\"alice\"") && !msg.contains("s3:cr@t"),
            "{msg}"
        );
        // Closed after the credentials: how dante says no.
        let out = drive(make(), &[&[5, 2]], None);
        let (kind, msg) = out.result.unwrap_err();
        assert_eq!(kind, Kind::Protocol);
        assert!(msg.contains("probably rejected them"), "{msg}");
        // Both methods refused although we offered credentials.
        let (kind, _) = every_split(make, &[5, 0xff]).result.unwrap_err();
        assert_eq!(kind, Kind::Auth);
    }

    #[test]
    fn proxy_choosing_user_pass_unoffered_asks_for_credentials() {
        let s = Socks::new(Version::V5h, &ep("h.example", 22), None).unwrap();
        let out = drive(s, &[&[5, 2], &[1, 0], V5_OK_V4], creds("bob", "pw"));
        assert!(out.result.is_ok(), "{out:?}");
        assert_eq!(out.sent[1], b"\x01\x03bob\x02pw".to_vec());
    }

    #[test]
    fn no_acceptable_method_without_credentials_says_they_are_wanted() {
        let mut s = Socks::new(Version::V5h, &ep("h.example", 22), None).unwrap();
        let _ = s.start();
        let e = s.feed(&[5, 0xff]).unwrap_err();
        assert_eq!(e.kind(), Kind::Auth);
        assert!(s.wants_credentials());
    }

    #[test]
    fn exact_reads_never_take_a_tunnel_byte() {
        let tail = b"TUNNEL";
        let cases: Vec<(Version, &str, Vec<u8>)> = vec![
            (Version::V4, "10.0.0.1", [V4_OK, tail].concat()),
            (Version::V4a, "h.example", [V4_OK, tail].concat()),
            (
                Version::V5,
                "10.0.0.1",
                [&[5, 0][..], V5_OK_V4, tail].concat(),
            ),
            (
                Version::V5h,
                "h.example",
                [&[5, 0, 5, 0, 0, 3, 7][..], b"gw.test", &[4, 0], tail].concat(),
            ),
            (
                Version::V5h,
                "h.example",
                [&[5, 0, 5, 0, 0, 4][..], &[0; 16], &[0, 22], tail].concat(),
            ),
        ];
        for (v, host, reply) in cases {
            let (used, r) = exact(Socks::new(v, &ep(host, 22), None).unwrap(), &reply);
            let d = r.unwrap_or_else(|k| panic!("{v}: {k:?}"));
            assert!(d.leftover.is_empty(), "{v}: {:?}", d.leftover);
            assert_eq!(&reply[used..], tail, "{v}");
        }
    }

    #[test]
    fn long_credentials_are_refused_before_sending() {
        let long = "x".repeat(256);
        let e = Socks::new(Version::V5h, &ep("h.example", 22), creds(&long, "p")).unwrap_err();
        assert_eq!(e.kind(), Kind::Usage);
        let e = Socks::new(Version::V5h, &ep("h.example", 22), creds("u", &long)).unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        assert!(!e.to_string().contains(&long));
    }

    #[test]
    fn socks_bytes_are_recognised_for_the_http_side() {
        assert_eq!(looks_like_socks(&[0, 91]), Some("SOCKS4"));
        assert_eq!(looks_like_socks(&[5, 0xff]), Some("SOCKS5"));
        assert_eq!(looks_like_socks(b"HTTP/1.1 200"), None);
    }

    /// A tiny xorshift generator: reproducible inputs without a dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_replies_never_panic_and_every_split_agrees() {
        let mut seed = 0x5eed_50c5_0000_0001u64;
        // Plausible starts, so that the random tail reaches the deeper states.
        let prefixes: [&[u8]; 6] = [
            &[],
            &[5, 0],
            &[5, 2, 1, 0],
            &[5, 0, 5, 0, 0],
            &[0, 90],
            b"HTTP/",
        ];
        for round in 0..1500 {
            let prefix = prefixes[round % prefixes.len()];
            let len = (xorshift(&mut seed) % 24) as usize;
            let mut reply = prefix.to_vec();
            reply.extend((0..len).map(|_| xorshift(&mut seed) as u8));
            for version in [Version::V4a, Version::V5h] {
                let make = || Socks::new(version, &ep("h.example", 22), creds("u", "p")).unwrap();
                if reply.is_empty() {
                    let _ = drive(make(), &[], None);
                } else {
                    let _ = every_split(make, &reply);
                }
            }
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let s = Socks::new(Version::V5h, &ep("h.example", 22), creds("u", "hunter2")).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
