"""Fetch the peer programs the benchmarks compare against, without installing them.

The peers are Debian packages: Postfix (for ``smtp-sink``, the fast SMTP sink, and
``smtp-source``, its C load generator), msmtp (the direct-mode peer, with the few
libraries a stock image lacks), nullmailer (the queue-drain peer) and GNU time (to
read a command's peak RSS). ``apt-get
download`` fetches each ``.deb`` into ``bench/.tools/debs`` and ``dpkg -x`` unpacks it
into ``bench/.tools/root``; nothing is installed system-wide and nothing runs as a
service. ``apt-get update`` runs at most once, and only when a download failed
without it. ``bench/.tools`` is git-ignored.

Run it alone to fetch and print where each peer is::

    .venv/bin/python bench/tools.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TOOLS_DIR = BENCH_DIR / ".tools"
DEBS_DIR = TOOLS_DIR / "debs"
ROOT_DIR = TOOLS_DIR / "root"

# Package → a file it ships, proving it was unpacked (library packages included:
# a missing shared library makes the peer fail at start, not at fetch).
PACKAGES: dict[str, str] = {
    "postfix": "usr/sbin/smtp-sink",
    "msmtp": "usr/bin/msmtp",
    "nullmailer": "usr/sbin/nullmailer-send",
    "libgsasl18": "usr/lib/x86_64-linux-gnu/libgsasl.so.18",
    "libsecret-1-0": "usr/lib/x86_64-linux-gnu/libsecret-1.so.0",
    "libidn12": "usr/lib/x86_64-linux-gnu/libidn.so.12",
    "libntlm0": "usr/lib/x86_64-linux-gnu/libntlm.so.0",
    "libgssglue1": "usr/lib/x86_64-linux-gnu/libgssglue.so.1",
    # GNU time measures a command's peak RSS from a small process of its own (see
    # harness.measure: a child forked from the benchmark inherits its RSS).
    "time": "usr/bin/time",
}


class ToolsError(RuntimeError):
    """A peer could not be fetched or unpacked."""


@dataclass(frozen=True)
class Tool:
    """One peer executable and the environment it needs to find its libraries."""

    path: Path
    library_path: Path

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment to run this tool with: ``base`` (or ours) plus LD_LIBRARY_PATH."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = str(self.library_path)
        return env

    def argv(self, *args: str) -> list[str]:
        """The command line that runs this tool with ``args``."""
        return [str(self.path), *args]


@dataclass(frozen=True)
class Tools:
    """Every peer the benchmarks use."""

    smtp_sink: Tool
    smtp_source: Tool
    msmtp: Tool
    nullmailer_send: Tool
    nullmailer_queue: Tool
    gnu_time: Tool


def _missing() -> list[str]:
    return [pkg for pkg, marker in PACKAGES.items() if not (ROOT_DIR / marker).exists()]


def _apt_download(packages: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "download", *packages],
        cwd=DEBS_DIR,
        capture_output=True,
        text=True,
        check=False,
    )


def _deb_for(package: str) -> Path:
    # apt-get download names files NAME_VERSION_ARCH.deb (":" in an epoch becomes %3a).
    found = sorted(DEBS_DIR.glob(f"{package}_*.deb"))
    if not found:
        raise ToolsError(f"apt-get download left no .deb for {package} in {DEBS_DIR}")
    return found[-1]


def fetch(*, verbose: bool = True) -> None:
    """Download and unpack every package not yet unpacked under ``bench/.tools/root``."""
    missing = _missing()
    if not missing:
        return
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise ToolsError("apt-get and dpkg are needed to fetch the peers (Debian or Ubuntu)")
    DEBS_DIR.mkdir(parents=True, exist_ok=True)
    ROOT_DIR.mkdir(parents=True, exist_ok=True)
    to_download = [pkg for pkg in missing if not list(DEBS_DIR.glob(f"{pkg}_*.deb"))]
    if to_download:
        if verbose:
            print(f"bench: fetching {' '.join(to_download)} into {DEBS_DIR}", file=sys.stderr)
        result = _apt_download(to_download)
        if result.returncode != 0:
            # A fresh machine has no package lists yet: update once, then try again.
            if verbose:
                print("bench: apt-get download failed; running apt-get update", file=sys.stderr)
            update = subprocess.run(
                ["apt-get", "update", "-qq"], capture_output=True, text=True, check=False
            )
            if update.returncode != 0:
                raise ToolsError(f"apt-get update failed: {update.stderr.strip()}")
            result = _apt_download(to_download)
            if result.returncode != 0:
                raise ToolsError(f"apt-get download failed: {result.stderr.strip()}")
    for pkg in missing:
        subprocess.run(["dpkg", "-x", str(_deb_for(pkg)), str(ROOT_DIR)], check=True)
    still = _missing()
    if still:
        raise ToolsError(f"unpacked, but still missing files of: {' '.join(still)}")


def ensure(*, verbose: bool = True) -> Tools:
    """Fetch the peers when missing and return where each one is."""
    fetch(verbose=verbose)
    postfix_libs = ROOT_DIR / "usr/lib/postfix"
    arch_libs = ROOT_DIR / "usr/lib/x86_64-linux-gnu"
    return Tools(
        smtp_sink=Tool(ROOT_DIR / "usr/sbin/smtp-sink", postfix_libs),
        smtp_source=Tool(ROOT_DIR / "usr/sbin/smtp-source", postfix_libs),
        msmtp=Tool(ROOT_DIR / "usr/bin/msmtp", arch_libs),
        nullmailer_send=Tool(ROOT_DIR / "usr/sbin/nullmailer-send", arch_libs),
        nullmailer_queue=Tool(ROOT_DIR / "usr/sbin/nullmailer-queue", arch_libs),
        gnu_time=Tool(ROOT_DIR / "usr/bin/time", arch_libs),
    )


def main() -> int:
    """Fetch the peers and print their paths (``bench/tools.py``)."""
    try:
        tools = ensure()
    except (ToolsError, subprocess.CalledProcessError) as exc:
        print(f"bench/tools.py: {exc}", file=sys.stderr)
        return 1
    for name, tool in vars(tools).items():
        print(f"{name}: {tool.path} (LD_LIBRARY_PATH={tool.library_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
