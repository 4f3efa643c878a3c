//! Fixtures for the TLS tests: certificates made with rcgen for each test, a
//! scripted fake proxy that speaks TLS (rustls, blocking, one thread per
//! connection), and a rustls server session that can run over any byte
//! stream, so a fake proxy can play the destination inside its own tunnel
//! (TLS in TLS).

use std::any::Any;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, date_time_ymd,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ProtocolVersion, RootCertStore, ServerConfig, ServerConnection};
use sha2::{Digest, Sha256};

use crate::support::{HANG, base64, read_head, scratch_file};

/// How long a fake proxy connection may sit in a blocking read or write
/// before it gives up (only a guard against a hang).
const IO_LIMIT: Duration = Duration::from_secs(60);

/// What [`TlsProxy::connections`] sends to tell its probe from gimlet (whose
/// first byte is a TLS record type, or a letter for plain HTTP).
const PROBE: &[u8] = b"\0gimlet-tls-probe\n";

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate with its private key, as DER for rustls and PEM files for
/// gimlet's options.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
    spki: Vec<u8>,
}

impl Identity {
    fn new(cert: rcgen::Certificate, key: &KeyPair) -> Identity {
        Identity {
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
            spki: key.subject_public_key_info(),
        }
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }

    /// The curl-style pin of this certificate's public key:
    /// `sha256//` + base64 of the SHA-256 of the SubjectPublicKeyInfo DER.
    pub fn pin(&self) -> String {
        let hash = Sha256::digest(&self.spki);
        format!("sha256//{}", base64(&hash[..]))
    }

    /// The certificate alone, in a PEM file.
    pub fn cert_file(&self) -> PathBuf {
        scratch_file("cert.pem", self.cert_pem.as_bytes(), 0o600)
    }

    /// The private key alone, in a PEM file.
    pub fn key_file(&self) -> PathBuf {
        scratch_file("key.pem", self.key_pem.as_bytes(), 0o600)
    }

    /// Certificate and key in one PEM file.
    pub fn bundle_file(&self) -> PathBuf {
        let both = format!("{}{}", self.cert_pem, self.key_pem);
        scratch_file("cert-and-key.pem", both.as_bytes(), 0o600)
    }

    /// A server configuration presenting this certificate: TLS 1.2 and 1.3,
    /// no client authentication.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.configure(rustls::DEFAULT_VERSIONS, None)
    }

    /// Like [`Identity::server_config`], offering TLS 1.2 only.
    pub fn server_config_tls12(&self) -> Arc<ServerConfig> {
        self.configure(&[&rustls::version::TLS12], None)
    }

    /// A server configuration that requires a client certificate issued by
    /// `clients`, with the given protocol versions.
    pub fn server_config_requiring(
        &self,
        clients: &Authority,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ServerConfig> {
        self.configure(versions, Some(clients))
    }

    fn configure(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        clients: Option<&Authority>,
    ) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("protocol versions");
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der()).expect("client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(vec![self.cert.clone()], self.key())
            .expect("server certificate");
        Arc::new(config)
    }
}

