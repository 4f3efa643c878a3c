//! Fuzzing harnesses: one function per target, each taking the fuzzer's bytes and asserting
//! what must hold for every input (no panic, requests well formed, no secret in a request or
//! an error, errors on one line). The `fuzz/` crate calls them from thin `fuzz_target!`s;
//! `cargo test` replays the checked-in corpora through them, so a harness that no longer
//! compiles or a seed that fails is caught without cargo-fuzz.
//!
//! Compiled only for tests and with the `fuzzing` feature: this is not public API.
//! To add a target, see `fuzz/README.md`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::rc::Rc;

use base64::Engine;

use crate::auth::{self, Scheme, digest, ntlm};
use crate::config::{Endpoint, Host};
use crate::credentials::{Credentials, Secret};
use crate::error::Error;
use crate::handshake::{self, Conn, Negotiation, ReplyReader, Request};

/// The password every harness authenticates with. It holds what tends to break quoting and
/// redaction (`:`, `@`, `/`, `%`, a quote, a backslash, non-ASCII) and a marker long enough
/// that finding it in output is never a coincidence.
pub const PASSWORD: &str = "pa:ss w\u{f6}rd\"\\%@/#Sekr1tPw";
/// The marker that stands for a password in fuzzer-written text (see [`config`]).
pub const MARKER: &str = "Sekr1tPw";
/// Users: a plain one, and a down-level NTLM name with non-ASCII.
const USERS: [&str; 2] = ["alice", "CORP\\j\u{fc}rgen"];

