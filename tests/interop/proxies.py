# The proxies the interop suite runs gimlet through: one PROXIES entry per
# matrix row, each saying which packages it needs, how to write its config and
# start it (on a given port, on loopback only), which address families it
# listens on, how it answers a CONNECT to a closed port, and what gimlet needs
# to use it: extra arguments/environment, credentials (and where gimlet reads
# them from), TLS trust for an https:// proxy.
#
# Adding a row: write a launcher `def launch_x(site: Site) -> None` that writes
# its config under site.dir and calls site.spawn(...) so that something accepts
# on site.port (a chain such as stunnel in front of squid first launches the
# back end with dataclasses.replace(site, port=site.sandbox.free_port())), then
# add a Proxy(...) to PROXIES. Reuse a launcher with extra settings through a
# parameter and functools.partial rather than copying it.
from __future__ import annotations

import grp
import hashlib
import os
import pwd
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import kdc
from harness import BOTH_FAMILIES, IS_ROOT, Failed, Sandbox, run_ok, tool
from pki import certificate
from target import Target

APACHE_MODULES = Path("/usr/lib/apache2/modules")
PRIVOXY_TEMPLATES = Path("/etc/privoxy/templates")  # shipped data, read only
SQUID_HELPERS = Path("/usr/lib/squid")
REALM = "gimlet-interop"

USER = "alice"
# Every kind of character the credential parsers could trip on: ':' (the
# user:password separator), '@' (ends URL userinfo), '$' (shells), a space,
# and non-ASCII (UTF-8 in Basic, Digest and NTLM alike).
PASSWORD = "ope:n@$ sesame-ü€"
# tinyproxy 1.11's config grammar takes BasicAuth words of [-A-Za-z0-9._]
# only, quoted or not (anything else is "Syntax error on line N").
TINYPROXY_PASSWORD = "open-Sesame_1.0"
NTLM_USER = "CORP\\alice"


@dataclass
class Site:
    """What a launcher gets: where to write, which port to serve, what to allow."""

    sandbox: Sandbox
    dir: Path
    port: int
    target: Target
    families: frozenset
    # Hops after this row's own proxy, as URLs, for chain rows (gimlet gets `-p` for each).
    hops: list[str] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        """Start the daemon (with `env` added to its environment) and wait
        until it accepts on the site's port."""
        self.sandbox.spawn(name, argv, self.port, self.dir, self.families,
                           env=dict(os.environ, **env) if env else None)

    def run_as(self, user: str) -> tuple[str, str] | None:
        """When started as root, the daemon should switch to `user`: hand it
        the site directory and return (user, group) for its config."""
        if not IS_ROOT:
            return None
        entry = pwd.getpwnam(user)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        return user, grp.getgrgid(entry.pw_gid).gr_name


@dataclass(frozen=True)
class Credentials:
    """The row's proxy credentials and where gimlet finds them (`via`):
    "-U" (-U USER:PASSWORD), "url" (percent-encoded userinfo of the proxy URL),
    "file" (--proxy-auth-file), "env" (GIMLET_PROXY_AUTH), "netrc"
    (--netrc-file) or "askpass" (-U USER, the password from GIMLET_ASKPASS).
    `scheme` is given as --proxy-auth when set. `wrong` is the (user, password)
    the proxy must refuse; by default the user with another password."""

    user: str
    password: str
    via: str
    scheme: str | None = None
    wrong: tuple[str, str] | None = None

    def refused(self) -> Credentials:
        user, password = self.wrong or (self.user, "not-the-password")
        return replace(self, user=user, password=password)


@dataclass(frozen=True)
class Tls:
    """An https:// proxy. `trust` are the gimlet options that make its
    certificate acceptable, `base` options always given; without `trust`,
    gimlet must exit 8 saying `rejected`. `warning` is what gimlet must print
    on stderr even when it succeeds (--proxy-insecure). "{pki}" in an option
    stands for the test PKI's directory (pki.py)."""

    trust: tuple[str, ...]
    rejected: str
    base: tuple[str, ...] = ()
    warning: str | None = None


CA_TRUST = ("--proxy-cacert", "{pki}/ca.pem")
VERIFIED = Tls(trust=CA_TRUST, rejected="unknown authority")
NOT_THROUGH_TLS = {
    "coalesced": "coalesce.py splits plain HTTP; it cannot see the reply head inside TLS",
}


