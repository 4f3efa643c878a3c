# The far end of every tunnel: an sshd on loopback with its own host key and
# an authorized client key for the current user, the ssh client config that
# pins that host key, a bare git repository of a few MB with its expected
# checkout, and the random blob the bulk checks send both ways.
from __future__ import annotations

import hashlib
import os
import pwd
import random
from dataclasses import dataclass
from pathlib import Path

from harness import IS_ROOT, Failed, Sandbox, run_ok, tool

HOST_KEY_ALIAS = "gimlet-interop-sshd"
SEED_FILES_MIB = 4  # random (incompressible) data in the repository
COMMIT_TIME = "1700000000 +0000"


@dataclass
class Target:
    port: int
    closed_port: int  # proxies allow CONNECT to it, but nothing listens there
    echo_port: int  # for a TLS echo service the tls-echo check starts there
    user: str
    ssh_config: Path
    repo: Path  # bare repository
    head: str  # commit a clone must check out
    manifest: dict[str, str]  # path -> sha256 of the expected checkout
    blob: Path
    blob_sha256: str
    blob_size: int
    git_env: dict[str, str]  # isolates git from the user's and system config
    web_port: int = 0  # for the HTTPS page the dynamic checks serve (gimlet -D)

    @property
    def tunnel_ports(self) -> list[int]:
        """Ports every proxy must let CONNECT reach."""
        return [self.port, self.closed_port, self.echo_port, self.web_port]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checkout_manifest(tree: Path) -> dict[str, str]:
    """sha256 of every file of a work tree, keyed by relative path, minus .git."""
    manifest = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath, name)
            manifest[str(path.relative_to(tree))] = sha256_file(path)
    return manifest


def git_environment(sandbox: Sandbox) -> dict[str, str]:
    config = sandbox.root / "gitconfig"
    config.write_text(
        "[user]\n\tname = gimlet interop\n\temail = interop@example.invalid\n"
        "[init]\n\tdefaultBranch = main\n"
        "[advice]\n\tdetachedHead = false\n"
    )
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(config),
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_DATE=COMMIT_TIME,
        GIT_COMMITTER_DATE=COMMIT_TIME,
    )
    return env


def make_repository(sandbox: Sandbox, env: dict[str, str]) -> tuple[Path, str, dict[str, str]]:
    """A bare repository with three commits of random binary and text files."""
    seed = sandbox.mkdir("seed")
    rng = random.Random(0x6171)
    git = ["git", "-C", str(seed)]
    run_ok(git + ["init", "-q"], 60, "git init", env=env)
    chunk = SEED_FILES_MIB * (1 << 20) // 6
    (seed / "data").mkdir()
    for commit in range(3):
        for n in range(2):
            (seed / "data" / f"blob-{commit}-{n}.bin").write_bytes(rng.randbytes(chunk))
        lines = "".join(f"line {i} of commit {commit}\n" for i in range(2000))
        (seed / "notes.txt").write_text(lines)
        run_ok(git + ["add", "-A"], 60, "git add", env=env)
        run_ok(git + ["commit", "-q", "-m", f"commit {commit}"], 60, "git commit", env=env)
    head = run_ok(git + ["rev-parse", "HEAD"], 60, "git rev-parse", env=env).stdout.decode().strip()
    repo = sandbox.root / "repo.git"
    run_ok(["git", "clone", "-q", "--bare", str(seed), str(repo)], 60, "git clone --bare", env=env)
    return repo, head, checkout_manifest(seed)


def make_blob(sandbox: Sandbox, mib: int) -> tuple[Path, str]:
    blob = sandbox.root / "blob.bin"
    digest = hashlib.sha256()
    with open(blob, "wb") as f:
        for _ in range(mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return blob, digest.hexdigest()


def start_sshd(sandbox: Sandbox, user: str) -> tuple[int, Path]:
    """Start sshd on both loopbacks; return its port and an ssh_config for it."""
    d = sandbox.mkdir("sshd")
    host_key, client_key = d / "host_ed25519", d / "client_ed25519"
    for key in (host_key, client_key):
        run_ok(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
               60, "ssh-keygen")
    (d / "authorized_keys").write_bytes(client_key.with_suffix(".pub").read_bytes())
    host_pub = host_key.with_suffix(".pub").read_text().split()
    (d / "known_hosts").write_text(f"{HOST_KEY_ALIAS} {host_pub[0]} {host_pub[1]}\n")

    port = sandbox.free_port()
    config = d / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1:{port}
ListenAddress [::1]:{port}
HostKey {host_key}
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AcceptEnv GIT_PROTOCOL
MaxStartups 64
LogLevel VERBOSE
""")
    if IS_ROOT:
        # Privilege separation directory sshd insists on (normally made by
        # its systemd unit, which this suite does not use).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    sandbox.spawn("sshd", [tool("sshd"), "-D", "-e", "-f", str(config)], port, d)

    # LogLevel INFO, not ERROR: ssh reports a corrupted stream (bad MAC) at INFO.
    ssh_config = d / "ssh_config"
    ssh_config.write_text(f"""\
Host *
  User {user}
  IdentityFile {client_key}
  IdentitiesOnly yes
  IdentityAgent none
  HostKeyAlias {HOST_KEY_ALIAS}
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  UpdateHostKeys no
  CheckHostIP no
  BatchMode yes
  ControlMaster no
  ControlPath none
  LogLevel INFO
""")
    return port, ssh_config


def build_target(sandbox: Sandbox, bulk_mib: int) -> Target:
    user = pwd.getpwuid(os.getuid()).pw_name
    env = git_environment(sandbox)
    repo, head, manifest = make_repository(sandbox, env)
    blob, blob_sha256 = make_blob(sandbox, bulk_mib)
    port, ssh_config = start_sshd(sandbox, user)
    target = Target(port, sandbox.free_port(), sandbox.free_port(), user, ssh_config, repo, head,
                    manifest, blob, blob_sha256, bulk_mib << 20, env,
                    web_port=sandbox.free_port())
    check_direct_login(target)
    return target


def check_direct_login(target: Target) -> None:
    """ssh straight to sshd, no proxy: a failure here is the harness's, not gimlet's."""
    result = run_ok(["ssh", "-F", str(target.ssh_config), "-p", str(target.port),
                     "127.0.0.1", "echo", "ok"], 60, "direct ssh login (no proxy)")
    if result.stdout != b"ok\n":
        raise Failed(f"direct ssh login printed {result.stdout[:80]!r}")