fn credentials(user: &str) -> Credentials {
    Credentials::new(user.to_owned(), PASSWORD.to_owned()).expect("valid test credentials")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// What may not be in a line for stderr: line breaks and other controls (C0, DEL, C1), and
/// the bidi controls that reorder what a terminal shows. `text` is checked as the one error
/// line prints it (escaped on the way out, whatever its source forgot).
fn assert_one_clean_line(what: &str, text: &str) {
    let printed = crate::diag::escape(text);
    if let Some(c) = printed
        .chars()
        .find(|&c| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    {
        panic!("{what} holds the control character {c:?}: {printed:?}");
    }
}

/// An error as stderr shows it: one line, nothing secret.
fn check_error(e: &Error, secrets: &[&[u8]]) {
    for text in [e.to_string(), format!("{e:#}"), format!("{e:?}")] {
        assert_one_clean_line("the error", &text);
        for s in secrets {
            assert!(
                !contains(text.as_bytes(), s),
                "the error shows a secret ({:?}): {text:?}",
                String::from_utf8_lossy(s)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// negotiate: the whole CONNECT exchange against a scripted proxy.

/// One step of a scripted connection.
enum Event {
    Data(Vec<u8>),
    Fail(io::ErrorKind),
}

/// What the proxy does on one connection.
#[derive(Default)]
struct Script {
    events: VecDeque<Event>,
    write_fails: bool,
}

/// Splits the fuzzer's bytes into connections and reads. `0xFF` followed by one of these is
/// a marker, any other `0xFF` is data:
/// `|` ends a read, `#` closes the connection (what follows is for the next one),
/// `R`/`I`/`T` make one read fail with ConnectionReset/Interrupted/TimedOut, and
/// `W` makes this connection's writes fail with BrokenPipe.
fn parse_script(mut data: &[u8]) -> Vec<Script> {
    let mut conns = vec![Script::default()];
    let mut chunk = Vec::new();
    fn flush(conns: &mut [Script], chunk: &mut Vec<u8>) {
        if !chunk.is_empty() {
            let last = conns.last_mut().expect("one connection at least");
            last.events.push_back(Event::Data(std::mem::take(chunk)));
        }
    }
    while let Some((&b, rest)) = data.split_first() {
        data = rest;
        let marker = match (b, data.first()) {
            (0xFF, Some(&m)) if b"|#RITW".contains(&m) => m,
            _ => {
                chunk.push(b);
                continue;
            }
        };
        data = &data[1..];
        flush(&mut conns, &mut chunk);
        let last = conns.last_mut().expect("one connection at least");
        match marker {
            b'|' => {}
            b'#' => conns.push(Script::default()),
            b'R' => last
                .events
                .push_back(Event::Fail(io::ErrorKind::ConnectionReset)),
            b'I' => last
                .events
                .push_back(Event::Fail(io::ErrorKind::Interrupted)),
            b'T' => last.events.push_back(Event::Fail(io::ErrorKind::TimedOut)),
            _ => last.write_fails = true,
        }
    }
    flush(&mut conns, &mut chunk);
    conns
}

/// The bytes written on one connection.
type Log = Rc<RefCell<Vec<u8>>>;

/// A connection whose reads come from a script and whose writes are logged.
struct FakeConn {
    script: Script,
    written: Log,
    peeks: bool,
}

impl Read for FakeConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.script.events.front_mut() {
            None => Ok(0),
            Some(Event::Fail(kind)) => {
                let kind = *kind;
                self.script.events.pop_front();
                Err(kind.into())
            }
            Some(Event::Data(d)) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                d.drain(..n);
                if d.is_empty() {
                    self.script.events.pop_front();
                }
                Ok(n)
            }
        }
    }
}

impl Write for FakeConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.script.write_fails {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.written.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for FakeConn {
    fn peek(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        if !self.peeks {
            return None;
        }
        Some(match self.script.events.front() {
            None => Ok(0),
            Some(Event::Fail(kind)) => {
                let kind = *kind;
                self.script.events.pop_front();
                Err(kind.into())
            }
            Some(Event::Data(d)) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
        })
    }
}

/// The whole handshake. The first byte sets the scene: bits 0-1 the scheme `--proxy-auth`
/// forces (any, Basic, Digest, NTLM), bits 2-3 where credentials come from (given; asked and
/// answered; asked with no way to ask; asking fails), bit 4 the user, bit 5 a connection that
/// peeks (`--fdpass`), bit 6 an IPv6 target, bit 7 a User-Agent and an extra header. The rest
/// is the proxy's side, in the format of [`parse_script`].
pub fn negotiate(data: &[u8]) {
    let Some((&flags, script)) = data.split_first() else {
        return;
    };
    let forced = [
        None,
        Some(Scheme::Basic),
        Some(Scheme::Digest),
        Some(Scheme::Ntlm),
    ][usize::from(flags & 3)];
    let user = USERS[usize::from(flags >> 4 & 1)];
    let peeks = flags & 0x20 != 0;
    let target = if flags & 0x40 != 0 {
        Endpoint {
            host: Host::Ip("2001:db8::1".parse().expect("an IPv6 literal")),
            port: 22,
        }
    } else {
        Endpoint {
            host: Host::Name("git.example.com".into()),
            port: 22,
        }
    };
    let extra = [("X-Trace".to_owned(), "fuzz 1".to_owned())];
    let (user_agent, headers): (Option<&str>, &[(String, String)]) = if flags & 0x80 != 0 {
        (Some("gimlet/fuzz"), &extra)
    } else {
        (None, &[])
    };
    let creds = credentials(user);
    let basic = creds.basic_authorization();
    let basic_b64 = basic.expose().trim_start_matches("Basic ").to_owned();
    // A proxy that sends the secret back may see it quoted; only check what it cannot know.
    let secret_known =
        contains(script, PASSWORD.as_bytes()) || contains(script, basic_b64.as_bytes());

    let mut conns = parse_script(script).into_iter();
    let logs: Rc<RefCell<Vec<Log>>> = Rc::default();
    let open = |script: Script| {
        let written = Rc::new(RefCell::new(Vec::new()));
        logs.borrow_mut().push(written.clone());
        FakeConn {
            script,
            written,
            peeks,
        }
    };
    let first = open(conns.next().unwrap_or_default());
    let mut reconnect = || match conns.next() {
        Some(s) => Ok(open(s)),
        None => Err(Error::new(
            crate::error::Kind::Unreachable,
            io::Error::from(io::ErrorKind::ConnectionRefused),
        )
        .context("connecting to proxy proxy.example:3128")),
    };
    let asked = (flags >> 2) & 3;
    let mut ask = || match asked {
        1 => Ok(Some(credentials(user))),
        2 => Ok(None),
        _ => Err(Error::msg(
            crate::error::Kind::Auth,
            "asking for credentials: no terminal",
        )),
    };
    let result = handshake::negotiate(
        first,
        Negotiation {
            request: Request {
                target: &target,
                user_agent,
                headers,
            },
            proxy: "proxy.example:3128",
            credentials: (asked == 0).then(|| credentials(user)),
            scheme: forced,
            reconnect: &mut reconnect,
            ask: &mut ask,
            negotiate: None,
        },
    );
    let secrets: [&[u8]; 2] = [PASSWORD.as_bytes(), basic_b64.as_bytes()];
    match &result {
        Ok(established) => assert!(
            established.reply.is_success(),
            "a tunnel opened on {:?}",
            established.reply.status_line
        ),
        Err(e) if !secret_known => check_error(e, &secrets),
        Err(e) => check_error(e, &[]),
    }
    drop(result);
    let request = Request {
        target: &target,
        user_agent,
        headers,
    };
    for log in logs.borrow().iter() {
        check_requests(
            &log.borrow(),
            &request,
            user,
            forced,
            &basic_b64,
            secret_known,
        );
    }
}

/// Every request written on one connection: complete heads, one after the other, each a
/// well-formed CONNECT with at most one well-formed `Proxy-Authorization` and no secret in
/// clear.
fn check_requests(
    mut written: &[u8],
    request: &Request<'_>,
    user: &str,
    forced: Option<Scheme>,
    basic_b64: &str,
    secret_known: bool,
) {
    let target = request.target.to_string();
    if !secret_known {
        assert!(
            !contains(written, PASSWORD.as_bytes()),
            "the password went out in clear: {:?}",
            String::from_utf8_lossy(written)
        );
    }
    while !written.is_empty() {
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut storage);
        let len = match req.parse(written) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "a request is not a complete HTTP head ({other:?}): {:?}",
                String::from_utf8_lossy(written)
            ),
        };
        assert_eq!(req.method, Some("CONNECT"));
        assert_eq!(req.path, Some(target.as_str()));
        assert_eq!(req.version, Some(1));
        let auth: Vec<&httparse::Header> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("Proxy-Authorization"))
            .collect();
        assert!(auth.len() <= 1, "several Proxy-Authorization fields");
        for h in req.headers.iter() {
            if !h.name.eq_ignore_ascii_case("Proxy-Authorization") && !secret_known {
                assert!(
                    !contains(h.value, basic_b64.as_bytes()),
                    "credentials in {}",
                    h.name
                );
            }
        }
        if let Some(h) = auth.first() {
            let value = std::str::from_utf8(h.value).expect("an ASCII Proxy-Authorization");
            check_authorization(value, &target, user, forced, basic_b64);
            // `-vv` shows the head with the credential redacted.
            let shown = request.redacted(Some(&Secret::new(value.to_owned())));
            assert!(
                !shown.contains(PASSWORD) && !shown.contains(basic_b64),
                "-vv shows the credentials: {shown:?}"
            );
            let scheme = value.split(' ').next().unwrap_or("");
            if !scheme.is_empty() {
                assert!(
                    !shown.contains(value.strip_prefix(scheme).unwrap_or(value).trim()),
                    "-vv shows the credentials: {shown:?}"
                );
            }
        }
        written = &written[len..];
    }
}

