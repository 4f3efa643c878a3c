//! What gimlet's stdin and stdout may be (regular files, /dev/null, pipes,
//! sockets), a reader that goes away, and the caller's O_NONBLOCK flags.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use crate::support::*;

#[test]
fn regular_files_as_stdin_and_stdout() {
    const LEN: usize = 1024 * 1024 + 17;
    let input = scratch_file("stdin", &Prng::bytes(5, LEN), 0o600);
    let output = scratch_path("stdout");
    let proxy = FakeProxy::echo();
    let running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(File::open(&input).unwrap())
            .stdout(File::create(&output).unwrap()),
    );
    let finished = running.wait(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    let copied = std::fs::read(&output).unwrap();
    assert_eq!(copied.len(), LEN);
    assert!(copied == Prng::bytes(5, LEN), "file contents corrupted");
    proxy.finish();
}

#[test]
fn appending_stdout_file_keeps_earlier_contents() {
    let output = scratch_file("append", b"before\n", 0o600);
    let proxy = FakeProxy::start(|s| {
        s.send("HTTP/1.1 200 OK\r\n\r\nfrom the tunnel\n");
        s.shutdown_write();
        s.wait_for_close();
    });
    let running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&output)
                    .unwrap(),
            ),
    );
    running.wait(HANG).assert_code(0);
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "before\nfrom the tunnel\n"
    );
    proxy.finish();
}

#[test]
fn dev_null_as_stdin_and_stdout() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        s.send(Prng::bytes(1, 100_000));
        assert_eq!(s.read_to_eof(), b"", "nothing was on stdin");
        s.shutdown_write();
    });
    let running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let finished = running.wait(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    proxy.finish();
}

#[test]
fn stdout_reader_going_away_stops_gimlet_promptly() {
    // The proxy never stops sending; the only way out is noticing that
    // nobody reads stdout any more.
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        let chunk = vec![b'z'; 64 * 1024];
        while s.send_lossy(&chunk) {}
    });
    let mut running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdout = running.stdout.take().unwrap();
    let mut first = vec![0u8; 256 * 1024];
    stdout.read_exact(&mut first).unwrap();
    assert!(first.iter().all(|&b| b == b'z'));
    drop(stdout);
    // Stdin stays open, so only the broken stdout can end it.
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    proxy.finish();
}

/// Runs a small tunnel with `stdin` and `stdout` as gimlet's fds 0 and 1.
/// The proxy answers `reply_to` with `answer` and closes.
fn run_with(stdin: Stdio, stdout: Stdio, proxy: &FakeProxy) -> Finished {
    spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(stdin)
            .stdout(stdout),
    )
    .wait(HANG)
}

fn question_and_answer_proxy() -> FakeProxy {
    FakeProxy::start(|s| {
        s.send(OK);
        assert_eq!(s.read_to_eof(), b"question");
        s.send("answer");
        s.shutdown_write();
    })
}

#[test]
fn stdio_is_nonblocking_while_relaying_and_restored_after() {
    let (stdin_read, stdin_write) = pipe();
    let (stdout_read, stdout_write) = pipe();
    let stdin_probe = stdin_read.try_clone().unwrap();
    let stdout_probe = stdout_write.try_clone().unwrap();
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        // Once "go" made it through, gimlet is relaying.
        let mut go = [0u8; 2];
        s.stream.read_exact(&mut go).unwrap();
        assert_eq!(&go, b"go");
        s.send("up");
        assert_eq!(s.read_to_eof(), b"");
        s.send("bye");
        s.shutdown_write();
    });
    let running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::from(stdin_read))
            .stdout(Stdio::from(stdout_write)),
    );
    let mut feed = File::from(stdin_write);
    feed.write_all(b"go").unwrap();
    let mut out = File::from(stdout_read);
    let mut up = [0u8; 2];
    out.read_exact(&mut up).unwrap();
    assert_eq!(&up, b"up");
    assert!(
        is_nonblocking(&stdin_probe) && is_nonblocking(&stdout_probe),
        "expected O_NONBLOCK on stdin and stdout while relaying"
    );
    drop(feed);
    let finished = running.wait(HANG);
    finished.assert_code(0);
    let mut bye = [0u8; 3];
    out.read_exact(&mut bye).unwrap();
    assert_eq!(&bye, b"bye");
    assert!(!is_nonblocking(&stdin_probe), "stdin left non-blocking");
    assert!(!is_nonblocking(&stdout_probe), "stdout left non-blocking");
    proxy.finish();
}

#[test]
fn blocking_pipes_are_left_blocking() {
    nonblocking_flags_survive_on_pipes(false);
}

#[test]
fn nonblocking_pipes_are_left_nonblocking() {
    nonblocking_flags_survive_on_pipes(true);
}

