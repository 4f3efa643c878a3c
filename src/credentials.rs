//! Where proxy credentials come from, and how they are kept.
//!
//! Sources, first one present wins: the proxy URL's userinfo, `-U`, `--proxy-auth-file` (or
//! corkscrew's AUTHFILE), `GIMLET_PROXY_AUTH`, a netrc file (`--netrc`, `--netrc-file`), then,
//! when the proxy asks, `GIMLET_ASKPASS`, a prompt on `/dev/tty`, or `SSH_ASKPASS` when there is
//! no terminal (how git GUIs ask). Secrets are zeroed on drop and never shown by `Debug`.
//! Nothing here touches fd 0 or 1: they belong to the tunnel.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use zeroize::Zeroizing;

use crate::sys;

/// A string that is zeroed when dropped and never printed.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name and password for the proxy.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
    /// Where they came from, for `-v` and for the message when the proxy rejects them.
    pub source: Source,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password)
            .field("source", &self.source)
            .finish()
    }
}

/// Where credentials came from: a user with several sources must know which one to fix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// Not said (credentials made by a test or a caller that does not know).
    #[default]
    Unnamed,
    /// The proxy URL's userinfo.
    Url,
    /// `-U USER:PASSWORD`.
    UserOption,
    /// `--proxy-auth-file FILE`.
    AuthFile(PathBuf),
    /// corkscrew's AUTHFILE argument.
    AuthFileArgument(PathBuf),
    /// `GIMLET_PROXY_AUTH`.
    Environment,
    /// A netrc file's entry for the proxy host (or its default entry).
    Netrc(PathBuf),
    /// Asked of the `GIMLET_ASKPASS` program.
    Askpass(PathBuf),
    /// Asked on the terminal.
    Terminal,
    /// Asked of the `SSH_ASKPASS` program.
    SshAskpass(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Unnamed => f.write_str("the caller"),
            Source::Url => f.write_str("the proxy URL"),
            Source::UserOption => f.write_str("-U"),
            Source::AuthFile(p) => write!(f, "--proxy-auth-file {}", p.display()),
            Source::AuthFileArgument(p) => write!(f, "the AUTHFILE argument {}", p.display()),
            Source::Environment => f.write_str("GIMLET_PROXY_AUTH"),
            Source::Netrc(p) => write!(f, "netrc file {}", p.display()),
            Source::Askpass(p) => write!(f, "the GIMLET_ASKPASS program {}", p.display()),
            Source::Terminal => f.write_str("the terminal prompt"),
            Source::SshAskpass(p) => write!(f, "the SSH_ASKPASS program {}", p.display()),
        }
    }
}

impl Source {
    /// ` from SOURCE` for a message, or nothing when the source is not known.
    pub fn from_phrase(&self) -> String {
        match self {
            Source::Unnamed => String::new(),
            known => format!(" from {known}"),
        }
    }
}

impl Credentials {
    /// Checks the RFC 7617 §2 rules: no ':' in the user-id, no control characters in either.
    /// Messages never include the password.
    pub fn new(user: String, password: String) -> anyhow::Result<Self> {
        let password = Secret::new(password);
        if user.is_empty() {
            bail!("the user name is empty");
        }
        if user.contains(':') {
            bail!("the user name {user:?} contains ':', which Basic authentication cannot carry");
        }
        if user.chars().any(char::is_control) {
            bail!("the user name {user:?} contains a control character");
        }
        if password.expose().chars().any(char::is_control) {
            bail!("the password for {user:?} contains a control character");
        }
        Ok(Credentials {
            user,
            password,
            source: Source::Unnamed,
        })
    }

    /// The same credentials, saying where they came from.
    pub fn from_source(self, source: Source) -> Self {
        Credentials { source, ..self }
    }

    /// Splits `user:password` at the first ':' (the password may contain more).
    pub fn parse_pair(pair: &str) -> anyhow::Result<Self> {
        let (user, password) = pair
            .split_once(':')
            .ok_or_else(|| anyhow!("expected user:password"))?;
        Credentials::new(user.to_owned(), password.to_owned())
    }