fn check_authorization(
    value: &str,
    target: &str,
    user: &str,
    forced: Option<Scheme>,
    basic_b64: &str,
) {
    let (scheme, rest) = value
        .split_once(' ')
        .unwrap_or_else(|| panic!("no scheme in Proxy-Authorization {value:?}"));
    if let Some(f) = forced {
        assert_eq!(scheme, f.name(), "--proxy-auth {f} not honoured");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    match scheme {
        "Basic" => assert_eq!(rest, basic_b64, "Basic carries other credentials"),
        "NTLM" => {
            let m = b64.decode(rest).expect("NTLM message in base64");
            assert!(m.starts_with(b"NTLMSSP\0"), "not an NTLM message");
            assert!(
                matches!(m.get(8..12), Some([1, 0, 0, 0] | [3, 0, 0, 0])),
                "an NTLM message other than negotiate or authenticate"
            );
            if m[8] == 3 {
                check_ntlm_authenticate(&m, user);
            }
        }
        "Digest" => {
            let parsed = auth::parse_challenges([value.as_bytes()]);
            assert_eq!(
                parsed.len(),
                1,
                "Digest credentials read back as {parsed:?}"
            );
            let c = &parsed[0];
            assert_eq!(c.param("uri"), Some(target), "Digest uri");
            assert!(c.param("username").is_some() || c.param("username*").is_some());
            assert!(c.param("realm").is_some() && c.param("nonce").is_some());
            let response = c.param("response").expect("a Digest response");
            assert!(
                matches!(response.len(), 32 | 64)
                    && response.bytes().all(|b| b.is_ascii_hexdigit()),
                "Digest response {response:?}"
            );
        }
        other => panic!("Proxy-Authorization with scheme {other:?}"),
    }
}

/// An AUTHENTICATE_MESSAGE: every buffer inside the message, the password in none of them.
fn check_ntlm_authenticate(m: &[u8], user: &str) {
    assert!(m.len() >= 64, "authenticate message of {} bytes", m.len());
    for field in 0..6 {
        let at = 12 + field * 8;
        let len = usize::from(u16::from_le_bytes([m[at], m[at + 1]]));
        let offset = u32::from_le_bytes([m[at + 4], m[at + 5], m[at + 6], m[at + 7]]) as usize;
        assert!(offset + len <= m.len(), "NTLM field {field} out of bounds");
    }
    let utf16: Vec<u8> = PASSWORD.encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert!(!contains(m, PASSWORD.as_bytes()) && !contains(m, &utf16));
    let name = user.rsplit('\\').next().unwrap_or(user);
    let name16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert!(
        contains(m, &name16) || contains(m, name.as_bytes()),
        "NTLM user missing"
    );
}

// ---------------------------------------------------------------------------------------------
// reply_head: the reply reader fed in pieces must agree with the reader fed whole.

/// The first byte seeds the split points; the rest is the proxy's reply.
pub fn reply_head(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = outcome(&[input]);
    // Cut points from the seed: every `step` bytes, plus one at `seed`.
    let step = usize::from(seed % 17) + 1;
    let mut cuts: Vec<usize> = (0..input.len()).step_by(step).collect();
    cuts.push(usize::from(seed).min(input.len()));
    cuts.push(input.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut from = 0;
    for &to in &cuts {
        pieces.push(&input[from..to]);
        from = to;
    }
    let split = outcome(&pieces);
    match (&whole, &split) {
        // An early "not HTTP" quotes only what had arrived.
        (Err(handshake::ReplyError::NotHttp(_)), Err(handshake::ReplyError::NotHttp(_))) => {}
        _ => assert_eq!(whole, split, "split at {cuts:?}"),
    }
    if let Ok(Some((reply, _, _))) = &whole {
        assert_one_clean_line("a status line shown with {:?}", &format!("{reply:?}"));
    }
    if let Err(e) = &whole {
        assert_one_clean_line("the reply error", &e.to_string());
    }
}

/// ("version code status line", headers, leftover), or None when the proxy closed before
/// sending anything but blank lines.
type Outcome = Result<Option<(String, Vec<(String, Vec<u8>)>, Vec<u8>)>, handshake::ReplyError>;

fn outcome(pieces: &[&[u8]]) -> Outcome {
    let mut reader = ReplyReader::new(Vec::new());
    for (i, piece) in pieces.iter().enumerate() {
        if let Some((reply, mut rest)) = reader.feed(piece)? {
            for later in &pieces[i + 1..] {
                rest.extend_from_slice(later);
            }
            let shown = format!("{} {} {}", reply.version, reply.code, reply.status_line);
            return Ok(Some((shown, reply.headers, rest)));
        }
    }
    match reader.eof() {
        handshake::ReplyError::ClosedBeforeReply => Ok(None),
        e => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// digest: challenge parsing, scheme choice and the response.

/// Whether httparse lets `value` through as a header field value (RFC 9110 §5.5, with the
/// obs-fold gimlet accepts in replies): only such values reach the challenge parser.
fn is_field_value(value: &[u8]) -> bool {
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\t' | b' '..=b'~' | 0x80..=0xFF => i += 1,
            b'\r'
                if value.get(i + 1) == Some(&b'\n')
                    && matches!(value.get(i + 2), Some(b' ' | b'\t')) =>
            {
                i += 3
            }
            _ => return false,
        }
    }
    true
}

/// `Proxy-Authenticate` values separated by NUL bytes.
pub fn digest(data: &[u8]) {
    let values: Vec<&[u8]> = data
        .split(|&b| b == 0)
        .filter(|v| is_field_value(v))
        .collect();
    let challenges = auth::parse_challenges(values.iter().copied());
    let target = auth::Target {
        method: "CONNECT",
        uri: "[2001:db8::1]:22",
    };
    for c in challenges
        .iter()
        .filter(|c| c.scheme.eq_ignore_ascii_case("Digest"))
    {
        let p = match digest::Params::from_challenge(c) {
            Ok(p) => p,
            Err(e) => {
                assert_one_clean_line("the Digest error", &format!("{e:#}"));
                continue;
            }
        };
        for user in USERS {
            let creds = credentials(user);
            let value = match digest::authorization(&p, &creds, &target, "0a4f113b") {
                Ok(v) => v,
                Err(e) => {
                    assert_one_clean_line("the Digest error", &format!("{e:#}"));
                    continue;
                }
            };
            check_digest_value(value.expose(), &p, user, target.uri);
        }
    }
    for forced in [
        None,
        Some(Scheme::Basic),
        Some(Scheme::Digest),
        Some(Scheme::Ntlm),
    ] {
        match auth::choose(&challenges, forced) {
            Ok((scheme, c)) => {
                assert!(
                    forced.is_none_or(|f| f == scheme),
                    "{forced:?} not honoured"
                );
                assert!(c.scheme.eq_ignore_ascii_case(scheme.name()));
                if scheme == Scheme::Digest {
                    assert!(digest::Params::from_challenge(c).is_ok());
                }
            }
            Err(auth::NoScheme::Offered(why) | auth::NoScheme::Digest(why)) => {
                assert_one_clean_line("why no scheme fits", &why)
            }
        }
    }
}

/// The `Proxy-Authorization` value: a valid field value that reads back as what was meant.
fn check_digest_value(value: &str, p: &digest::Params, user: &str, uri: &str) {
    assert!(value.starts_with("Digest "), "{value:?}");
    assert!(
        value
            .bytes()
            .all(|b| matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xFF)),
        "not a field value: {value:?}"
    );
    assert!(
        !value.contains(PASSWORD),
        "the password in clear: {value:?}"
    );
    let back = auth::parse_challenges([value.as_bytes()]);
    assert_eq!(back.len(), 1, "{value:?} reads back as {back:?}");
    let c = &back[0];
    assert_eq!(
        c.param("realm"),
        Some(p.realm.as_str()),
        "realm in {value:?}"
    );
    assert_eq!(
        c.param("nonce"),
        Some(p.nonce.as_str()),
        "nonce in {value:?}"
    );
    assert_eq!(c.param("uri"), Some(uri), "uri in {value:?}");
    assert_eq!(
        c.param("opaque"),
        p.opaque.as_deref(),
        "opaque in {value:?}"
    );
    if !p.userhash && user.is_ascii() {
        assert_eq!(c.param("username"), Some(user), "username in {value:?}");
    }
    let response = c.param("response").unwrap_or_default();
    let want = match p.algorithm {
        digest::Algorithm::Md5 => 32,
        digest::Algorithm::Sha256 | digest::Algorithm::Sha512_256 => 64,
    };
    assert!(
        response.len() == want && response.bytes().all(|b| b.is_ascii_hexdigit()),
        "response in {value:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// ntlm: the server's CHALLENGE_MESSAGE and the AUTHENTICATE_MESSAGE built from it.

/// A decoded type 2 message.
pub fn ntlm(data: &[u8]) {
    let Ok(challenge) = ntlm::Challenge::parse(data) else {
        return;
    };
    // The NTLMv2 response carries the server's target info back: a server that put the
    // password there gets it back, as it may.
    // (Without its last byte, a zero that the padding after the target info can supply.)
    let utf16: Vec<u8> = PASSWORD.encode_utf16().flat_map(u16::to_le_bytes).collect();
    if contains(data, PASSWORD.as_bytes()) || contains(data, &utf16[..utf16.len() - 1]) {
        return;
    }
    for user in USERS {
        let m = ntlm::authenticate_message(
            &challenge,
            &credentials(user),
            [7; 8],
            0x01d9_0000_0000_0000,
        );
        assert!(m.starts_with(b"NTLMSSP\0") && m[8..12] == [3, 0, 0, 0]);
        check_ntlm_authenticate(&m, user);
        // The header's lengths are those of the buffers laid out after it.
        let total: usize = (0..6)
            .map(|f| usize::from(u16::from_le_bytes([m[12 + f * 8], m[13 + f * 8]])))
            .sum();
        assert_eq!(
            64 + total,
            m.len(),
            "NTLM buffer lengths disagree with the message"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// netrc

/// The machine name on the first line, the file after it. `\x07` in the file stands for the
/// password marker.
pub fn netrc(data: &[u8]) {
    let text = String::from_utf8_lossy(data).replace('\u{7}', MARKER);
    let (machine, file) = text.split_once('\n').unwrap_or((&text, ""));
    let Some((login, password)) = crate::credentials::netrc_lookup(file, machine) else {
        return;
    };
    let Some(password) = password else { return };
    // As read_netrc does: the entry becomes credentials, or an error naming the user only.
    if let Err(e) = Credentials::new(login.clone(), password.to_string()) {
        let e = format!("{e:#}");
        assert_one_clean_line("the netrc error", &e);
        if password.contains(MARKER) && !login.contains(MARKER) {
            assert!(
                !e.contains(MARKER),
                "the netrc error shows the password: {e:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config: argv and environment to Config.

/// Options whose value is never a proxy URL or credentials: every option that takes a value
/// but `-p`/`--proxy` and `-U`/`--proxy-user`. Read from the clap definition, so an option
/// added later is covered without touching this harness.
fn other_value_options() -> &'static [String] {
    use clap::CommandFactory;
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        crate::cli::Cli::command()
            .get_arguments()
            .filter(|a| a.get_action().takes_values())
            .filter(|a| !matches!(a.get_id().as_str(), "proxy" | "proxy_user"))
            .flat_map(|a| {
                let short = a.get_short().map(|c| format!("-{c}"));
                let long = a.get_long().map(|l| format!("--{l}"));
                short.into_iter().chain(long)
            })
            .collect()
    })
}

/// Where the password marker may be in `arg` (given the argument before it): byte ranges that
/// hold a secret. Only markers inside these are checked, so a marker the fuzzer put in a host
/// name (which errors rightly quote) is not mistaken for a password.
fn secret_ranges(prev: Option<&str>, arg: &str) -> Vec<std::ops::Range<usize>> {
    if prev.is_some_and(|p| other_value_options().iter().any(|o| o == p)) {
        return Vec::new();
    }
    let user_value = match prev {
        // clap takes no value that starts with '-': that is an option of its own.
        Some("-U" | "--proxy-user") if !arg.starts_with('-') => Some(0),
        _ => arg
            .strip_prefix("--proxy-user=")
            .map(|_| "--proxy-user=".len()),
    };
    if let Some(start) = user_value {
        // USER:PASSWORD: everything after the first ':'.
        return arg[start..]
            .find(':')
            .map(|c| start + c + 1..arg.len())
            .into_iter()
            .collect();
    }
    let url = arg.strip_prefix("--proxy=").map_or(arg, |u| u);
    let offset = arg.len() - url.len();
    // RFC 3986 §3.1: a scheme starts with a letter (an option such as `--x://…` is none).
    let scheme_len = url.find("://").filter(|&i| {
        url.starts_with(|c: char| c.is_ascii_alphabetic())
            && url[..i]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    });
    match (scheme_len, url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => url[s + 3..at]
            .find(':')
            .map(|c| offset + s + 3 + c + 1..offset + at)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether every marker in the arguments lies where a password goes.
fn markers_are_secrets(args: &[String], env: &[(String, String)]) -> bool {
    let mut any = false;
    // After `--` every word is positional: no option gives the next one a meaning.
    let dashdash = args.iter().position(|a| a == "--");
    for (i, arg) in args.iter().enumerate() {
        let prev = i
            .checked_sub(1)
            .filter(|&p| dashdash.is_none_or(|d| p < d))
            .map(|p| args[p].as_str());
        let ranges = secret_ranges(prev, arg);
        for (at, _) in arg.match_indices(MARKER) {
            any = true;
            if !ranges
                .iter()
                .any(|r| r.start <= at && at + MARKER.len() <= r.end)
            {
                return false;
            }
        }
    }
    for (name, value) in env {
        for (at, _) in value.match_indices(MARKER) {
            any = true;
            let after_colon = value.find(':').is_some_and(|c| c < at);
            if name != crate::config::AUTH_ENV || !after_colon {
                return false;
            }
        }
    }
    any
}

/// Arguments separated by NUL bytes; one starting with `$` sets an environment variable
/// (`$NAME=value`); `\x07` stands for the password marker. Files are never opened: any path
/// option, and any argument naming an existing file, is pointed at a path that cannot exist.
pub fn config(data: &[u8]) {
    use clap::Parser;
    let text = String::from_utf8_lossy(data).replace('\u{7}', MARKER);
    if text.contains(MARKER) && data.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
        return; // The fuzzer spelled the marker itself: no way to tell what it meant.
    }
    let mut args = Vec::new();
    let mut env = Vec::new();
    for part in text.split('\0') {
        match part.strip_prefix('$').and_then(|p| p.split_once('=')) {
            Some((name, value)) => env.push((name.to_owned(), value.to_owned())),
            None => args.push(part.to_owned()),
        }
    }
    let secrets: &[&[u8]] = if markers_are_secrets(&args, &env) {
        &[MARKER.as_bytes()]
    } else {
        &[]
    };
    const NOWHERE: &str = "/nonexistent/gimlet-fuzz";
    for arg in &args {
        // Called directly, parse_proxy sees every argument as a proxy: only a URL's password
        // is a secret then (a `--proxy-user=` value is never parsed as a proxy by gimlet, so
        // what the option would make secret is not). parse_host rightly quotes what it refuses.
        let own = [arg.clone()];
        let url_secrets: &[&[u8]] =
            if !arg.starts_with("--proxy-user=") && markers_are_secrets(&own, &[]) {
                &[MARKER.as_bytes()]
            } else {
                &[]
            };
        if let Err(e) = crate::config::parse_proxy(arg) {
            check_error(&Error::new(crate::error::Kind::Usage, e), url_secrets);
        }
        if let Err(e) = crate::config::parse_host(arg) {
            check_error(&Error::new(crate::error::Kind::Usage, e), &[]);
        }
    }
    let argv = std::iter::once("gimlet".to_owned()).chain(args.iter().map(|a| {
        // A file that exists could be a FIFO or a device; the fuzzer reads no file.
        if !a.is_empty() && !a.starts_with('-') && std::path::Path::new(a).exists() {
            NOWHERE.to_owned()
        } else {
            a.clone()
        }
    }));
    let mut cli = match crate::cli::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // What main prints.
            let first = crate::config::clap_error_line(&e, &args);
            check_error(&Error::msg(crate::error::Kind::Usage, first), secrets);
            return;
        }
    };
    for path in [&mut cli.proxy_auth_file, &mut cli.netrc_file]
        .into_iter()
        .flatten()
    {
        *path = NOWHERE.into();
    }
    let lookup = |name: &str| -> Option<OsString> {
        // HOME would lead --netrc to a real file.
        (name != "HOME")
            .then(|| env.iter().rev().find(|(n, _)| n == name))
            .flatten()
            .map(|(_, v)| v.into())
    };
    if let Err(e) = crate::config::Config::from_cli(cli, lookup) {
        check_error(&e, secrets);
    }
}

/// A forwards file (`\x07` = the password marker); each line is also tried as a `-L` spec. No
/// panic; an error is one line naming `f:LINE:`; a password in a proxy URL's userinfo shows in
/// no error, description or `Debug` output.
pub fn forwards(data: &[u8]) {
    let text = String::from_utf8_lossy(data).replace('\u{7}', MARKER);
    if text.contains(MARKER) && data.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
        return; // The fuzzer spelled the marker itself: no way to tell what it meant.
    }
    // Only a marker in a URL's password (`scheme://user:MARKER@`) is a secret.
    // A comment is never shown: only the text before it counts, cut where the parser cuts.
    let secret = text.lines().all(|line| {
        let line = crate::forwards::strip_comment(line);
        line.match_indices(MARKER).all(|(at, _)| {
            let word_start = line[..at].rfind([' ', '\t', ',']).map_or(0, |i| i + 1);
            let word_end = line[at..]
                .find([' ', '\t', ','])
                .map_or(line.len(), |i| at + i);
            let word = &line[word_start..word_end];
            let Some(scheme_end) = word.find("://") else {
                return false;
            };
            let rel = at - word_start;
            let userinfo_end = word.rfind('@');
            rel > scheme_end + 3
                && userinfo_end.is_some_and(|e| rel + MARKER.len() <= e)
                && word[scheme_end + 3..rel].contains(':')
                && !word[scheme_end + 3..rel].contains(['/', '@'])
        })
    });
    let secrets: &[&[u8]] = if secret && text.contains(MARKER) {
        &[MARKER.as_bytes()]
    } else {
        &[]
    };
    match crate::forwards::parse_file("f", &text) {
        Ok(forwards) => {
            for f in forwards {
                for shown in [f.describe(), format!("{f:?}")] {
                    for s in secrets {
                        assert!(
                            !contains(shown.as_bytes(), s),
                            "a password shows: {shown:?}"
                        );
                    }
                }
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with("f:"),
                "the error names no line: {shown:?}"
            );
            check_error(&Error::msg(crate::error::Kind::Usage, e), secrets);
        }
    }
    for line in text.lines().take(16) {
        if let Err(e) = crate::forwards::parse_local(line) {
            check_error(&Error::new(crate::error::Kind::Usage, e), &[]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dynamic_front: a -D client's request, and the HTTP message work after it.

/// The first byte seeds the split points; the rest is what a client sends to a `-D` port.
/// Fed in pieces, the front must decide as it does fed whole; refusals print on one line; an
/// absolute-form request's rewritten head parses as HTTP/1.1 without hop-by-hop fields, and
/// its body framer takes the rest in pieces as it takes it whole.
pub fn dynamic_front(data: &[u8]) {
    use crate::serve::front::{Front, Step};
    use crate::serve::http1::{self, Body};
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(seed % 13) + 1;
    let decide = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut front = Front::new();
        let mut sent = Vec::new();
        let mut fed = 0;
        for piece in pieces {
            fed += piece.len();
            match front.feed(piece) {
                Step::More { send } => sent.extend(send),
                Step::Ask { send, mut ask } => {
                    sent.extend(send);
                    ask.leftover.extend_from_slice(&input[fed..]);
                    return (sent, Some(Ok(ask)));
                }
                Step::Refuse { send, why } => {
                    sent.extend(send);
                    return (sent, Some(Err(why)));
                }
            }
        }
        (sent, None)
    };
    let whole = decide(&mut std::iter::once(input));
    let split = decide(&mut input.chunks(step));
    assert_eq!(whole, split, "split every {step} bytes");
    match whole.1 {
        Some(Err(why)) => assert_one_clean_line("a refusal", &why),
        Some(Ok(ask)) => {
            if let Some(http) = &ask.http {
                let head =
                    http1::origin_request(&http.method, &ask.target, &http.path, &http.fields);
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut req = httparse::Request::new(&mut headers);
                assert!(
                    matches!(req.parse(&head), Ok(httparse::Status::Complete(n)) if n == head.len()),
                    "the rewritten head does not parse: {:?}",
                    String::from_utf8_lossy(&head)
                );
                for h in req.headers.iter() {
                    assert!(
                        !h.name.eq_ignore_ascii_case("proxy-authorization")
                            && !h.name.eq_ignore_ascii_case("connection"),
                        "a hop-by-hop field passed: {}",
                        h.name
                    );
                }
                let mut whole = Body::new(http.framing);
                let taken = whole.feed(&ask.leftover);
                let mut pieces = Body::new(http.framing);
                let mut total = Ok(0);
                for piece in ask.leftover.chunks(step) {
                    match pieces.feed(piece) {
                        Ok(n) => {
                            total = total.map(|t| t + n);
                            if n < piece.len() {
                                break;
                            }
                        }
                        Err(e) => {
                            total = Err(e);
                            break;
                        }
                    }
                }
                assert_eq!(taken, total, "the body framer split every {step} bytes");
            }
        }
        None => {}
    }
}

// ---------------------------------------------------------------------------------------------

/// A fuzz target's body.
pub type Harness = fn(&[u8]);

/// Every target by name, for the corpus replay below.
pub const TARGETS: &[(&str, Harness)] = &[
    ("negotiate", negotiate),
    ("reply_head", reply_head),
    ("digest", digest),
    ("ntlm", ntlm),
    ("netrc", netrc),
    ("config", config),
    ("dynamic_front", dynamic_front),
    ("forwards", forwards),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in corpora and regression inputs pass every harness: a fixed crash stays
    /// fixed, and a harness that rots is noticed without cargo-fuzz.
    #[test]
    fn checked_in_fuzz_inputs_pass_their_harness() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let (mut ran, mut failed) = (0, Vec::new());
        for (name, harness) in TARGETS {
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    let input = std::fs::read(&path).expect("a readable input");
                    if std::panic::catch_unwind(|| harness(&input)).is_err() {
                        failed.push(path.display().to_string());
                    }
                    ran += 1;
                }
            }
        }
        assert!(
            failed.is_empty(),
            "inputs failing their harness: {failed:#?}"
        );
        assert!(
            ran > 0 || !root.exists(),
            "no fuzz inputs found under {}",
            root.display()
        );
    }

    #[test]
    fn the_script_format_splits_reads_and_connections() {
        let conns = parse_script(b"HTTP/1.1 \xFF|200\xFF\xFFx\xFFRy\xFF#\xFFWz");
        assert_eq!(conns.len(), 2);
        let reads: Vec<String> = conns[0]
            .events
            .iter()
            .map(|e| match e {
                Event::Data(d) => String::from_utf8_lossy(d).into_owned(),
                Event::Fail(k) => format!("{k:?}"),
            })
            .collect();
        assert_eq!(
            reads,
            ["HTTP/1.1 ", "200\u{fffd}\u{fffd}x", "ConnectionReset", "y"]
        );
        assert!(conns[1].write_fails && !conns[0].write_fails);
    }

    #[test]
    fn markers_count_only_where_passwords_go() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = MARKER;
        assert!(markers_are_secrets(
            &args(&[&format!("http://u:a/{m}@h:1"), "h", "22"]),
            &[]
        ));
        assert!(markers_are_secrets(&args(&["-U", &format!("u:{m}")]), &[]));
        assert!(markers_are_secrets(
            &args(&[&format!("--proxy=http://u:{m}@h")]),
            &[]
        ));
        assert!(!markers_are_secrets(
            &args(&[&format!("http://u:p@{m}:1")]),
            &[]
        ));
        assert!(!markers_are_secrets(
            &args(&["-H", &format!("http://u:{m}@h")]),
            &[]
        ));
        assert!(!markers_are_secrets(&args(&["-U", &format!("{m}:p")]), &[]));
        assert!(!markers_are_secrets(
            &args(&[&format!("--x://u:{m}@h")]),
            &[]
        ));
        assert!(!markers_are_secrets(
            &args(&["-U", &format!("--u:{m}")]),
            &[]
        ));
        assert!(!markers_are_secrets(
            &args(&["--", "-U", &format!("u:{m}")]),
            &[]
        ));
        let env = [(crate::config::AUTH_ENV.to_owned(), format!("u:{m}"))];
        assert!(markers_are_secrets(&[], &env));
    }
}
