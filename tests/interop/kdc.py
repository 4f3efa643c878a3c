# An MIT Kerberos realm of its own for the Negotiate rows: krb5kdc on a free
# loopback port with a temporary database, a test user with a password, the
# proxy's HTTP/<host> service principal in a keytab, and a ticket for the user
# in a temporary credential cache.
#
# Nothing outside the temporary directory is read or written: every krb5
# program gets KRB5_CONFIG, KRB5_KDC_PROFILE, KRB5_KTNAME, KRB5CCNAME (and a
# replay-cache directory) pointing into it, never /etc/krb5.conf. The proxy is
# named by a host name that resolves to 127.0.0.1 without any /etc/hosts
# change ("localhost"), and with `rdns = false` and
# `dns_canonicalize_hostname = false` the principal is HTTP/localhost exactly
# as written, with no DNS lookup.
from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from harness import Sandbox, run_ok, tool

PACKAGES = ("krb5-kdc", "krb5-admin-server", "krb5-user", "libgssapi-krb5-2")
REALM = "GIMLET.TEST"
HOST = "localhost"  # the proxy's name for gimlet; resolves to 127.0.0.1 everywhere
SERVICE = f"HTTP/{HOST}@{REALM}"
KRB_USER = "alice"
KRB_PASSWORD = "kerberos-sesame-ü"
PRINCIPAL = f"{KRB_USER}@{REALM}"
SETUP_TIMEOUT = 60


@dataclass
class Realm:
    """A running KDC and the files the proxy and gimlet need."""

    dir: Path
    port: int
    config: Path  # krb5.conf for clients, the proxy's helper and kinit
    keytab: Path  # HTTP/HOST's keys, for the proxy
    ccache: Path  # the user's ticket, once kinit() ran

    def env(self, **extra: str) -> dict[str, str]:
        """Kerberos settings for a child: this realm only, nothing from /etc."""
        return {
            "KRB5_CONFIG": str(self.config),
            "KRB5_KDC_PROFILE": str(self.dir / "kdc.conf"),
            "KRB5CCNAME": f"FILE:{self.ccache}",
            "KRB5_KTNAME": f"FILE:{self.keytab}",
            "KRB5RCACHEDIR": str(self.dir / "rcache"),
            **extra,
        }

    def kinit(self) -> None:
        """A ticket for the test user, the password given on stdin."""
        run_ok([tool("kinit"), PRINCIPAL], SETUP_TIMEOUT, "kinit",
               input=f"{KRB_PASSWORD}\n".encode(), env=dict(os.environ, **self.env()))


def ticket_with_clock_offset(env: dict[str, str], ccache: Path, seconds: int) -> None:
    """A fresh ticket in `ccache` whose header tells libkrb5 that this
    machine's clock is `seconds` off the KDC's (the time offset MIT records
    with kdc_timesync, its default): Kerberos then sees a skewed clock, or an
    expired ticket, without touching the system clock. FILE ccache format 4:
    version, header length, then tag 1 (8 bytes: seconds, microseconds)."""
    run_ok([tool("kinit"), "-c", f"FILE:{ccache}", PRINCIPAL], SETUP_TIMEOUT, "kinit",
           input=f"{KRB_PASSWORD}\n".encode(), env=env)
    data = ccache.read_bytes()
    version, header = struct.unpack(">HH", data[:4])
    if version != 0x0504:
        raise ValueError(f"{ccache}: credential cache format {version:#x}, expected 0x504")
    tag = struct.pack(">HHii", 1, 8, seconds, 0)
    ccache.write_bytes(struct.pack(">HH", version, len(tag)) + tag + data[4 + header:])


def start_realm(sandbox: Sandbox, name: str, keytab_owner: tuple[int, int] | None) -> Realm:
    """Create the realm's database and principals under a fresh directory,
    start krb5kdc on a free loopback port (stopped with the sandbox's other
    daemons), and get the user a ticket. `keytab_owner` (uid, gid) is given
    the keytab, for a proxy that drops root."""
    d = sandbox.mkdir(name)
    (d / "rcache").mkdir()
    port = sandbox.free_port()
    realm = Realm(d, port, d / "krb5.conf", d / "http.keytab", d / "ccache")
    (d / "krb5.conf").write_text("\n".join([
        "[libdefaults]",
        f"  default_realm = {REALM}",
        "  dns_lookup_kdc = false",
        "  dns_lookup_realm = false",
        "  rdns = false",
        "  dns_canonicalize_hostname = false",
        "  udp_preference_limit = 1",  # TCP: the KDC is waited for on its TCP port
        f"  default_ccache_name = FILE:{realm.ccache}",
        f"  default_keytab_name = FILE:{realm.keytab}",
        "[realms]",
        f"  {REALM} = {{",
        f"    kdc = 127.0.0.1:{port}",
        "  }",
        "[domain_realm]",
        f"  {HOST} = {REALM}",
    ]) + "\n")
    (d / "kdc.conf").write_text("\n".join([
        "[kdcdefaults]",
        f"  kdc_listen = 127.0.0.1:{port}",
        f"  kdc_tcp_listen = 127.0.0.1:{port}",
        "[realms]",
        f"  {REALM} = {{",
        f"    database_name = {d}/principal",
        f"    key_stash_file = {d}/stash",
        f"    acl_file = {d}/kadm5.acl",
        "    max_life = 1h",
        "  }",
        "[logging]",
        f"  kdc = FILE:{d}/kdc.log",
        f"  admin_server = FILE:{d}/kadmin.log",
        f"  default = FILE:{d}/krb5.log",
    ]) + "\n")
    (d / "kadm5.acl").write_text("")
    env = dict(os.environ, **realm.env())
    master = secrets.token_hex(16)
    run_ok([tool("kdb5_util"), "-r", REALM, "create", "-s", "-P", master], SETUP_TIMEOUT,
           "kdb5_util create", env=env)

    def kadmin(query: str) -> None:
        run_ok([tool("kadmin.local"), "-r", REALM, "-q", query], SETUP_TIMEOUT,
               f"kadmin.local {query.split(' -pw ')[0]}", env=env)

    kadmin(f"addprinc -pw {KRB_PASSWORD} {PRINCIPAL}")
    kadmin(f"addprinc -randkey {SERVICE}")
    kadmin(f"ktadd -k {realm.keytab} {SERVICE}")
    if keytab_owner:
        os.chown(realm.keytab, *keytab_owner)
        os.chown(d / "rcache", *keytab_owner)
    sandbox.spawn("krb5kdc", [tool("krb5kdc"), "-n", "-r", REALM, "-P", str(d / "kdc.pid")],
                  port, d, frozenset({"inet"}), env=env)
    realm.kinit()
    return realm