    /// The `Proxy-Authorization` value for Basic (RFC 7617, UTF-8 charset).
    pub fn basic_authorization(&self) -> Secret {
        let mut plain = Zeroizing::new(String::with_capacity(
            self.user.len() + 1 + self.password.expose().len(),
        ));
        plain.push_str(&self.user);
        plain.push(':');
        plain.push_str(self.password.expose());
        // Sized up front: a String that grows leaves copies of what it held in freed memory.
        let encoded = base64::encoded_len(plain.len(), true).unwrap_or(0);
        let mut value = String::with_capacity("Basic ".len() + encoded);
        value.push_str("Basic ");
        base64::engine::general_purpose::STANDARD.encode_string(plain.as_bytes(), &mut value);
        Secret::new(value)
    }
}

/// Credentials as configured: complete, a user whose password must be asked, or nothing yet.
#[derive(Clone, Debug, Default)]
pub enum Spec {
    #[default]
    None,
    /// Only a user name: ask for the password on the terminal before connecting.
    User(String),
    Known(Credentials),
}

impl Spec {
    /// Says where complete credentials came from (a lone user name gets its source when the
    /// password is asked for).
    pub fn from_source(self, source: Source) -> Self {
        match self {
            Spec::Known(c) => Spec::Known(c.from_source(source)),
            other => other,
        }
    }

    /// `USER` or `USER:PASSWORD`, as `-U` and URL userinfo give it.
    pub fn from_user_arg(arg: String) -> anyhow::Result<Self> {
        match arg.split_once(':') {
            Some(_) => Credentials::parse_pair(&arg).map(Spec::Known),
            None if arg.is_empty() => bail!("the user name is empty"),
            None => Ok(Spec::User(arg)),
        }
    }
}

/// Largest credential file read: a `user:password` line is short, and the cap keeps a wrong
/// path (a log, a device) from eating memory.
const MAX_AUTH_FILE: u64 = 64 * 1024;
/// Largest netrc file read.
const MAX_NETRC: u64 = 1024 * 1024;

/// The one place that decides which permissions a file of secrets may have: none for group or
/// others, the way ssh refuses such a private key.
fn check_private_mode(shown: &std::path::Display<'_>, what: &str, mode: u32) -> anyhow::Result<()> {
    if mode & 0o077 != 0 {
        bail!(
            "{what} {shown} is accessible by group or others (mode {:04o}): run chmod 600 {shown}",
            mode & 0o7777
        );
    }
    Ok(())
}

/// What to do with a file of secrets that fails [`check_private_mode`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shared {
    Refuse,
    /// Read it with a warning: corkscrew's AUTHFILE, which corkscrew reads whatever its mode.
    Warn,
}

/// Opens a file of secrets and reads it whole, up to `max` bytes. Only a regular file will do:
/// it is opened non-blocking and checked before any read, so a FIFO or a device cannot stall
/// the run; its mode must pass [`check_private_mode`] (or, with [`Shared::Warn`], is warned
/// about).
fn read_private(
    path: &Path,
    what: &str,
    max: u64,
    shared: Shared,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let shown = path.display();
    read_regular(path, what, max, |meta| {
        match check_private_mode(&shown, what, meta.permissions().mode()) {
            Err(e) if shared == Shared::Warn => {
                crate::diag::warn(&format_args!("{e:#} (read anyway, as corkscrew does)"));
                Ok(())
            }
            checked => checked,
        }
    })
}

