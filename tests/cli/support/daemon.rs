//! A gimlet daemon (listen mode, `-D`) under test: its stderr log is read line by line on a
//! thread as it comes, so a test waits for the event it expects instead of sleeping; and
//! listening ports reserved so that no other test takes them between two steps.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::HANG;

/// The log lines of a running daemon: those seen so far, and the rest as they come.
pub struct DaemonLog {
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

/// Starts `cmd` with stdin and stdout on /dev/null and its stderr followed as a [`DaemonLog`].
#[track_caller]
pub fn spawn_logged(cmd: &mut Command) -> (Child, DaemonLog) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gimlet");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (
        child,
        DaemonLog {
            lines,
            seen: Vec::new(),
        },
    )
}

impl DaemonLog {
    /// The next line containing `needle` (earlier lines are kept in `seen`); panics with the
    /// log so far after [`HANG`].
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything logged so far.
    pub fn so_far(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Waits up to `limit` for one more line; `true` if one came (kept in `seen`). For a
    /// caller that waits on something else meanwhile: it waits here rather than spin.
    pub fn take_one(&mut self, limit: Duration) -> bool {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                self.seen.push(line);
                true
            }
            Err(_) => false,
        }
    }

    /// Every line still to come, until the daemon's stderr closes.
    pub fn rest(&mut self) {
        self.seen.extend(self.lines.iter());
    }
}

/// A port on 127.0.0.1 held for a test: bound with SO_REUSEADDR and not listening. Nobody
/// else gets it from a bind to port 0 or as a connection's source port while it is held,
/// yet gimlet (which also sets SO_REUSEADDR) may bind and listen on it. Without it, a port
/// found free and released is up for grabs by tests running in parallel.
pub struct ReservedPort {
    socket: socket2::Socket,
    pub port: u16,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("local address")
            .port();
        ReservedPort { socket, port }
    }

    /// Listens on the port, so that gimlet cannot bind it ("Address already in use"), until
    /// [`ReservedPort::unblock`].
    pub fn block(&self) {
        self.socket.listen(1).expect("listen on the reserved port");
    }

    /// Stops listening, keeping the port held: on Linux, shutdown(2) of a listening socket
    /// takes it back to the closed state, still bound.
    pub fn unblock(&self) {
        self.socket
            .shutdown(std::net::Shutdown::Both)
            .expect("stop listening on the reserved port");
    }
}
