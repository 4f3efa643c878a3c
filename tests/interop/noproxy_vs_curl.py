#!/usr/bin/env python3
# Runs the installed curl over every row of gimlet's NO_PROXY table
# (NO_PROXY_TABLE in src/route/env.rs) and reports rows where curl decides
# differently. For each row curl gets https_proxy pointing at a loopback port
# that accepts and closes, no_proxy set to the row's list, and the row's host
# pinned to a closed loopback address with --resolve, so nothing leaves the
# machine; curl's -v output says whether it tried the proxy.
#
#   tests/interop/noproxy_vs_curl.py      (exit status 1 if any row differs)
import ast
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
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