/// A certificate authority that issues certificates for the tests.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        Authority {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate in a PEM file, for `--proxy-cacert` / `--cacert`.
    pub fn file(&self) -> PathBuf {
        scratch_file("ca.pem", self.issuer.pem().as_bytes(), 0o600)
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Identity {
        self.issue_with(names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    /// A server certificate for `names` that expired long ago.
    pub fn issue_expired(&self, names: &[&str]) -> Identity {
        self.issue_with(names, ExtendedKeyUsagePurpose::ServerAuth, true)
    }

    /// A client certificate.
    pub fn issue_client(&self, name: &str) -> Identity {
        self.issue_with(&[name], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    fn issue_with(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Identity {
        let mut params = leaf_params(names, usage);
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Identity::new(cert, &key)
    }
}

fn leaf_params(names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params
}

/// A self-signed server certificate for `names` that no authority vouches for.
pub fn self_signed(names: &[&str]) -> Identity {
    let params = leaf_params(names, ExtendedKeyUsagePurpose::ServerAuth);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    Identity::new(cert, &key)
}

/// The names a good proxy certificate covers.
pub const PROXY_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Every certificate a TLS test may want, made afresh for the test.
pub struct Pki {
    /// The authority gimlet is told to trust.
    pub ca: Authority,
    /// For localhost, 127.0.0.1 and ::1, signed by `ca`.
    pub server: Identity,
    /// Like `server` but expired.
    pub expired: Identity,
    /// For `other.example` only, signed by `ca`.
    pub other: Identity,
    /// For the proxy's names, self-signed.
    pub self_signed: Identity,
    /// The authority the proxy trusts for client certificates.
    pub client_ca: Authority,
    /// A client certificate issued by `client_ca`.
    pub client: Identity,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Authority::new("gimlet test CA");
        let client_ca = Authority::new("gimlet test client CA");
        Pki {
            server: ca.issue(PROXY_NAMES),
            expired: ca.issue_expired(PROXY_NAMES),
            other: ca.issue(&["other.example"]),
            self_signed: self_signed(PROXY_NAMES),
            client: client_ca.issue_client("gimlet-client"),
            ca,
            client_ca,
        }
    }
}

// ---------------------------------------------------------------------------
// A rustls server session over any byte stream
// ---------------------------------------------------------------------------

/// The write side of a transport, which can also be half-closed.
pub trait Sink: Write + Send {
    /// Ends this direction: TCP shutdown(Write), or close_notify and whatever
    /// lies beneath for a TLS session.
    fn close(&mut self) -> io::Result<()>;
}

impl Sink for TcpStream {
    fn close(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn close(&mut self) -> io::Result<()> {
        (**self).close()
    }
}

/// The session and the transport's write side, shared by the two halves.
struct Link<'a> {
    conn: ServerConnection,
    sink: Box<dyn Sink + 'a>,
}

impl Link<'_> {
    /// Sends every record rustls has queued.
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sink)?;
        }
        self.sink.flush()
    }
}

fn lock<'m, 'a>(link: &'m Mutex<Link<'a>>) -> MutexGuard<'m, Link<'a>> {
    link.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How the peer ended its side of a TLS session.
#[derive(Debug, PartialEq, Eq)]
pub enum Close {
    /// A close_notify alert.
    Notify,
    /// The transport ended without close_notify.
    Eof,
    /// The session or the transport failed.
    Error(String),
}

/// Server side of a TLS session, split into halves that can be used from two
/// threads at once (each takes a shared lock only briefly, never while
/// waiting for the peer to send).
pub struct TlsStream<'a> {
    pub reader: TlsReader<'a>,
    pub writer: TlsWriter<'a>,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// Whether the client presented a certificate.
    pub client_certificate: bool,
    pub protocol: Option<ProtocolVersion>,
}

/// The reading half of a [`TlsStream`]: plaintext from the client. A
/// close_notify reads as EOF; a transport EOF without it is an
/// `UnexpectedEof` error.
pub struct TlsReader<'a> {
    link: Arc<Mutex<Link<'a>>>,
    source: Box<dyn Read + Send + 'a>,
    /// Transport bytes read but not yet handed to rustls.
    pending: Vec<u8>,
    eof: bool,
}

/// The writing half of a [`TlsStream`]: each `write` becomes TLS records sent
/// at once.
pub struct TlsWriter<'a> {
    link: Arc<Mutex<Link<'a>>>,
}

