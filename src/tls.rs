//! TLS with rustls: to an `https://` proxy, and with `--tls` to the destination inside the
//! tunnel (TLS in TLS).
//!
//! Handshakes run blocking, within the `--connect-timeout` deadline, before the relay starts.
//! Then [`TlsTunnel`] drives the session non-blocking inside the same mio loop: it reads TLS
//! records until plaintext appears or the socket would block, writes records until the socket
//! would block, maps half-close to `close_notify` followed by `shutdown(Write)`, and nests, so
//! TLS to the destination runs over TLS to the proxy. The plain-HTTP path never touches it.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::error::{Error, Kind, ResultExt};
use crate::relay::Tunnel;

/// How to verify and identify one TLS leg (to the proxy, or to the destination).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// PEM bundle replacing the system's roots.
    pub cacert: Option<PathBuf>,
    /// Skip certificate verification (the user was warned).
    pub insecure: bool,
    /// SHA-256 hashes of acceptable SubjectPublicKeyInfo, curl's `sha256//BASE64`.
    pub pins: Vec<[u8; 32]>,
    /// Name for SNI and verification instead of the host.
    pub servername: Option<String>,
    /// Client certificate chain and key (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Parses `sha256//BASE64[;sha256//BASE64…]`; no option given means no pins.
pub fn parse_pins(s: Option<&str>) -> anyhow::Result<Vec<[u8; 32]>> {
    s.into_iter()
        .flat_map(|s| s.split(';'))
        .map(|pin| {
            let b64 = pin
                .trim()
                .strip_prefix("sha256//")
                .ok_or_else(|| anyhow!("{pin:?} does not start with sha256//"))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("decoding {pin:?}"))?;
            <[u8; 32]>::try_from(raw.as_slice())
                .map_err(|_| anyhow!("{pin:?} is not a SHA-256 hash"))
        })
        .collect()
}

/// ring: pure Rust and assembly, built by cc alone (aws-lc-rs wants cmake and builds slower).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration for one leg. `what` names the peer in messages.
pub fn client_config(opts: &Options, what: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?;
    let roots = root_store(opts.cacert.as_deref())?;
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("setting up certificate verification")?;
    let verifier = Arc::new(Verifier {
        inner: webpki,
        insecure: opts.insecure,
        pins: opts.pins.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&opts.cert, &opts.key) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(_)) => bail!("a client key needs its certificate too"),
        (Some(cert), key) => {
            let chain = read_certs(cert, "client certificate")?;
            if chain.is_empty() {
                bail!("no certificate in {}", cert.display());
            }
            let key_path = key.as_deref().unwrap_or(cert);
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| anyhow!("reading client key {}: {e}", key_path.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .with_context(|| format!("using the client certificate for {what}"))?
        }
    };
    config.enable_sni = true;
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; `what` names the file in messages.
fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("reading {what} {}: {e}", path.display()))
}

/// The system's roots, or the given PEM bundle instead.
fn root_store(cacert: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match cacert {
        Some(path) => {
            let certs = read_certs(path, "CA bundle")?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                bail!("no usable certificate in CA bundle {}", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The name to present (SNI) and verify: the override, else the host. IP literals verify
/// against the certificate's IP addresses and send no SNI.
pub fn server_name(host: &str, opts: &Options) -> anyhow::Result<ServerName<'static>> {
    let name = opts.servername.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    // A zone id (fe80::1%eth0) picks the interface; the certificate names the address.
    let name = match name.split_once('%') {
        Some((addr, _)) if addr.parse::<std::net::Ipv6Addr>().is_ok() => addr,
        _ => name,
    };
    ServerName::try_from(name.to_owned())
        .map_err(|_| anyhow!("{name:?} is not a valid TLS server name"))
}

/// webpki verification, or none with `--insecure`, then the public-key pins if any.
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    insecure: bool,
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The pin check failed: a certificate error of our own, so it is classified like the others.
#[derive(Debug)]
struct PinMismatch(String);

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "its public key sha256//{} matches no pinned key", self.0)
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.insecure {
            self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )?;
        }
        if !self.pins.is_empty() {
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let hash: [u8; 32] = Sha256::digest(cert.subject_public_key_info().as_ref()).into();
            if !self.pins.contains(&hash) {
                let shown = base64::engine::general_purpose::STANDARD.encode(hash);
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(PinMismatch(shown))),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Signatures are checked even with --insecure: it skips trust, not the handshake.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Says in words why a handshake failed, for the one error line.
pub fn explain(e: &io::Error, name: &str) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the certificate has expired ({tls})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the certificate is not valid yet ({tls})")
            }
            CertificateError::NotValidForName => {
                format!("the certificate is not valid for the name {name:?}")
            }
            // The names are the certificate's, so the peer's choice: each one escaped, and not
            // through rustls's Display, which prints them raw.
            CertificateError::NotValidForNameContext { presented, .. } => {
                let names: Vec<String> = presented
                    .iter()
                    .take(8)
                    .map(|n| crate::diag::untrusted(n, 100))
                    .collect();
                let more = match presented.len() {
                    n if n > 8 => format!(" and {} more", n - 8),
                    _ => String::new(),
                };
                match names.is_empty() {
                    true => format!(
                        "the certificate is not valid for the name {name:?} (it names none in its subjectAltName)"
                    ),
                    false => format!(
                        "the certificate is not valid for the name {name:?} (it is for {}{more})",
                        names.join(", ")
                    ),
                }
            }
            CertificateError::UnknownIssuer => {
                "the certificate is signed by an unknown authority (give its CA with --cacert / --proxy-cacert)".to_owned()
            }
            CertificateError::Other(other) => format!("the certificate was refused: {other}"),
            _ => format!("the certificate was refused ({tls})"),
        },
        // The peer answered with something that is not TLS at all.
        rustls::Error::InvalidMessage(_) => {
            format!("{tls} (the peer does not seem to speak TLS: is it a plain http:// proxy?)")
        }
        other => other.to_string(),
    }
}

