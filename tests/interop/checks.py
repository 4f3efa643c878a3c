# What the interop suite proves through each proxy, with gimlet as ssh's
# ProxyCommand: one CHECKS entry per matrix column. A check gets a Tunnel (the
# running proxy, the target, and how to invoke gimlet for that row), raises
# Failed with the reason on failure, and may return a short note (throughput).
from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from harness import LOOPBACK, Child, Failed, Sandbox, run, run_ok, tail
from proxies import Proxy
from target import Target, checkout_manifest

# Timeouts only catch hangs; a healthy run takes a small fraction of them.
LOGIN_TIMEOUT = 60
GIT_TIMEOUT = 180
REFUSED_TIMEOUT = 30
REFUSED_EXIT = 4  # gimlet's exit status for a CONNECT the proxy refused (gimlet --help)
PUSH_MIB = 1
COALESCE = Path(__file__).with_name("coalesce.py")


def bulk_timeout(size: int) -> float:
    """Generous: a hang, not a slow machine, should trip it (>= 2 MiB/s)."""
    return 60 + size / (2 << 20)


@dataclass
class Tunnel:
    """One matrix row at run time: gimlet, a running proxy, and the target."""

    gimlet: str
    proxy: Proxy
    port: int  # where the proxy accepts
    target: Target
    sandbox: Sandbox
    scratch: Path  # this row's own directory for clones

    def gimlet_argv(self, host: str, port: str, family: str = "inet",
                    joined: bool = False) -> list[str]:
        """gimlet's argv. The proxy is given corkscrew-style (`127.0.0.1 PORT`),
        or as `127.0.0.1:PORT` when joined; over IPv6 always as `[::1]:PORT`."""
        if family == "inet6":
            proxy = [f"[{LOOPBACK['inet6']}]:{self.port}"]
        elif joined:
            proxy = [f"{LOOPBACK['inet']}:{self.port}"]
        else:
            proxy = [LOOPBACK["inet"], str(self.port)]
        return [self.gimlet, *self.proxy.gimlet_args, *proxy, host, port]

    def ssh_command(self, family: str = "inet", joined: bool = False) -> list[str]:
        """ssh with gimlet as ProxyCommand; the caller adds port and host."""
        proxy_command = shlex.join(self.gimlet_argv("%h", "%p", family, joined))
        return ["ssh", "-F", str(self.target.ssh_config), "-o", f"ProxyCommand={proxy_command}"]

    def ssh(self, family: str = "inet") -> list[str]:
        """ssh … -p PORT HOST, ready for a remote command."""
        return self.ssh_command(family) + ["-p", str(self.target.port), LOOPBACK[family]]

    def repo_url(self) -> str:
        return f"ssh://{self.target.user}@{LOOPBACK['inet']}:{self.target.port}{self.target.repo}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for ssh/git/gimlet: the caller's gimlet settings and
        ssh agent are dropped, the row's gimlet_env is added."""
        env = {k: v for k, v in self.target.git_env.items()
               if not k.startswith("GIMLET") and k not in ("SSH_AUTH_SOCK", "GIT_SSH", "GIT_SSH_COMMAND")}
        env.update(self.proxy.gimlet_env)
        env.update(extra)
        return env


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Tunnel], str | None]
    needs: frozenset = frozenset({"inet"})  # families the proxy must listen on


def login(t: Tunnel, family: str) -> None:
    result = run_ok(t.ssh(family) + ["echo", "ok"], LOGIN_TIMEOUT, "ssh", env=t.env())
    if result.stdout != b"ok\n":
        raise Failed(f"ssh printed {result.stdout[:80]!r}, expected 'ok'")


def check_ssh(t: Tunnel) -> None:
    """ssh … echo ok, proxy and destination on 127.0.0.1."""
    login(t, "inet")


def check_ssh_v6(t: Tunnel) -> None:
    """ssh … echo ok with the proxy at [::1]:PORT and the destination ::1."""
    login(t, "inet6")


def check_coalesced(t: Tunnel) -> None:
    """ssh … echo ok through coalesce.py in front of the proxy, so that the
    proxy's 200 and sshd's banner reach gimlet in one segment."""
    port = t.sandbox.free_port()
    relay = t.sandbox.spawn("coalesce", [sys.executable, str(COALESCE), str(port), str(t.port)],
                            port, t.scratch, {"inet"})
    try:
        login(replace(t, port=port), "inet")
    finally:
        t.sandbox.stop(relay)
    if "coalesced" not in relay.log.read_text():
        raise Failed(f"coalesce.py never sent a reply head with tunnel bytes: "
                     f"{tail(relay.log.read_text())}")


def verify_checkout(tree: Path, head: str, manifest: dict[str, str], env) -> None:
    got_head = run_ok(["git", "-C", str(tree), "rev-parse", "HEAD"], GIT_TIMEOUT,
                      "git rev-parse", env=env).stdout.decode().strip()
    if got_head != head:
        raise Failed(f"clone HEAD is {got_head}, expected {head}")
    got = checkout_manifest(tree)
    wrong = sorted(p for p in manifest.keys() | got.keys() if manifest.get(p) != got.get(p))
    if wrong:
        raise Failed(f"checkout differs in {len(wrong)} file(s): {', '.join(wrong[:3])}")