impl<'a> TlsStream<'a> {
    /// Runs the server handshake over `source`/`sink`.
    pub fn accept(
        config: Arc<ServerConfig>,
        mut source: Box<dyn Read + Send + 'a>,
        sink: Box<dyn Sink + 'a>,
    ) -> Result<TlsStream<'a>, String> {
        let conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
        let mut link = Link { conn, sink };
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            link.flush()
                .map_err(|e| format!("sending handshake records: {e}"))?;
            if !link.conn.is_handshaking() {
                break;
            }
            if pending.is_empty() {
                let n = source
                    .read(&mut chunk)
                    .map_err(|e| format!("reading the handshake: {e}"))?;
                if n == 0 {
                    return Err("the client closed the connection during the handshake".into());
                }
                pending.extend_from_slice(&chunk[..n]);
            }
            let used = link
                .conn
                .read_tls(&mut &pending[..])
                .map_err(|e| format!("reading the handshake: {e}"))?;
            pending.drain(..used);
            if let Err(e) = link.conn.process_new_packets() {
                // Tell the client why (an alert), as a real server would.
                let _ = link.flush();
                return Err(e.to_string());
            }
        }
        let sni = link.conn.server_name().map(str::to_owned);
        let client_certificate = link.conn.peer_certificates().is_some_and(|c| !c.is_empty());
        let protocol = link.conn.protocol_version();
        let link = Arc::new(Mutex::new(link));
        Ok(TlsStream {
            reader: TlsReader {
                link: Arc::clone(&link),
                source,
                pending,
                eof: false,
            },
            writer: TlsWriter { link },
            sni,
            client_certificate,
            protocol,
        })
    }

    /// Runs the server handshake over a TCP connection.
    pub fn over_tcp(
        config: Arc<ServerConfig>,
        tcp: &TcpStream,
    ) -> Result<TlsStream<'static>, String> {
        let source = tcp.try_clone().map_err(|e| e.to_string())?;
        let sink = tcp.try_clone().map_err(|e| e.to_string())?;
        TlsStream::accept(config, Box::new(source), Box::new(sink))
    }

    /// Runs the server handshake inside another TLS session: the destination
    /// behind a TLS proxy, reached through its tunnel.
    pub fn inside<'o: 'a>(
        config: Arc<ServerConfig>,
        outer: &'a mut TlsStream<'o>,
    ) -> Result<TlsStream<'a>, String> {
        TlsStream::accept(
            config,
            Box::new(&mut outer.reader),
            Box::new(&mut outer.writer),
        )
    }

    /// Writes `bytes` with one TLS write (one record up to 16 KiB), sent at
    /// once; panics on error.
    #[track_caller]
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.writer
            .write_all(bytes.as_ref())
            .expect("fake TLS server cannot write");
    }

    /// Writes each piece as its own TLS record and sends them all with a
    /// single write on the transport.
    #[track_caller]
    pub fn send_records(&mut self, pieces: &[&[u8]]) {
        self.send_batch(pieces, false, &[]);
    }

    /// Like [`TlsStream::send_records`], with close_notify after the pieces
    /// in the same transport write.
    #[track_caller]
    pub fn send_records_then_close_notify(&mut self, pieces: &[&[u8]]) {
        self.send_batch(pieces, true, &[]);
    }

    /// Like [`TlsStream::send_records`], with `raw` bytes (not TLS) after the
    /// records in the same transport write.
    #[track_caller]
    pub fn send_records_then_raw(&mut self, pieces: &[&[u8]], raw: &[u8]) {
        self.send_batch(pieces, false, raw);
    }

    #[track_caller]
    fn send_batch(&mut self, pieces: &[&[u8]], close_notify: bool, raw: &[u8]) {
        let mut link = lock(&self.writer.link);
        for piece in pieces {
            let mut rest = *piece;
            while !rest.is_empty() {
                let n = link.conn.writer().write(rest).expect("queue record");
                assert!(n > 0, "rustls accepted no plaintext");
                rest = &rest[n..];
            }
        }
        if close_notify {
            link.conn.send_close_notify();
        }
        let mut queued = Vec::new();
        while link.conn.wants_write() {
            link.conn.write_tls(&mut queued).expect("collect records");
        }
        queued.extend_from_slice(raw);
        link.sink
            .write_all(&queued)
            .and_then(|()| link.sink.flush())
            .expect("fake TLS server cannot write");
    }

    /// Sends close_notify and shuts the transport's write side.
    pub fn shutdown(&mut self) {
        let _ = self.writer.close();
    }

    /// Sends back whatever arrives until the client's close_notify, then
    /// shuts down. Panics if the client ends without close_notify. Returns
    /// how many bytes went round.
    #[track_caller]
    pub fn echo(&mut self) -> u64 {
        let copied = io::copy(&mut self.reader, &mut self.writer).expect("echo through TLS failed");
        self.shutdown();
        copied
    }
}