/// Whether an I/O error is a TLS failure (an alert, a bad record), not a network one.
pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Starts a client session with `name` and shakes hands over `stream`. `peer` names the other
/// end in messages ("proxy HOST:PORT"). A handshake that runs out of time is the peer being
/// unreachable (3); every other failure is TLS (8) and says why.
pub fn start<S: Read + Write>(
    config: Arc<ClientConfig>,
    name: &ServerName<'static>,
    stream: &mut S,
    peer: &str,
) -> Result<ClientConnection, Error> {
    let mut conn = ClientConnection::new(config, name.clone())
        .kind_ctx(Kind::Tls, || format!("starting TLS with {peer}"))?;
    if let Err(e) = handshake(&mut conn, stream) {
        let kind = match e.kind() {
            io::ErrorKind::TimedOut => Kind::Unreachable,
            _ => Kind::Tls,
        };
        let why = explain(&e, &name.to_str());
        return Err(Error::msg(
            kind,
            format_args!("TLS handshake with {peer}: {why}"),
        ));
    }
    Ok(conn)
}

/// Runs a client handshake to completion over a blocking stream.
pub fn handshake<S: Read + Write>(conn: &mut ClientConnection, stream: &mut S) -> io::Result<()> {
    let closed = || {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection during the TLS handshake",
        )
    };
    while conn.is_handshaking() {
        match conn.complete_io(stream) {
            Ok((0, 0)) if conn.is_handshaking() => return Err(closed()),
            Ok(_) => {}
            // rustls says only "unexpected end of file": say who hung up and when.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(closed()),
            Err(e) => return Err(e),
        }
    }
    // Flush what the handshake left to send (the client Finished in TLS 1.2).
    while conn.wants_write() {
        conn.write_tls(stream)?;
    }
    Ok(())
}

/// Largest plaintext the session buffers for sending before `write` says WouldBlock: keeps
/// memory bounded when the socket is slower than stdin.
const SEND_LIMIT: usize = 64 * 1024;

/// A TLS session over a non-blocking transport, as a relay [`Tunnel`].
pub struct TlsTunnel<T> {
    conn: ClientConnection,
    io: T,
    /// A record failed after others in the same read decrypted: their plaintext goes out
    /// first, then this error.
    failed: Option<io::Error>,
    /// Half-close requested: close_notify queued, the transport shut once it is flushed.
    closing: bool,
    closed: bool,
}

impl<T: Tunnel> TlsTunnel<T> {
    pub fn new(mut conn: ClientConnection, io: T) -> Self {
        conn.set_buffer_limit(Some(SEND_LIMIT));
        TlsTunnel {
            conn,
            io,
            failed: None,
            closing: false,
            closed: false,
        }
    }

    /// Sends queued records until none is left or the transport would block.
    fn send_queued(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.io)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        self.io.flush()?;
        if self.closing && !self.closed {
            self.closed = true;
            self.io.shutdown_write()?;
        }
        Ok(())
    }
}

fn ignore_would_block(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

impl<T: Tunnel> Read for TlsTunnel<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify. What came before is intact (each
                // record is authenticated) and ssh guards its own stream: treat it as EOF.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let got = self.conn.read_tls(&mut self.io)?;
            if let Err(e) = self.conn.process_new_packets() {
                // Records before the bad one were authenticated: deliver them first.
                let e = io::Error::new(io::ErrorKind::InvalidData, e);
                return match self.conn.reader().read(buf) {
                    Ok(n) if n > 0 => {
                        self.failed = Some(e);
                        Ok(n)
                    }
                    _ => Err(e),
                };
            }
            // Reading may queue records to send (alerts, key updates).
            ignore_would_block(self.send_queued())?;
            if got == 0 {
                // Transport EOF: hand out what is left, then EOF, whatever rustls makes of it.
                return match self.conn.reader().read(buf) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::UnexpectedEof
                        ) =>
                    {
                        Ok(0)
                    }
                    other => other,
                };
            }
        }
    }
}

impl<T: Tunnel> Write for TlsTunnel<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_queued()?;
        let n = self.conn.writer().write(buf)?;
        ignore_would_block(self.send_queued())?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_queued()
    }
}

impl<T: Tunnel> mio::event::Source for TlsTunnel<T> {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.io.register(r, t, i)
    }

    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.io.reregister(r, t, i)
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        self.io.deregister(r)
    }
}

impl<T: Tunnel> Tunnel for TlsTunnel<T> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.closing = true;
        ignore_would_block(self.send_queued())
    }
}
