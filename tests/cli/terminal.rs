//! The controlling terminal and signals: credential prompts on a real pseudo-terminal (stdin
//! and stdout stay the tunnel's pipes), and the caller's stdio flags given back when a signal
//! ends gimlet in the middle of relaying.

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
            Ok(())
        });
    }
    cmd.spawn().expect("spawn gimlet")
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

/// Waits until the terminal no longer echoes: rpassword shows its prompt first and turns echo
/// off just after, so typing the moment the prompt appears could still be echoed.
fn await_echo_off(pty: &Pty) {
    let deadline = std::time::Instant::now() + HANG;
    loop {
        // SAFETY: tcgetattr fills the zeroed termios; on Linux the master reports the
        // terminal's settings.
        let echo = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(pty.master.as_raw_fd(), &mut t), 0);
            t.c_lflag & libc::ECHO != 0
        };
        if !echo {
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
    // As under ssh: the signal's default action, even if this test runner ignores it (nohup).
    // SAFETY: signal is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(signal, libc::SIG_DFL);
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
