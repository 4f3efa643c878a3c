# The proxies the interop suite runs gimlet through: one PROXIES entry per
# matrix row, each saying which packages it needs, how to write its config and
# start it (on a given port, on loopback only), which address families it
# listens on, how it answers a CONNECT to a closed port, and what extra
# arguments/environment gimlet needs to use it (credentials, TLS, ...).
#
# Adding a row: write a launcher `def launch_x(site: Site) -> None` that writes
# its config under site.dir and calls site.spawn(...) so that something accepts
# on site.port (a chain such as stunnel in front of squid first launches the
# back end with dataclasses.replace(site, port=site.sandbox.free_port())), then
# add a Proxy(...) to PROXIES. Reuse a launcher with extra settings through a
# parameter and functools.partial rather than copying it.
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from harness import BOTH_FAMILIES, IS_ROOT, Sandbox, tool
from target import Target

APACHE_MODULES = Path("/usr/lib/apache2/modules")
PRIVOXY_TEMPLATES = Path("/etc/privoxy/templates")  # shipped data, read only


@dataclass
class Site:
    """What a launcher gets: where to write, which port to serve, what to allow."""

    sandbox: Sandbox
    dir: Path
    port: int
    target: Target
    families: frozenset

    def spawn(self, name: str, argv: list[str]) -> None:
        """Start the daemon and wait until it accepts on the site's port."""
        self.sandbox.spawn(name, argv, self.port, self.dir, self.families)

    def run_as(self, user: str) -> tuple[str, str] | None:
        """When started as root, the daemon should switch to `user`: hand it
        the site directory and return (user, group) for its config."""
        if not IS_ROOT:
            return None
        entry = pwd.getpwnam(user)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        return user, grp.getgrgid(entry.pw_gid).gr_name


@dataclass(frozen=True)
class Proxy:
    """One matrix row. gimlet_args go before gimlet's positional arguments
    (e.g. ("-U", "user:pass")); gimlet_env is added to the environment of
    ssh, git and gimlet (e.g. {"GIMLET_PROXY_AUTH": "user:pass"})."""

    name: str
    packages: tuple[str, ...]
    launch: Callable[[Site], None]
    refused_status: int  # its answer to CONNECT towards a closed port
    families: frozenset = BOTH_FAMILIES
    gimlet_args: tuple[str, ...] = ()
    gimlet_env: Mapping[str, str] = field(default_factory=dict)


def launch_squid(site: Site) -> None:
    d, port = site.dir, site.port
    ports = " ".join(map(str, site.target.tunnel_ports))
    lines = [
        f"http_port 127.0.0.1:{port}",
        f"http_port [::1]:{port}",
        "acl clients src 127.0.0.1/32 ::1",
        f"acl tunnel_ports port {ports}",
        # Debian's default only lets CONNECT reach 443; ssh needs the sshd port.
        "http_access deny CONNECT !tunnel_ports",
        "http_access allow clients",
        "http_access deny all",
        "cache deny all",
        "visible_hostname gimlet-interop",
        # Destinations are IP literals; never let a lookup leave loopback,
        # nor its DNS client socket listen beyond it.
        "dns_nameservers 127.0.0.1",
        "udp_incoming_address 127.0.0.1",
        "udp_outgoing_address 127.0.0.1",
        "netdb_filename none",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        f"pid_filename {d}/squid.pid",
        f"cache_log {d}/cache.log",
        f"access_log stdio:{d}/access.log",
        f"coredump_dir {d}",
    ]
    if owner := site.run_as("proxy"):
        lines += [f"cache_effective_user {owner[0]}", f"cache_effective_group {owner[1]}"]
    (d / "squid.conf").write_text("\n".join(lines) + "\n")
    site.spawn("squid", [tool("squid"), "-N", "-f", str(d / "squid.conf")])


def launch_tinyproxy(site: Site) -> None:
    d = site.dir
    lines = [
        f"Port {site.port}",
        "Listen 127.0.0.1",
        "Listen ::1",
        "Allow 127.0.0.1",
        # `Allow ::1` is not enough: tinyproxy 1.11.1 misreads an IPv6 client's
        # address once an IPv4 client has connected (tinyproxy issue #495) and
        # answers 403. Listening on loopback only keeps other hosts out.
        "Allow ::/0",
        *(f"ConnectPort {p}" for p in site.target.tunnel_ports),
        "Timeout 600",
        "MaxClients 16",
        "DisableViaHeader Yes",
        "LogLevel Info",
        f'LogFile "{d}/tinyproxy.log"',
        f'PidFile "{d}/tinyproxy.pid"',
    ]
    if owner := site.run_as("nobody"):
        lines += [f"User {owner[0]}", f"Group {owner[1]}"]
    (d / "tinyproxy.conf").write_text("\n".join(lines) + "\n")
    site.spawn("tinyproxy", [tool("tinyproxy"), "-d", "-c", str(d / "tinyproxy.conf")])


def launch_apache(site: Site) -> None:
    d, port = site.dir, site.port
    modules = ["mpm_event", "authz_core", "authz_host", "proxy", "proxy_connect"]
    lines = [
        f'ServerRoot "{d}"',
        f'DefaultRuntimeDir "{d}"',
        f'PidFile "{d}/httpd.pid"',
        f'ErrorLog "{d}/error.log"',
        "LogLevel info",
        'LogFormat "%a %r %>s %I %O" interop',
        f'CustomLog "{d}/access.log" interop',
        "ServerName localhost",
        f"Listen 127.0.0.1:{port}",
        f"Listen [::1]:{port}",
        *(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules),
        "ProxyRequests On",
        # mod_proxy_connect's default is 443 and 563 only.
        f"AllowCONNECT {' '.join(map(str, site.target.tunnel_ports))}",
        '<Proxy "*">',
        "  Require ip 127.0.0.1 ::1",
        "</Proxy>",
    ]
    if owner := site.run_as("www-data"):
        lines += [f"User {owner[0]}", f"Group {owner[1]}"]
    (d / "httpd.conf").write_text("\n".join(lines) + "\n")
    site.spawn("apache2", [tool("apache2"), "-D", "FOREGROUND", "-d", str(d),
                           "-f", str(d / "httpd.conf")])


def launch_privoxy(site: Site) -> None:
    d, port = site.dir, site.port
    # Privoxy only lets CONNECT reach 443 unless an action says otherwise.
    ports = ",".join(map(str, site.target.tunnel_ports))
    (d / "interop.action").write_text(f"{{+limit-connect{{{ports}}}}}\n/\n")
    lines = [
        f"confdir {d}",
        "actionsfile interop.action",
        # Its error pages (503 Connect failed) come from these templates.
        f"templdir {PRIVOXY_TEMPLATES}",
        f"listen-address 127.0.0.1:{port}",
        f"listen-address [::1]:{port}",
        "permit-access 127.0.0.1",
        "permit-access [::1]",
        "enable-remote-toggle 0",
        "enable-remote-http-toggle 0",
        "enable-edit-actions 0",
        "socket-timeout 600",
        "debug 1",  # with --no-daemon, the log goes to privoxy's stderr
    ]
    (d / "privoxy.conf").write_text("\n".join(lines) + "\n")
    site.spawn("privoxy", [tool("privoxy"), "--no-daemon", str(d / "privoxy.conf")])


PROXIES = [
    Proxy("squid", ("squid",), launch_squid, refused_status=503),
    Proxy("tinyproxy", ("tinyproxy",), launch_tinyproxy, refused_status=500),
    Proxy("apache", ("apache2",), launch_apache, refused_status=503),
    Proxy("privoxy", ("privoxy",), launch_privoxy, refused_status=503),
]
