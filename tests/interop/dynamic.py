# gimlet -D as the local proxy of real clients, through each row's proxy: curl
# over SOCKS5 and as an HTTP proxy (absolute-form for http://, CONNECT for
# https://), ssh with gimlet's own SOCKS URL as ProxyCommand, and headless
# Chromium, checked by the page it rendered. Only gimlet holds the row's
# credentials: the clients have none.
from __future__ import annotations

import http.server
import shlex
import ssl
import tempfile
import threading
import time
from pathlib import Path

from harness import LOOPBACK, Failed, run, run_ok, tail, tool
from pki import certificate, pki_dir

TIMEOUT = 60
# The page's script writes this into the document: --dump-dom shows it only if the page ran.
MARKER = "rendered-through-gimlet"
PAGE = (b"<!doctype html><html><head><title>gimlet</title></head><body><p id=p>static</p>"
        b"<script>document.getElementById('p').textContent = ['rendered', 'through', "
        b"'gimlet'].join('-');</script></body></html>")


class _Page(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept connections, Content-Length bodies

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        body = PAGE if self.path.startswith("/page") else b"not found\n"
        self.send_response(200 if body is PAGE else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A browser drops connections it no longer needs: not a failure of the check.
        pass


class Web:
    """The page over plain HTTP on the target's echo port and over HTTPS (the test CA's
    certificate for the loopback names) on its web port: ports every row's proxy lets
    CONNECT reach."""

    def __init__(self, t):
        self.http_port, self.https_port = t.target.echo_port, t.target.web_port
        self.servers = [_Server(("127.0.0.1", self.http_port), _Page)]
        tls = _Server(("127.0.0.1", self.https_port), _Page)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = certificate(t.sandbox, "localhost")
        context.load_cert_chain(cert, key)
        tls.socket = context.wrap_socket(tls.socket, server_side=True)
        self.servers.append(tls)
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


def dynamic_argv(t, port: int) -> list[str]:
    """gimlet -D PORT through the row's proxy, given as the pipe mode gets it, with the row's
    credentials and TLS options."""
    *argv, _host, _port = t.gimlet_argv("h", "1", joined=True)
    return [argv[0], "-D", str(port), *argv[1:]]


def start(t, port: int):
    return t.sandbox.spawn("gimlet-dynamic", dynamic_argv(t, port), port, t.scratch, {"inet"},
                           env=t.env())


def curl(t, *args: str) -> bytes:
    # --noproxy '': curl's own environment rules never bypass gimlet; no credentials at all.
    result = run_ok([tool("curl"), "-sS", "--fail", "--max-time", "30", "--noproxy", "", *args],
                    TIMEOUT, f"curl {' '.join(args)}", env=t.env())
    return result.stdout


def no_secret_in(t, log: Path) -> None:
    text = log.read_text(errors="replace")
    if t.credentials and t.credentials.password in text:
        raise Failed("gimlet's log shows the password")


def check_dynamic(t) -> str:
    """curl --socks5-hostname, curl -x for http:// (absolute-form, two URLs on one kept
    connection) and for https:// (CONNECT, verified against the test CA), a POST with a body,
    eight https:// transfers in parallel (eight tunnels set up at once), and ssh with ProxyCommand gimlet socks5h://127.0.0.1:PORT %h %p, all through one gimlet -D
    that goes through the row's proxy."""
    port = t.sandbox.free_port()
    web = Web(t)
    daemon = start(t, port)
    try:
        page = f"http://127.0.0.1:{web.http_port}/page"
        proxy = f"http://127.0.0.1:{port}"
        # First, while nothing is cached yet: eight CONNECT tunnels at once, each with its own
        # handshake upstream (a browser's parallel connections). With Negotiate they once
        # crashed gimlet's static build.
        https = f"https://127.0.0.1:{web.https_port}/page"
        parallel = curl(t, "-Z", "--parallel-immediate", "--parallel-max", "8", "-x", proxy,
                        "--cacert", str(pki_dir(t.sandbox) / "ca.pem"),
                        *(f"{https}?{i}" for i in range(8)))
        checks = {
            "socks5h": curl(t, "--socks5-hostname", f"127.0.0.1:{port}", page),
            "absolute-form": curl(t, "-x", proxy, page, page),
            "CONNECT": curl(t, "-x", proxy, "--cacert", str(pki_dir(t.sandbox) / "ca.pem"),
                            f"https://127.0.0.1:{web.https_port}/page"),
            "POST": curl(t, "-x", proxy, "--data-binary", "posted body", page.replace("/page", "/post")),
            "parallel": parallel,
        }
        want = {"absolute-form": PAGE * 2, "POST": b"posted body", "parallel": PAGE * 8}
        for what, got in checks.items():
            if got != want.get(what, PAGE):
                raise Failed(f"{what}: curl printed {got[:80]!r}")
        gimlet = t.gimlet
        command = shlex.join([gimlet, f"socks5h://127.0.0.1:{port}"]) + " %h %p"
        ssh = ["ssh", "-F", str(t.target.ssh_config), "-o", f"ProxyCommand={command}",
               "-p", str(t.target.port), LOOPBACK["inet"], "echo", "ok"]
        result = run_ok(ssh, TIMEOUT, "ssh through -D", env=t.env())
        if result.stdout != b"ok\n":
            raise Failed(f"ssh through -D printed {result.stdout[:80]!r}")
        log = daemon.log
        deadline = time.monotonic() + 10
        while " GET http://" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text(errors="replace")
        for needle in ("SOCKS5 127.0.0.1:", " GET http://127.0.0.1:", "CONNECT 127.0.0.1:"):
            if needle not in text:
                raise Failed(f"gimlet's log has no {needle!r}: {tail(text, 3)}")
        no_secret_in(t, log)
    finally:
        t.sandbox.stop(daemon)
        web.close()
    return "curl socks5h, -x http:// and https://, POST, 8 tunnels at once, ssh"


def chromium() -> str:
    return tool("chromium")


def check_browser(t) -> str:
    """Headless Chromium with --proxy-server=socks5://127.0.0.1:PORT and then http://…,
    loading the page from the local server through gimlet -D and the row's proxy; the page's
    script rewrote the document, and --dump-dom shows what was rendered."""
    port = t.sandbox.free_port()
    web = Web(t)
    daemon = start(t, port)
    notes = []
    try:
        for scheme in ("socks5", "http"):
            with tempfile.TemporaryDirectory(dir=t.scratch) as profile:
                argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}",
                        f"--proxy-server={scheme}://127.0.0.1:{port}",
                        # Chromium sends loopback destinations direct unless told otherwise.
                        "--proxy-bypass-list=<-loopback>",
                        "--dump-dom", f"http://127.0.0.1:{web.http_port}/page"]
                started = time.monotonic()
                result = run(argv, TIMEOUT, env={**t.env(), "HOME": profile})
                dom = result.stdout.decode(errors="replace")
                if MARKER not in dom:
                    if (status := daemon.proc.poll()) is not None:
                        raise Failed(f"{scheme}: gimlet -D exited with status {status}: "
                                     f"{tail(daemon.log.read_text(errors='replace'), 5)}")
                    raise Failed(f"{scheme}: Chromium rendered no {MARKER!r} (status "
                                 f"{result.returncode}): {dom[:120]!r} {tail(result.stderr, 40)}")
                notes.append(f"{scheme} {time.monotonic() - started:.1f}s")
        text = daemon.log.read_text(errors="replace")
        for needle in ("SOCKS5 127.0.0.1:", " GET http://127.0.0.1:"):
            if needle not in text:
                raise Failed(f"gimlet's log has no {needle!r}: Chromium went around it? "
                             f"{tail(text, 3)}")
        no_secret_in(t, daemon.log)
    finally:
        t.sandbox.stop(daemon)
        web.close()
    return ", ".join(notes)
