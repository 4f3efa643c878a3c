//! Authentication fixtures: fake proxies that ask for credentials and check
//! what gimlet answers with their own Basic, Digest (RFC 7616) and NTLMv2
//! (MS-NLMP) computations, written independently of gimlet, and a scripted
//! askpass program.

use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use md4::Md4;
use md5::Md5;
use sha2::{Digest as _, Sha256};

use super::*;

// ---------------------------------------------------------------------------
// Request heads and header values
// ---------------------------------------------------------------------------

/// The value of the first header `name` in a request head, trimmed.
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_owned())
}

/// The Proxy-Authorization value in a request head, if any.
pub fn proxy_authorization(head: &str) -> Option<String> {
    header_value(head, "Proxy-Authorization")
}

/// The scheme word of the Proxy-Authorization value in a request head.
pub fn scheme_sent(head: &str) -> Option<String> {
    proxy_authorization(head).map(|v| v.split(' ').next().unwrap_or("").to_owned())
}

/// The Basic Proxy-Authorization value for `user:password` (UTF-8).
pub fn basic(pair: &str) -> String {
    format!("Basic {}", base64(pair.as_bytes()))
}

/// Decodes standard base64 (padding optional); `None` on anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Splits an auth-param list (`a=b, c="d, \"e\""`) into (lowercase name,
/// value) pairs, unquoting quoted values.
pub fn auth_params(list: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("auth-param without `=` in {list:?}"))?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated quoted-string in {list:?}"))?;
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((name, value));
        rest = remaining.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return Err(format!("junk after a parameter in {list:?}")),
        }
    }
    Ok(out)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("short %-escape in {text:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape in {text:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

// ---------------------------------------------------------------------------
// Conversational fake proxies
// ---------------------------------------------------------------------------

/// What a conversational fake proxy does after sending its answer.
pub enum Then {
    /// Reads the next request on the same connection.
    KeepOpen,
    /// Closes its side and waits for gimlet to hang up.
    Close,
}

/// A proxy's answer to one request, or why the request is wrong.
pub type Answer = Result<(String, Then), String>;

/// What a conversational proxy sends before failing the test, so that gimlet
/// stops at once.
const REFUSAL: &str = "HTTP/1.1 407 Proxy Authentication Required\r\n\
                       Proxy-Authenticate: Basic realm=\"wrong answer\"\r\n\
                       Connection: close\r\nContent-Length: 0\r\n\r\n";

/// A 407 offering `challenges` (one Proxy-Authenticate header each) that keeps
/// the connection: HTTP/1.1, `Content-Length: 0`.
pub fn challenge_407(challenges: &[&str]) -> String {
    challenge_407_with(challenges, "")
}

/// Like [`challenge_407`] with `extra` header lines (each ending in CRLF).
pub fn challenge_407_with(challenges: &[&str], extra: &str) -> String {
    let mut reply = String::from("HTTP/1.1 407 Proxy Authentication Required\r\n");
    for challenge in challenges {
        reply.push_str(&format!("Proxy-Authenticate: {challenge}\r\n"));
    }
    reply.push_str(extra);
    reply.push_str("Content-Length: 0\r\n\r\n");
    reply
}

impl FakeProxy {
    /// A proxy that answers every request, in turn, with what `answer` says.
    /// An `Err` sends a closing 407 and fails the test with its message (at
    /// [`FakeProxy::finish`]).
    pub fn conversation(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> FakeProxy {
        FakeProxy::start(move |s| {
            let mut head = s.request().to_vec();
            while !head.is_empty() {
                match answer(&text(&head)) {
                    Ok((reply, then)) => {
                        if !s.send_lossy(reply) {
                            return;
                        }
                        if let Then::Close = then {
                            s.shutdown_write();
                            s.wait_for_close();
                            return;
                        }
                    }
                    Err(why) => {
                        s.send_lossy(REFUSAL);
                        s.shutdown_write();
                        panic!("{why}");
                    }
                }
                head = s.read_request().unwrap_or_default();
            }
        })
    }

    /// A proxy that answers a request without credentials with a 407 offering
    /// Basic (HTTP/1.1, `Content-Length: 0`, so the connection stays usable)
    /// and a request with credentials with 200, then closes the tunnel. It
    /// checks nothing: tests look at the recorded requests.
    pub fn basic_challenge() -> FakeProxy {
        FakeProxy::conversation(|head| {
            Ok(match proxy_authorization(head) {
                None => (
                    challenge_407(&["Basic realm=\"gimlet test\""]),
                    Then::KeepOpen,
                ),
                Some(_) => (OK.to_owned(), Then::Close),
            })
        })
    }
}

/// One challenge a 407 from [`AuthProxy`] carries.
#[derive(Clone, Debug)]
pub enum Offer {
    /// `Basic realm="gimlet test"`.
    Basic,
    Digest(DigestChallenge),
    /// A bare `NTLM`, starting the handshake.
    Ntlm,
    /// Anything else, sent verbatim (`Negotiate`, …).
    Other(String),
}

impl Offer {
    fn header(&self) -> String {
        match self {
            Offer::Basic => "Basic realm=\"gimlet test\"".to_owned(),
            Offer::Digest(challenge) => challenge.header(),
            Offer::Ntlm => "NTLM".to_owned(),
            Offer::Other(value) => value.clone(),
        }
    }
}

/// A proxy with one account: it answers a request without credentials with a
/// 407 carrying its offers, checks credentials with its own computations, and
/// grants access (200 unless told otherwise) to correct ones. Wrong
/// credentials fail the test.
#[derive(Clone)]
pub struct AuthProxy {
    /// The user name exactly as given to gimlet (`DOMAIN\user` for NTLM).
    pub user: String,
    pub password: String,
    pub offers: Vec<Offer>,
    /// The reply to correct credentials.
    pub granted: String,
    /// Whether the first 407 says `Connection: close` and closes.
    pub first_407_closes: bool,
    /// Whether the 407 carrying the NTLM challenge says `Connection: close`
    /// and closes.
    pub ntlm_challenge_closes: bool,
    /// The NTLM challenge message sent in answer to a negotiate message.
    pub ntlm: NtlmChallenge,
    /// Sent instead of the NTLM challenge message when set (for malformed
    /// challenges).
    pub ntlm_challenge_header: Option<String>,
}

impl AuthProxy {
    pub fn new(user: &str, password: &str) -> AuthProxy {
        AuthProxy {
            user: user.to_owned(),
            password: password.to_owned(),
            offers: Vec::new(),
            granted: OK.to_owned(),
            first_407_closes: false,
            ntlm_challenge_closes: false,
            ntlm: NtlmChallenge::new(),
            ntlm_challenge_header: None,
        }
    }

    pub fn offer(mut self, offer: Offer) -> AuthProxy {
        self.offers.push(offer);
        self
    }

    pub fn granting(mut self, reply: &str) -> AuthProxy {
        self.granted = reply.to_owned();
        self
    }

    /// The (domain, user) NTLM should send, from `DOMAIN\user`.
    fn ntlm_identity(&self) -> (&str, &str) {
        self.user.split_once('\\').unwrap_or(("", &self.user))
    }

    fn answer(&self, head: &str) -> Answer {
        let reply_407 = |challenges: &[String], close: bool| {
            let challenges: Vec<&str> = challenges.iter().map(String::as_str).collect();
            if close {
                (
                    challenge_407_with(&challenges, "Connection: close\r\n"),
                    Then::Close,
                )
            } else {
                (challenge_407(&challenges), Then::KeepOpen)
            }
        };
        let Some(value) = proxy_authorization(head) else {
            let offers: Vec<String> = self.offers.iter().map(Offer::header).collect();
            return Ok(reply_407(&offers, self.first_407_closes));
        };
        let scheme = value.split(' ').next().unwrap_or("");
        let offered = |f: fn(&Offer) -> bool| {
            if self.offers.iter().any(f) {
                Ok(())
            } else {
                Err(format!("{scheme} was not offered, got {value:?}"))
            }
        };
        match scheme {
            "Basic" => {
                offered(|o| matches!(o, Offer::Basic))?;
                let want = basic(&format!("{}:{}", self.user, self.password));
                if value != want {
                    return Err(format!(
                        "wrong Basic credentials {value:?}, wanted {want:?}"
                    ));
                }
            }
            "Digest" => {
                offered(|o| matches!(o, Offer::Digest(_)))?;
                let params = auth_params(&value["Digest ".len()..])?;
                let nonce = param(&params, "nonce")?;
                let challenge = self
                    .offers
                    .iter()
                    .find_map(|o| match o {
                        Offer::Digest(c) if c.nonce == nonce => Some(c),
                        _ => None,
                    })
                    .ok_or_else(|| format!("Digest answer with an unknown nonce: {value:?}"))?;
                challenge.check(&value, &self.user, &self.password)?;
            }
            "NTLM" => {
                offered(|o| matches!(o, Offer::Ntlm))?;
                let message = value
                    .strip_prefix("NTLM ")
                    .and_then(|token| base64_decode(token.trim()))
                    .ok_or_else(|| format!("NTLM answer without a base64 message: {value:?}"))?;
                match message.get(8..12) {
                    Some([1, 0, 0, 0]) => {
                        check_ntlm_negotiate(&value)?;
                        let challenge = match &self.ntlm_challenge_header {
                            Some(header) => header.clone(),
                            None => self.ntlm.header(),
                        };
                        return Ok(reply_407(&[challenge], self.ntlm_challenge_closes));
                    }
                    Some([3, 0, 0, 0]) => {
                        let (domain, user) = self.ntlm_identity();
                        self.ntlm.check(&value, user, domain, &self.password)?;
                    }
                    _ => return Err(format!("unexpected NTLM message {value:?}")),
                }
            }
            _ => return Err(format!("unexpected credentials {value:?}")),
        }
        Ok((self.granted.clone(), Then::Close))
    }

    pub fn start(self) -> FakeProxy {
        FakeProxy::conversation(move |head| self.answer(head))
    }
}

// ---------------------------------------------------------------------------
// Digest
// ---------------------------------------------------------------------------

/// The value of `name` in parsed auth-params, or an error naming it.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, String> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| format!("no {name} in {params:?}"))
}

fn optional<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Digest challenge and the check of an answer to it.
#[derive(Clone, Debug)]
pub struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    /// The algorithm token as sent (`MD5`, `SHA-256-sess`, …); `None` sends
    /// none (MD5).
    pub algorithm: Option<String>,
    /// The qop list as sent (`auth`, `auth,auth-int`); `None` sends none
    /// (RFC 2069 answer expected).
    pub qop: Option<String>,
    pub opaque: Option<String>,
    pub stale: bool,
}

