# What the interop suite proves through each proxy, with gimlet as ssh's
# ProxyCommand: one CHECKS entry per matrix column. A check gets a Tunnel (the
# running proxy, the target, and how to invoke gimlet for that row), raises
# Failed with the reason on failure, and may return a short note (throughput).
from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import dynamic
import kdc
from harness import LOOPBACK, Child, Failed, Sandbox, run, run_ok, tail, tool
from pki import certificate, pki_dir
from proxies import Credentials, Proxy
import readme
from target import Target, checkout_manifest

# Timeouts only catch hangs; a healthy run takes a small fraction of them.
LOGIN_TIMEOUT = 60
GIT_TIMEOUT = 180
REFUSED_TIMEOUT = 30
REFUSED_EXIT = 4  # gimlet's exit status for a CONNECT the proxy refused (gimlet --help)
AUTH_EXIT = 5  # ... for credentials the proxy refused
TLS_EXIT = 8  # ... for a failed TLS handshake (certificate not verified)
PROMPTLY = 10  # seconds a refused gimlet may take to exit
LOG_WAIT = 5  # seconds a proxy may take to log a closed tunnel
ECHO_MIB = 16
ECHO_WINDOW = 256 << 10  # bytes the echo check lets travel unanswered
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
    dir: Path  # the proxy's directory (config, logs)
    credentials: Credentials | None = None  # None: the row's own
    fdpass: bool = False  # ProxyCommand gimlet --fdpass with ssh's ProxyUseFdpass yes
    hops: tuple[str, ...] = ()  # chain rows: the URLs of the hops after the row's proxy

    def __post_init__(self):
        if self.credentials is None:
            self.credentials = self.proxy.credentials
        self.auth_args, self.auth_env, self.userinfo = self._credential_settings()

    def _credential_settings(self) -> tuple[list[str], dict[str, str], str | None]:
        """gimlet's arguments and environment that give it the credentials the
        row's way, writing the files that takes to scratch; and the URL
        userinfo when that is the way."""
        c = self.credentials
        if c is None:
            return [], {}, None
        args = ["--proxy-auth", c.scheme] if c.scheme else []
        env, userinfo = {}, None
        tag = hashlib.sha256(f"{c.user}\0{c.password}".encode()).hexdigest()[:8]
        if c.via == "-U":
            args += ["-U", f"{c.user}:{c.password}"]
        elif c.via == "url":
            userinfo = f"{quote(c.user, safe='')}:{quote(c.password, safe='')}"
        elif c.via == "file":
            path = self._private(f"auth-{tag}", f"{c.user}:{c.password}\n")
            args += ["--proxy-auth-file", str(path)]
        elif c.via == "env":
            env["GIMLET_PROXY_AUTH"] = f"{c.user}:{c.password}"
        elif c.via == "netrc":
            def q(word: str) -> str:
                return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
            text = "".join(f"machine {host} login {q(c.user)} password {q(c.password)}\n"
                           for host in LOOPBACK.values())
            args += ["--netrc-file", str(self._private(f"netrc-{tag}", text))]
        elif c.via == "askpass":
            answer = f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(c.password)}\n"
            script = self._private(f"askpass-{tag}", answer)
            script.chmod(0o700)
            args += ["-U", c.user]
            env["GIMLET_ASKPASS"] = str(script)
        else:
            raise ValueError(f"unknown credential source {c.via!r}")
        return args, env, userinfo

    def _private(self, name: str, text: str) -> Path:
        path = self.scratch / name
        path.touch(mode=0o600)
        path.write_text(text)
        return path

    def tls_args(self, trusted: bool = True) -> list[str]:
        tls = self.proxy.tls
        if not tls:
            return []
        args = [*tls.base, *(tls.trust if trusted else ())]
        if any("{pki}" in a for a in args):
            pki = str(pki_dir(self.sandbox))
            args = [a.replace("{pki}", pki) for a in args]
        return args

    def gimlet_argv(self, host: str, port: str, family: str = "inet", joined: bool = False,
                    trusted: bool = True, options: tuple[str, ...] = ()) -> list[str]:
        """gimlet's argv. The proxy is given corkscrew-style (`127.0.0.1 PORT`),
        or as `127.0.0.1:PORT` when joined; over IPv6 always as `[::1]:PORT`;
        as a URL (`https://`, `http://USER:PASS@`) whenever the row needs one.
        `trusted=False` leaves the row's TLS trust options out."""
        address = (self.proxy.host or LOOPBACK[family]) if family == "inet" \
            else f"[{LOOPBACK[family]}]"
        if self.proxy.from_env:
            proxy = []  # HOST PORT alone: the proxy comes from the row's environment
        elif self.proxy.tls or self.userinfo is not None or self.proxy.scheme:
            scheme = self.proxy.scheme or ("https" if self.proxy.tls else "http")
            userinfo = f"{self.userinfo}@" if self.userinfo is not None else ""
            proxy = [f"{scheme}://{userinfo}{address}:{self.port}"]
        elif family == "inet6" or joined:
            proxy = [f"{address}:{self.port}"]
        else:
            proxy = [address, str(self.port)]
        if self.hops:
            # A chain: every hop with -p, the row's own proxy first.
            first = proxy[0] if len(proxy) == 1 else f"{address}:{self.port}"
            proxy = [arg for url in (first, *self.hops) for arg in ("-p", url)]
        return [self.gimlet, *self.proxy.gimlet_args, *self.auth_args, *self.tls_args(trusted),
                *options, *proxy, host, port]

    def ssh_command(self, family: str = "inet", joined: bool = False) -> list[str]:
        """ssh with gimlet as ProxyCommand; the caller adds port and host.
        ssh expands %-tokens in a ProxyCommand, so a literal % is doubled."""
        options = ("--fdpass",) if self.fdpass else ()
        *argv, host, port = self.gimlet_argv("%h", "%p", family, joined, options=options)
        proxy_command = shlex.join([a.replace("%", "%%") for a in argv] + [host, port])
        fdpass = ["-o", "ProxyUseFdpass=yes"] if self.fdpass else []
        return ["ssh", "-F", str(self.target.ssh_config), "-o", f"ProxyCommand={proxy_command}",
                *fdpass]

    def ssh(self, family: str = "inet") -> list[str]:
        """ssh … -p PORT HOST, ready for a remote command."""
        return self.ssh_command(family) + ["-p", str(self.target.port), LOOPBACK[family]]

    def repo_url(self) -> str:
        return f"ssh://{self.target.user}@{LOOPBACK['inet']}:{self.target.port}{self.target.repo}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for ssh/git/gimlet: the caller's gimlet settings and
        ssh agent are dropped, the row's gimlet_env and credentials are added."""
        env = {k: v for k, v in self.target.git_env.items()
               if not k.startswith("GIMLET") and k not in ("SSH_AUTH_SOCK", "GIT_SSH", "GIT_SSH_COMMAND")}
        env.update({k: v.replace("{sandbox}", str(self.sandbox.root)).replace("{port}", str(self.port))
                    for k, v in self.proxy.gimlet_env.items()})
        env.update(self.auth_env)
        env.update(extra)
        return env


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Tunnel], str | None]
    needs: frozenset = frozenset({"inet"})  # Proxy.features the row must have
    packages: tuple[str, ...] = ()  # needed by the check itself


