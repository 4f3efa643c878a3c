#!/usr/bin/env python3
# Runs the installed curl over every row of gimlet's NO_PROXY table
# (NO_PROXY_TABLE in src/route/env.rs) and reports rows where curl decides
# differently. For each row curl gets https_proxy pointing at a loopback port
# that accepts and closes, no_proxy set to the row's list, and the row's host
# pinned to a closed loopback address with --resolve, so nothing leaves the
# machine; curl's -v output says whether it tried the proxy.
#
# Then it runs curl and gimlet itself side by side over the variable rules: which of
# https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY wins, empty values, no_proxy before NO_PROXY.
#
#   tests/interop/noproxy_vs_curl.py   (exit status 1 if any row differs; $GIMLET names the
#                                       binary, else cargo build --release makes it)
import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def table() -> list[tuple[str, str, bool]]:
    src = (REPO / "src/route/env.rs").read_text()
    body = src[src.index("NO_PROXY_TABLE"):]
    body = body[body.index("= &[") + 4:body.index("\n    ];")]
    rows = []
    for m in re.finditer(r'\(\s*("(?:[^"\\]|\\.)*"),\s*("(?:[^"\\]|\\.)*"),\s*(true|false),?\s*\)', body):
        rows.append((ast.literal_eval(m[1]), ast.literal_eval(m[2]), m[3] == "true"))
    return rows


def curl_goes_direct(host: str, no_proxy: str, proxy_port: int) -> bool:
    url_host = f"[{host}]" if ":" in host else host
    argv = ["curl", "-sv", "-m", "5", "-o", "/dev/null", f"https://{url_host}:9/"]
    if ":" not in host and not re.fullmatch(r"[0-9.]+", host):
        # Pin the name: a direct attempt goes to a closed loopback port, no DNS.
        argv[1:1] = ["--resolve", f"{host}:9:127.0.0.1"]
    env = {"https_proxy": f"http://127.0.0.1:{proxy_port}", "no_proxy": no_proxy, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30).stderr
    return f"127.0.0.1:{proxy_port}" not in out and f"port {proxy_port}" not in out


def fixed_in(host: str, lst: str) -> tuple[int, int, int] | None:
    """The curl release whose noproxy fix gimlet's row reflects, for rows where older curl
    decided otherwise (from curl's git history)."""
    if re.search(r"[^ ,] +[^ ,]", lst.strip()):
        return (8, 9, 0)   # e78913e6b5 "noproxy: patterns need to be comma separated"
    if re.search(r"/[0-9]+[^0-9 ,]", lst):
        return (8, 18, 0)  # 97b0abb46b "noproxy: replace atoi with curlx_str_number"
    if ":" in host and "/" in lst:
        return (8, 18, 0)  # 1a3a5cb720, ff2aaed9ba: IPv6 network masks
    return None


# (environment, what decides): each proxy variable names its own loopback port.
VARIABLE_ROWS = [
    ({"https_proxy": "A", "HTTPS_PROXY": "B"}, "https_proxy"),
    ({"https_proxy": "", "HTTPS_PROXY": "B"}, "HTTPS_PROXY"),
    ({"HTTPS_PROXY": "B", "all_proxy": "C"}, "HTTPS_PROXY"),
    ({"all_proxy": "C", "ALL_PROXY": "D"}, "all_proxy"),
    ({"ALL_PROXY": "D"}, "ALL_PROXY"),
    ({"https_proxy": ""}, "direct"),
    ({"http_proxy": "A", "HTTP_PROXY": "B"}, "direct"),
    ({"https_proxy": "A", "no_proxy": "other.test", "NO_PROXY": "*"}, "https_proxy"),
    ({"https_proxy": "A", "no_proxy": "", "NO_PROXY": "*"}, "direct"),
    ({"https_proxy": "A", "NO_PROXY": "localhost"}, "direct"),
]


def variable_rows(gimlet: str) -> int:
    ports = {}
    keep = []
    for name in "ABCD":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        keep.append(s)
        ports[name] = s.getsockname()[1]
    by_port = {}
    differ = 0
    for env, want in VARIABLE_ROWS:
        real = {k: (f"http://127.0.0.1:{ports[v]}" if v in ports else v) for k, v in env.items()}
        for k, v in env.items():
            if v in ports:
                by_port[ports[v]] = k
        base = {"PATH": "/usr/bin:/bin"}
        out = subprocess.run(["curl", "-sv", "-m", "5", "-o", "/dev/null", "--resolve",
                              "localhost:9:127.0.0.1", "https://localhost:9/"],
                             env={**base, **real}, capture_output=True, text=True, timeout=30).stderr
        tried = [k for port, k in by_port.items() if f"127.0.0.1:{port}" in out
                 and k in env and real[k].endswith(f":{port}")]
        curl = tried[0] if tried else "direct"
        g = subprocess.run([gimlet, "-v", "--connect-timeout", "2", "localhost", "9"],
                           env={**base, **real}, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL).stderr
        m = re.search(r"from (\w+)", g)
        ours = "direct" if "direct:" in g else (m.group(1) if m else "?")
        mark = "ok  " if curl == ours == want else "DIFF"
        differ += mark == "DIFF"
        print(f"{mark} {env!r:70} curl={curl:12} gimlet={ours}")
    return differ


def find_gimlet() -> str:
    """$GIMLET, or the binary `cargo build --release` reports."""
    if path := os.environ.get("GIMLET"):
        return path
    build = subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "gimlet",
                            "--message-format=json-render-diagnostics"],
                           cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    for line in build.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") \
                and message["target"]["name"] == "gimlet":
            return message["executable"]
    raise SystemExit("cargo build did not report a gimlet executable")


def main() -> int:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    installed = tuple(int(x) for x in version.split()[1].split("."))
    rows = table()
    differ = 0
    for host, lst, want in rows:
        if not host or not lst:
            continue  # curl has no empty host; an empty no_proxy is "unset"
        got = curl_goes_direct(host, lst, port)
        fix = fixed_in(host, lst)
        if got == want:
            mark = "ok  "
        elif fix and installed < fix:
            mark = "old "  # this curl predates the fix; newer curl agrees with gimlet
        else:
            mark = "DIFF"
            differ += 1
        print(f"{mark} {host!r:24} in {lst!r:48} gimlet={'direct' if want else 'proxy '} curl={'direct' if got else 'proxy '}")
    print(f"{len(rows)} rows, {differ} differ from {version} "
          "(rows marked old differ only because this curl predates a later noproxy fix)")
    var_differ = variable_rows(find_gimlet())
    print(f"{len(VARIABLE_ROWS)} variable rows, {var_differ} differ between curl and gimlet")
    differ += var_differ
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