@dataclass(frozen=True)
class Proxy:
    """One matrix row. gimlet_args go before gimlet's positional arguments
    (e.g. ("-A", "agent")); gimlet_env is added to the environment of ssh, git
    and gimlet ("{sandbox}" in a value stands for the sandbox's directory). A
    row with `credentials` or `tls` is reached through a proxy URL
    (http://user:pass@…, https://…). `host` is the name gimlet is given for
    the proxy on 127.0.0.1 instead of the address (Kerberos names services by
    host name); `kerberos` rows authenticate with a ticket from kdc.py. `auth_log` is (file in the proxy's
    directory, text) naming the authenticated user once a tunnel closed;
    `auth_refused_status` is the proxy's answer to wrong credentials. `skip`
    maps a check that cannot apply to the row to the reason."""

    name: str
    packages: tuple[str, ...]
    launch: Callable[[Site], None]
    refused_status: int  # its answer to CONNECT towards a closed port
    families: frozenset = BOTH_FAMILIES
    gimlet_args: tuple[str, ...] = ()
    gimlet_env: Mapping[str, str] = field(default_factory=dict)
    credentials: Credentials | None = None
    tls: Tls | None = None
    auth_log: tuple[str, str] | None = None
    auth_refused_status: int = 407
    skip: Mapping[str, str] = field(default_factory=dict)
    host: str | None = None
    kerberos: bool = False
    readme: bool = False
    # SOCKS rows: the URL scheme of the row's proxy ("socks5h", ...).
    scheme: str | None = None
    # What gimlet's stderr must match for the refused check instead of the HTTP status line.
    refused_text: str | None = None
    # What the refusal of wrong credentials must say instead of f"{auth_refused_status} ".
    auth_refused_text: str | None = None
    # The proxy comes from the environment (gimlet_env), not the command line: gimlet %h %p.
    from_env: bool = False
    # (file in the proxy's directory, text) the ssh check waits for once its tunnel closed.
    proxy_log: tuple[str, str] | None = None

    @property
    def features(self) -> frozenset:
        """What checks can ask of the row (Check.needs): its address
        families, "auth" with credentials, "tls" for an https:// proxy and
        "plain" for the others; "readme" on the rows that run the README's
        ssh recipes."""
        return (self.families | ({"auth"} if self.credentials else set())
                | ({"tls"} if self.tls else {"plain"})
                | ({"kerberos"} if self.kerberos else set())
                | ({"readme"} if self.readme else set())
                | ({"env"} if self.from_env else set())
                | ({"h2"} if "--proxy-http2" in self.gimlet_args else set()))


def htpasswd(path: Path, user: str, password: str) -> None:
    """An Apache password file (MD5 "$apr1$" hash) holding one user; the
    password goes through stdin, not the command line."""
    run_ok(["htpasswd", "-i", "-c", "-m", str(path), user], 30, "htpasswd",
           input=password.encode())


def squid_auth(d: Path, scheme: str, password: str | None) -> list[str]:
    """squid.conf lines offering one scheme, with the helper's password file."""
    lines = []
    if scheme == "basic":
        htpasswd(d / "basic.passwd", USER, password)
        lines.append(f"auth_param basic program {SQUID_HELPERS}/basic_ncsa_auth {d}/basic.passwd")
    elif scheme == "digest":
        # digest_file_auth splits lines at every ':', so a plaintext
        # "user:password" entry cannot hold one; "user:realm:{HHA1}MD5" can.
        ha1 = hashlib.md5(f"{USER}:{REALM}:{password}".encode()).hexdigest()
        (d / "digest.passwd").write_text(f"{USER}:{REALM}:{{HHA1}}{ha1}\n")
        lines.append(f"auth_param digest program {SQUID_HELPERS}/digest_file_auth {d}/digest.passwd")
    elif scheme == "ntlm":
        # Accepts any password: the user ACL below is what refuses someone.
        lines.append(f"auth_param ntlm program {SQUID_HELPERS}/ntlm_fake_auth")
    elif scheme == "negotiate":
        # `password` is the keytab holding the proxy's service key.
        lines += [f"auth_param negotiate program {SQUID_HELPERS}/negotiate_kerberos_auth "
                  f"-k {password} -s {kdc.SERVICE}",
                  "auth_param negotiate keep_alive on"]
    else:
        raise ValueError(scheme)
    if scheme not in ("ntlm", "negotiate"):
        lines.append(f"auth_param {scheme} realm {REALM}")
    return lines + [f"auth_param {scheme} children 3 startup=1 idle=1"]


