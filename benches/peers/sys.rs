//! System helpers: pipes, poll, CPU time, and a spawned tool's process (pidfd, `wait4`,
//! `VmHWM`). Apart from the splice baseline in `tools`, the benchmark's `unsafe` lives here.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::procfs::{cpu_ticks, process_tree, ticks_per_sec};

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Waits until `fd` is readable (data, EOF or error) or `timeout` passes; true when readable.
pub(crate) fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `p` is one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            return r > 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

pub(crate) fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// CPU time (user + sys) of the calling thread.
pub(crate) fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

/// A tool's memory (KiB): its peak resident set (`VmHWM`, its own: exec starts a new count),
/// and what is resident now, anonymous (heap, stacks, buffers) and file-backed (code, libraries).
#[derive(Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) hwm_kib: u64,
    pub(crate) anon_kib: u64,
    pub(crate) file_kib: u64,
}

/// How a tool process ended.
pub(crate) struct Exit {
    /// Raw wait status.
    pub(crate) status: libc::c_int,
    /// user + sys of the process (and any children it waited for), from `wait4`.
    pub(crate) cpu: Duration,
}

impl Exit {
    pub(crate) fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub(crate) fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

/// A spawned tool: its pid (reaped only by `wait`, so signals never hit a reused pid) and a
/// pidfd to sleep on until it exits.
pub(crate) struct Proc {
    pub(crate) pid: libc::pid_t,
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) exit: Option<Exit>,
}

impl Proc {
    /// Spawns `argv` with the given stdio and a minimal environment. The `File`s are the
    /// child's ends: they are closed in this process once the child has them.
    pub(crate) fn spawn(
        argv: &[String],
        stdin: File,
        stdout: File,
        stderr: File,
    ) -> io::Result<Proc> {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            // No credentials or proxy settings from the caller's environment reach the tools.
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // Without pidfds (Linux < 5.3) `wait` polls instead.
        // SAFETY: a non-negative result is a fresh fd that nothing else owns.
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        Ok(Proc {
            pid,
            pidfd,
            exit: None,
        })
    }

    pub(crate) fn try_reap(&mut self) -> bool {
        if self.exit.is_some() {
            return true;
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid out-pointers; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == self.pid {
            self.exit = Some(Exit {
                status,
                cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime),
            });
        }
        self.exit.is_some()
    }

    /// Waits up to `timeout` for the process to exit and reaps it; true when it has exited.
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_reap() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match &self.pidfd {
                Some(fd) => {
                    poll_readable(fd.as_raw_fd(), left);
                }
                None => thread::sleep(left.min(Duration::from_millis(2))),
            }
        }
    }

    pub(crate) fn kill(&mut self) {
        if !self.try_reap() {
            // SAFETY: the pid is our child and not reaped yet, so it cannot have been reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.wait(Duration::from_secs(5));
        }
    }

    /// The process's own memory from /proc, while it is alive.
    pub(crate) fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        // An exiting process may already show zeros.
        Some(Memory {
            hwm_kib: field("VmHWM:").filter(|&k| k > 0)?,
            anon_kib: field("RssAnon:")?,
            file_kib: field("RssFile:")?,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything a file descriptor still holds, once its writers are gone (best effort, bounded).
pub(crate) fn read_tail(mut f: File) -> String {
    let mut buf = Vec::new();
    if poll_readable(f.as_raw_fd(), Duration::from_millis(200)) {
        let _ = (&mut f).take(64 << 10).read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// CPU time (user + sys) of process `pid` and every process below it, from /proc: a proxy
/// that forks its workers (nghttpx) is counted whole. `None` once it is gone.
pub(crate) fn tree_cpu(pid: u32) -> Option<Duration> {
    let root = cpu_ticks(pid)?;
    let below: u64 = process_tree(pid)[1..]
        .iter()
        .map(|&p| cpu_ticks(p).unwrap_or(0))
        .sum();
    Some(Duration::from_millis(
        (root + below) * 1000 / ticks_per_sec(),
    ))
}