impl TlsReader<'_> {
    /// Reads until the client ends its side; returns the bytes and how it
    /// ended.
    pub fn read_to_close(&mut self) -> (Vec<u8>, Close) {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return (out, Close::Notify),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return (out, Close::Eof),
                Err(e) => return (out, Close::Error(e.to_string())),
            }
        }
    }

    /// After a close_notify: whether the transport then ends (EOF) with no
    /// further bytes.
    pub fn transport_ends(&mut self) -> bool {
        if self.eof {
            return self.pending.is_empty();
        }
        if !self.pending.is_empty() {
            return false;
        }
        let mut buf = [0u8; 1024];
        loop {
            match self.source.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return true;
                }
                Ok(_) => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

impl Read for TlsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut chunk = [0u8; 32 * 1024];
        loop {
            {
                let mut link = lock(&self.link);
                match link.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // No plaintext buffered: hand rustls more records, if any.
                if !self.pending.is_empty() || self.eof {
                    let used = link.conn.read_tls(&mut &self.pending[..])?;
                    self.pending.drain(..used);
                    let processed = link.conn.process_new_packets();
                    // Processing may queue records (alerts): send them.
                    let flushed = link.flush();
                    processed.map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                    flushed?;
                    continue;
                }
            }
            // Wait for the client without holding the lock.
            match self.source.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl TlsWriter<'_> {
    /// Sends close_notify, leaving the transport open.
    pub fn close_notify(&mut self) {
        let mut link = lock(&self.link);
        link.conn.send_close_notify();
        let _ = link.flush();
    }

    /// Starts a TLS 1.3 key update (asking the client to update its keys
    /// too).
    pub fn refresh_keys(&mut self) {
        let mut link = lock(&self.link);
        link.conn.refresh_traffic_keys().expect("key update");
        link.flush().expect("fake TLS server cannot write");
    }

    /// Writes `bytes` straight to the transport, bypassing TLS (to corrupt
    /// the record stream).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let mut link = lock(&self.link);
        link.sink
            .write_all(bytes)
            .and_then(|()| link.sink.flush())
            .expect("fake TLS server cannot write");
    }

    /// Shuts the transport's write side without sending close_notify (a
    /// truncating close).
    pub fn close_transport_only(&mut self) {
        let _ = lock(&self.link).sink.close();
    }
}

impl Write for TlsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut link = lock(&self.link);
        let n = link.conn.writer().write(buf)?;
        link.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.link).flush()
    }
}

impl Sink for TlsWriter<'_> {
    fn close(&mut self) -> io::Result<()> {
        let mut link = lock(&self.link);
        link.conn.send_close_notify();
        link.flush()?;
        link.sink.close()
    }
}

// ---------------------------------------------------------------------------
// The fake TLS proxy
// ---------------------------------------------------------------------------

type TlsScript = dyn Fn(&mut TlsSession) + Send + Sync + 'static;

enum Mode {
    /// TLS handshake, then the request head, then the script.
    Tls {
        config: Arc<ServerConfig>,
        script: Arc<TlsScript>,
    },
    /// No TLS: read what arrives, send these bytes (if any), wait for the
    /// client to hang up.
    Raw {
        reply: Option<Vec<u8>>,
        hang_up: bool,
    },
}

struct Shared {
    /// (connection index, request head) in the order they were read.
    requests: Mutex<Vec<(usize, Vec<u8>)>>,
    /// Connection indexes that were probes rather than gimlet.
    probes: Mutex<Vec<usize>>,
    stop: AtomicBool,
}

/// What happened on one connection from gimlet.
#[derive(Debug)]
pub struct Connection {
    pub index: usize,
    /// The server handshake's outcome (`Err` says why it failed).
    pub handshake: Result<(), String>,
    /// The SNI gimlet sent.
    pub sni: Option<String>,
    /// Whether gimlet presented a client certificate.
    pub client_certificate: bool,
    pub protocol: Option<ProtocolVersion>,
    /// For a raw (non-TLS) proxy: the first bytes gimlet sent.
    pub first_bytes: Vec<u8>,
    script: Result<(), String>,
}

/// What a fake TLS proxy saw, once every connection has been handled.
#[derive(Debug)]
pub struct TlsRecord {
    pub connections: Vec<Connection>,
    /// Request heads read inside TLS, in order.
    pub requests: Vec<Vec<u8>>,
}

impl TlsRecord {
    /// The single connection.
    #[track_caller]
    pub fn only_connection(&self) -> &Connection {
        assert_eq!(
            self.connections.len(),
            1,
            "expected exactly one connection, got {:?}",
            self.connections
        );
        &self.connections[0]
    }

    /// The single request of the single connection, as text; the handshake
    /// must have succeeded.
    #[track_caller]
    pub fn only_request(&self) -> String {
        let conn = self.only_connection();
        assert_eq!(conn.handshake, Ok(()), "the proxy's TLS handshake failed");
        self.assert_requests(1);
        String::from_utf8_lossy(&self.requests[0]).into_owned()
    }