/// Reads a regular file whole, up to `max` bytes, without ever blocking on what the path
/// names: it is opened non-blocking (a FIFO would wait for a writer), checked with fstat (a
/// FIFO, a device or a directory is refused), then `check` sees its metadata before any read.
pub(crate) fn read_regular(
    path: &Path,
    what: &str,
    max: u64,
    check: impl FnOnce(&std::fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let shown = path.display();
    // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("opening {what} {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {what} {shown}"))?;
    if !meta.is_file() {
        bail!("reading {what} {shown}: it is not a regular file (a FIFO, a device or a directory)");
    }
    check(&meta)?;
    let too_large = || {
        let limit = match max {
            m if m % (1024 * 1024) == 0 => format!("{} MiB", m / (1024 * 1024)),
            m => format!("{} KiB", m / 1024),
        };
        anyhow!("reading {what} {shown}: it is larger than {limit} (is it the right file?)")
    };
    if meta.len() > max {
        return Err(too_large());
    }
    // Read straight into one zeroed buffer of the file's size (plus a byte to see it grew):
    // read_to_end would probe through a stack buffer and grow the vector, leaving copies of the
    // secret behind in memory nobody zeroes.
    let mut bytes = Zeroizing::new(vec![0u8; meta.len() as usize + 1]);
    let mut filled = 0;
    let mut file = file;
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {what} {shown}")),
        }
    }
    if filled as u64 > meta.len() {
        // It grew while being read: still refuse what is past the limit.
        if filled as u64 > max {
            return Err(too_large());
        }
        bail!("reading {what} {shown}: it changed while being read");
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Reads corkscrew's credential file: `user:password` on the first line.
pub fn read_auth_file(path: &Path) -> anyhow::Result<Credentials> {
    read_auth_file_sharing(path, Shared::Refuse)
}

/// Reads corkscrew's AUTHFILE argument like [`read_auth_file`], except that a file group or
/// others can access is read with a one-line warning. corkscrew reads such files (often mode
/// 0644), so refusing them would break the ProxyCommand where gimlet replaces corkscrew;
/// `--proxy-auth-file` and netrc files stay strict.
pub fn read_corkscrew_auth_file(path: &Path) -> anyhow::Result<Credentials> {
    read_auth_file_sharing(path, Shared::Warn)
}

fn read_auth_file_sharing(path: &Path, shared: Shared) -> anyhow::Result<Credentials> {
    let shown = path.display();
    let bytes = read_private(path, "credential file", MAX_AUTH_FILE, shared)?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let pair = std::str::from_utf8(line)
        .map_err(|_| anyhow!("reading credential file {shown}: the first line is not UTF-8"))?;
    Credentials::parse_pair(pair).with_context(|| format!("reading credential file {shown}"))
}

/// Looks `machine` up in a netrc file (the `default` entry applies when none matches). A login
/// without a password asks for it later. `Ok(None)` when nothing matches.
pub fn read_netrc(path: &Path, machine: &str) -> anyhow::Result<Option<Spec>> {
    let bytes = read_private(path, "netrc file", MAX_NETRC, Shared::Refuse)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow!("reading netrc file {}: it is not UTF-8", path.display()))?;
    let entry = netrc_lookup(text, machine);
    entry
        .map(|(login, password)| match password {
            Some(password) => Credentials::new(login, password.to_string()).map(Spec::Known),
            None => Ok(Spec::User(login)),
        })
        .transpose()
        .with_context(|| format!("reading netrc file {}", path.display()))
}

/// The (login, password) of the entry for `machine`, else of `default`.
pub(crate) fn netrc_lookup(
    text: &str,
    machine: &str,
) -> Option<(String, Option<Zeroizing<String>>)> {
    let mut tokens = netrc_tokens(text).into_iter();
    let (mut found, mut fallback) = (None, None);
    // The entry being read: whether it is the wanted machine or the default, and its fields.
    let mut current: Option<(bool, Option<String>, Option<Zeroizing<String>>)> = None;
    let mut finish = |entry: Option<(bool, Option<String>, Option<Zeroizing<String>>)>| {
        if let Some((is_default, Some(login), password)) = entry {
            let slot = if is_default {
                &mut fallback
            } else {
                &mut found
            };
            if slot.is_none() {
                *slot = Some((login, password));
            }
        }
    };
    while let Some(token) = tokens.next() {
        match token.as_str() {
            "machine" => {
                finish(current.take());
                let name = tokens.next();
                current = (name.as_deref().map(|n| n.as_str()) == Some(machine))
                    .then_some((false, None, None));
            }
            "default" => {
                finish(current.take());
                current = Some((true, None, None));
            }
            "login" => {
                let value = tokens.next().map(|t| t.to_string());
                if let Some(entry) = current.as_mut() {
                    entry.1 = value;
                }
            }
            "password" => {
                let value = tokens.next();
                if let Some(entry) = current.as_mut() {
                    entry.2 = value;
                }
            }
            "account" => {
                tokens.next();
            }
            _ => {}
        }
    }
    finish(current.take());
    found.or(fallback)
}

