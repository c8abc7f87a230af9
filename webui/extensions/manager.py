"""Installing, updating, enabling and disabling extensions.

Every git, pip and install.py call runs in a subprocess with a timeout; its output is kept and returned so
the UI can show it. Installing, updating and running an extension's installer execute code from the
internet, so they are refused here (not only in the UI) when the server is reachable from other machines,
unless the user started it with --enable-insecure-extension-access.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..engine.paths import REPO_ROOT
from .registry import Extension, discover_extensions

log = logging.getLogger(__name__)

DISABLED_KEY = "disabled_extensions"
OUTPUT_LIMIT = 64_000   # characters of a command's output kept (the end, where errors are)
REFUSAL_MESSAGE = (
    "Installing extensions, updating them and running their install.py are disabled because this server "
    "listens beyond localhost (--listen or a non-loopback --server-name), so anyone who can reach it could run "
    "code on this machine. Restart with --enable-insecure-extension-access to allow it, if you trust everyone "
    "who can reach the server.")

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_URL = re.compile(r"^(?:(?:https?|ssh|git|file)://\S+|[\w.-]+@[\w.-]+:\S+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


# ---- is the server exposed ----------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # any other host name may resolve to a public address


def server_exposed(listen: bool, server_name: str | None) -> bool:
    """True when the server accepts connections from other machines (or may)."""
    if listen:
        return True
    return bool(server_name and server_name.strip()) and not is_loopback(server_name)


def extension_access_allowed(args: Any) -> bool:
    """From the parsed command line; a missing attribute counts as not given."""
    exposed = server_exposed(bool(getattr(args, "listen", False)), getattr(args, "server_name", None))
    return not exposed or bool(getattr(args, "enable_insecure_extension_access", False))


# ---- subprocesses -------------------------------------------------------------------------------------

@dataclass
class CommandResult:
    command: list[str]
    returncode: int | None
    output: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """The command, its output and how it ended, as shown to the user."""
        if self.timed_out:
            end = "[stopped: timed out]"
        elif self.returncode is None:
            end = "[could not start]"
        else:
            end = f"[exit code {self.returncode}]"
        body = self.output.rstrip("\n")
        return f"$ {' '.join(self.command)}\n{body}\n{end}" if body else f"$ {' '.join(self.command)}\n{end}"


def _kill_group(process: subprocess.Popen) -> None:
    """Stop the command and whatever it started (it runs in its own session)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass


def run_command(command: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> CommandResult:
    """Run with stdout and stderr together; never raises for a failing, missing or hanging command."""
    try:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return CommandResult(command, None, f"could not run {command[0]}: {exc}")
    timed_out = False
    try:
        raw, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        try:
            raw, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:   # a grandchild left its own session and holds the pipe
            process.stdout.close()
            process.wait()
            raw = b""
        raw += f"\n(timed out after {timeout:g} s)".encode()
    text = raw.decode("utf-8", errors="replace")
    if len(text) > OUTPUT_LIMIT:
        text = "…(earlier output cut)…\n" + text[-OUTPUT_LIMIT:]
    return CommandResult(command, process.returncode if not timed_out else None, text, timed_out)


# ---- results ------------------------------------------------------------------------------------------

class ExtensionAccessRefused(PermissionError):
    """Installing, updating or running an installer while the server is exposed."""


class ExtensionError(ValueError):
    """A request the manager cannot carry out (bad URL, unknown extension, …), with a message for the user."""


@dataclass
class OperationResult:
    ok: bool
    message: str
    steps: list[CommandResult] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n\n".join(step.describe() for step in self.steps)


@dataclass(frozen=True)
class GitInfo:
    remote: str = ""
    commit: str = ""
    branch: str = ""
    date: str = ""

    @property
    def version(self) -> str:
        return f"{self.commit} ({self.date})" if self.commit and self.date else self.commit


@dataclass(frozen=True)
class UpdateStatus:
    name: str
    state: str          # latest | behind | ahead | diverged | unknown | error
    message: str
    behind: int = 0
    output: str = ""

    @property
    def update_available(self) -> bool:
        return self.state == "behind"


@dataclass(frozen=True)
class Timeouts:
    git: float = 120.0
    git_info: float = 10.0
    install_script: float = 600.0
    pip: float = 900.0


def _git_env() -> dict[str, str]:
    # Never wait for a password prompt: a private or mistyped URL fails at once instead of hanging.
    return dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="")


def name_from_url(url: str) -> str:
    tail = re.split(r"[/:]", url.rstrip("/"))[-1]
    return tail[:-4] if tail.endswith(".git") else tail


# ---- the manager --------------------------------------------------------------------------------------