    /// Asserts how many request heads came.
    #[track_caller]
    pub fn assert_requests(&self, count: usize) {
        assert_eq!(
            self.requests.len(),
            count,
            "unexpected number of requests: {:?}",
            self.requests
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

/// One TLS connection from gimlet, handed to a script after the handshake
/// and the request head.
pub struct TlsSession {
    pub tls: TlsStream<'static>,
    index: usize,
    shared: Arc<Shared>,
    head: Vec<u8>,
}

impl TlsSession {
    /// The request head read most recently (empty if gimlet sent none).
    pub fn request(&self) -> &[u8] {
        &self.head
    }

    /// Reads (and records) another request head on this connection; `None`
    /// if gimlet ended the session first.
    pub fn read_request(&mut self) -> Option<Vec<u8>> {
        let head = read_head(&mut self.tls.reader);
        if head.is_empty() {
            return None;
        }
        lock_vec(&self.shared.requests).push((self.index, head.clone()));
        self.head = head.clone();
        Some(head)
    }
}

impl Deref for TlsSession {
    type Target = TlsStream<'static>;

    fn deref(&self) -> &Self::Target {
        &self.tls
    }
}

impl DerefMut for TlsSession {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tls
    }
}

fn lock_vec<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A scripted HTTPS proxy on the loopback interface: each accepted
/// connection runs in its own thread, does the TLS server handshake, reads
/// the request head inside TLS (recording it) and hands the session to the
/// script.
pub struct TlsProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    results: Mutex<mpsc::Receiver<Connection>>,
    collected: Mutex<Vec<Connection>>,
}

impl TlsProxy {
    /// Starts a TLS proxy on `127.0.0.1:0`.
    pub fn start(
        config: Arc<ServerConfig>,
        script: impl Fn(&mut TlsSession) + Send + Sync + 'static,
    ) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        TlsProxy::serve(
            listener,
            Mode::Tls {
                config,
                script: Arc::new(script),
            },
        )
    }

    /// Starts a TLS proxy on `[::1]:0`, or returns `None` when this host has
    /// no IPv6 loopback.
    pub fn start_v6(
        config: Arc<ServerConfig>,
        script: impl Fn(&mut TlsSession) + Send + Sync + 'static,
    ) -> Option<TlsProxy> {
        match TcpListener::bind("[::1]:0") {
            Ok(listener) => Some(TlsProxy::serve(
                listener,
                Mode::Tls {
                    config,
                    script: Arc::new(script),
                },
            )),
            Err(err) => {
                eprintln!("skipping: no IPv6 loopback ({err})");
                None
            }
        }
    }

