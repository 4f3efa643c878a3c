//! The controlling terminal and signals: credential prompts on a real pseudo-terminal (stdin
//! and stdout stay the tunnel's pipes), the terminal's echo given back when a signal ends or
//! stops gimlet at the password prompt, and the caller's stdio flags given back when a signal
//! ends or stops gimlet in the middle of relaying (and taken again on SIGCONT).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::support::*;

/// A pseudo-terminal: the master end the test types into, the slave end gimlet gets as its
/// controlling terminal (and never as stdin or stdout).
struct Pty {
    master: File,
    slave: OwnedFd,
}

fn pty() -> Pty {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds; null name/termios/winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and belong to nobody else.
    unsafe {
        Pty {
            master: File::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
        }
    }
}

/// gimlet in a new session whose controlling terminal is `pty`; stdin and stdout are pipes.
fn spawn_on_terminal(pty: &Pty, args: &[&str]) -> Child {
    let slave = pty.slave.as_raw_fd();
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("gimlet"));
    for var in ["GIMLET_PROXY_AUTH", "GIMLET_ASKPASS", "SSH_ASKPASS"] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid and ioctl are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 || libc::ioctl(slave, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            default_signals_and_no_core();
            Ok(())
        });
    }
    cmd.spawn().expect("spawn gimlet")
}

/// In a freshly forked child: every signal with its default action, as under ssh (even if
/// this test runner ignores some, as under nohup), and no core files from the signals that
/// would dump one.
fn default_signals_and_no_core() {
    // SAFETY: signal and setrlimit are async-signal-safe and touch no memory of ours.
    unsafe {
        for signal in ENDING_SIGNALS
            .iter()
            .chain(&[libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU])
        {
            libc::signal(*signal, libc::SIG_DFL);
        }
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
}

/// Signals whose default action ends a process and that a process can catch (SIGPIPE aside:
/// the Rust runtime ignores it, see below).
const ENDING_SIGNALS: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGUSR1,
    libc::SIGSEGV,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSYS,
];

/// Every signal that ends gimlet by default and can be caught, real-time ones included.
fn ending_signals() -> Vec<libc::c_int> {
    let mut all = ENDING_SIGNALS.to_vec();
    all.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    all
}

/// Whether the terminal behind `pty` echoes.
fn echoes(pty: &Pty) -> bool {
    // SAFETY: tcgetattr fills the zeroed termios; on Linux the master reports the terminal's
    // settings.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(pty.master.as_raw_fd(), &mut t), 0);
        t.c_lflag & libc::ECHO != 0
    }
}

/// Everything the terminal shows, as it arrives.
fn screen(master: &File) -> mpsc::Receiver<String> {
    let mut master = master.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(text(&buf[..n])).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits until the terminal has shown `prompt` (the hang guard is the only timeout).
fn await_prompt(screen: &mpsc::Receiver<String>, shown: &mut String, prompt: &str) {
    while !shown.contains(prompt) {
        match screen.recv_timeout(HANG) {
            Ok(more) => shown.push_str(&more),
            Err(_) => panic!("no {prompt:?} on the terminal; it shows {shown:?}"),
        }
    }
}

/// Waits until the terminal no longer echoes (the password prompt turns echo off; after a stop,
/// SIGCONT turns it off again), so that what the test types next is not echoed.
fn await_echo_off(pty: &Pty) {
    let deadline = std::time::Instant::now() + HANG;
    loop {
        if !echoes(pty) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "echo never turned off for the password"
        );
        thread::yield_now();
    }
}