def login(t: Tunnel, family: str) -> None:
    result = run_ok(t.ssh(family) + ["echo", "ok"], LOGIN_TIMEOUT, "ssh", env=t.env())
    if result.stdout != b"ok\n":
        raise Failed(f"ssh printed {result.stdout[:80]!r}, expected 'ok'")


def check_ssh(t: Tunnel) -> None:
    """ssh … echo ok, proxy and destination on 127.0.0.1; then the proxy's
    log line the row expects (proxy_log: e.g. nghttpx logging h2)."""
    login(t, "inet")
    if t.proxy.proxy_log:
        name, text = t.proxy.proxy_log
        wait_logged(t.dir / name, text)


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


def check_fdpass(t: Tunnel) -> str:
    """ssh with ProxyUseFdpass yes and gimlet --fdpass: gimlet hands ssh the
    connected socket and exits; a login and the bulk download (size and
    sha256) then run on that socket with no relay process in between."""
    passed = replace(t, fdpass=True)
    login(passed, "inet")
    return check_bulk_down(passed)


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
    wanted = t.proxy.refused_text or rf"HTTP/1\.[01] {status}\b"
    if not re.search(wanted, stderr.decode(errors="replace")):
        raise Failed(f"stderr does not say {wanted!r}: {tail(stderr)}")