fn nonblocking_flags_survive_on_pipes(initially: bool) {
    let (stdin_read, stdin_write) = pipe();
    let (stdout_read, stdout_write) = pipe();
    // Keep duplicates of gimlet's ends: same open file descriptions.
    let stdin_probe = stdin_read.try_clone().unwrap();
    let stdout_probe = stdout_write.try_clone().unwrap();
    set_nonblocking(&stdin_probe, initially);
    set_nonblocking(&stdout_probe, initially);

    let mut feed = File::from(stdin_write);
    feed.write_all(b"question").unwrap();
    drop(feed);

    let proxy = question_and_answer_proxy();
    let finished = run_with(stdin_read.into(), stdout_write.into(), &proxy);
    finished.assert_code(0);
    proxy.finish();

    let mut answer = [0u8; 6];
    let mut out = File::from(stdout_read);
    set_nonblocking(&out, false);
    out.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"answer");

    assert_eq!(
        is_nonblocking(&stdin_probe),
        initially,
        "O_NONBLOCK on stdin's pipe was not restored"
    );
    assert_eq!(
        is_nonblocking(&stdout_probe),
        initially,
        "O_NONBLOCK on stdout's pipe was not restored"
    );
}

#[test]
fn one_socket_as_both_stdin_and_stdout_gets_its_flags_back() {
    // Like a caller handing over one end of a socketpair for both fds: fds 0
    // and 1 share a single open file description, so saving and restoring
    // the flags per fd must not leave O_NONBLOCK behind.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let probe = theirs.try_clone().unwrap();
    assert!(!is_nonblocking(&probe));
    let mut ours_writer = ours.try_clone().unwrap();
    ours_writer.write_all(b"question").unwrap();
    ours_writer.shutdown(Shutdown::Write).unwrap();

    let proxy = question_and_answer_proxy();
    let stdout_fd = OwnedFd::from(theirs.try_clone().unwrap());
    let finished = run_with(OwnedFd::from(theirs).into(), stdout_fd.into(), &proxy);
    finished.assert_code(0);
    proxy.finish();

    assert!(
        !is_nonblocking(&probe),
        "O_NONBLOCK left set on the shared socket"
    );
    let mut answer = [0u8; 6];
    let mut reader = ours;
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    reader.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"answer");
}

#[test]
fn flags_are_restored_when_the_tunnel_fails() {
    for initially in [false, true] {
        let (stdin_read, stdin_write) = pipe();
        let (stdout_read, stdout_write) = pipe();
        let stdin_probe = stdin_read.try_clone().unwrap();
        let stdout_probe = stdout_write.try_clone().unwrap();
        set_nonblocking(&stdin_probe, initially);
        set_nonblocking(&stdout_probe, initially);
        let mut feed = File::from(stdin_write);
        feed.write_all(b"ping").unwrap();

        // The far side resets the connection once the tunnel carries data.
        let proxy = FakeProxy::start(|s| {
            s.send(OK);
            let mut got = [0u8; 4];
            s.stream.read_exact(&mut got).unwrap();
            s.reset_on_close();
        });
        let finished = run_with(stdin_read.into(), stdout_write.into(), &proxy);
        drop(feed);
        drop(stdout_read);
        finished.assert_code(7);
        proxy.finish();
        assert_eq!(
            is_nonblocking(&stdin_probe),
            initially,
            "stdin flags not restored after a failure (initially {initially})"
        );
        assert_eq!(
            is_nonblocking(&stdout_probe),
            initially,
            "stdout flags not restored after a failure (initially {initially})"
        );
    }
}

#[test]
fn flags_are_restored_after_the_idle_timeout() {
    let (stdin_read, stdin_write) = pipe();
    let stdin_probe = stdin_read.try_clone().unwrap();
    set_nonblocking(&stdin_probe, false);
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        s.wait_for_close();
    });
    let finished = spawn(
        gimlet_std()
            .args(["--idle-timeout", "1", &proxy.addr(), "example.test", "22"])
            .stdin(Stdio::from(stdin_read))
            .stdout(Stdio::null()),
    )
    .wait(HANG);
    drop(stdin_write);
    finished.assert_code(7);
    proxy.finish();
    assert!(
        !is_nonblocking(&stdin_probe),
        "stdin left non-blocking after the idle timeout"
    );
}

#[test]
fn slow_stdout_reader_gets_everything() {
    // A reader that lags behind forces gimlet to wait for stdout to drain
    // (it is non-blocking while relaying) without losing bytes.
    const LEN: usize = 4 * 1024 * 1024;
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        write_stream(&mut s.stream, 77, LEN).unwrap();
        s.shutdown_write();
        s.wait_for_close();
    });
    let mut running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let stdout = running.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut slow = SlowReader(stdout, 0);
        verify_stream(&mut slow, 77, LEN, "proxy → slow stdout");
    });
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    reader.join().expect("stdout verification failed");
    proxy.finish();
}

/// Reads in small bites, pausing now and then (a sluggish consumer).
struct SlowReader<R>(R, usize);

impl<R: Read> Read for SlowReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 += 1;
        if self.1 % 64 == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        let n = buf.len().min(4096);
        self.0.read(&mut buf[..n])
    }
}