fn basic_proxy() -> FakeProxy {
    FakeProxy::start(|s| {
        if !text(s.request()).contains("Proxy-Authorization:") {
            s.send(
                "HTTP/1.1 407 Proxy Authentication Required\r\n\
                 Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n",
            );
            assert!(
                s.read_request().is_some(),
                "no retry on the same connection"
            );
        }
        let expected = format!(
            "Proxy-Authorization: Basic {}",
            base64("alice:s3 cr:et".as_bytes())
        );
        assert!(
            text(s.request()).contains(&expected),
            "{}",
            text(s.request())
        );
        s.send(OK);
        s.send("tunnel bytes");
        s.shutdown_write();
        s.wait_for_close();
    })
}

/// Runs gimlet to the end of the tunnel and checks what the pipes and the terminal saw.
fn finish_tunnel(mut child: Child, shown: &mut String, screen: &mpsc::Receiver<String>) {
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "tunnel bytes",
        "the tunnel's stdout carries tunnel bytes only"
    );
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
    while let Ok(more) = screen.try_recv() {
        shown.push_str(&more);
    }
    assert!(
        !shown.contains("s3 cr:et"),
        "the password was echoed: {shown:?}"
    );
}

#[test]
fn credentials_are_asked_on_the_terminal_after_a_407_and_sent_on_the_same_connection() {
    let proxy = basic_proxy();
    let mut pty = pty();
    let screen = screen(&pty.master);
    let child = spawn_on_terminal(&pty, &[&proxy.addr(), "example.test", "22"]);
    let mut shown = String::new();
    await_prompt(
        &screen,
        &mut shown,
        &format!("user name for proxy {}", proxy.addr()),
    );
    pty.master.write_all(b"alice\n").unwrap();
    await_prompt(
        &screen,
        &mut shown,
        &format!("password for alice at proxy {}", proxy.addr()),
    );
    await_echo_off(&pty);
    pty.master.write_all(b"s3 cr:et\n").unwrap();
    finish_tunnel(child, &mut shown, &screen);
    proxy.finish().assert_requests(2);
}

#[test]
fn user_option_without_password_asks_the_terminal_before_connecting() {
    let proxy = basic_proxy();
    let mut pty = pty();
    let screen = screen(&pty.master);
    let child = spawn_on_terminal(&pty, &["-U", "alice", &proxy.addr(), "example.test", "22"]);
    let mut shown = String::new();
    await_prompt(&screen, &mut shown, "password for alice at proxy");
    assert_eq!(
        proxy.connections(),
        0,
        "the password is asked before connecting"
    );
    await_echo_off(&pty);
    pty.master.write_all(b"s3 cr:et\n").unwrap();
    finish_tunnel(child, &mut shown, &screen);
}

/// Kills a relaying gimlet with `signal`: it must die of it, with the caller's flags on the
/// shared stdin and stdout descriptions as they were (blocking).
fn signal_while_relaying_restores_stdio_flags(signal: libc::c_int) {
    let (stdin_read, stdin_write) = pipe();
    let (stdout_read, stdout_write) = pipe();
    let (stdin_probe, stdout_probe) = (
        stdin_read.try_clone().unwrap(),
        stdout_write.try_clone().unwrap(),
    );
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        s.send("relaying");
        s.wait_for_close();
    });
    let mut cmd = gimlet_std();
    cmd.args([&proxy.addr(), "example.test", "22"])
        .stdin(Stdio::from(stdin_read))
        .stdout(Stdio::from(stdout_write))
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            default_signals_and_no_core();
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // Once the first tunnel bytes are out, gimlet is in its relay loop with its flags set.
    let mut out = File::from(stdout_read);
    let mut first = [0u8; 8];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"relaying");
    assert!(
        is_nonblocking(&stdin_probe),
        "gimlet had not set O_NONBLOCK yet"
    );
    // SAFETY: kill has no memory effects; the pid is our child's.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(signal),
        "gimlet should die of the signal: {status:?}"
    );
    assert!(
        !is_nonblocking(&stdin_probe) && !is_nonblocking(&stdout_probe),
        "O_NONBLOCK left on the caller's stdio after signal {signal}"
    );
    drop(stdin_write);
    proxy.finish();
}

