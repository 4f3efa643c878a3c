//! Where proxy credentials come from, and how they are kept.
//!
//! Sources, first one present wins: the proxy URL's userinfo, `-U`, `--proxy-auth-file` (or
//! corkscrew's AUTHFILE), `GIMLET_PROXY_AUTH`, then a prompt on `/dev/tty` when the proxy asks.
//! Secrets are zeroed on drop and never shown by `Debug`. Nothing here touches fd 0 or 1: they
//! belong to the tunnel.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password)
            .finish()
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
        Ok(Credentials { user, password })
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
        let mut value = String::from("Basic ");
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
    /// `USER` or `USER:PASSWORD`, as `-U` and URL userinfo give it.
    pub fn from_user_arg(arg: String) -> anyhow::Result<Self> {
        match arg.split_once(':') {
            Some(_) => Credentials::parse_pair(&arg).map(Spec::Known),
            None if arg.is_empty() => bail!("the user name is empty"),
            None => Ok(Spec::User(arg)),
        }
    }
}

/// Reads corkscrew's credential file: `user:password` on the first line. Refuses a file that
/// group or others can access, the way ssh refuses such a private key.
pub fn read_auth_file(path: &Path) -> anyhow::Result<Credentials> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("opening credential file {shown}"))?;
    let mode = file
        .metadata()
        .with_context(|| format!("reading credential file {shown}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "credential file {shown} is accessible by group or others (mode {:04o}): run chmod 600 {shown}",
            mode & 0o7777
        );
    }
    let mut line = Zeroizing::new(String::new());
    // A credential line is short; the cap keeps a wrong path (a log, a device) from eating memory.
    BufReader::new(file.take(64 * 1024))
        .read_line(&mut line)
        .with_context(|| format!("reading credential file {shown}"))?;
    let pair = line.trim_end_matches(['\n', '\r']);
    Credentials::parse_pair(pair).with_context(|| format!("reading credential file {shown}"))
}

/// Asks on the controlling terminal for whatever is missing. `None` when there is no terminal.
pub fn prompt(proxy: &str, user: Option<&str>) -> anyhow::Result<Option<Credentials>> {
    let Some(mut tty) = sys::tty::open()? else {
        return Ok(None);
    };
    let user = match user {
        Some(u) => u.to_owned(),
        None => tty
            .read_line(&format!("gimlet: user name for proxy {proxy}: "))
            .context("reading the user name from the terminal")?,
    };
    let password =
        rpassword::prompt_password(format!("gimlet: password for {user} at proxy {proxy}: "))
            .context("reading the password from the terminal")?;
    Credentials::new(user, password).map(Some)
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
}