/// Splits netrc text into tokens: whitespace-separated, `"quoted \"strings\""`, `#` comments
/// at a token's start, and `macdef` bodies (up to an empty line) skipped.
fn netrc_tokens(text: &str) -> Vec<Zeroizing<String>> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut chars = line.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let Some(&first) = chars.peek() else { break };
            if first == '#' {
                break;
            }
            // Sized for the rest of the line: a growing String leaves copies behind.
            let mut token = Zeroizing::new(String::with_capacity(line.len()));
            if first == '"' {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => token.extend(chars.next()),
                        c => token.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    token.push(c);
                }
            }
            let macdef = token.as_str() == "macdef";
            out.push(token);
            if macdef {
                // The macro body runs to the first empty line.
                for body in lines.by_ref() {
                    if body.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
        }
    }
    out
}

/// Programs that can be asked for credentials, from the environment.
#[derive(Clone, Debug, Default)]
pub struct Askers {
    /// `GIMLET_ASKPASS`: asked first, terminal or not.
    pub askpass: Option<PathBuf>,
    /// `SSH_ASKPASS`: asked only when there is no terminal.
    pub ssh_askpass: Option<PathBuf>,
}

/// Asks for whatever is missing: the askpass program, else the terminal, else `SSH_ASKPASS`.
/// `None` when there is no way to ask.
pub fn ask(
    proxy: &str,
    user: Option<&str>,
    askers: &Askers,
) -> anyhow::Result<Option<Credentials>> {
    let user_prompt = format!("gimlet: user name for proxy {proxy}: ");
    let password_prompt = |user: &str| format!("gimlet: password for {user} at proxy {proxy}: ");
    let via_program = |program: &Path| -> anyhow::Result<Option<Credentials>> {
        let user = match user {
            Some(u) => u.to_owned(),
            None => run_askpass(program, &user_prompt)?.to_string(),
        };
        let password = run_askpass(program, &password_prompt(&user))?;
        Credentials::new(user, password.to_string()).map(Some)
    };
    if let Some(program) = &askers.askpass {
        let source = Source::Askpass(program.clone());
        return via_program(program).map(|c| c.map(|c| c.from_source(source)));
    }
    if let Some(mut tty) = sys::tty::open()? {
        let user = match user {
            Some(u) => u.to_owned(),
            None => tty
                .read_line(&user_prompt)
                .context("reading the user name from the terminal")?,
        };
        let password = tty
            .read_password(&password_prompt(&user))
            .context("reading the password from the terminal")?;
        return Credentials::new(user, password.to_string())
            .map(|c| Some(c.from_source(Source::Terminal)));
    }
    match &askers.ssh_askpass {
        Some(program) => via_program(program)
            .map(|c| c.map(|c| c.from_source(Source::SshAskpass(program.clone())))),
        None => Ok(None),
    }
}

/// Longest answer line taken from an askpass program.
const MAX_ASKPASS_LINE: usize = 4096;
/// How long an askpass program may take to answer and exit: a person may be typing into a
/// dialog, but a program that never answers must not hold the run forever.
pub const ASKPASS_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs an askpass program the ssh way: the prompt as its argument, the answer on its stdout.
/// Its stdin is closed so it can never read the tunnel's.
fn run_askpass(program: &Path, prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    run_askpass_within(program, prompt, ASKPASS_TIMEOUT)
}