def check_git_clone(t: Tunnel) -> None:
    """git clone with GIT_SSH_COMMAND (proxy as 127.0.0.1:PORT); HEAD and
    every file's sha256 verified."""
    dest = t.scratch / "clone"
    env = t.env(GIT_SSH_COMMAND=shlex.join(t.ssh_command(joined=True)))
    run_ok(["git", "clone", "-q", t.repo_url(), str(dest)], GIT_TIMEOUT, "git clone", env=env)
    verify_checkout(dest, t.target.head, t.target.manifest, env)


def check_git_push(t: Tunnel) -> None:
    """git clone with core.sshCommand (proxy as 127.0.0.1:PORT), commit 1 MiB
    of random data, git push it to a new branch; the server's ref must match."""
    work = t.scratch / "push"
    env = t.env()
    ssh_command = shlex.join(t.ssh_command(joined=True))
    run_ok(["git", "clone", "-q", "--config", f"core.sshCommand={ssh_command}",
            t.repo_url(), str(work)], GIT_TIMEOUT, "git clone (core.sshCommand)", env=env)
    (work / f"pushed-{t.proxy.name}.bin").write_bytes(os.urandom(PUSH_MIB << 20))
    git = ["git", "-C", str(work)]
    run_ok(git + ["add", "-A"], GIT_TIMEOUT, "git add", env=env)
    run_ok(git + ["commit", "-q", "-m", f"pushed through {t.proxy.name}"], GIT_TIMEOUT,
           "git commit", env=env)
    ref = f"refs/heads/pushed/{t.proxy.name}"
    run_ok(git + ["push", "-q", "origin", f"HEAD:{ref}"], GIT_TIMEOUT, "git push", env=env)
    local = run_ok(git + ["rev-parse", "HEAD"], GIT_TIMEOUT, "git rev-parse", env=env).stdout
    remote = run(["git", "--git-dir", str(t.target.repo), "rev-parse", "--verify", "-q", ref],
                 GIT_TIMEOUT, env=env).stdout
    if local.strip() != remote.strip():
        raise Failed(f"{ref} on the server is {remote.decode().strip() or 'missing'}, "
                     f"pushed {local.decode().strip()}")


def throughput(size: int, seconds: float) -> str:
    return f"{size >> 20} MiB at {size / (1 << 20) / max(seconds, 1e-3):.0f} MiB/s"


def check_bulk_down(t: Tunnel) -> str:
    """ssh … cat BLOB: the received stream's size and sha256 match the file's."""
    size = t.target.blob_size
    digest, received = hashlib.sha256(), 0
    started = time.monotonic()
    with tempfile.TemporaryFile() as err, Child(
        t.ssh() + ["cat", str(t.target.blob)], bulk_timeout(size),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=t.env(),
    ) as child:
        while chunk := child.proc.stdout.read(1 << 20):
            digest.update(chunk)
            received += len(chunk)
        code = child.proc.wait()
        err.seek(0)
        if child.timed_out:
            raise Failed(f"{child.hang_reason()} after {received} bytes: {tail(err.read())}")
        if code != 0:
            raise Failed(f"ssh exited with status {code} after {received} bytes: {tail(err.read())}")
    if received != size or digest.hexdigest() != t.target.blob_sha256:
        raise Failed(f"received {received} bytes with sha256 {digest.hexdigest()[:16]}…, "
                     f"sent {size} with {t.target.blob_sha256[:16]}…")
    return throughput(size, time.monotonic() - started)


def check_bulk_up(t: Tunnel) -> str:
    """ssh … sha256sum < BLOB: the server's sha256 of what it read matches."""
    size = t.target.blob_size
    started = time.monotonic()
    with open(t.target.blob, "rb") as blob:
        result = run_ok(t.ssh() + ["sha256sum"], bulk_timeout(size), "ssh sha256sum",
                        stdin=blob, env=t.env())
    remote = result.stdout.decode().split(" ")[0]
    if remote != t.target.blob_sha256:
        raise Failed(f"server read sha256 {remote[:16] or 'nothing'}…, "
                     f"sent {t.target.blob_sha256[:16]}…")
    return throughput(size, time.monotonic() - started)


def check_refused(t: Tunnel) -> None:
    """gimlet alone, CONNECT to a closed port: exits 4 by itself (stdin left
    open), writes nothing to stdout, quotes the proxy's status line on stderr."""
    argv = t.gimlet_argv(LOOPBACK["inet"], str(t.target.closed_port))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, Child(
        argv, REFUSED_TIMEOUT, stdin=subprocess.PIPE, stdout=out, stderr=err, env=t.env(),
    ) as child:
        code = child.proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        if child.timed_out:
            raise Failed(f"{child.hang_reason()} (stdin open): {tail(stderr)}")
    status = t.proxy.refused_status
    if code != REFUSED_EXIT:
        raise Failed(f"exited with status {code}, expected {REFUSED_EXIT}: {tail(stderr)}")
    if stdout:
        raise Failed(f"wrote {len(stdout)} bytes to stdout: {stdout[:60]!r}")
    if not re.search(rf"HTTP/1\.[01] {status}\b", stderr.decode(errors="replace")):
        raise Failed(f"stderr does not quote the proxy's {status} status line: {tail(stderr)}")


CHECKS = [
    Check("ssh", check_ssh),
    Check("ssh-v6", check_ssh_v6, needs=frozenset({"inet6"})),
    Check("coalesced", check_coalesced),
    Check("git-clone", check_git_clone),
    Check("git-push", check_git_push),
    Check("bulk-down", check_bulk_down),
    Check("bulk-up", check_bulk_up),
    Check("refused", check_refused),
]