def launch_squid(site: Site, auth: tuple[tuple[str, str | None], ...] = (), user: str = USER,
                 https: str | None = None, env: Mapping[str, str] | None = None,
                 extra_ports: tuple[int, ...] = ()) -> None:
    """squid on plain HTTP, or with `https` (a pki.py certificate name) on
    https_port. `auth` is ((scheme, password), ...) in the order squid offers
    them; only `user` (space-separated names) is let through. `env` is added
    to its environment (and so its helpers')."""
    d, port = site.dir, site.port
    # extra_ports: the next hop of a chain, which CONNECT must reach too.
    ports = " ".join(map(str, [*site.target.tunnel_ports, *extra_ports]))
    owner = site.run_as("proxy")
    if https:
        cert, key = certificate(site.sandbox, https)
        listen = [f"https_port {addr}:{port} tls-cert={cert} tls-key={key}"
                  for addr in ("127.0.0.1", "[::1]")]
    else:
        listen = [f"http_port 127.0.0.1:{port}", f"http_port [::1]:{port}"]
    lines = [
        *listen,
        *(line for scheme, password in auth for line in squid_auth(d, scheme, password)),
        "acl clients src 127.0.0.1/32 ::1",
        f"acl tunnel_ports port {ports}",
        # Debian's default only lets CONNECT reach 443; ssh needs the sshd port.
        "http_access deny CONNECT !tunnel_ports",
        "http_access deny !clients",
    ]
    if auth:
        # Denying on a proxy_auth ACL makes squid answer 407, asking again.
        lines += [f"acl users proxy_auth {user}", "http_access deny !users"]
    lines += [
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
    if owner:
        lines += [f"cache_effective_user {owner[0]}", f"cache_effective_group {owner[1]}"]
    (d / "squid.conf").write_text("\n".join(lines) + "\n")
    site.spawn("squid", [tool("squid"), "-N", "-f", str(d / "squid.conf")], env)


def launch_squid_kerberos(site: Site, auth: tuple[tuple[str, str | None], ...] = (),
                          user: str = kdc.PRINCIPAL) -> None:
    """A realm of its own from kdc.py (in the sandbox's kdc-ROW directory, see
    kerberos_env), then squid offering Negotiate with negotiate_kerberos_auth
    and the proxy's keytab, before the schemes in `auth`; CONNECT may reach its
    own port, to be both hops of a chain."""
    owner = site.run_as("proxy")
    ids = (pwd.getpwnam(owner[0]).pw_uid, grp.getgrnam(owner[1]).gr_gid) if owner else None
    realm = kdc.start_realm(site.sandbox, f"kdc-{site.dir.name}", ids)
    launch_squid(site, auth=(("negotiate", str(realm.keytab)), *auth), user=user,
                 env=realm.env(), extra_ports=(site.port,))


def kerberos_env(row: str) -> dict[str, str]:
    """gimlet's Kerberos settings for a launch_squid_kerberos row: the realm's
    krb5.conf and the user's ticket, never /etc/krb5.conf."""
    return {"KRB5_CONFIG": f"{{sandbox}}/kdc-{row}/krb5.conf",
            "KRB5CCNAME": f"FILE:{{sandbox}}/kdc-{row}/ccache"}


def launch_tinyproxy(site: Site, basic_auth: tuple[str, str] | None = None,
                     extra_ports: tuple[int, ...] = ()) -> None:
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
        *(f"ConnectPort {p}" for p in [*site.target.tunnel_ports, *extra_ports]),
        "Timeout 600",
        "MaxClients 16",
        "DisableViaHeader Yes",
        "LogLevel Info",
        f'LogFile "{d}/tinyproxy.log"',
        f'PidFile "{d}/tinyproxy.pid"',
    ]
    if basic_auth:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    if owner := site.run_as("nobody"):
        lines += [f"User {owner[0]}", f"Group {owner[1]}"]
    (d / "tinyproxy.conf").write_text("\n".join(lines) + "\n")
    site.spawn("tinyproxy", [tool("tinyproxy"), "-d", "-c", str(d / "tinyproxy.conf")])