impl DigestChallenge {
    /// A challenge with `algorithm` and `qop="auth"`, realm, nonce and opaque.
    pub fn new(algorithm: &str) -> DigestChallenge {
        DigestChallenge {
            realm: "proxy@gimlet.test".to_owned(),
            nonce: format!(
                "nonce-{}-dcd98b7102dd2f0e8b11d0f600bfb0c093",
                algorithm.to_lowercase()
            ),
            algorithm: Some(algorithm.to_owned()),
            qop: Some("auth".to_owned()),
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".to_owned()),
            stale: false,
        }
    }

    pub fn nonce(mut self, nonce: &str) -> DigestChallenge {
        self.nonce = nonce.to_owned();
        self
    }

    pub fn qop(mut self, qop: Option<&str>) -> DigestChallenge {
        self.qop = qop.map(str::to_owned);
        self
    }

    pub fn without_algorithm(mut self) -> DigestChallenge {
        self.algorithm = None;
        self
    }

    pub fn stale(mut self) -> DigestChallenge {
        self.stale = true;
        self
    }

    /// The Proxy-Authenticate value.
    pub fn header(&self) -> String {
        let mut value = format!("Digest realm=\"{}\"", self.realm);
        if let Some(qop) = &self.qop {
            value.push_str(&format!(", qop=\"{qop}\""));
        }
        if let Some(algorithm) = &self.algorithm {
            value.push_str(&format!(", algorithm={algorithm}"));
        }
        value.push_str(&format!(", nonce=\"{}\"", self.nonce));
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque=\"{opaque}\""));
        }
        if self.stale {
            value.push_str(", stale=true");
        }
        value
    }

    fn hash(&self, data: &str) -> String {
        let algorithm = self
            .algorithm
            .as_deref()
            .unwrap_or("MD5")
            .to_ascii_uppercase();
        if algorithm.starts_with("SHA-256") {
            hex(&Sha256::digest(data.as_bytes()))
        } else if algorithm.starts_with("SHA-512-256") {
            hex(&sha2::Sha512_256::digest(data.as_bytes()))
        } else {
            hex(&Md5::digest(data.as_bytes()))
        }
    }

    fn sess(&self) -> bool {
        self.algorithm
            .as_deref()
            .is_some_and(|a| a.to_ascii_lowercase().ends_with("-sess"))
    }

    /// The response RFC 7616 §3.4.1 defines for a CONNECT to `uri`.
    pub fn response(
        &self,
        user: &str,
        password: &str,
        uri: &str,
        qop: Option<&str>,
        nc: &str,
        cnonce: &str,
    ) -> String {
        let mut ha1 = self.hash(&format!("{user}:{}:{password}", self.realm));
        if self.sess() {
            ha1 = self.hash(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = match qop {
            Some("auth-int") => self.hash(&format!("CONNECT:{uri}:{}", self.hash(""))),
            _ => self.hash(&format!("CONNECT:{uri}")),
        };
        match qop {
            Some(qop) => self.hash(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", self.nonce)),
            None => self.hash(&format!("{ha1}:{}:{ha2}", self.nonce)),
        }
    }

    /// Checks a Proxy-Authorization value: every echoed field, the user name
    /// (`username*=UTF-8''…` for a name that is not printable ASCII), the
    /// CONNECT authority as uri, nc, and the response recomputed from the
    /// request's own cnonce.
    pub fn check(&self, value: &str, user: &str, password: &str) -> Result<(), String> {
        let list = value
            .strip_prefix("Digest ")
            .ok_or_else(|| format!("not a Digest answer: {value:?}"))?;
        let params = auth_params(list)?;
        let fail = |why: String| Err(format!("{why} in {value:?}"));
        let ascii = user.chars().all(|c| c.is_ascii() && !c.is_ascii_control());
        match (
            optional(&params, "username"),
            optional(&params, "username*"),
        ) {
            (Some(name), None) if ascii => {
                if name != user {
                    return fail(format!("username {name:?} instead of {user:?}"));
                }
            }
            (None, Some(encoded)) if !ascii => {
                let name = encoded
                    .strip_prefix("UTF-8''")
                    .ok_or_else(|| format!("username* without UTF-8'': {value:?}"))?;
                let name = percent_decode(name)?;
                if name != user {
                    return fail(format!("username* {name:?} instead of {user:?}"));
                }
            }
            _ if ascii => return fail(format!("no plain username={user:?}")),
            _ => return fail(format!("no username*=UTF-8''… for {user:?}")),
        }
        for (name, want) in [("realm", &self.realm), ("nonce", &self.nonce)] {
            if param(&params, name)? != want {
                return fail(format!("{name} not echoed"));
            }
        }
        if optional(&params, "opaque") != self.opaque.as_deref() {
            return fail("opaque not echoed".to_owned());
        }
        match (&self.algorithm, optional(&params, "algorithm")) {
            (Some(want), Some(got)) if want.eq_ignore_ascii_case(got) => {}
            (None, None | Some("MD5")) => {}
            (want, got) => return fail(format!("algorithm {got:?} for challenge {want:?}")),
        }
        let uri = param(&params, "uri")?;
        if uri != "example.test:22" {
            return fail(format!("uri {uri:?} is not the CONNECT authority"));
        }
        let qop = optional(&params, "qop");
        let (nc, cnonce) = match (&self.qop, qop) {
            (Some(offered), Some(qop)) => {
                if !offered.split(',').any(|q| q.trim() == qop) {
                    return fail(format!("qop {qop:?} was not offered"));
                }
                let nc = param(&params, "nc")?;
                if nc != "00000001" {
                    return fail(format!("nc {nc:?} for a fresh nonce"));
                }
                let cnonce = param(&params, "cnonce")?;
                if cnonce.len() < 8 {
                    return fail(format!("cnonce {cnonce:?} is too short to be random"));
                }
                (nc, cnonce)
            }
            (None, None) => {
                if optional(&params, "nc").is_some() || optional(&params, "cnonce").is_some() {
                    return fail("nc or cnonce without qop".to_owned());
                }
                ("", "")
            }
            (offered, qop) => return fail(format!("qop {qop:?} for offered {offered:?}")),
        };
        let want = self.response(user, password, uri, qop, nc, cnonce);
        let got = param(&params, "response")?;
        if got != want {
            return fail(format!("response {got:?} instead of {want:?}"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// NTLM
// ---------------------------------------------------------------------------

pub const NTLM_NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const NTLM_NEGOTIATE_OEM: u32 = 0x0000_0002;
const NTLM_REQUEST_TARGET: u32 = 0x0000_0004;
const NTLM_NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NTLM_ALWAYS_SIGN: u32 = 0x0000_8000;
const NTLM_TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
const NTLM_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NTLM_TARGET_INFO: u32 = 0x0080_0000;
const NTLM_128: u32 = 0x2000_0000;
const NTLM_56: u32 = 0x8000_0000;

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16le(bytes: &[u8]) -> Result<String, String> {
    if bytes.len() % 2 != 0 {
        return Err(format!("odd-length UTF-16 string {bytes:?}"));
    }
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| format!("invalid UTF-16 {bytes:?}"))
}

fn le16(m: &[u8], at: usize) -> usize {
    u16::from_le_bytes([m[at], m[at + 1]]) as usize
}

fn le32(m: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <Hmac<Md5> as KeyInit>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// NTOWFv2: HMAC_MD5(MD4(UTF-16LE(password)), UTF-16LE(UPPER(user) ‖ domain)).
pub fn ntowf_v2(user: &str, domain: &str, password: &str) -> [u8; 16] {
    let nt_hash = Md4::digest(utf16le(password));
    hmac_md5(&nt_hash, &[&utf16le(&(user.to_uppercase() + domain))])
}

/// Checks that `value` is an NTLM negotiate message (type 1).
fn check_ntlm_negotiate(value: &str) -> Result<(), String> {
    if !value.starts_with("NTLM TlRMTVNTUAABAAAA") {
        return Err(format!("not an NTLM negotiate message: {value:?}"));
    }
    Ok(())
}

/// An NTLM challenge message (type 2) and the check of the authenticate
/// message (type 3) that answers it.
#[derive(Clone, Debug)]
pub struct NtlmChallenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    pub target_info: Vec<u8>,
}

impl Default for NtlmChallenge {
    fn default() -> Self {
        NtlmChallenge::new()
    }
}

impl NtlmChallenge {
    /// A Unicode challenge with target information (domain and server
    /// names, no timestamp).
    pub fn new() -> NtlmChallenge {
        let mut info = Vec::new();
        for (id, value) in [
            (2u16, "CORP"),
            (1, "PROXY"),
            (4, "corp.example"),
            (3, "proxy.corp.example"),
        ] {
            let value = utf16le(value);
            info.extend_from_slice(&id.to_le_bytes());
            info.extend_from_slice(&(value.len() as u16).to_le_bytes());
            info.extend_from_slice(&value);
        }
        info.extend_from_slice(&[0, 0, 0, 0]);
        NtlmChallenge {
            flags: NTLM_NEGOTIATE_UNICODE
                | NTLM_REQUEST_TARGET
                | NTLM_NEGOTIATE_NTLM
                | NTLM_ALWAYS_SIGN
                | NTLM_TARGET_TYPE_DOMAIN
                | NTLM_EXTENDED_SESSIONSECURITY
                | NTLM_TARGET_INFO
                | NTLM_128
                | NTLM_56,
            server_challenge: *b"\x01\x23\x45\x67\x89\xab\xcd\xef",
            target_info: info,
        }
    }

    /// The same challenge without NEGOTIATE_UNICODE (OEM strings).
    pub fn oem() -> NtlmChallenge {
        let mut challenge = NtlmChallenge::new();
        challenge.flags = (challenge.flags & !NTLM_NEGOTIATE_UNICODE) | NTLM_NEGOTIATE_OEM;
        challenge
    }

    fn unicode(&self) -> bool {
        self.flags & NTLM_NEGOTIATE_UNICODE != 0
    }

    /// The CHALLENGE_MESSAGE bytes.
    pub fn message(&self) -> Vec<u8> {
        let target_name = if self.unicode() {
            utf16le("CORP")
        } else {
            b"CORP".to_vec()
        };
        let payload_at = 56u32;
        let mut m = Vec::new();
        m.extend_from_slice(b"NTLMSSP\0");
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
        m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
        m.extend_from_slice(&payload_at.to_le_bytes());
        m.extend_from_slice(&self.flags.to_le_bytes());
        m.extend_from_slice(&self.server_challenge);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(self.target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(self.target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(payload_at + target_name.len() as u32).to_le_bytes());
        m.extend_from_slice(&[6, 1, 0x1d, 0x27, 0, 0, 0, 0x0f]);
        assert_eq!(m.len(), payload_at as usize);
        m.extend_from_slice(&target_name);
        m.extend_from_slice(&self.target_info);
        m
    }

    /// The Proxy-Authenticate value carrying the challenge.
    pub fn header(&self) -> String {
        format!("NTLM {}", base64(&self.message()))
    }

    /// Checks an authenticate message: the signature and type, the domain and
    /// user fields (UTF-16LE when the challenge negotiated Unicode), the
    /// NTLMv2 blob's fixed parts and echoed target information, and the
    /// NTProofStr recomputed from the account.
    pub fn check(
        &self,
        value: &str,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Result<(), String> {
        let m = value
            .strip_prefix("NTLM ")
            .and_then(|token| base64_decode(token.trim()))
            .ok_or_else(|| format!("not an NTLM message: {value:?}"))?;
        if !value.starts_with("NTLM TlRMTVNTUAADAAAA") || m.len() < 64 {
            return Err(format!("not an NTLM authenticate message: {value:?}"));
        }
        let field = |at: usize| -> Result<&[u8], String> {
            let (len, max, offset) = (le16(&m, at), le16(&m, at + 2), le32(&m, at + 4) as usize);
            if len != max {
                return Err(format!(
                    "security buffer at {at}: length {len} but max {max}"
                ));
            }
            m.get(offset..offset + len)
                .ok_or_else(|| format!("security buffer at {at} points outside the message"))
        };
        let (lm, nt) = (field(12)?, field(20)?);
        let (got_domain, got_user) = (field(28)?, field(36)?);
        field(44)?;
        field(52)?;
        let flags = le32(&m, 60);
        let decode = |bytes: &[u8]| {
            if self.unicode() {
                from_utf16le(bytes)
            } else {
                String::from_utf8(bytes.to_vec()).map_err(|_| format!("bad OEM string {bytes:?}"))
            }
        };
        let (got_domain, got_user) = (decode(got_domain)?, decode(got_user)?);
        if (got_domain.as_str(), got_user.as_str()) != (domain, user) {
            return Err(format!(
                "domain/user {got_domain:?}/{got_user:?} instead of {domain:?}/{user:?}"
            ));
        }
        if self.unicode() && flags & NTLM_NEGOTIATE_UNICODE == 0 {
            return Err(format!(
                "Unicode negotiated but not flagged (flags {flags:#010x})"
            ));
        }
        if !self.unicode() && flags & NTLM_NEGOTIATE_UNICODE != 0 {
            return Err(format!(
                "Unicode flagged but not offered (flags {flags:#010x})"
            ));
        }
        let info = &self.target_info;
        if nt.len() != 16 + 28 + info.len() + 4 {
            return Err(format!("NT response of {} bytes", nt.len()));
        }
        let (proof, blob) = nt.split_at(16);
        if blob[..8] != [1, 1, 0, 0, 0, 0, 0, 0] || blob[24..28] != [0; 4] {
            return Err(format!("bad NTLMv2 blob header {:?}", &blob[..28]));
        }
        if &blob[28..28 + info.len()] != info.as_slice() || blob[28 + info.len()..] != [0; 4] {
            return Err("target information not echoed in the blob".to_owned());
        }
        let key = ntowf_v2(user, domain, password);
        let want = hmac_md5(&key, &[&self.server_challenge, blob]);
        if proof != want {
            return Err(format!(
                "NTProofStr {} instead of {}",
                hex(proof),
                hex(&want)
            ));
        }
        let client_challenge = &blob[16..24];
        let lm_v2 = [
            &hmac_md5(&key, &[&self.server_challenge, client_challenge])[..],
            client_challenge,
        ]
        .concat();
        if lm != [0; 24] && lm != lm_v2.as_slice() {
            return Err(format!("LM response {} is neither zeros nor LMv2", hex(lm)));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Askpass
// ---------------------------------------------------------------------------

/// A scripted askpass program in its own scratch directory: it logs each
/// prompt (its argv[1]) and whatever it can read on its stdin, and answers its
/// n-th question with the n-th answer, or fails.
pub struct Askpass {
    dir: PathBuf,
}

impl Askpass {
    const SCRIPT: &str = "#!/bin/sh\n\
        dir=$(dirname \"$0\")\n\
        printf '%s\\n' \"$1\" >> \"$dir/prompts\"\n\
        n=$(( $(wc -l < \"$dir/prompts\") ))\n\
        cat >> \"$dir/stdin\"\n\
        [ -e \"$dir/fail\" ] && exit 1\n\
        sed -n \"${n}p\" \"$dir/answers\"\n";

    /// An askpass that answers its questions with `answers`, in order.
    pub fn answering(answers: &[&str]) -> Askpass {
        let dir = scratch_path("askpass");
        std::fs::create_dir(&dir).expect("create askpass dir");
        let mut listed = answers.join("\n");
        listed.push('\n');
        std::fs::write(dir.join("answers"), listed).expect("write answers");
        std::fs::write(dir.join("askpass"), Askpass::SCRIPT).expect("write askpass");
        std::fs::set_permissions(dir.join("askpass"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod askpass");
        Askpass { dir }
    }

    /// An askpass that prints nothing and exits 1, as when the user cancels.
    pub fn failing() -> Askpass {
        let askpass = Askpass::answering(&[]);
        std::fs::write(askpass.dir.join("fail"), "").expect("write fail marker");
        askpass
    }

    /// The program to name in GIMLET_ASKPASS or SSH_ASKPASS.
    pub fn program(&self) -> PathBuf {
        self.dir.join("askpass")
    }

    /// The prompts it was run with, in order.
    pub fn prompts(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("prompts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Forgets the prompts so far: the next question gets the first answer.
    pub fn reset(&self) {
        let _ = std::fs::remove_file(self.dir.join("prompts"));
    }

    /// Everything it read on its stdin.
    pub fn stdin_seen(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("stdin")).unwrap_or_default()
    }
}

/// A fresh scratch directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch_path(name);
    std::fs::create_dir(&dir).expect("create scratch dir");
    dir
}

#[test]
fn digest_fixture_matches_rfc_7616_examples() {
    // RFC 7616 §3.9.1, with the method and uri of the example.
    let challenge = DigestChallenge {
        realm: "http-auth@example.org".to_owned(),
        nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".to_owned(),
        algorithm: Some("MD5".to_owned()),
        qop: Some("auth, auth-int".to_owned()),
        opaque: None,
        stale: false,
    };
    let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    let response = |c: &DigestChallenge| {
        let ha1 = c.hash(&format!("Mufasa:{}:Circle of Life", c.realm));
        let ha2 = c.hash("GET:/dir/index.html");
        c.hash(&format!("{ha1}:{}:00000001:{cnonce}:auth:{ha2}", c.nonce))
    };
    assert_eq!(response(&challenge), "8ca523f5e9506fed4657c9700eebdbec");
    let sha = DigestChallenge {
        algorithm: Some("SHA-256".to_owned()),
        ..challenge
    };
    assert_eq!(
        response(&sha),
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
}

#[test]
fn ntlm_fixture_matches_ms_nlmp_examples() {
    // MS-NLMP §4.2.4.1.1 and §4.2.4.2.2.
    assert_eq!(
        hex(&ntowf_v2("User", "Domain", "Password")),
        "0c868a403bfd7a93a3001ef22ef02e3f"
    );
    let info: Vec<u8> = [
        &[2u8, 0, 12, 0][..],
        &utf16le("Domain"),
        &[1, 0, 12, 0],
        &utf16le("Server"),
        &[0, 0, 0, 0],
    ]
    .concat();
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&[0; 8]);
    blob.extend_from_slice(&[0xaa; 8]);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(&info);
    blob.extend_from_slice(&[0; 4]);
    let key = ntowf_v2("User", "Domain", "Password");
    assert_eq!(
        hex(&hmac_md5(
            &key,
            &[b"\x01\x23\x45\x67\x89\xab\xcd\xef", &blob]
        )),
        "68cd0ab851e51c96aabc927bebef6a1c"
    );
}

#[test]
fn auth_param_and_base64_fixtures_decode_what_they_should() {
    assert_eq!(
        auth_params(r#"a=b, c="d, \"e\"",f=g"#).unwrap(),
        [
            ("a".to_owned(), "b".to_owned()),
            ("c".to_owned(), "d, \"e\"".to_owned()),
            ("f".to_owned(), "g".to_owned())
        ]
    );
    for sample in [&b""[..], b"f", b"fo", b"foo", b"\xff\x00\x10NTLMSSP\0"] {
        assert_eq!(base64_decode(&base64(sample)).unwrap(), sample);
    }
    assert_eq!(percent_decode("z%C3%B6e%20x").unwrap(), "zöe x");
}

// ---------------------------------------------------------------------------
// Running gimlet against these proxies
// ---------------------------------------------------------------------------

/// Runs `cmd` (arguments complete) and expects a silent success. The fake
/// proxy's own complaints, if any, are reported first. Returns what the proxy
/// saw.
#[track_caller]
pub fn expect_tunnel(cmd: &mut assert_cmd::Command, proxy: &FakeProxy) -> Record {
    let assert = cmd.assert();
    let record = proxy.finish();
    let out = assert.get_output();
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "gimlet failed ({:?}): {stderr:?}; requests: {:?}",
        out.status,
        record.requests.iter().map(|r| text(r)).collect::<Vec<_>>()
    );
    assert_eq!(stderr, "", "gimlet was not silent");
    assert!(
        out.stdout.is_empty(),
        "unexpected output {:?}",
        text(&out.stdout)
    );
    record
}

/// Runs `cmd` (arguments complete) and expects it to fail with `code` and one
/// error line naming the proxy. The fake proxy's own complaints, if any, are
/// reported first. Returns stderr and what the proxy saw.
#[track_caller]
pub fn expect_failure(
    cmd: &mut assert_cmd::Command,
    proxy: &FakeProxy,
    code: i32,
) -> (String, Record) {
    let assert = cmd.assert();
    let record = proxy.finish();
    let stderr = assert_failure(assert.get_output(), code, Some(&proxy.addr()));
    (stderr, record)
}
