# Process and file plumbing of the interop suite: the temporary directory,
# free loopback ports, daemons run in the foreground of their own sessions and
# stopped by PID on every exit path, and child commands whose timeouts only
# catch hangs.
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

# Every daemon listens on the same port number on both loopback families.
LOOPBACK = {"inet": "127.0.0.1", "inet6": "::1"}
BOTH_FAMILIES = frozenset(LOOPBACK)

IS_ROOT = os.geteuid() == 0

# A daemon that neither accepts on its port nor exits by then is hung.
START_DEADLINE = 30.0
# SIGTERM grace before SIGKILL when stopping a daemon.
STOP_GRACE = 10.0


class Failed(Exception):
    """A setup step or check failed; str() is the reason for the matrix."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived; unwinds like KeyboardInterrupt does."""


def raise_on_termination_signals() -> None:
    """Make SIGINT, SIGTERM and SIGHUP unwind the stack so cleanup code runs
    (SIGINT too when started with it ignored, as background jobs are)."""

    def handler(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def ignore_interrupts() -> None:
    """Keep a second Ctrl-C from cutting the cleanup short."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def tail(text: str | bytes, lines: int = 4) -> str:
    """The last few non-empty lines of some output, on one line."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


def tool(name: str) -> str:
    """Absolute path of an executable, looking in sbin too (sshd needs it)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if not found:
        raise Failed(f"{name} not found in PATH or sbin")
    return os.path.abspath(found)


def _kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _accepts(family: str, port: int) -> bool:
    af = socket.AF_INET if family == "inet" else socket.AF_INET6
    with socket.socket(af, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((LOOPBACK[family], port)) == 0


class Daemon:
    """One server process, started in its own session, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path, env=None):
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_accepting(self, port: int, families) -> None:
        """Poll until the port accepts on every family, or fail on exit/deadline."""
        deadline = time.monotonic() + START_DEADLINE
        pending = set(families)
        while True:
            pending = {f for f in pending if not _accepts(f, port)}
            if not pending:
                return
            try:
                code = self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise Failed(
                        f"{self.name} not accepting on port {port} "
                        f"({', '.join(sorted(pending))}) after {START_DEADLINE:.0f}s: "
                        f"{tail(self.log.read_bytes())}"
                    ) from None
                continue
            raise Failed(
                f"{self.name} exited with status {code}: {tail(self.log.read_bytes())}"
            )

    def stop(self) -> None:
        """SIGTERM the daemon's process group, SIGKILL it after a grace period."""
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Helpers a daemon forked (squid's, apache's children) go with it.
        _kill_group(self.proc.pid, signal.SIGKILL)


class Child:
    """A command run in its own session; a timer kills its whole process group
    (ssh and the ProxyCommand it spawned) if it hangs past `timeout`."""

    active: set[Child] = set()

    def __init__(self, argv: list[str], timeout: float, **popen):
        self.argv = argv
        self.timeout = timeout
        self.timed_out = False
        self.proc = subprocess.Popen(argv, start_new_session=True, **popen)
        Child.active.add(self)
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        _kill_group(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_exc) -> None:
        self.kill()

    def kill(self) -> None:
        self._timer.cancel()
        _kill_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        Child.active.discard(self)

    def hang_reason(self) -> str:
        return f"hung: {Path(self.argv[0]).name} killed after {self.timeout:.0f}s"


def run(argv: list[str], timeout: float, *, stdin=None, input: bytes | None = None,
        **popen) -> subprocess.CompletedProcess:
    """Run a command to completion, capturing its output; fail on a hang."""
    with Child(
        argv,
        timeout,
        stdin=subprocess.PIPE if input is not None else (stdin or subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    ) as child:
        out, err = child.proc.communicate(input)
        if child.timed_out:
            raise Failed(f"{child.hang_reason()}: {tail(err)}")
        return subprocess.CompletedProcess(argv, child.proc.returncode, out, err)


def run_ok(argv: list[str], timeout: float, what: str, **kw) -> subprocess.CompletedProcess:
    """Like run(), but a non-zero exit is a failure described by `what`."""
    result = run(argv, timeout, **kw)
    if result.returncode != 0:
        raise Failed(f"{what} exited with status {result.returncode}: {tail(result.stderr)}")
    return result


class Sandbox:
    """The temporary directory and every daemon started in it.

    close() stops the daemons (newest first) and removes the directory unless
    asked to keep it; it runs from the `with` block, so on normal exit, on a
    failure, and on Ctrl-C/SIGTERM alike."""

    def __init__(self, keep: bool):
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="gimlet-interop-"))
        # Daemons that drop root (squid, tinyproxy) must reach their subdirs.
        self.root.chmod(0o711)
        self.daemons: list[Daemon] = []
        self._ports: set[int] = set()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        ignore_interrupts()
        for child in list(Child.active):
            child.kill()
        while self.daemons:
            self.daemons.pop().stop()
        if self.keep:
            print(f"kept {self.root}", flush=True)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def mkdir(self, name: str) -> Path:
        """A fresh subdirectory."""
        path = self.root / name
        path.mkdir(parents=True)
        return path

    def free_port(self) -> int:
        """A port number free on both 127.0.0.1 and ::1, never handed out twice."""
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4:
                v4.bind(("127.0.0.1", 0))
                port = v4.getsockname()[1]
                if port in self._ports:
                    continue
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
                    try:
                        v6.bind(("::1", port))
                    except OSError:
                        continue
            self._ports.add(port)
            return port
        raise Failed("no port free on both 127.0.0.1 and ::1")

    def spawn(self, name: str, argv: list[str], port: int, directory: Path,
              families=BOTH_FAMILIES, env=None) -> Daemon:
        """Start a daemon in `directory` (its stdout and stderr go to NAME.out
        there) and wait until it accepts on `port` for every family. `env`
        replaces the environment when given."""
        daemon = Daemon(name, argv, directory / f"{name}.out", directory, env)
        self.daemons.append(daemon)
        daemon.wait_accepting(port, families)
        return daemon

    def stop(self, daemon: Daemon) -> None:
        daemon.stop()
        self.daemons.remove(daemon)