def launch_apache(site: Site, auth: tuple[str, str, str] | None = None) -> None:
    """apache2's mod_proxy_connect, and mod_proxy_http for absolute-form
    requests (what gimlet -D sends for http:// URLs); `auth` is (scheme, user,
    password) with scheme "basic" or "digest"."""
    d, port = site.dir, site.port
    modules = ["mpm_event", "authz_core", "authz_host", "proxy", "proxy_connect", "proxy_http"]
    access = ["  Require ip 127.0.0.1 ::1"]
    if auth:
        scheme, user, password = auth
        modules += ["authn_core", "authn_file", f"auth_{scheme}", "authz_user"]
        if scheme == "basic":
            htpasswd(d / "passwd", user, password)
        else:  # htdigest's format; htdigest itself only reads a terminal
            ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
            (d / "passwd").write_text(f"{user}:{REALM}:{ha1}\n")
        # In a <Proxy> section mod_auth_basic and mod_auth_digest ask with 407
        # and Proxy-Authenticate, and read Proxy-Authorization.
        access = [
            f"  AuthType {scheme.capitalize()}",
            f'  AuthName "{REALM}"',
            f"  Auth{scheme.capitalize()}Provider file",
            f'  AuthUserFile "{d}/passwd"',
            "  <RequireAll>",
            "    Require ip 127.0.0.1 ::1",
            "    Require valid-user",
            "  </RequireAll>",
        ]
    lines = [
        f'ServerRoot "{d}"',
        f'DefaultRuntimeDir "{d}"',
        f'PidFile "{d}/httpd.pid"',
        f'ErrorLog "{d}/error.log"',
        "LogLevel info",
        'LogFormat "%a %u %r %>s %I %O" interop',
        f'CustomLog "{d}/access.log" interop',
        "ServerName localhost",
        f"Listen 127.0.0.1:{port}",
        f"Listen [::1]:{port}",
        *(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules),
        "ProxyRequests On",
        # mod_proxy_connect's default is 443 and 563 only.
        f"AllowCONNECT {' '.join(map(str, site.target.tunnel_ports))}",
        '<Proxy "*">',
        *access,
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


def launch_stunnel(site: Site, backend: Callable[[Site], None] = launch_squid,
                   cert: str = "localhost") -> None:
    """stunnel terminating TLS on site.port (both loopbacks) with a pki.py
    certificate, relaying to `backend` launched on a port of its own."""
    back = replace(site, port=site.sandbox.free_port(), families=frozenset({"inet"}))
    backend(back)
    d = site.dir
    cert_file, key_file = certificate(site.sandbox, cert)
    lines = [
        "foreground = yes",  # and log to stderr, which the harness keeps
        "syslog = no",
        f"pid = {d}/stunnel.pid",
        "debug = notice",
    ]
    for family, accept in (("inet", f"127.0.0.1:{site.port}"), ("inet6", f"::1:{site.port}")):
        if family in site.families:
            lines += [f"[front-{family}]", f"accept = {accept}",
                      f"connect = 127.0.0.1:{back.port}",
                      f"cert = {cert_file}", f"key = {key_file}"]
    (d / "stunnel.conf").write_text("\n".join(lines) + "\n")
    site.spawn("stunnel", [tool("stunnel"), str(d / "stunnel.conf")])


def launch_nghttpx(site: Site, backend: Callable[[Site], None] = launch_squid,
                   cert: str = "localhost") -> None:
    """nghttpx --http2-proxy: TLS on site.port (both loopbacks, ALPN h2 and
    http/1.1) with a pki.py certificate, each CONNECT sent on as HTTP/1.1 to
    `backend` (a forward proxy) on a port of its own. Its access log records
    the ALPN protocol of every request (h2 or http/1.1)."""
    back = replace(site, port=site.sandbox.free_port(), families=frozenset({"inet"}))
    backend(back)
    d = site.dir
    cert_file, key_file = certificate(site.sandbox, cert)
    fronts = [f"--frontend={host},{site.port}"
              for family, host in (("inet", "127.0.0.1"), ("inet6", "::1"))
              if family in site.families]
    site.spawn("nghttpx", [
        tool("nghttpx"), "--conf=/dev/null", "--http2-proxy", "--workers=1", "--no-ocsp",
        # Its default of 8 backend connections per origin would queue the h2-mux check's
        # 100 concurrent tunnels to one destination behind the first 8; and its 100 streams
        # per connection leave no room for the tunnel of the harness's readiness probe.
        "--backend-connections-per-host=128", "--frontend-http2-max-concurrent-streams=128",
        *fronts, f"--backend=127.0.0.1,{back.port}",
        f"--errorlog-file={d}/nghttpx.log", f"--accesslog-file={d}/nghttpx-access.log",
        "--accesslog-format=$alpn $method $status $remote_addr $remote_port",
        str(key_file), str(cert_file)])


README_PASSWORD = "p@ss"
README_SKIP = {check: "squid-basic covers it; this row is for the README's recipes"
               for check in ("ssh-v6", "coalesced", "git-push", "bulk-down", "bulk-up",
                             "refused", "fdpass", "tls-echo")}
# dante's username method checks system accounts (getpwnam, crypt against the
# shadow entry). The suite makes one throwaway account for the row, marked in
# its GECOS field, with no home and no login shell, and deletes it when the
# row's daemons stop (also on failure and Ctrl-C: the Sandbox stops them).
SOCKS_USER = "gimletsocks"
SOCKS_GECOS = "gimlet interop throwaway SOCKS user"
SOCKS_PASSWORD = "ope:n@$ sesame-1"


class _RemoveUser:
    """Stands in the sandbox's daemon list so that the account goes with the row."""

    name = "userdel"

    def __init__(self, user: str):
        self.user = user

    def stop(self) -> None:
        run_ok(["userdel", self.user], 30, "userdel")


def throwaway_user(site: Site, user: str, password: str) -> None:
    if not IS_ROOT:
        raise Failed("dante's username method checks system accounts: run as root")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        entry = None
    if entry and entry.pw_gecos != SOCKS_GECOS:
        raise Failed(f"a user {user} exists and is not the suite's: not touching it")
    if entry is None:
        run_ok(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                "--comment", SOCKS_GECOS, user], 30, "useradd")
    site.sandbox.daemons.append(_RemoveUser(user))
    run_ok(["chpasswd"], 30, "chpasswd", input=f"{user}:{password}\n".encode())