#[test]
fn sigterm_while_relaying_gives_the_caller_its_stdio_flags_back() {
    signal_while_relaying_restores_stdio_flags(libc::SIGTERM);
}

#[test]
fn sighup_from_ssh_while_relaying_gives_the_caller_its_stdio_flags_back() {
    signal_while_relaying_restores_stdio_flags(libc::SIGHUP);
}

#[test]
fn every_catchable_ending_signal_while_relaying_gives_the_caller_its_stdio_flags_back() {
    for signal in ending_signals() {
        signal_while_relaying_restores_stdio_flags(signal);
    }
}

/// A tunnel through an echoing proxy with gimlet's stdio on pipes the test keeps probes of.
struct Echoing {
    child: Child,
    feed: File,
    out: mpsc::Receiver<Vec<u8>>,
    stdin_probe: OwnedFd,
    stdout_probe: OwnedFd,
    proxy: FakeProxy,
}

impl Echoing {
    /// Starts gimlet in a process group of its own in this session, like a shell job: not
    /// orphaned, so a stop signal does stop it.
    fn start() -> Echoing {
        Echoing::start_ignoring(Vec::new())
    }

    /// [`Echoing::start`] with `ignored` ignored by the caller, as under nohup.
    fn start_ignoring(ignored: Vec<libc::c_int>) -> Echoing {
        let (stdin_read, stdin_write) = pipe();
        let (stdout_read, stdout_write) = pipe();
        let (stdin_probe, stdout_probe) = (
            stdin_read.try_clone().unwrap(),
            stdout_write.try_clone().unwrap(),
        );
        let proxy = FakeProxy::echo();
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("gimlet"));
        for var in ["GIMLET_PROXY_AUTH", "GIMLET_ASKPASS", "SSH_ASKPASS"] {
            cmd.env_remove(var);
        }
        cmd.args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::from(stdin_read))
            .stdout(Stdio::from(stdout_write))
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || {
                default_signals_and_no_core();
                for &signal in &ignored {
                    libc::signal(signal, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let mut stdout = File::from(stdout_read);
        let (tx, out) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Echoing {
            child,
            feed: File::from(stdin_write),
            out,
            stdin_probe,
            stdout_probe,
            proxy,
        }
    }

    /// Sends `bytes` round the tunnel and waits for them to come back.
    #[track_caller]
    fn round_trip(&mut self, bytes: &[u8]) {
        self.feed.write_all(bytes).unwrap();
        let mut got = Vec::new();
        while got.len() < bytes.len() {
            match self.out.recv_timeout(HANG) {
                Ok(more) => got.extend(more),
                Err(_) => panic!("{:?} never came back through the tunnel", text(bytes)),
            }
        }
        assert_eq!(got, bytes);
    }

    fn nonblocking(&self) -> (bool, bool) {
        (
            is_nonblocking(&self.stdin_probe),
            is_nonblocking(&self.stdout_probe),
        )
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects; the pid is our child's, not yet reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// Waits until gimlet is stopped, and returns the signal that stopped it.
    fn await_stop(&self) -> libc::c_int {
        let mut status = 0;
        // SAFETY: waitpid writes one int; WUNTRACED reports the stop without reaping.
        let pid =
            unsafe { libc::waitpid(self.child.id() as libc::pid_t, &mut status, libc::WUNTRACED) };
        assert_eq!(pid, self.child.id() as libc::pid_t);
        assert!(libc::WIFSTOPPED(status), "not stopped: status {status:#x}");
        libc::WSTOPSIG(status)
    }

    /// Ends stdin, and expects gimlet to finish cleanly with the caller's flags back.
    fn finish(mut self) {
        drop(self.feed);
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{status:?}");
        assert_eq!(
            (
                is_nonblocking(&self.stdin_probe),
                is_nonblocking(&self.stdout_probe)
            ),
            (false, false),
            "O_NONBLOCK left on the caller's stdio"
        );
        self.proxy.finish();
    }
}

/// A stop signal gives the caller its flags back for as long as gimlet is stopped; SIGCONT
/// makes stdio non-blocking again and the tunnel goes on.
fn stop_while_relaying_gives_flags_back_until_continued(signal: libc::c_int) {
    let mut tunnel = Echoing::start();
    tunnel.round_trip(b"before");
    assert_eq!(tunnel.nonblocking(), (true, true));
    tunnel.signal(signal);
    assert_eq!(tunnel.await_stop(), signal, "stopped by another signal");
    assert_eq!(
        tunnel.nonblocking(),
        (false, false),
        "O_NONBLOCK left on the caller's stdio while stopped by signal {signal}"
    );
    tunnel.signal(libc::SIGCONT);
    tunnel.round_trip(b"after");
    assert_eq!(
        tunnel.nonblocking(),
        (true, true),
        "stdio not non-blocking again after SIGCONT"
    );
    tunnel.finish();
}

#[test]
fn sigtstp_while_relaying_gives_the_flags_back_until_sigcont() {
    stop_while_relaying_gives_flags_back_until_continued(libc::SIGTSTP);
}

#[test]
fn sigttin_and_sigttou_while_relaying_give_the_flags_back_until_sigcont() {
    stop_while_relaying_gives_flags_back_until_continued(libc::SIGTTIN);
    stop_while_relaying_gives_flags_back_until_continued(libc::SIGTTOU);
}

#[test]
fn flags_cleared_by_the_caller_during_sigstop_are_set_again_on_sigcont() {
    // SIGSTOP cannot be caught: the flags stay set while stopped. A shell may clear them on
    // the shared description meanwhile; blocking stdio would hang the relay in read(2).
    let mut tunnel = Echoing::start();
    tunnel.round_trip(b"before");
    tunnel.signal(libc::SIGSTOP);
    assert_eq!(tunnel.await_stop(), libc::SIGSTOP);
    assert_eq!(tunnel.nonblocking(), (true, true));
    set_nonblocking(&tunnel.stdin_probe, false);
    set_nonblocking(&tunnel.stdout_probe, false);
    tunnel.signal(libc::SIGCONT);
    tunnel.round_trip(b"after");
    tunnel.round_trip(b"and more");
    assert_eq!(tunnel.nonblocking(), (true, true));
    tunnel.finish();
}

#[test]
fn signals_the_caller_ignores_stay_ignored_while_relaying() {
    // Under nohup (or as a background job of a non-interactive shell) the caller ignores
    // SIGHUP or SIGINT: gimlet's handlers, which give the stdio flags back and die, must not
    // take their place. A real-time signal and SIGTERM stand for the rest.
    let ignored = vec![
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGRTMIN() + 3,
    ];
    let mut tunnel = Echoing::start_ignoring(ignored.clone());
    tunnel.round_trip(b"before");
    for signal in ignored {
        tunnel.signal(signal);
        tunnel.round_trip(b"still here");
    }
    assert_eq!(tunnel.nonblocking(), (true, true));
    tunnel.finish();
}

/// Starts gimlet with pipes as stdio (and `ignored` ignored by the caller) against a proxy
/// that holds its reply until told to send it; returns once the proxy has the CONNECT, so
/// gimlet is waiting for the reply (with its stdio flag handlers installed meanwhile).
fn waiting_for_the_reply(
    ignored: Vec<libc::c_int>,
) -> (Child, FakeProxy, mpsc::SyncSender<()>, OwnedFd, OwnedFd) {
    let (stdin_read, stdin_write) = pipe();
    let (stdout_read, stdout_write) = pipe();
    let stdin_probe = stdin_read.try_clone().unwrap();
    let (asked_tx, asked) = mpsc::sync_channel(1);
    let (answer, answer_rx) = mpsc::sync_channel::<()>(1);
    let (asked_tx, answer_rx) = (
        std::sync::Mutex::new(asked_tx),
        std::sync::Mutex::new(answer_rx),
    );
    let proxy = FakeProxy::start(move |s| {
        asked_tx.lock().unwrap().send(()).unwrap();
        if answer_rx.lock().unwrap().recv().is_ok() {
            s.send(OK);
            s.send("relaying");
        }
        s.wait_for_close();
    });
    let mut cmd = gimlet_std();
    cmd.args([&proxy.addr(), "example.test", "22"])
        .stdin(Stdio::from(stdin_read))
        .stdout(Stdio::from(stdout_write))
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            default_signals_and_no_core();
            for &signal in &ignored {
                libc::signal(signal, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    asked.recv_timeout(HANG).expect("the CONNECT never came");
    // Into its wait for the reply.
    thread::sleep(std::time::Duration::from_millis(100));
    drop(stdin_write);
    (child, proxy, answer, stdin_probe, stdout_read)
}

#[test]
fn an_ending_signal_while_waiting_for_the_reply_ends_gimlet_as_before() {
    let (mut child, proxy, answer, stdin_probe, _stdout) = waiting_for_the_reply(Vec::new());
    // SAFETY: kill has no memory effects; the pid is our child's.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(!is_nonblocking(&stdin_probe));
    drop(answer);
    proxy.finish();
}

#[test]
fn a_signal_the_caller_ignores_while_waiting_for_the_reply_stays_ignored() {
    let (mut child, proxy, answer, _stdin, stdout) = waiting_for_the_reply(vec![libc::SIGHUP]);
    // SAFETY: kill has no memory effects; the pid is our child's.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    answer.send(()).unwrap();
    let mut got = Vec::new();
    File::from(stdout).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"relaying");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    proxy.finish();
}

#[test]
fn sigpipe_while_relaying_is_ignored() {
    // The runtime ignores SIGPIPE (a vanished reader is an EPIPE the relay handles), so a
    // stray one changes nothing.
    let mut tunnel = Echoing::start();
    tunnel.round_trip(b"before");
    tunnel.signal(libc::SIGPIPE);
    tunnel.round_trip(b"after");
    tunnel.finish();
}

/// Sends `signal` while the password prompt waits with echo off: gimlet dies of it and the
/// terminal echoes again.
fn signal_at_the_password_prompt_gives_echo_back(signal: libc::c_int) {
    let pty = pty();
    let screen = screen(&pty.master);
    let proxy = format!("127.0.0.1:{}", closed_port());
    assert!(echoes(&pty), "the terminal must echo to begin with");
    let mut child = spawn_on_terminal(&pty, &["-U", "alice", &proxy, "example.test", "22"]);
    let mut shown = String::new();
    await_prompt(&screen, &mut shown, "password for alice at proxy");
    await_echo_off(&pty);
    // SAFETY: kill has no memory effects; the pid is our child's, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(signal), "{status:?}");
    assert!(
        echoes(&pty),
        "signal {signal} at the password prompt left the terminal with echo off"
    );
}

#[test]
fn sigint_sigterm_sighup_and_sigquit_at_the_password_prompt_give_the_terminal_its_echo_back() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        signal_at_the_password_prompt_gives_echo_back(signal);
    }
}

#[test]
fn every_catchable_ending_signal_at_the_password_prompt_gives_the_terminal_its_echo_back() {
    for signal in ending_signals() {
        signal_at_the_password_prompt_gives_echo_back(signal);
    }
}

#[test]
fn ctrl_c_typed_at_the_password_prompt_gives_the_terminal_its_echo_back() {
    let mut pty = pty();
    let screen = screen(&pty.master);
    let proxy = format!("127.0.0.1:{}", closed_port());
    let mut child = spawn_on_terminal(&pty, &["-U", "alice", &proxy, "example.test", "22"]);
    let mut shown = String::new();
    await_prompt(&screen, &mut shown, "password for alice at proxy");
    await_echo_off(&pty);
    pty.master.write_all(b"half a pass\x03").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(echoes(&pty), "^C at the password prompt left echo off");
}

/// gimlet as a job of a shell on `pty`: a session leader (standing in for the shell) puts it in
/// a process group of its own, makes that the terminal's foreground, and exits with its status
/// (128 + signal when a signal ended it). Unlike a session leader, such a job is not in an
/// orphaned process group, so ^Z does stop it. Returns the leader; gimlet is the terminal's
/// foreground process group.
fn spawn_as_job_on_terminal(pty: &Pty, args: &[&str]) -> Child {
    let slave = pty.slave.as_raw_fd();
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("gimlet"));
    for var in ["GIMLET_PROXY_AUTH", "GIMLET_ASKPASS", "SSH_ASKPASS"] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec (or _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 || libc::ioctl(slave, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            default_signals_and_no_core();
            // The leader never execs: it must not run a handler this test runner installed
            // (wait-timeout's SIGCHLD handler writes to a pipe the leader closes).
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            let mut go = [0; 2];
            if libc::pipe(go.as_mut_ptr()) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            let job = libc::fork();
            if job == 0 {
                // The job: runs gimlet once it is the foreground.
                libc::setpgid(0, 0);
                libc::close(go[1]);
                let mut byte = 0u8;
                libc::read(go[0], (&mut byte as *mut u8).cast(), 1);
                libc::close(go[0]);
                return Ok(());
            }
            // The leader: keeps no other fd open (spawn waits for the error pipe's end), then
            // waits for the job.
            libc::setpgid(job, job);
            libc::tcsetpgrp(slave, job);
            for fd in 3..4096 {
                libc::close(fd);
            }
            let mut status = 0;
            while libc::waitpid(job, &mut status, 0) != job {
                if *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127);
                }
            }
            if libc::WIFEXITED(status) {
                libc::_exit(libc::WEXITSTATUS(status));
            }
            libc::_exit(128 + libc::WTERMSIG(status));
        });
    }
    cmd.spawn().expect("spawn gimlet")
}