/// [`run_askpass`] with a time limit. Only the first line is read, and at most
/// [`MAX_ASKPASS_LINE`] bytes of it: then the pipe is closed (a program still writing gets
/// SIGPIPE). A program that is too slow, or that writes too much, is killed; every program is
/// reaped before this returns.
fn run_askpass_within(
    program: &Path,
    prompt: &str,
    timeout: Duration,
) -> anyhow::Result<Zeroizing<String>> {
    let shown = program.display();
    let deadline = Instant::now().checked_add(timeout);
    let mut child = Command::new(program)
        .arg(prompt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running askpass program {shown}"))?;
    let Some(stdout) = child.stdout.take() else {
        stop(&mut child);
        bail!("running askpass program {shown}: no pipe to its output");
    };
    // A thread reads, so that a program that never writes cannot outlast the deadline.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::Builder::new()
        .name("askpass".into())
        .spawn(move || {
            let _ = tx.send(read_first_line(stdout, MAX_ASKPASS_LINE));
        });
    if let Err(e) = reader {
        stop(&mut child);
        return Err(e).with_context(|| format!("running askpass program {shown}"));
    }
    let too_slow = || {
        anyhow!(
            "askpass program {shown} did not answer within {} (it was stopped)",
            crate::connect::secs(timeout)
        )
    };
    let line = match rx.recv_timeout(timeout) {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => {
            stop(&mut child);
            bail!(
                "askpass program {shown} printed more than {MAX_ASKPASS_LINE} bytes without a line end (it was stopped)"
            );
        }
        Ok(Err(e)) => {
            stop(&mut child);
            return Err(e).with_context(|| format!("reading from askpass program {shown}"));
        }
        Err(_) => {
            stop(&mut child);
            return Err(too_slow());
        }
    };
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for askpass program {shown}"))?
        {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stop(&mut child);
            return Err(too_slow());
        }
        // The answer is in; the program is only exiting. Wait in short naps.
        std::thread::sleep(Duration::from_millis(10));
    };
    // SIGPIPE: it kept writing after the line we took (`yes`); the line stands.
    if !status.success() && status.signal() != Some(libc::SIGPIPE) {
        bail!("askpass program {shown} failed ({status}); nothing entered?");
    }
    let text = std::str::from_utf8(&line)
        .map_err(|_| anyhow!("askpass program {shown} printed invalid UTF-8"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Kills and reaps an askpass program that is being given up on.
fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The first line of `r` without its line end, reading at most `max` bytes of it; `None` when
/// no line end comes within them. Dropping `r` closes the pipe.
fn read_first_line(mut r: impl Read, max: usize) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut line = Zeroizing::new(Vec::with_capacity(256));
    let mut chunk = Zeroizing::new([0u8; 512]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let got = &chunk[..n];
        let end = got.iter().position(|&b| b == b'\n');
        line.extend_from_slice(&got[..end.unwrap_or(n)]);
        if line.len() > max {
            return Ok(None);
        }
        if end.is_some() || n == 0 {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::parse_pair("alice:s3cr:et@").unwrap();
        let shown = format!("{c:?} {:?}", Spec::Known(c.clone()));
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("alice"));
        assert!(!format!("{:?}", c.basic_authorization()).contains("YWxp"));
    }

    #[test]
    fn password_is_split_at_the_first_colon() {
        let c = Credentials::parse_pair("alice:a:b@c").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.password.expose(), "a:b@c");
    }

    #[test]
    fn basic_encodes_utf8() {
        // RFC 7617 §2.1 example: test / 123£ with charset UTF-8.
        let c = Credentials::parse_pair("test:123\u{a3}").unwrap();
        assert_eq!(c.basic_authorization().expose(), "Basic dGVzdDoxMjPCow==");
        let c = Credentials::parse_pair("Aladdin:open sesame").unwrap();
        assert_eq!(
            c.basic_authorization().expose(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn control_characters_are_refused_without_echoing_the_password() {
        let err = Credentials::parse_pair("bob:zq\r\nxw")
            .unwrap_err()
            .to_string();
        assert!(err.contains("control character"));
        assert!(!err.contains("zq") && !err.contains("xw"), "{err}");
        assert!(Credentials::parse_pair("nocolon").is_err());
        assert!(Credentials::parse_pair(":pw").is_err());
    }

    #[test]
    fn user_arg_without_password_asks_later() {
        assert!(matches!(Spec::from_user_arg("bob".into()).unwrap(), Spec::User(u) if u == "bob"));
        assert!(matches!(
            Spec::from_user_arg("bob:".into()).unwrap(),
            Spec::Known(c) if c.password.expose().is_empty()
        ));
    }

    #[test]
    fn auth_file_readable_by_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("gimlet-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth");
        std::fs::write(&path, "carol:p:w\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", read_auth_file(&path).unwrap_err());
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = read_auth_file(&path).unwrap();
        assert_eq!((c.user.as_str(), c.password.expose()), ("carol", "p:w"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn netrc_entries_are_found() {
        let text = "# comment\nmachine other login x password y\n\
                    macdef init\ncd /\nmachine proxy.corp login evil\n\n\
                    machine proxy.corp\n  login \"al ice\" password \"p\\\"w d\" account z\n\
                    default login anon password guest\n";
        let (login, password) = netrc_lookup(text, "proxy.corp").unwrap();
        assert_eq!(
            (login.as_str(), password.as_deref().map(String::as_str)),
            ("al ice", Some("p\"w d"))
        );
        let (login, _) = netrc_lookup(text, "elsewhere").unwrap();
        assert_eq!(login, "anon");
        let (login, password) = netrc_lookup("machine h login bob", "h").unwrap();
        assert_eq!((login.as_str(), password.is_none()), ("bob", true));
        assert!(netrc_lookup("machine h password p", "h").is_none());
        assert!(netrc_lookup("", "h").is_none());
        for junk in [
            "machine",
            "machine h login",
            "\"",
            "login x password",
            "machine \"h",
        ] {
            let _ = netrc_lookup(junk, "h");
        }
    }

    #[test]
    fn askpass_programs_answer_on_stdout() {
        let dir = std::env::temp_dir().join(format!("gimlet-askpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("askpass");
        // Answers "robin" to the user prompt and the prompt itself, reversed, for the password.
        std::fs::write(
            &program,
            "#!/bin/sh\ncase \"$1\" in *'user name'*) echo robin;; *) echo \"pw:$1\";; esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
        let askers = Askers {
            askpass: Some(program.clone()),
            ssh_askpass: None,
        };
        let creds = ask("p:3128", None, &askers).unwrap().unwrap();
        assert_eq!(creds.user, "robin");
        assert_eq!(
            creds.password.expose(),
            "pw:gimlet: password for robin at proxy p:3128: "
        );
        std::fs::write(&program, "#!/bin/sh\nexit 1\n").unwrap();
        assert!(ask("p:3128", Some("u"), &askers).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn askpass_programs_that_hang_are_stopped() {
        let dir = std::env::temp_dir().join(format!("gimlet-askpass-slow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("askpass");
        let limit = Duration::from_millis(300);
        // Never answers; then answers but never exits.
        for body in ["exec sleep 30", "echo pw; exec sleep 30"] {
            std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
            let err = format!(
                "{:#}",
                run_askpass_within(&program, "p", limit).unwrap_err()
            );
            assert!(err.contains("did not answer within 0.3s"), "{body}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_bounded_first_line_is_read() {
        let read = |input: &[u8]| read_first_line(input, 8).unwrap().map(|l| l.to_vec());
        assert_eq!(read(b"pw\nmore\n"), Some(b"pw".to_vec()));
        assert_eq!(read(b"pw\r\n"), Some(b"pw".to_vec()));
        assert_eq!(read(b"no end"), Some(b"no end".to_vec()));
        assert_eq!(read(b""), Some(Vec::new()));
        assert_eq!(read(b"12345678\n"), Some(b"12345678".to_vec()));
        assert_eq!(read(b"123456789\n"), None);
        assert_eq!(read(&[b'y'; 100_000]), None);
    }
}
