//! The endpoint: a loopback "proxy" that answers every CONNECT with 200 itself and then plays
//! one test's far side. One session is expected at a time; the accept thread answers the head
//! inline (the latency path), and a thread per connection runs the data phase.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::stream::{Checker, IO_CHUNK, expected};

pub(crate) const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
/// The byte sent with the `200` in the latency test.
pub(crate) const EARLY_BYTE: u8 = b'X';
/// The CONNECT target every tool is given (the endpoint checks it and ignores it otherwise).
pub(crate) const DEST_HOST: &str = "127.0.0.1";
pub(crate) const DEST_PORT: u16 = 22;

#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// Read and discard exactly this many bytes, then close.
    Sink(u64),
    /// Send this many bytes as fast as possible, then close.
    Source(u64),
    /// Send one byte with the `200`, then close.
    Early,
}

/// What the far side saw, sent when its connection is over.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) head: String,
    /// Tunnel bytes received (all of them, including any after the expected count).
    pub(crate) received: u64,
    /// First received byte that differs from the stream.
    pub(crate) bad_at: Option<u64>,
    /// Tunnel bytes sent.
    pub(crate) sent: u64,
    pub(crate) error: Option<String>,
}

/// The endpoint's half of a session.
pub(crate) struct Pending {
    pub(crate) mode: Mode,
    pub(crate) full_verify: bool,
    pub(crate) stall: Duration,
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) opened: Sender<Instant>,
    pub(crate) done: Sender<Instant>,
    /// Closed (dropped) by the harness when the endpoint may close the connection.
    pub(crate) go: Receiver<()>,
    pub(crate) report: Sender<Report>,
}

/// The harness's half of a session.
pub(crate) struct Session {
    /// When the `200` went out.
    pub(crate) opened: Receiver<Instant>,
    /// Sink mode: when the last expected byte arrived; source mode: when the last byte was
    /// sent. Disconnected when the data phase ended without it.
    pub(crate) done: Receiver<Instant>,
    pub(crate) go: Option<Sender<()>>,
    pub(crate) report: Receiver<Report>,
    /// Sink mode: bytes received so far.
    pub(crate) progress: Arc<AtomicU64>,
}

impl Session {
    /// Lets the endpoint close its side of the tunnel.
    pub(crate) fn release(&mut self) {
        self.go = None;
    }
}

pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) slot: Arc<Mutex<Option<Pending>>>,
}

impl Endpoint {
    pub(crate) fn start() -> io::Result<Endpoint> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let slot: Arc<Mutex<Option<Pending>>> = Arc::default();
        let accept_slot = Arc::clone(&slot);
        thread::Builder::new()
            .name("endpoint".into())
            .spawn(move || accept_loop(listener, accept_slot))?;
        Ok(Endpoint { addr, slot })
    }

    /// Arms the endpoint for the next connection.
    pub(crate) fn expect(&self, mode: Mode, full_verify: bool, stall: Duration) -> Session {
        let (opened_tx, opened) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let (report_tx, report) = mpsc::channel();
        let progress = Arc::new(AtomicU64::new(0));
        *self.slot.lock().unwrap() = Some(Pending {
            mode,
            full_verify,
            stall,
            progress: Arc::clone(&progress),
            opened: opened_tx,
            done: done_tx,
            go: go_rx,
            report: report_tx,
        });
        Session {
            opened,
            done,
            go: Some(go),
            report,
            progress,
        }
    }

    /// Disarms it (the tool never connected); a late connection is then closed at once.
    pub(crate) fn cancel(&self) {
        self.slot.lock().unwrap().take();
    }
}

pub(crate) fn accept_loop(listener: TcpListener, slot: Arc<Mutex<Option<Pending>>>) {
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        let Some(pending) = slot.lock().unwrap().take() else {
            continue;
        };
        let mut report = Report::default();
        let leftover = match answer(&mut stream, &pending, &mut report) {
            Ok(leftover) => leftover,
            Err(e) => {
                report.error = Some(e);
                let _ = pending.report.send(report);
                continue;
            }
        };
        let _ = thread::Builder::new()
            .name("endpoint-conn".into())
            .spawn(move || serve(stream, pending, leftover, report));
    }
}

/// Reads the CONNECT head and answers `200` (with the early byte in `Early` mode), in one write.
/// Returns the bytes that came after the head.
pub(crate) fn answer(
    stream: &mut TcpStream,
    p: &Pending,
    report: &mut Report,
) -> Result<Vec<u8>, String> {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(p.stall));
    let _ = stream.set_write_timeout(Some(p.stall));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err("closed before the end of the CONNECT head".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the CONNECT head: {e}")),
        };
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > 64 << 10 {
            return Err("CONNECT head over 64 KiB".into());
        }
    };
    report.head = String::from_utf8_lossy(&head[..end]).into_owned();
    let want = format!("CONNECT {DEST_HOST}:{DEST_PORT} HTTP/1.");
    if !report.head.starts_with(&want) {
        return Err(format!("unexpected request line in {:?}", report.head));
    }
    let mut reply = REPLY.to_vec();
    if let Mode::Early = p.mode {
        reply.push(EARLY_BYTE);
        report.sent = 1;
    }
    stream
        .write_all(&reply)
        .map_err(|e| format!("writing the 200: {e}"))?;
    let _ = p.opened.send(Instant::now());
    Ok(head.split_off(end + 4))
}

/// The data phase, then the close: wait for the harness's go, shut down our sending side and
/// read until the tool closes its end (counting anything it still sends).
pub(crate) fn serve(mut stream: TcpStream, p: Pending, leftover: Vec<u8>, mut report: Report) {
    // Long safety timeouts only: a stuck tool is killed by the harness, which unblocks us.
    let _ = stream.set_read_timeout(Some(p.stall * 6));
    let _ = stream.set_write_timeout(Some(p.stall * 6));
    let mut check = Checker::new(p.full_verify);
    let mut buf = vec![0u8; IO_CHUNK];
    check.feed(&leftover);
    report.received = leftover.len() as u64;
    match p.mode {
        Mode::Sink(n) => {
            while report.received < n {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        check.feed(&buf[..k]);
                        report.received += k as u64;
                        p.progress.store(report.received, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        report.error = Some(format!("receiving: {e}"));
                        break;
                    }
                }
            }
            if report.received >= n {
                let _ = p.done.send(Instant::now());
            }
        }
        Mode::Source(n) => {
            while report.sent < n {
                let len = (n - report.sent).min(IO_CHUNK as u64) as usize;
                match stream.write(expected(report.sent, len)) {
                    Ok(0) => break,
                    Ok(k) => report.sent += k as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        report.error = Some(format!("sending: {e}"));
                        break;
                    }
                }
            }
            if report.sent >= n {
                let _ = p.done.send(Instant::now());
            }
        }
        Mode::Early => {}
    }
    drop(p.done);
    let _ = p.go.recv();
    let _ = stream.shutdown(Shutdown::Write);
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                check.feed(&buf[..k]);
                report.received += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if report.error.is_none() && e.kind() != io::ErrorKind::ConnectionReset {
                    report.error = Some(format!("reading after close: {e}"));
                }
                break;
            }
        }
    }
    report.bad_at = check.bad_at;
    let _ = p.report.send(report);
}