/// Whether process `pid` is stopped, from /proc.
fn stopped(pid: libc::pid_t) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    state == Some(Some('T'))
}

#[test]
fn ctrl_z_at_the_password_prompt_gives_echo_back_until_continued() {
    let proxy = basic_proxy();
    let mut pty = pty();
    let screen = screen(&pty.master);
    let child =
        spawn_as_job_on_terminal(&pty, &["-U", "alice", &proxy.addr(), "example.test", "22"]);
    let mut shown = String::new();
    await_prompt(&screen, &mut shown, "password for alice at proxy");
    await_echo_off(&pty);
    // SAFETY: TIOCGPGRP on the master writes one pid: the terminal's foreground, gimlet's.
    let gimlet = unsafe {
        let mut pgrp: libc::pid_t = 0;
        assert_eq!(
            libc::ioctl(pty.master.as_raw_fd(), libc::TIOCGPGRP, &mut pgrp),
            0
        );
        pgrp
    };
    pty.master.write_all(b"\x1a").unwrap();
    let deadline = std::time::Instant::now() + HANG;
    while !(stopped(gimlet) && echoes(&pty)) {
        assert!(
            std::time::Instant::now() < deadline,
            "after ^Z: stopped {}, echo {}",
            stopped(gimlet),
            echoes(&pty)
        );
        thread::yield_now();
    }
    // SAFETY: kill has no memory effects; gimlet is our grandchild, alive.
    assert_eq!(unsafe { libc::kill(gimlet, libc::SIGCONT) }, 0);
    await_echo_off(&pty);
    pty.master.write_all(b"s3 cr:et\n").unwrap();
    finish_tunnel(child, &mut shown, &screen);
    proxy.finish().assert_requests(2);
}
