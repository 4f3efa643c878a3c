# The README's ssh recipes, read from README.md itself so that they cannot
# drift from what is tested: every line of a fenced code block that sets a
# ProxyCommand (an ssh_config line, `ssh -o ProxyCommand=…`, git's
# core.sshCommand or GIT_SSH_COMMAND), reduced to the ProxyCommand value ssh
# gets and the environment the line sets. The readme check in checks.py runs
# them through a real ssh, which expands % tokens exactly as a user's would.
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

# The names the README's examples use, and what the check puts in their place.
EXAMPLE_PROXY = "proxy.corp"
EXAMPLE_PORT = "3128"
EXAMPLE_USER = "alice"
EXAMPLE_PASSWORD = "p@ss"


@dataclass
class Recipe:
    line: str  # as the README has it
    command: str  # the ProxyCommand value, before ssh's % expansion
    env: dict[str, str] = field(default_factory=dict)

    @property
    def credentials(self) -> bool:
        """Whether it gives the proxy credentials (and so needs a proxy that asks)."""
        words = shlex.split(self.command.replace("%", ""))
        return ("GIMLET_PROXY_AUTH" in self.env or f"{EXAMPLE_USER}:" in self.command
                or any(w in ("--proxy-auth-file", "--netrc") for w in words)
                or len([w for w in words if not w.startswith("-")]) == 6)  # corkscrew's AUTHFILE

    @property
    def tls(self) -> bool:
        return "https://" in self.command

    @property
    def from_environment(self) -> bool:
        """`gimlet %h %p`: the proxy comes from HTTPS_PROXY and the like."""
        words = shlex.split(self.command.replace("%", ""))
        return len([w for w in words if not w.startswith("-")]) == 3

    @property
    def example_proxy(self) -> bool:
        """Through the README's example HTTP proxy, proxy.corp:3128 (a SOCKS or
        https:// recipe names another)."""
        return (f"{EXAMPLE_PROXY}:{EXAMPLE_PORT}" in self.command
                or f"{EXAMPLE_PROXY} {EXAMPLE_PORT}" in self.command or self.from_environment)

    def environment(self) -> dict[str, str]:
        """What the line sets, and for the environment form the example proxy
        in HTTPS_PROXY, as the README's text around it says."""
        proxy = {"HTTPS_PROXY": f"http://{EXAMPLE_PROXY}:{EXAMPLE_PORT}"}
        return {**(proxy if self.from_environment else {}), **self.env}

    @property
    def fdpass(self) -> bool:
        return "--fdpass" in self.command


def proxy_command(words: list[str]) -> str | None:
    """The ProxyCommand value in a shell command's words, looking inside
    core.sshCommand=… and GIT_SSH_COMMAND=… (and any word holding an ssh
    command line) as the shell and then git would."""
    for word in words:
        if word.startswith("ProxyCommand="):
            return word[len("ProxyCommand="):]
        if "ProxyCommand=" in word:
            inner = word.split("=", 1)[1] if ASSIGNMENT.match(word) or word.startswith(
                "core.sshCommand=") else word
            if (found := proxy_command(shlex.split(inner))) is not None:
                return found
    return None


def recipe(line: str) -> Recipe | None:
    text = line.strip()
    if text.startswith("#") or "ProxyCommand" not in text:
        return None
    if text.startswith("ProxyCommand "):  # ssh_config: the rest of the line, as written
        return Recipe(line, text[len("ProxyCommand "):])
    words = shlex.split(text, comments=True)
    env = {}
    for word in words:
        if not ASSIGNMENT.match(word) or "ProxyCommand=" in word:
            break
        name, value = word.split("=", 1)
        env[name] = value
    command = proxy_command(words)
    if command is None:
        raise ValueError(f"README.md: cannot find the ProxyCommand in {text!r}")
    return Recipe(line, command, env)


def recipes(text: str | None = None) -> list[Recipe]:
    text = README.read_text() if text is None else text
    found = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            if (r := recipe(line)) is not None:
                found.append(r)
    return found


def undoubled(command: str) -> str:
    """The command with each %% written as one %: the mistake ssh refuses."""
    return command.replace("%%", "%")


if __name__ == "__main__":
    for r in recipes():
        flags = ",".join(f for f in ("credentials", "tls", "fdpass", "from_environment",
                                     "example_proxy") if getattr(r, f))
        print(f"{flags or '-':20} {r.env or ''} {r.command}")