def launch_dante(site: Site, user: tuple[str, str] | None = None) -> None:
    """danted in the foreground on both loopbacks; with `user` (name, password),
    socksmethod username against a throwaway system account."""
    d, port = site.dir, site.port
    if user:
        throwaway_user(site, *user)
    method = "username" if user else "none"
    lines = [
        "logoutput: stderr",
        f"internal: 127.0.0.1 port = {port}",
        f"internal: ::1 port = {port}",
        "external: lo",
        "clientmethod: none",
        f"socksmethod: {method}",
        *(["user.privileged: root", "user.unprivileged: nobody"] if IS_ROOT else []),
        *(f"client pass {{ from: {src} to: {dst} }}"
          for src in ("127.0.0.0/8", "::1/128") for dst in ("0.0.0.0/0", "::/0")),
        # Either family of client to either family of destination (a chain's next hop is
        # on 127.0.0.1 whichever loopback gimlet came from).
        *(f"socks pass {{ from: {src} to: {dst} command: connect }}"
          for src in ("127.0.0.0/8", "::1/128") for dst in ("0.0.0.0/0", "::/0")),
    ]
    (d / "danted.conf").write_text("\n".join(lines) + "\n")
    site.spawn("danted", [tool("danted"), "-f", str(d / "danted.conf"), "-p", str(d / "danted.pid")])


def launch_ssh_dynamic(site: Site) -> None:
    """ssh -D on both loopbacks, logged in to the suite's sshd: OpenSSH's own SOCKS proxy."""
    t = site.target
    site.spawn("ssh-D", ["ssh", "-F", str(t.ssh_config), "-N", "-o", "ExitOnForwardFailure=yes",
                         "-D", f"127.0.0.1:{site.port}", "-D", f"[::1]:{site.port}",
                         "-p", str(t.port), "127.0.0.1"])


def launch_chain(site: Site, first: Callable[..., None], then: Callable[..., None],
                 then_url: str) -> None:
    """Two proxies in a chain: `then` on a port of its own (its URL `then_url`
    with "{port}"), `first` on the row's port, allowed to CONNECT to `then`."""
    back = replace(site, port=site.sandbox.free_port(), dir=site.sandbox.mkdir(f"{site.dir.name}-2"))
    then(back)
    first(site, extra_ports=(back.port,))
    site.hops.append(then_url.format(port=back.port))