    /// A server that accepts TCP connections and never answers (the
    /// ClientHello goes unanswered).
    pub fn silent() -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        TlsProxy::serve(
            listener,
            Mode::Raw {
                reply: None,
                hang_up: false,
            },
        )
    }

    /// A server that reads the ClientHello and hangs up (FIN) without a
    /// word.
    pub fn hanging_up() -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        TlsProxy::serve(
            listener,
            Mode::Raw {
                reply: None,
                hang_up: true,
            },
        )
    }

    /// A server that speaks no TLS: whatever arrives, it sends `reply` and
    /// waits for the client to hang up.
    pub fn plain(reply: &[u8]) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        TlsProxy::serve(
            listener,
            Mode::Raw {
                reply: Some(reply.to_vec()),
                hang_up: false,
            },
        )
    }

    fn serve(listener: TcpListener, mode: Mode) -> TlsProxy {
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            probes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let mode = Arc::new(mode);
        let (tx, rx) = mpsc::channel();
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for (index, conn) in listener.incoming().enumerate() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let shared = Arc::clone(&accept_shared);
                let mode = Arc::clone(&mode);
                let tx = tx.clone();
                thread::spawn(move || run_connection(stream, index, shared, mode, tx));
            }
        });
        TlsProxy {
            addr,
            shared,
            results: Mutex::new(rx),
            collected: Mutex::new(Vec::new()),
        }
    }

    /// `host:port` of the proxy (`[::1]:port` for IPv6).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://` URL of the proxy by its address.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://` URL of the proxy under another host name.
    pub fn url_as(&self, host: &str) -> String {
        format!("https://{host}:{}", self.addr.port())
    }

    /// How many connections gimlet has made so far. Exact: every connection
    /// the kernel completed before this call is counted.
    pub fn connections(&self) -> usize {
        let mut probe = TcpStream::connect(self.addr).expect("connect probe");
        probe.set_read_timeout(Some(HANG)).expect("timeout");
        probe.write_all(PROBE).expect("write probe");
        let mut answer = String::new();
        probe
            .read_to_string(&mut answer)
            .expect("probe answer (proxy stuck?)");
        let position: usize = answer.parse().expect("probe index");
        let earlier = lock_vec(&self.shared.probes)
            .iter()
            .filter(|&&i| i < position)
            .count();
        position - earlier
    }

    /// Waits for every connection gimlet made to be fully handled, fails if
    /// any script panicked, and returns what the proxy saw. Call it after
    /// gimlet has exited.
    #[track_caller]
    pub fn finish(&self) -> TlsRecord {
        let connections = self.connections();
        let results = lock_vec(&self.results);
        let mut collected = lock_vec(&self.collected);
        while collected.len() < connections {
            match results.recv_timeout(HANG) {
                Ok(conn) => collected.push(conn),
                Err(_) => panic!("a fake TLS proxy connection was still busy after {HANG:?}"),
            }
        }
        let mut done: Vec<Connection> = collected.drain(..).collect();
        done.sort_by_key(|c| c.index);
        for conn in &done {
            if let Err(message) = &conn.script {
                panic!(
                    "fake TLS proxy script failed on connection {}: {message}",
                    conn.index
                );
            }
        }
        let mut requests = lock_vec(&self.shared.requests).clone();
        requests.sort_by_key(|(index, _)| *index);
        TlsRecord {
            connections: done,
            requests: requests.into_iter().map(|(_, head)| head).collect(),
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn run_connection(
    tcp: TcpStream,
    index: usize,
    shared: Arc<Shared>,
    mode: Arc<Mode>,
    tx: mpsc::Sender<Connection>,
) {
    let _ = tcp.set_read_timeout(Some(IO_LIMIT));
    let _ = tcp.set_write_timeout(Some(IO_LIMIT));
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    if matches!(tcp.peek(&mut first), Ok(1) if first[0] == PROBE[0]) {
        let mut probe = tcp;
        let mut marker = vec![0u8; PROBE.len()];
        let _ = probe.read_exact(&mut marker);
        lock_vec(&shared.probes).push(index);
        let _ = probe.write_all(index.to_string().as_bytes());
        return;
    }
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let mut record = Connection {
        index,
        handshake: Ok(()),
        sni: None,
        client_certificate: false,
        protocol: None,
        first_bytes: Vec::new(),
        script: Ok(()),
    };
    match &*mode {
        Mode::Raw { reply, hang_up } => {
            raw_connection(tcp, reply.as_deref(), *hang_up, &mut record)
        }
        Mode::Tls { config, script } => match TlsStream::over_tcp(Arc::clone(config), &tcp) {
            Err(why) => {
                record.handshake = Err(why);
                // Let gimlet read the alert and hang up first (no reset).
                drain(&tcp);
            }
            Ok(tls) => {
                record.sni = tls.sni.clone();
                record.client_certificate = tls.client_certificate;
                record.protocol = tls.protocol;
                let mut session = TlsSession {
                    tls,
                    index,
                    shared: Arc::clone(&shared),
                    head: Vec::new(),
                };
                if let Some(head) = session.read_request() {
                    session.head = head;
                }
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script(&mut session)));
                drop(session);
                record.script = outcome.map_err(panic_message);
            }
        },
    }
    let _ = tx.send(record);
}

fn raw_connection(
    mut tcp: TcpStream,
    reply: Option<&[u8]>,
    hang_up: bool,
    record: &mut Connection,
) {
    let mut buf = [0u8; 16 * 1024];
    if let Ok(n) = tcp.read(&mut buf) {
        record.first_bytes = buf[..n].to_vec();
    }
    if let Some(reply) = reply {
        let _ = tcp.write_all(reply);
    }
    if hang_up {
        let _ = tcp.shutdown(Shutdown::Write);
    }
    drain(&tcp);
}

/// Reads and discards until the peer hangs up (or the connection fails).
fn drain(mut tcp: &TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}