@dataclass
class ExtensionManager:
    user_dir: Path                  # DATA/extensions: installs go here
    builtin_dir: Path               # shipped with the app: listed, never installed into or updated
    settings: Any                   # webui.services.settings.Settings (holds disabled_extensions)
    allow_changes: bool             # extension_access_allowed(args)
    timeouts: Timeouts = field(default_factory=Timeouts)
    python: str = sys.executable
    git: str = "git"

    @classmethod
    def for_app(cls, app: Any) -> "ExtensionManager":
        paths = app.engine.paths
        builtin = getattr(paths, "builtin_extensions_dir", REPO_ROOT / "extensions-builtin")
        return cls(user_dir=paths.extensions_dir, builtin_dir=builtin, settings=app.settings,
                   allow_changes=extension_access_allowed(app.args))

    # -- listing and enabling --
    def disabled(self) -> set[str]:
        return set(self.settings.get(DISABLED_KEY) or ())

    def extensions(self) -> list[Extension]:
        return discover_extensions([self.builtin_dir, self.user_dir], self.disabled(), builtin_dirs=[self.builtin_dir])

    def get(self, name: str) -> Extension:
        for ext in self.extensions():
            if ext.name == name:
                return ext
        raise ExtensionError(f"no extension named {name!r} is installed")

    def set_disabled(self, names: Iterable[str]) -> list[str]:
        """Persist the disabled set (takes effect at the next start); unknown names are dropped."""
        known = {ext.name for ext in self.extensions()}
        disabled = sorted(set(names) & known)
        self.settings.update({DISABLED_KEY: disabled})
        return disabled

    def set_enabled(self, name: str, enabled: bool) -> list[str]:
        self.get(name)
        disabled = self.disabled() - {name} if enabled else self.disabled() | {name}
        return self.set_disabled(disabled)

    # -- git --
    def _git(self, path: Path, *args: str, timeout: float | None = None) -> CommandResult:
        return run_command([self.git, *args], cwd=path, timeout=timeout or self.timeouts.git, env=_git_env())

    @staticmethod
    def is_git_repo(path: Path) -> bool:
        # Checked on the folder itself: `git` run inside a plain folder would find the app's own repository.
        return (path / ".git").exists()

    def git_info(self, ext: Extension) -> GitInfo:
        if not self.is_git_repo(ext.path):
            return GitInfo()
        t = self.timeouts.git_info
        remote = self._git(ext.path, "config", "--get", "remote.origin.url", timeout=t)
        head = self._git(ext.path, "log", "-1", "--format=%h%x09%cd", "--date=short", timeout=t)
        branch = self._git(ext.path, "rev-parse", "--abbrev-ref", "HEAD", timeout=t)
        commit, _, date = head.output.strip().partition("\t") if head.ok else ("", "", "")
        return GitInfo(remote=remote.output.strip() if remote.ok else "", commit=commit, date=date,
                       branch=branch.output.strip() if branch.ok else "")

    def check_update(self, ext: Extension) -> UpdateStatus:
        """`git fetch`, then compare HEAD with its upstream branch."""
        if not self.is_git_repo(ext.path):
            return UpdateStatus(ext.name, "unknown", "not a git repository")
        fetch = self._git(ext.path, "fetch", "--quiet")
        if not fetch.ok:
            return UpdateStatus(ext.name, "error", "git fetch failed", output=fetch.describe())
        counts = self._git(ext.path, "rev-list", "--left-right", "--count", "HEAD...@{u}",
                           timeout=self.timeouts.git_info)
        if not counts.ok:
            return UpdateStatus(ext.name, "unknown", "no upstream branch to compare with", output=counts.describe())
        ahead, behind = (int(n) for n in counts.output.split())
        if ahead and behind:
            return UpdateStatus(ext.name, "diverged", f"local commits and {behind} new upstream commit(s); "
                                                      "cannot fast-forward", behind)
        if behind:
            return UpdateStatus(ext.name, "behind", f"update available ({behind} new commit(s))", behind)
        if ahead:
            return UpdateStatus(ext.name, "ahead", f"{ahead} local commit(s) not upstream")
        return UpdateStatus(ext.name, "latest", "up to date")

    def check_updates(self, names: Iterable[str] | None = None) -> dict[str, UpdateStatus]:
        wanted = None if names is None else set(names)
        return {ext.name: self.check_update(ext) for ext in self.extensions()
                if not ext.builtin and (wanted is None or ext.name in wanted)}

    # -- changes that run code --
    def require_access(self) -> None:
        if not self.allow_changes:
            raise ExtensionAccessRefused(REFUSAL_MESSAGE)

    def install(self, url: str, branch: str | None = None, name: str | None = None) -> OperationResult:
        """Clone into a hidden temporary folder, run its installer, then move it to DATA/extensions/<name>.

        A failing clone or installer leaves nothing behind.
        """
        self.require_access()
        url, branch = url.strip(), (branch or "").strip()
        name = (name or "").strip() or name_from_url(url)
        self._check_install_request(url, branch, name)
        target = self.user_dir / name
        self.user_dir.mkdir(parents=True, exist_ok=True)
        staging = self.user_dir / f".installing-{name}-{uuid.uuid4().hex[:8]}"
        try:
            clone = self._git(self.user_dir, "clone", *(["--branch", branch] if branch else []), "--", url,
                              str(staging))
            steps = [clone]
            if not clone.ok:
                return OperationResult(False, f"git clone of {url} failed", steps)
            steps += self._run_installer(staging)
            if not all(step.ok for step in steps):
                return OperationResult(False, f"the installer of {name} failed; nothing was installed", steps)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        log.info("installed extension %s from %s", name, url)
        return OperationResult(True, f"Installed {name} into {target}. It loads at the next restart.", steps)

    def _check_install_request(self, url: str, branch: str, name: str) -> None:
        if not _URL.match(url) or url.startswith("-"):
            raise ExtensionError(f"not a git URL this app accepts: {url!r} (use https://, http://, ssh://, git://, "
                                 "file:// or user@host:path)")
        if branch and not _BRANCH.match(branch):
            raise ExtensionError(f"not a valid branch name: {branch!r}")
        if not _NAME.match(name):
            raise ExtensionError(f"not a valid extension folder name: {name!r} (letters, digits, '.', '_', '-')")
        if (self.user_dir / name).exists() or any(ext.name == name for ext in self.extensions()):
            raise ExtensionError(f"an extension named {name!r} is already installed")

    def update(self, name: str) -> OperationResult:
        """`git pull --ff-only`; when HEAD moved, the installer runs again."""
        self.require_access()
        ext = self.get(name)
        if ext.builtin:
            raise ExtensionError(f"{name} is built in; it is updated with the app")
        if not self.is_git_repo(ext.path):
            raise ExtensionError(f"{name} is not a git repository; it cannot be updated")
        before = self._git(ext.path, "rev-parse", "HEAD", timeout=self.timeouts.git_info).output.strip()
        pull = self._git(ext.path, "pull", "--ff-only")
        steps = [pull]
        if not pull.ok:
            return OperationResult(False, f"git pull of {name} failed", steps)
        after = self._git(ext.path, "rev-parse", "HEAD", timeout=self.timeouts.git_info).output.strip()
        if after == before:
            return OperationResult(True, f"{name} is already up to date.", steps)
        steps += self._run_installer(ext.path)
        if not all(step.ok for step in steps):
            return OperationResult(False, f"updated {name} to {after[:8]}, but its installer failed", steps)
        return OperationResult(True, f"Updated {name} to {after[:8]}. The new version loads at the next restart.",
                               steps)

    def run_installer(self, name: str) -> OperationResult:
        """Install requirements.txt and run install.py again for an installed extension."""
        self.require_access()
        ext = self.get(name)
        steps = self._run_installer(ext.path)
        ok = all(step.ok for step in steps)
        message = "nothing to install" if not steps else "installer finished" if ok else "installer failed"
        return OperationResult(ok, f"{name}: {message}", steps)

    def _run_installer(self, path: Path) -> list[CommandResult]:
        """requirements.txt first, then install.py; stops at the first failure."""
        steps = []
        for step in (self.install_requirements, self.run_install_script):
            result = step(path)
            if result is not None:
                steps.append(result)
                if not result.ok:
                    break
        return steps

    def install_requirements(self, path: Path) -> CommandResult | None:
        self.require_access()
        requirements = path / "requirements.txt"
        if not requirements.is_file():
            return None
        command = [self.python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r",
                   "requirements.txt"]
        return run_command(command, cwd=path, timeout=self.timeouts.pip, env=dict(os.environ, PIP_NO_INPUT="1"))

    def run_install_script(self, path: Path) -> CommandResult | None:
        self.require_access()
        script = path / "install.py"
        if not script.is_file():
            return None
        # The repo root on the path lets A1111-style installers `import launch`.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        return run_command([self.python, "install.py"], cwd=path, timeout=self.timeouts.install_script, env=env)


__all__ = ["CommandResult", "Extension", "ExtensionAccessRefused", "ExtensionError", "ExtensionManager", "GitInfo",
           "OperationResult", "REFUSAL_MESSAGE", "Timeouts", "UpdateStatus", "extension_access_allowed", "is_loopback",
           "name_from_url", "run_command", "server_exposed"]