def launch_stunnel_chain(site: Site) -> None:
    """A TLS front (stunnel, test CA) before squid, then apache as hop 2."""
    back = replace(site, port=site.sandbox.free_port(), dir=site.sandbox.mkdir(f"{site.dir.name}-2"))
    launch_apache(back)
    launch_stunnel(site, backend=partial(launch_squid, extra_ports=(back.port,)))
    site.hops.append(f"http://127.0.0.1:{back.port}")


def launch_nghttpx_chain(site: Site, extra_ports: tuple[int, ...] = ()) -> None:
    """nghttpx in front of squid, squid allowed to CONNECT to the chain's next hop."""
    launch_nghttpx(site, backend=partial(launch_squid, extra_ports=extra_ports))


def launch_dante_chain(site: Site, extra_ports: tuple[int, ...] = ()) -> None:
    launch_dante(site)


SQUID_USER_LOG = ("access.log", f" {USER} ")
APACHE_USER_LOG = ("access.log", f" {USER} CONNECT ")
SQUID_TLS = ("squid", "stunnel4", "openssl")
NGHTTPX_NO_HALF_CLOSE = ("nghttpx does not pass END_STREAM on to its HTTP/1 backend, so gimlet alone "
                         "cannot end a tunnel to sshd by closing stdin")
H2_PACKAGES = ("squid", "nghttp2-proxy", "openssl")
H2_LOG = ("nghttpx-access.log", "h2 CONNECT 200")
H2_SKIP = {**NOT_THROUGH_TLS,
           # nghttpx 1.52 does not pass a CONNECT stream's END_STREAM on to its HTTP/1
           # backend as a half-close (the backend socket stays open), so sshd never sees
           # gimlet's stdin end: the gimlet-alone step these checks start with waits forever.
           # ssh, git and the bulk checks end from the server's side and run.
           "tls-verify": NGHTTPX_NO_HALF_CLOSE,
           "auth": NGHTTPX_NO_HALF_CLOSE}
H2_FIRST_HOP = ("https+h2:// before a chain's last hop is refused in the listen modes "
                "(HTTP/2 goes to the last hop there)")
H2_CHAIN_SKIP = {**H2_SKIP, **{check: H2_FIRST_HOP
                               for check in ("listen", "listen-reload", "dynamic", "browser")}}
KERBEROS_SKIP = {"ssh-v6": "the service principal names the proxy localhost, 127.0.0.1 only"}