def session(argv: list[str], env: dict[str, str], banner: bool) -> tuple[int, bytes, str, float]:
    """Run gimlet alone with stdin open. With `banner`, close stdin once a
    line (sshd's banner) came out; else only once gimlet exited by itself.
    Returns (status, stdout, stderr, seconds)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as err, Child(
        argv, REFUSED_TIMEOUT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
    ) as child:
        out = b""
        if banner:
            while b"\n" not in out and (chunk := child.proc.stdout.read1(1 << 16)):
                out += chunk
            child.proc.stdin.close()
        out += child.proc.stdout.read()
        code = child.proc.wait()
        elapsed = time.monotonic() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        if child.timed_out:
            raise Failed(f"{child.hang_reason()} (stdin open): {tail(stderr)}")
    return code, out, stderr, elapsed


def reaches_sshd(t: Tunnel, argv: list[str]) -> str:
    """gimlet to sshd must print its banner and exit 0 after stdin closes; its stderr."""
    code, out, stderr, _ = session(argv, t.env(), banner=True)
    if not out.startswith(b"SSH-2.0-"):
        raise Failed(f"no sshd banner on stdout ({out[:40]!r}), status {code}: {tail(stderr)}")
    if code != 0:
        raise Failed(f"exited with status {code} after the banner: {tail(stderr)}")
    return stderr


def refuses(argv: list[str], env: dict[str, str], status: int, *texts: str,
            secrets: tuple[str, ...] = (), warning: str | None = None) -> str:
    """gimlet must exit `status` by itself within PROMPTLY seconds, print
    nothing on stdout and one `gimlet: ` line on stderr (besides a warning
    line holding `warning`) holding every text, and none of the secrets.
    Returns a note with the time it took."""
    code, out, stderr, elapsed = session(argv, env, banner=False)
    lines = [line for line in stderr.splitlines() if not (warning and warning in line)]
    if code != status:
        raise Failed(f"exited with status {code}, expected {status}: {tail(stderr)}")
    if elapsed > PROMPTLY:
        raise Failed(f"took {elapsed:.1f}s to give up, more than {PROMPTLY}s")
    if out:
        raise Failed(f"wrote {len(out)} bytes to stdout: {out[:60]!r}")
    if len(lines) != 1 or not lines[0].startswith("gimlet: "):
        raise Failed(f"stderr is not one 'gimlet: ' line: {stderr[:300]!r}")
    missing = [text for text in texts if text not in lines[0]]
    if missing:
        raise Failed(f"stderr lacks {', '.join(map(repr, missing))}: {lines[0]}")
    if any(secret in stderr for secret in secrets):
        raise Failed(f"stderr shows a password: {lines[0]}")
    return f"{status} in {elapsed:.2f}s"


def check_auth(t: Tunnel) -> str:
    """Rows with credentials: gimlet alone reaches sshd, and the proxy's log
    names the user; then with wrong credentials (another user where the
    proxy takes any password) it exits 5 by itself within 10 s, writes
    nothing to stdout and one line to stderr naming the proxy and quoting its
    407 (tinyproxy's 401), without the password."""
    argv = [LOOPBACK["inet"], str(t.target.port)]
    reaches_sshd(t, t.gimlet_argv(*argv))
    if t.proxy.auth_log:
        name, text = t.proxy.auth_log
        log, deadline = t.dir / name, time.monotonic() + LOG_WAIT
        while text not in (logged := log.read_text(errors="replace") if log.exists() else ""):
            if time.monotonic() > deadline:
                raise Failed(f"{name} does not name the user ({text.strip()!r}): {tail(logged, 2)}")
            time.sleep(0.1)
    wrong = replace(t, credentials=t.credentials.refused())
    return "wrong credentials: " + refuses(
        wrong.gimlet_argv(*argv), wrong.env(), AUTH_EXIT,
        f"{LOOPBACK['inet']}:{t.port}",
        t.proxy.auth_refused_text or f"{t.proxy.auth_refused_status} ",
        secrets=(t.credentials.password, wrong.credentials.password))


def wait_logged(log: Path, text: str) -> None:
    """The proxy may log a closed tunnel a moment after gimlet exits."""
    deadline = time.monotonic() + LOG_WAIT
    while text not in (logged := log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise Failed(f"{log.name} does not name the user ({text.strip()!r}): {tail(logged, 2)}")
        time.sleep(0.1)


NO_TICKET = f"no Kerberos ticket for {kdc.REALM}: run kinit"


def check_kerberos(t: Tunnel) -> str:
    """Negotiate rows: gimlet alone reaches sshd and squid's access log names
    the Kerberos principal; so it does with the proxy given as 127.0.0.1 and
    --proxy-service-name HTTP@localhost. Without a ticket (KRB5CCNAME naming
    no cache) and without a password it exits 5 by itself with one line saying
    "no Kerberos ticket for GIMLET.TEST: run kinit"; with --proxy-service-name
    naming a principal the KDC does not know, exit 5 saying so; likewise for
    an expired ticket and for a clock 15 minutes off the KDC's (both made with
    the credential cache's time offset), and, as root, with libgssapi_krb5
    hidden (/dev/null bound over it in a mount namespace of gimlet's own):
    exit 5 naming the package. Where the row has a password too, no ticket or
    no library means the next scheme (the log names that user). gimlet -L
    started without a ticket fails a connection, and after a kinit the next
    one works without a restart. A chain of two hops through this proxy
    authenticates at both."""
    argv = [LOOPBACK["inet"], str(t.target.port)]
    log = t.dir / "access.log"
    reaches_sshd(t, t.gimlet_argv(*argv))
    wait_logged(log, f" {kdc.PRINCIPAL} ")
    by_address = replace(t, proxy=replace(t.proxy, host=None))
    log.write_text("")
    reaches_sshd(by_address, by_address.gimlet_argv(
        *argv, options=("--proxy-service-name", f"HTTP@{kdc.HOST}")))
    wait_logged(log, f" {kdc.PRINCIPAL} ")
    no_ticket = {"KRB5CCNAME": f"FILE:{t.scratch}/no-such-ccache"}
    bare = replace(t, proxy=replace(t.proxy, credentials=None), credentials=None)
    address = f"{t.proxy.host}:{t.port}"
    notes = ["no ticket: " + refuses(bare.gimlet_argv(*argv), bare.env(**no_ticket), AUTH_EXIT,
                                     address, NO_TICKET)]
    unknown = ("--proxy-service-name", "HTTP/nosuch.gimlet.test")
    notes.append("unknown service: " + refuses(
        bare.gimlet_argv(*argv, options=unknown), bare.env(), AUTH_EXIT, address,
        "does not know the service principal HTTP/nosuch.gimlet.test"))
    for name, offset, text in (("expired", 2 * 3600, "the Kerberos ticket has expired: run kinit"),
                               ("clock skew", -15 * 60, "clock is too far from the KDC's")):
        ccache = t.scratch / f"ccache-{offset}"
        kdc.ticket_with_clock_offset(t.env(), ccache, offset)
        notes.append(f"{name}: " + refuses(bare.gimlet_argv(*argv), bare.env(
            KRB5CCNAME=f"FILE:{ccache}"), AUTH_EXIT, address, text))
    notes.append(listen_picks_up_kinit(t, bare))
    # A chain of two hops, both this proxy: Negotiate at the first, and again at the second
    # through the first's tunnel.
    log.write_text("")
    hop = f"http://{t.proxy.host}:{t.port}"
    reaches_sshd(bare, [t.gimlet, *t.proxy.gimlet_args, "-p", hop, "-p", hop, *argv])
    wait_logged(log, f"CONNECT {t.proxy.host}:{t.port} {kdc.PRINCIPAL} ")
    wait_logged(log, f"CONNECT {LOOPBACK['inet']}:{t.target.port} {kdc.PRINCIPAL} ")
    notes.append("chain: Negotiate at both hops")
    if hidden := without_gssapi():
        # A machine without MIT Kerberos: only a run that needs Negotiate notices.
        argv_hidden = hidden + bare.gimlet_argv(*argv)
        if t.credentials:
            code, out, stderr, _ = session(hidden + t.gimlet_argv(*argv), t.env(), banner=True)
            if not out.startswith(b"SSH-2.0-") or code != 0:
                raise Failed(f"without libgssapi_krb5, no fall-back to the password "
                             f"(status {code}): {tail(stderr)}")
            notes.append("no library: fell back")
        else:
            notes.append("no library: " + refuses(argv_hidden, bare.env(), AUTH_EXIT, address,
                                                  "libgssapi-krb5-2"))
    if t.credentials:
        log.write_text("")
        code, out, stderr, _ = session(t.gimlet_argv(*argv), t.env(**no_ticket), banner=True)
        if not out.startswith(b"SSH-2.0-") or code != 0:
            raise Failed(f"without a ticket, no fall-back to the password (status {code}): "
                         f"{tail(stderr)}")
        wait_logged(log, f" {t.credentials.user.replace(chr(92), chr(92) * 2)} ")
        notes.append(f"no ticket: fell back to {t.credentials.user}")
    return "; ".join(notes)


def banner_via(port: int) -> bytes:
    """What a connection to the listener on `port` reads first ('' when it is closed)."""
    deadline = time.monotonic() + REFUSED_TIMEOUT
    while True:
        try:
            with socket.create_connection((LOOPBACK["inet"], port), timeout=REFUSED_TIMEOUT) as s:
                return s.recv(64)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise Failed(f"gimlet -L not listening on port {port}") from None
            time.sleep(0.05)


def listen_picks_up_kinit(t: Tunnel, bare: Tunnel) -> str:
    """gimlet -L started without a ticket: a connection fails; after the
    ticket appears in the cache (a kinit), the next one reaches sshd, with no
    restart: the ticket is read per connection."""
    port = t.sandbox.free_port()
    cache = t.scratch / "late-ccache"
    forward = f"{LOOPBACK['inet']}:{port}:{LOOPBACK['inet']}:{t.target.port}"
    *_, proxy, _, _ = bare.gimlet_argv("h", "p", joined=True)
    argv = [t.gimlet, *t.proxy.gimlet_args, "-L", forward, proxy]
    with tempfile.TemporaryFile() as err, Child(
        argv, bulk_timeout(0), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        env=bare.env(KRB5CCNAME=f"FILE:{cache}"),
    ):
        before = banner_via(port)
        shutil.copy(t.env()["KRB5CCNAME"].removeprefix("FILE:"), cache)
        after = banner_via(port)
        err.seek(0)
        log = err.read()
    if before:
        raise Failed(f"gimlet -L without a ticket passed {before!r}")
    if not after.startswith(b"SSH-2.0-"):
        raise Failed(f"gimlet -L after kinit: no sshd banner ({after!r}): {tail(log)}")
    if NO_TICKET.encode() not in log:
        raise Failed(f"gimlet -L's log lacks {NO_TICKET!r}: {tail(log)}")
    return "-L: kinit after start picked up"


def without_gssapi() -> list[str]:
    """A command prefix that runs its command in a mount namespace of its own
    where libgssapi_krb5.so.2 is /dev/null (root and unshare(1) needed, else
    []). Nothing outside that one process sees the change."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return []
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                      "/usr/lib"):
        library = Path(directory) / "libgssapi_krb5.so.2"
        if library.exists():
            break
    else:
        return []
    script = f'mount --bind /dev/null {shlex.quote(str(library))} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def spki_pin(port: int) -> str:
    """curl's sha256//BASE64 pin of the public key the TLS server on the port
    presents (fetched without verification)."""
    pem = ssl.get_server_certificate((LOOPBACK["inet"], port), timeout=REFUSED_TIMEOUT)
    public = run_ok(["openssl", "x509", "-pubkey", "-noout"], REFUSED_TIMEOUT, "openssl x509",
                    input=pem.encode()).stdout
    der = run_ok(["openssl", "pkey", "-pubin", "-outform", "DER"], REFUSED_TIMEOUT, "openssl pkey",
                 input=public).stdout
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def check_tls_verify(t: Tunnel) -> str:
    """https:// rows: gimlet alone with the row's trust options reaches sshd,
    saying nothing on stderr (but warning with --proxy-insecure), and so it
    does with --proxy-pinnedpubkey naming the proxy's key too; without the
    trust options, or with a pin of another key, it exits 8 by itself within
    10 s with one line giving the reason (unknown authority, not valid for
    the name, no pinned key)."""
    argv = [LOOPBACK["inet"], str(t.target.port)]
    stderr = reaches_sshd(t, t.gimlet_argv(*argv))
    warning = t.proxy.tls.warning
    if warning and warning not in stderr:
        raise Failed(f"no warning mentioning {warning} on stderr: {stderr[:200]!r}")
    if not warning and stderr:
        raise Failed(f"stderr not empty: {tail(stderr)}")
    pin = spki_pin(t.port)
    reaches_sshd(t, t.gimlet_argv(*argv, options=("--proxy-pinnedpubkey", pin)))
    other = "sha256//" + base64.b64encode(hashlib.sha256(pin.encode()).digest()).decode()
    address = f"{LOOPBACK['inet']}:{t.port}"
    refuses(t.gimlet_argv(*argv, options=("--proxy-pinnedpubkey", other)), t.env(), TLS_EXIT,
            address, "matches no pinned key", warning=warning)
    return "untrusted: " + refuses(t.gimlet_argv(*argv, trusted=False), t.env(), TLS_EXIT,
                                   address, t.proxy.tls.rejected)


def start_echo(t: Tunnel, d: Path):
    """stunnel serving TLS on the target's echo port, each connection copied
    back by cat; the certificate is the test CA's for the loopback names."""
    cert, key = certificate(t.sandbox, "localhost")
    port = t.target.echo_port
    (d / "echo.conf").write_text("\n".join([
        "foreground = yes", "syslog = no", f"pid = {d}/echo.pid", "debug = notice",
        "[echo]", f"accept = 127.0.0.1:{port}", f"cert = {cert}", f"key = {key}",
        f"exec = {tool('cat')}", "execArgs = cat",
    ]) + "\n")
    return t.sandbox.spawn("stunnel-echo", [tool("stunnel"), str(d / "echo.conf")], port, d,
                           {"inet"})


def check_tls_echo(t: Tunnel) -> str:
    """gimlet --tls --cacert CA to a TLS echo service (stunnel running cat)
    through the tunnel, TLS inside TLS on https:// rows: 16 MiB of random data
    come back intact while being sent; stdin closed, gimlet exits 0.

    At most ECHO_WINDOW bytes are in flight, as in request/response traffic:
    privoxy and stunnel each write blocking, so an unbounded echo can fill
    every buffer between them and deadlock the two (observed: privoxy stuck
    writing to stunnel with 125 KB from stunnel unread, gimlet idle)."""
    d = t.scratch / "echo"
    d.mkdir(exist_ok=True)
    echo = start_echo(t, d)
    data = os.urandom(ECHO_MIB << 20)
    options = ("--tls", "--cacert", str(pki_dir(t.sandbox) / "ca.pem"))
    argv = t.gimlet_argv(LOOPBACK["inet"], str(t.target.echo_port), options=options)
    started = time.monotonic()
    try:
        with tempfile.TemporaryFile() as err, Child(
            argv, bulk_timeout(len(data)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, env=t.env(),
        ) as child:
            progress = threading.Condition()
            digest, received, done = hashlib.sha256(), 0, False

            def send():
                try:
                    for at in range(0, len(data), 1 << 16):
                        with progress:
                            progress.wait_for(lambda: done or at - received <= ECHO_WINDOW,
                                              timeout=bulk_timeout(len(data)))
                        if done:
                            return
                        child.proc.stdin.write(data[at:at + (1 << 16)])
                        child.proc.stdin.flush()
                except OSError:
                    pass  # gimlet died: the read side tells

            writer = threading.Thread(target=send, daemon=True)
            writer.start()
            while received < len(data) and (chunk := child.proc.stdout.read1(1 << 20)):
                digest.update(chunk)
                with progress:
                    received += len(chunk)
                    progress.notify()
            with progress:
                done = True
                progress.notify()
            writer.join()
            child.proc.stdin.close()
            rest = child.proc.stdout.read()
            code = child.proc.wait()
            err.seek(0)
            stderr = err.read()
            if child.timed_out:
                raise Failed(f"{child.hang_reason()} after {received} bytes: {tail(stderr)}")
    finally:
        t.sandbox.stop(echo)
    if received != len(data) or digest.hexdigest() != hashlib.sha256(data).hexdigest():
        raise Failed(f"got back {received} bytes (sha256 {digest.hexdigest()[:16]}…) of "
                     f"{len(data)}, status {code}: {tail(stderr)}")
    if rest:
        raise Failed(f"{len(rest)} bytes more than were sent came back")
    if code != 0:
        raise Failed(f"exited with status {code} after the echo: {tail(stderr)}")
    return throughput(len(data), time.monotonic() - started)


def aimed(t: Tunnel, text: str) -> str:
    """README text aimed at the row: the example proxy's name and port
    swapped for the row's proxy on 127.0.0.1, nothing else."""
    host, port = readme.EXAMPLE_PROXY, readme.EXAMPLE_PORT
    return (text.replace(f"{host}:{port}", f"{LOOPBACK['inet']}:{t.port}")
            .replace(f"{host} {port}", f"{LOOPBACK['inet']} {t.port}"))


def localized(t: Tunnel, command: str) -> str:
    """A README ProxyCommand aimed at the row, running the row's gimlet."""
    program, rest = command.split(" ", 1)
    if program != "gimlet":
        raise Failed(f"README recipe runs {program!r}, not gimlet: {command!r}")
    return f"{shlex.quote(t.gimlet)} {aimed(t, rest)}"


def readme_home(t: Tunnel) -> Path:
    """A HOME with the files the README's recipes name, holding its example
    credentials: ~/.ssh/proxyauth, ~/.config/gimlet/proxyauth, ~/.netrc."""
    home = t.scratch / "readme-home"
    pair = f"{readme.EXAMPLE_USER}:{readme.EXAMPLE_PASSWORD}\n"
    netrc = (f"machine {LOOPBACK['inet']} login {readme.EXAMPLE_USER} "
             f"password {readme.EXAMPLE_PASSWORD}\n")
    for relative, text in ((".ssh/proxyauth", pair), (".config/gimlet/proxyauth", pair),
                           (".netrc", netrc)):
        path = home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(text)
    return home


def check_readme(t: Tunnel) -> str:
    """Every ProxyCommand in README.md's code blocks (readme.py) through a real
    ssh, as written there but for the example proxy's address: those with
    credentials on a row that asks for the README's (alice, p@ss), the others
    on a row that asks for none; `gimlet %h %p` with HTTPS_PROXY naming the
    row's proxy. Recipes through another proxy (https://, socks5h://) are left
    to the rows of their kind. A recipe with %% must also fail, with the ssh message the README's
    troubleshooting quotes, when written with a single %."""
    asks = t.credentials is not None
    if asks and (t.credentials.user, t.credentials.password) != (readme.EXAMPLE_USER,
                                                                   readme.EXAMPLE_PASSWORD):
        raise Failed("the row's credentials are not the README's example ones")
    home = readme_home(t)
    text = readme.README.read_text()
    ran = 0
    for recipe in readme.recipes(text):
        if recipe.tls or not recipe.example_proxy or recipe.credentials != asks:
            continue
        fdpass = ["-o", "ProxyUseFdpass=yes"] if recipe.fdpass else []

        def ssh(command: str) -> subprocess.CompletedProcess:
            argv = ["ssh", "-F", str(t.target.ssh_config), "-o",
                    f"ProxyCommand={localized(t, command)}", *fdpass,
                    "-p", str(t.target.port), LOOPBACK["inet"], "echo", "ok"]
            env = {name: aimed(t, value) for name, value in recipe.environment().items()}
            return run(argv, LOGIN_TIMEOUT, env=t.env(HOME=str(home), **env))

        result = ssh(recipe.command)
        if result.returncode != 0 or result.stdout != b"ok\n":
            raise Failed(f"README recipe {recipe.line.strip()!r}: ssh exited with status "
                         f"{result.returncode}: {tail(result.stderr)}")
        ran += 1
        if "%%" in recipe.command:
            wrong = ssh(readme.undoubled(recipe.command))
            message = re.search(rb"percent_expand: unknown key %\w", wrong.stderr)
            if wrong.returncode == 0 or not message:
                raise Failed(f"{readme.undoubled(recipe.command)!r} did not fail with ssh's "
                             f"percent_expand message: {tail(wrong.stderr)}")
            if message.group().decode() not in text:
                raise Failed(f"README.md does not quote ssh's {message.group().decode()!r}")
    if not ran:
        raise Failed("README.md has no ssh recipe for this row")
    return f"{ran} recipes"


def check_environment(t: Tunnel) -> str:
    """Rows taking the proxy from the environment (HTTPS_PROXY, NO_PROXY=localhost):
    gimlet -v %h %p to `localhost` goes direct and says which NO_PROXY entry
    matched; to 127.0.0.1 it goes through the proxy, and the proxy's access
    log shows the CONNECT to 127.0.0.1 and none to localhost."""
    log = t.dir / "access.log"
    port = str(t.target.port)
    direct = reaches_sshd(t, t.gimlet_argv("localhost", port, options=("-v",)))
    if "direct: NO_PROXY entry localhost matches localhost" not in direct:
        raise Failed(f"-v does not say NO_PROXY sent localhost direct: {tail(direct)}")
    proxied = reaches_sshd(t, t.gimlet_argv(LOOPBACK["inet"], port, options=("-v",)))
    if "from HTTPS_PROXY" not in proxied:
        raise Failed(f"-v does not name HTTPS_PROXY: {tail(proxied)}")
    wait_logged(log, f"CONNECT {LOOPBACK['inet']}:{port}")
    logged = log.read_text(errors="replace")
    if f"localhost:{port}" in logged:
        raise Failed(f"the proxy saw the NO_PROXY host: {tail(logged, 2)}")
    return "localhost direct, 127.0.0.1 through the proxy (access.log)"


# -- listen mode: gimlet -L and --forwards as a daemon, ssh and git pointed at its port ---------

LISTEN_WAIT = 20  # seconds gimlet may take to log a reload
ENV_NOT_READ = "n/a: the file's lines carry the row's proxy, which this row has in the environment"


def listen_argv(t: Tunnel, *options: str) -> list[str]:
    """gimlet in listen mode through the row's proxy (as PROXY, the same way the pipe mode
    gets it), with the row's credentials and TLS options."""
    *argv, _host, _port = t.gimlet_argv("h", "1", joined=True)
    return [argv[0], *options, *argv[1:]]


def direct_ssh(t: Tunnel, port: int) -> list[str]:
    """ssh to sshd through a forward on 127.0.0.1:PORT, no ProxyCommand."""
    return ["ssh", "-F", str(t.target.ssh_config), "-p", str(port), "127.0.0.1"]


def wait_in_log(log: Path, text: str, after: int = 0) -> int:
    """Waits for `text` in gimlet's log past offset `after`; returns the offset after it."""
    deadline = time.monotonic() + LISTEN_WAIT
    while True:
        logged = log.read_text(errors="replace") if log.exists() else ""
        at = logged.find(text, after)
        if at >= 0:
            return at + len(text)
        if time.monotonic() > deadline:
            raise Failed(f"gimlet's log never said {text!r}: {tail(logged, 3)}")
        time.sleep(0.05)


def check_listen(t: Tunnel) -> str:
    """gimlet -L PORT:127.0.0.1:SSHD through the proxy: ssh, git clone, git push and the bulk
    download (sha256) against the forwarded port; then -L without a proxy (direct): ssh. On a
    row whose proxy is in the environment, -L takes it from there, and the direct forward is
    to `localhost`, which the row's NO_PROXY sends direct."""
    port, direct = t.sandbox.free_port(), t.sandbox.free_port()
    argv = listen_argv(t, "-L", f"{port}:127.0.0.1:{t.target.port}")
    daemon = t.sandbox.spawn("gimlet-listen", argv, port, t.scratch, {"inet"}, env=t.env())
    try:
        ssh = direct_ssh(t, port)
        result = run_ok(ssh + ["echo", "ok"], LOGIN_TIMEOUT, "ssh through -L", env=t.env())
        if result.stdout != b"ok\n":
            raise Failed(f"ssh printed {result.stdout[:80]!r}, expected 'ok'")
        url = f"ssh://{t.target.user}@127.0.0.1:{port}{t.target.repo}"
        env = t.env(GIT_SSH_COMMAND=shlex.join(["ssh", "-F", str(t.target.ssh_config)]))
        dest = t.scratch / "listen-clone"
        run_ok(["git", "clone", "-q", url, str(dest)], GIT_TIMEOUT, "git clone through -L", env=env)
        verify_checkout(dest, t.target.head, t.target.manifest, env)
        (dest / f"listen-{t.proxy.name}.bin").write_bytes(os.urandom(PUSH_MIB << 20))
        git = ["git", "-C", str(dest)]
        run_ok(git + ["add", "-A"], GIT_TIMEOUT, "git add", env=env)
        run_ok(git + ["commit", "-q", "-m", "through -L"], GIT_TIMEOUT, "git commit", env=env)
        run_ok(git + ["push", "-q", "origin", f"HEAD:refs/heads/listen/{t.proxy.name}"],
               GIT_TIMEOUT, "git push through -L", env=env)
        size = t.target.blob_size
        started = time.monotonic()
        got = run_ok(ssh + ["cat", str(t.target.blob)], bulk_timeout(size), "ssh cat through -L",
                     env=t.env()).stdout
        if len(got) != size or hashlib.sha256(got).hexdigest() != t.target.blob_sha256:
            raise Failed(f"bulk download through -L: {len(got)} of {size} bytes, or wrong sha256")
        note = throughput(size, time.monotonic() - started)
        wait_in_log(daemon.log, "closed #")
        if "Proxy-Authorization" in daemon.log.read_text() or (
                t.credentials and t.credentials.password in daemon.log.read_text()):
            raise Failed("gimlet's log shows credentials")
    finally:
        t.sandbox.stop(daemon)
    host = "localhost" if t.proxy.from_env else "127.0.0.1"
    plain = t.sandbox.spawn("gimlet-direct", [t.gimlet, "-L", f"{direct}:{host}:{t.target.port}"],
                            direct, t.scratch, {"inet"}, env=t.env())
    try:
        result = run_ok(direct_ssh(t, direct) + ["echo", "ok"], LOGIN_TIMEOUT, "ssh through -L direct",
                        env=t.env())
        if result.stdout != b"ok\n":
            raise Failed(f"ssh (direct -L) printed {result.stdout[:80]!r}")
        if t.proxy.from_env:
            wait_in_log(plain.log, "direct (NO_PROXY entry localhost matches localhost)")
    finally:
        t.sandbox.stop(plain)
    return note


def save_as_editor(path: Path, text: str) -> None:
    """Writes a temporary file and renames it over `path`, as editors save."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def check_listen_reload(t: Tunnel) -> str | None:
    """gimlet --forwards FILE, the seed's line format through the row's proxy; an ssh session
    stays open while the file is edited (a line added, the session's own line changed, the
    added line removed); the session keeps working after every edit and the new forward
    works while it exists."""
    if t.proxy.from_env:
        return ENV_NOT_READ
    first, second = t.sandbox.free_port(), t.sandbox.free_port()
    *argv, _h, _p = t.gimlet_argv("h", "1")
    # The row's proxy as gimlet_argv gives it: `-p URL` repeated for a chain (one ROUTE
    # field, comma-separated), a URL (one field), or corkscrew's `HOST PORT`, which is the
    # seed's `<Proxy address> <Proxy port>`.
    if t.hops:
        n = 2 * (1 + len(t.hops))
        proxy_fields = [",".join(argv[-n + 1::2])]
    else:
        n = 1 if "://" in argv[-1] else 2
        proxy_fields = argv[-n:]
    base = argv[:-n]
    forwards = t.scratch / "forwards"
    line = f"{first} 127.0.0.1 {t.target.port} {' '.join(proxy_fields)}\n"
    forwards.write_text("# the seed's format\n" + line)
    # On netrc rows the line's proxy finds its credentials in --netrc-file by its host.
    daemon = t.sandbox.spawn("gimlet-forwards",
                             [base[0], "--forwards", str(forwards), *base[1:]],
                             first, t.scratch, {"inet"}, env=t.env())
    ssh = direct_ssh(t, first)
    script = "while read line; do echo \"got $line\"; done"
    with Child(ssh + [script], LOGIN_TIMEOUT * 4, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, env=t.env()) as session:
        def ask(word: str) -> None:
            session.proc.stdin.write(f"{word}\n".encode())
            session.proc.stdin.flush()
            answer = session.proc.stdout.readline()
            if answer != f"got {word}\n".encode():
                raise Failed(f"the open ssh session answered {answer[:80]!r} to {word!r}")
        try:
            ask("before")
            at = wait_in_log(daemon.log, "established #")
            save_as_editor(forwards, line + f"{second} 127.0.0.1 {t.target.port} direct\n")
            at = wait_in_log(daemon.log, f"listening on 127.0.0.1:{second}", at)
            ask("after-add")
            result = run_ok(direct_ssh(t, second) + ["echo", "ok"], LOGIN_TIMEOUT,
                            "ssh through the added line", env=t.env())
            if result.stdout != b"ok\n":
                raise Failed(f"ssh through the added line printed {result.stdout[:80]!r}")
            save_as_editor(forwards, line.rstrip("\n") + " keepalive=30 idle-timeout=3600\n"
                           + f"{second} 127.0.0.1 {t.target.port} direct\n")
            at = wait_in_log(daemon.log, f"changed 127.0.0.1:{first}", at)
            ask("after-change")
            save_as_editor(forwards, line)
            at = wait_in_log(daemon.log, f"stopped listening on 127.0.0.1:{second}", at)
            save_as_editor(forwards, line + "this line is broken\n")
            at = wait_in_log(daemon.log, "keeping the previous forwards", at)
            ask("after-remove-and-typo")
            session.proc.stdin.close()
            if session.proc.wait() != 0 or session.timed_out:
                raise Failed(f"the ssh session ended badly: {tail(session.proc.stderr.read())}")
            wait_in_log(daemon.log, "closed #", at)
        finally:
            t.sandbox.stop(daemon)


# -- many tunnels on one HTTP/2 connection: gimlet -L --proxy-http2 ----------------------------

# With the harness's readiness probe (a tunnel of its own, held open: nghttpx does not pass
# its half-close on) 101 streams, within the row's nghttpx limit of 128: one connection.
MUX_TUNNELS = 100
MUX_BYTES = 256 << 10  # per tunnel, each way


class _Echo:
    """A plain TCP echo server on `port` (127.0.0.1): each connection's bytes come back until
    it closes. Stopped with the check."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.1", port), backlog=MUX_TUNNELS * 2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        # shutdown wakes the accept blocked in the thread; close alone would leave the port bound.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


def check_h2_mux(t: Tunnel) -> str:
    """gimlet -L PORT:127.0.0.1:ECHO through the row's HTTP/2 proxy, MUX_TUNNELS clients at
    once, each sending MUX_BYTES of its own random bytes and reading them back, every byte
    compared, all open together before any closes; then nghttpx's access log must show one
    client port (one connection) for all the check's CONNECTs, and gimlet's log connection #1
    only."""
    port = t.sandbox.free_port()
    echo = _Echo(t.target.echo_port)
    argv = listen_argv(t, "-v", "-L", f"{port}:127.0.0.1:{t.target.echo_port}")
    access = t.dir / "nghttpx-access.log"
    before = access.stat().st_size if access.exists() else 0
    daemon = t.sandbox.spawn("gimlet-h2-mux", argv, port, t.scratch, {"inet"}, env=t.env())
    all_open = threading.Barrier(MUX_TUNNELS, timeout=LOGIN_TIMEOUT * 4)
    errors: list[str] = []

    def client(i: int) -> None:
        data = os.urandom(MUX_BYTES)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=LOGIN_TIMEOUT * 4) as s:
                sender = threading.Thread(target=s.sendall, args=(data,), daemon=True)
                sender.start()
                got = bytearray()
                while len(got) < len(data):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                sender.join()
                if bytes(got) != data:
                    errors.append(f"tunnel {i}: {len(got)} of {len(data)} bytes, or different")
                all_open.wait()
        except (OSError, threading.BrokenBarrierError) as e:
            errors.append(f"tunnel {i}: {e}")
            all_open.abort()

    try:
        started = time.monotonic()
        clients = [threading.Thread(target=client, args=(i,)) for i in range(MUX_TUNNELS)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        took = time.monotonic() - started
        if errors:
            raise Failed(f"{len(errors)} of {MUX_TUNNELS} tunnels failed: {errors[0]}")
        log = daemon.log.read_text(errors="replace")
        established = re.findall(r"established #\d+ .*HTTP/2 connection #(\d+)", log)
        if len(established) < MUX_TUNNELS or set(established) != {"1"}:
            raise Failed(f"gimlet's log: {len(established)} tunnels on HTTP/2 connections "
                         f"{sorted(set(established))}, expected {MUX_TUNNELS} on #1 alone")
    finally:
        t.sandbox.stop(daemon)
        echo.close()
    # nghttpx writes its access log line when a stream ends: all have ended once gimlet is gone.
    lines = [line.split() for line in access.read_bytes()[before:].decode(errors="replace")
             .splitlines()]
    mine = [f for f in lines if f[:3] == ["h2", "CONNECT", "200"]]
    ports = {f[4] for f in mine if len(f) > 4}
    if len(mine) < MUX_TUNNELS or len(ports) != 1:
        raise Failed(f"nghttpx logged {len(mine)} h2 CONNECTs from {len(ports)} client ports, "
                     f"expected {MUX_TUNNELS} from one")
    return f"{MUX_TUNNELS} tunnels on 1 connection ({len(mine)} CONNECTs from port " \
        f"{ports.pop()}), {took:.1f}s"


CHECKS = [
    Check("ssh", check_ssh),
    Check("ssh-v6", check_ssh_v6, needs=frozenset({"inet6"})),
    Check("coalesced", check_coalesced),
    Check("git-clone", check_git_clone),
    Check("git-push", check_git_push),
    Check("bulk-down", check_bulk_down),
    Check("bulk-up", check_bulk_up),
    Check("refused", check_refused),
    Check("fdpass", check_fdpass, needs=frozenset({"inet", "plain"})),
    Check("auth", check_auth, needs=frozenset({"inet", "auth"})),
    Check("tls-verify", check_tls_verify, needs=frozenset({"inet", "tls"})),
    Check("kerberos", check_kerberos, needs=frozenset({"inet", "kerberos"})),
    Check("tls-echo", check_tls_echo, packages=("stunnel4", "openssl")),
    Check("readme", check_readme, needs=frozenset({"inet", "readme"})),
    Check("environment", check_environment, needs=frozenset({"inet", "env"})),
    Check("listen", check_listen),
    Check("listen-reload", check_listen_reload),
    Check("h2-mux", check_h2_mux, needs=frozenset({"inet", "h2"})),
    Check("dynamic", dynamic.check_dynamic, packages=("curl",)),
    Check("browser", dynamic.check_browser, needs=frozenset({"inet", "auth"}),
          packages=("chromium",)),
]