PROXIES = [
    Proxy("squid", ("squid",), launch_squid, refused_status=503, readme=True),
    Proxy("tinyproxy", ("tinyproxy",), launch_tinyproxy, refused_status=500),
    Proxy("apache", ("apache2",), launch_apache, refused_status=503),
    Proxy("privoxy", ("privoxy",), launch_privoxy, refused_status=503),
    # Authentication: each row takes its credentials from another source.
    Proxy("squid-basic", ("squid", "apache2-utils"),
          partial(launch_squid, auth=(("basic", PASSWORD),)), refused_status=503,
          credentials=Credentials(USER, PASSWORD, "file"), auth_log=SQUID_USER_LOG),
    Proxy("squid-digest", ("squid",),
          partial(launch_squid, auth=(("digest", PASSWORD),)), refused_status=503,
          credentials=Credentials(USER, PASSWORD, "env"), auth_log=SQUID_USER_LOG),
    Proxy("squid-ntlm", ("squid",),
          partial(launch_squid, auth=(("ntlm", None),), user=NTLM_USER), refused_status=503,
          credentials=Credentials(NTLM_USER, PASSWORD, "-U", wrong=("CORP\\mallory", PASSWORD)),
          auth_log=("access.log", " CORP\\\\alice ")),  # squid escapes the backslash
    # Basic is offered first and knows another password: only Digest, the
    # stronger scheme, can get through.
    Proxy("squid-digest+basic", ("squid", "apache2-utils"),
          partial(launch_squid, auth=(("basic", "only-basic-knows-this"), ("digest", PASSWORD))),
          refused_status=503, credentials=Credentials(USER, PASSWORD, "netrc"),
          auth_log=SQUID_USER_LOG),
    # The README's example credentials, for its recipes (the readme check) as
    # written: alice / p@ss, p%%40ss in a ProxyCommand's URL.
    Proxy("squid-readme", ("squid", "apache2-utils"),
          partial(launch_squid, auth=(("basic", README_PASSWORD),)), refused_status=503,
          credentials=Credentials(USER, README_PASSWORD, "url"), auth_log=SQUID_USER_LOG,
          readme=True, skip=README_SKIP),
    # tinyproxy answers wrong credentials with 401 (and closes after its 407).
    Proxy("tinyproxy-basic", ("tinyproxy",),
          partial(launch_tinyproxy, basic_auth=(USER, TINYPROXY_PASSWORD)), refused_status=500,
          credentials=Credentials(USER, TINYPROXY_PASSWORD, "askpass"), auth_refused_status=401),
    Proxy("apache-basic", ("apache2", "apache2-utils"),
          partial(launch_apache, auth=("basic", USER, PASSWORD)), refused_status=503,
          credentials=Credentials(USER, PASSWORD, "url"), auth_log=APACHE_USER_LOG),
    # --proxy-auth digest: only Digest is accepted.
    Proxy("apache-digest", ("apache2",),
          partial(launch_apache, auth=("digest", USER, PASSWORD)), refused_status=503,
          credentials=Credentials(USER, PASSWORD, "-U", scheme="digest"), auth_log=APACHE_USER_LOG),
    # TLS to the proxy.
    Proxy("squid-https", ("squid", "openssl"), partial(launch_squid, https="localhost"),
          refused_status=503, tls=VERIFIED, skip=NOT_THROUGH_TLS),
    Proxy("stunnel-squid", SQUID_TLS, launch_stunnel, refused_status=503, tls=VERIFIED,
          skip=NOT_THROUGH_TLS),
    # --proxy-auth basic: credentials with the first CONNECT, no 407 first.
    Proxy("stunnel-squid-basic", (*SQUID_TLS, "apache2-utils"),
          partial(launch_stunnel, backend=partial(launch_squid, auth=(("basic", PASSWORD),))),
          refused_status=503, tls=VERIFIED, skip=NOT_THROUGH_TLS,
          credentials=Credentials(USER, PASSWORD, "-U", scheme="basic"), auth_log=SQUID_USER_LOG),
    # Its certificate (from the test CA) names other.example only.
    Proxy("stunnel-othername", SQUID_TLS, partial(launch_stunnel, cert="other"),
          refused_status=503, skip=NOT_THROUGH_TLS,
          tls=Tls(base=CA_TRUST, trust=("--proxy-servername", "other.example"),
                  rejected="not valid for")),
    Proxy("stunnel-selfsigned", SQUID_TLS, partial(launch_stunnel, cert="selfsigned"),
          refused_status=503, skip=NOT_THROUGH_TLS,
          tls=Tls(trust=("--proxy-insecure",), rejected="unknown authority",
                  warning="--proxy-insecure")),
    # --proxy-http2: CONNECT over h2 to nghttpx (Debian's nghttp2-proxy), squid behind it;
    # nghttpx's access log must show h2 (`h2 CONNECT 200`) for every tunnel.
    Proxy("nghttpx-squid", H2_PACKAGES, launch_nghttpx, refused_status=503, tls=VERIFIED,
          gimlet_args=("--proxy-http2",), skip=H2_SKIP, proxy_log=H2_LOG,
          refused_text=r'"HTTP/2 503"'),
    Proxy("nghttpx-squid-basic", (*H2_PACKAGES, "apache2-utils"),
          partial(launch_nghttpx, backend=partial(launch_squid, auth=(("basic", PASSWORD),))),
          refused_status=503, tls=VERIFIED, gimlet_args=("--proxy-http2",), skip=H2_SKIP,
          proxy_log=H2_LOG, credentials=Credentials(USER, PASSWORD, "-U"),
          auth_log=SQUID_USER_LOG, refused_text=r'"HTTP/2 503"'),
    # Kerberos: a KDC on loopback, the user's ticket from kinit. Negotiate only,
    # and --proxy-auth negotiate.
    Proxy("squid-negotiate", ("squid", *kdc.PACKAGES), launch_squid_kerberos,
          refused_status=503, host=kdc.HOST, kerberos=True, skip=KERBEROS_SKIP,
          gimlet_args=("--proxy-auth", "negotiate"), gimlet_env=kerberos_env("squid-negotiate")),
    # Negotiate, NTLM and Basic offered: `any` must take Negotiate while there
    # is a ticket, NTLM (the password) without one.
    Proxy("squid-negotiate+ntlm+basic", ("squid", "apache2-utils", *kdc.PACKAGES),
          partial(launch_squid_kerberos, auth=(("ntlm", None), ("basic", PASSWORD)),
                  user=f"{kdc.PRINCIPAL} {NTLM_USER}"),
          refused_status=503, host=kdc.HOST, kerberos=True,
          credentials=Credentials(NTLM_USER, PASSWORD, "-U"),
          gimlet_env=kerberos_env("squid-negotiate+ntlm+basic"),
          skip={**KERBEROS_SKIP,
                "auth": "a ticket gets through whatever the password; the kerberos check "
                        "covers refusals and the fall-back to NTLM"}),
    # Routes: SOCKS hops, chains and the proxy from the environment.
    Proxy("dante", ("dante-server",), launch_dante, refused_status=0, scheme="socks5h",
          refused_text=r"connection refused by destination host \(SOCKS5 reply 0x05\)",
          skip={"coalesced": "coalesce.py splits HTTP reply heads"}),
    Proxy("dante-socks4a", ("dante-server",), launch_dante, refused_status=0, scheme="socks4a",
          refused_text=r"request rejected or failed \(SOCKS4 reply 91\)",
          skip={"coalesced": "coalesce.py splits HTTP reply heads",
                "ssh-v6": "SOCKS4 carries IPv4 addresses only"}),
    Proxy("dante-user", ("dante-server", "passwd"),
          partial(launch_dante, user=(SOCKS_USER, SOCKS_PASSWORD)), refused_status=0,
          scheme="socks5", refused_text=r"SOCKS5 reply 0x05",
          credentials=Credentials(SOCKS_USER, SOCKS_PASSWORD, "url"),
          auth_refused_text="rejected the user name and password for",
          skip={"coalesced": "coalesce.py splits HTTP reply heads"}),
    # OpenSSH closes the SOCKS connection without a reply when the destination refuses.
    Proxy("ssh-D", (), launch_ssh_dynamic, refused_status=0, scheme="socks5h",
          refused_text=r"closed the connection without replying to the request",
          skip={"coalesced": "coalesce.py splits HTTP reply heads"}),
    Proxy("squid>tinyproxy", ("squid", "tinyproxy"),
          partial(launch_chain, first=launch_squid, then=launch_tinyproxy,
                  then_url="http://127.0.0.1:{port}"), refused_status=500,
          skip={"coalesced": "coalesce.py holds hop 1's 200 until the server speaks, but "
                             "hop 2 waits for gimlet's CONNECT"}),
    Proxy("dante>squid", ("dante-server", "squid"),
          partial(launch_chain, first=launch_dante_chain, then=launch_squid,
                  then_url="http://127.0.0.1:{port}"),
          refused_status=503, scheme="socks5h",
          skip={"coalesced": "coalesce.py splits HTTP reply heads"}),
    Proxy("stunnel-squid>apache", (*SQUID_TLS, "apache2"), launch_stunnel_chain,
          refused_status=503, tls=VERIFIED, skip=NOT_THROUGH_TLS),
    # https+h2:// as hop 1 (no --proxy-http2): hop 2's CONNECT and everything after it run
    # inside nghttpx's h2 CONNECT stream.
    Proxy("nghttpx-squid>tinyproxy", (*H2_PACKAGES, "tinyproxy"),
          partial(launch_chain, first=launch_nghttpx_chain, then=launch_tinyproxy,
                  then_url="http://127.0.0.1:{port}"),
          refused_status=500, tls=VERIFIED, scheme="https+h2", skip=H2_CHAIN_SKIP,
          proxy_log=H2_LOG),
    # gimlet %h %p: HTTPS_PROXY names squid, NO_PROXY sends localhost direct.
    Proxy("env-squid", ("squid",), launch_squid, refused_status=503, from_env=True,
          gimlet_env={"HTTPS_PROXY": "http://127.0.0.1:{port}", "NO_PROXY": "localhost"}),
]
