"""Extension discovery and management: real local git repositories (file:// URLs, never the network),
install.py output and timeout, update detection and fast-forward updates, enable/disable persisted in
config.json, preload.py flags with a broken preload, the exposed-server refusal, and the asset route."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from webui.cli import build_parser
from webui.extensions.assets import ROUTE, ExtensionAssets
from webui.extensions.manager import (REFUSAL_MESSAGE, ExtensionAccessRefused, ExtensionError, ExtensionManager,
                                      Timeouts, extension_access_allowed, is_loopback, name_from_url, run_command,
                                      server_exposed)
from webui.extensions.preload import ERRORS_ATTRIBUTE, add_extension_flags, data_dir_from_argv
from webui.extensions.registry import discover_extensions
from webui.services.settings import Settings

GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")


# ---- helpers ------------------------------------------------------------------------------------------

def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository with one commit; returns its file:// URL."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commit(path, files, "first")
    return path.resolve().as_uri()


def commit(path: Path, files: dict[str, str], message: str) -> None:
    write(path, files)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)


INSTALL_PY = "import pathlib\nprint('hello from install.py')\npathlib.Path('installed.marker').write_text('yes')\n"


@pytest.fixture(autouse=True)
def git_identity(monkeypatch):
    """The manager's own git calls (pull may need to write a reflog) must not read the user's config."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def manager(tmp_path) -> ExtensionManager:
    settings = Settings.load(tmp_path / "data" / "config.json")
    return ExtensionManager(user_dir=tmp_path / "data" / "extensions", builtin_dir=tmp_path / "builtin",
                            settings=settings, allow_changes=True, timeouts=Timeouts(install_script=20, pip=120))


# ---- is the server exposed ----------------------------------------------------------------------------

@pytest.mark.parametrize("listen, name, exposed", [
    (False, None, False), (False, "", False), (False, "127.0.0.1", False), (False, "127.1.2.3", False),
    (False, "localhost", False), (False, "::1", False), (False, "[::1]", False), (False, "LOCALHOST", False),
    (True, None, True), (True, "127.0.0.1", True), (False, "0.0.0.0", True), (False, "192.168.1.5", True),
    (False, "::", True), (False, "myhost.lan", True),
])
def test_server_exposed(listen, name, exposed):
    assert server_exposed(listen, name) is exposed


def test_access_allowed_from_the_real_command_line():
    parse = build_parser().parse_args
    assert extension_access_allowed(parse([]))
    assert extension_access_allowed(parse(["--server-name", "127.0.0.1"]))
    assert not extension_access_allowed(parse(["--listen"]))
    assert not extension_access_allowed(parse(["--server-name", "10.0.0.2"]))
    assert extension_access_allowed(parse(["--listen", "--enable-insecure-extension-access"]))
    assert extension_access_allowed(argparse.Namespace())   # no flags at all: a local server
    assert is_loopback("127.0.0.1") and not is_loopback("example.com")


# ---- discovery ----------------------------------------------------------------------------------------

def test_discovery_reads_folders_metadata_and_builtin_flag(tmp_path):
    builtin, user = tmp_path / "builtin", tmp_path / "user"
    write(builtin, {"xyz/scripts/b.py": "", "xyz/scripts/a.py": "", "shared/scripts/x.py": ""})
    write(user, {"alpha/scripts/z.py": "", "alpha/scripts/notes.txt": "", "alpha/javascript/2.js": "",
                 "alpha/javascript/1.js": "", "alpha/style.css": "", "alpha/metadata.ini":
                 "[Extension]\nName = Alpha Tools\nRequires = xyz, other\n\n[callbacks/a/b]\nBefore = c\n",
                 "broken/metadata.ini": "no section header\n", "shared/scripts/y.py": "",
                 ".installing-x/scripts/q.py": "", "__pycache__/x.pyc": ""})
    (user / "loose_file.py").write_text("")
    exts = discover_extensions([builtin, user, tmp_path / "missing"], {"broken"}, builtin_dirs=[builtin])
    by_name = {e.name: e for e in exts}
    assert [e.name for e in exts] == ["shared", "xyz", "alpha", "broken"]   # builtin first; hidden/loose skipped
    assert by_name["xyz"].builtin and not by_name["alpha"].builtin
    assert [p.name for p in by_name["xyz"].script_files()] == ["a.py", "b.py"]
    assert by_name["shared"].script_files()[0].name == "x.py"   # the built-in one wins over the user's copy
    alpha = by_name["alpha"]
    assert alpha.enabled and alpha.display_name == "Alpha Tools" and alpha.requires == ["xyz", "other"]
    assert alpha.metadata["callbacks/a/b"] == {"Before": "c"}
    assert [p.name for p in alpha.javascript_files()] == ["1.js", "2.js"]
    assert alpha.stylesheet() == alpha.path / "style.css" and by_name["xyz"].stylesheet() is None
    assert not by_name["broken"].enabled and by_name["broken"].metadata == {}
    assert "metadata.ini" in by_name["broken"].errors[0]


# ---- install ------------------------------------------------------------------------------------------

def test_install_from_file_url_runs_install_py_and_lists_it(manager, tmp_path):
    url = make_repo(tmp_path / "remote" / "sd-cool-ext.git", {"scripts/cool.py": "X = 1\n", "install.py": INSTALL_PY})
    result = manager.install(url)
    assert result.ok, result.output
    target = manager.user_dir / "sd-cool-ext"
    assert (target / "scripts" / "cool.py").read_text() == "X = 1\n"
    assert (target / "installed.marker").read_text() == "yes"   # install.py ran in the extension's folder
    assert "hello from install.py" in result.output and "[exit code 0]" in result.output
    assert "git clone" in result.output
    [ext] = manager.extensions()
    assert ext.name == "sd-cool-ext" and ext.enabled and not ext.builtin
    info = manager.git_info(ext)
    assert info.remote == url and info.branch == "main" and len(info.commit) >= 7
    assert not any(p.name.startswith(".installing") for p in manager.user_dir.iterdir())


def test_install_with_branch_and_folder_name(manager, tmp_path):
    remote = tmp_path / "remote" / "repo"
    url = make_repo(remote, {"scripts/a.py": "V = 'main'\n"})
    git(remote, "checkout", "-q", "-b", "dev")
    commit(remote, {"scripts/a.py": "V = 'dev'\n"}, "dev work")
    git(remote, "checkout", "-q", "main")
    assert manager.install(url, branch="dev", name="my-ext").ok
    assert (manager.user_dir / "my-ext" / "scripts" / "a.py").read_text() == "V = 'dev'\n"


def test_install_refuses_bad_requests(manager, tmp_path):
    url = make_repo(tmp_path / "remote" / "ext", {"scripts/a.py": ""})
    assert manager.install(url).ok
    with pytest.raises(ExtensionError, match="already installed"):
        manager.install(url)
    write(manager.builtin_dir, {"builtin-one/scripts/a.py": ""})
    with pytest.raises(ExtensionError, match="already installed"):
        manager.install(url, name="builtin-one")
    for bad in ("", "ext::sh -c touch% /tmp/pwned", "--upload-pack=touch /tmp/x", "/some/local/path", "notaurl"):
        with pytest.raises(ExtensionError, match="not a git URL"):
            manager.install(bad)
    for bad_name in ("../escape", ".hidden", "a/b"):
        with pytest.raises(ExtensionError, match="folder name"):
            manager.install(url, name=bad_name)
    with pytest.raises(ExtensionError, match="branch"):
        manager.install(url, name="other", branch="--upload-pack=x")
    assert sorted(p.name for p in manager.user_dir.iterdir()) == ["ext"]


def test_failed_clone_and_failed_install_py_leave_nothing(manager, tmp_path):
    result = manager.install((tmp_path / "nowhere").as_uri())
    assert not result.ok and "git clone" in result.message and "[exit code" in result.output
    url = make_repo(tmp_path / "remote" / "badext", {"install.py": "import sys\nprint('about to fail')\n"
                                                                   "sys.exit('install step broke')\n"})
    result = manager.install(url)
    assert not result.ok and "nothing was installed" in result.message
    assert "about to fail" in result.output and "install step broke" in result.output
    assert "[exit code 1]" in result.output
    assert list(manager.user_dir.iterdir()) == []


def test_install_py_timeout_is_enforced(manager, tmp_path):
    manager.timeouts = Timeouts(install_script=1.5)
    url = make_repo(tmp_path / "remote" / "slow", {"install.py": "import time\nprint('starting', flush=True)\n"
                                                                 "time.sleep(60)\n"})
    start = time.monotonic()
    result = manager.install(url)
    assert time.monotonic() - start < 20
    assert not result.ok and result.steps[-1].timed_out
    assert "starting" in result.output and "timed out" in result.output
    assert not (manager.user_dir / "slow").exists()


def test_run_command_kills_the_whole_process_group(tmp_path):
    # The child starts a grandchild that would keep the output pipe open for a minute.
    script = "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n" \
             "time.sleep(60)\n"
    start = time.monotonic()
    result = run_command([sys.executable, "-c", script], cwd=tmp_path, timeout=1)
    assert result.timed_out and not result.ok and time.monotonic() - start < 15
    missing = run_command(["definitely-not-a-command-xyz"], cwd=tmp_path, timeout=5)
    assert missing.returncode is None and not missing.ok and "could not run" in missing.output


def test_requirements_are_installed_with_pip(manager, tmp_path):
    # `pip` itself is installed, so pip answers "already satisfied" without touching the network.
    url = make_repo(tmp_path / "remote" / "withreqs", {"requirements.txt": "pip\n", "install.py": "print('after reqs')\n"})
    result = manager.install(url)
    assert result.ok, result.output
    assert [s.command[1:4] for s in result.steps[1:]][0] == ["-m", "pip", "install"]
    assert "already satisfied" in result.steps[1].output.lower()
    assert "after reqs" in result.steps[2].output


# ---- updates ------------------------------------------------------------------------------------------

def test_check_for_updates_and_update(manager, tmp_path):
    remote = tmp_path / "remote" / "upd"
    url = make_repo(remote, {"scripts/a.py": "V = 1\n", "install.py": INSTALL_PY})
    assert manager.install(url).ok
    assert manager.check_updates()["upd"].state == "latest"
    commit(remote, {"scripts/a.py": "V = 2\n"}, "second")
    commit(remote, {"scripts/b.py": "W = 3\n"}, "third")
    status = manager.check_updates()["upd"]
    assert status.state == "behind" and status.behind == 2 and status.update_available
    target = manager.user_dir / "upd"
    (target / "installed.marker").unlink()
    result = manager.update("upd")
    assert result.ok, result.output
    assert "git pull --ff-only" in result.output and "hello from install.py" in result.output
    assert (target / "scripts" / "a.py").read_text() == "V = 2\n" and (target / "scripts" / "b.py").exists()
    assert (target / "installed.marker").exists()   # install.py ran again after the update
    assert manager.check_updates()["upd"].state == "latest"
    again = manager.update("upd")
    assert again.ok and "already up to date" in again.message and len(again.steps) == 1


def test_diverged_extension_is_not_force_updated(manager, tmp_path):
    remote = tmp_path / "remote" / "div"
    url = make_repo(remote, {"a.txt": "1\n"})
    assert manager.install(url).ok
    local = manager.user_dir / "div"
    commit(local, {"local.txt": "mine\n"}, "local change")
    assert manager.check_updates()["div"].state == "ahead"
    commit(remote, {"a.txt": "2\n"}, "upstream change")
    assert manager.check_updates()["div"].state == "diverged"
    result = manager.update("div")
    assert not result.ok and "[exit code" in result.output
    assert (local / "local.txt").read_text() == "mine\n" and (local / "a.txt").read_text() == "1\n"


def test_non_git_and_builtin_extensions(manager):
    write(manager.user_dir, {"plain/scripts/a.py": ""})
    write(manager.builtin_dir, {"core-ext/scripts/a.py": ""})
    statuses = manager.check_updates()
    assert set(statuses) == {"plain"} and statuses["plain"].state == "unknown"
    assert manager.git_info(manager.get("plain")).commit == ""   # never the enclosing repository's commit
    with pytest.raises(ExtensionError, match="not a git repository"):
        manager.update("plain")
    with pytest.raises(ExtensionError, match="built in"):
        manager.update("core-ext")
    with pytest.raises(ExtensionError, match="no extension named"):
        manager.update("missing")


# ---- refusal when exposed -----------------------------------------------------------------------------

def test_install_update_and_installer_refused_when_exposed(manager, tmp_path):
    remote = tmp_path / "remote" / "ext"
    url = make_repo(remote, {"install.py": INSTALL_PY, "requirements.txt": "# nothing\n"})
    manager.python = "false-python-never-run"   # the refusal must come before any subprocess
    manager.user_dir.mkdir(parents=True)
    git(manager.user_dir, "clone", "-q", url, "ext")
    commit(remote, {"a.txt": "new\n"}, "new")
    exposed = ExtensionManager(manager.user_dir, manager.builtin_dir, manager.settings, python=manager.python,
                               allow_changes=extension_access_allowed(build_parser().parse_args(["--listen"])))
    for action in (lambda: exposed.install(make_repo(tmp_path / "remote" / "other", {"a": ""})),
                   lambda: exposed.update("ext"), lambda: exposed.run_installer("ext"),
                   lambda: exposed.run_install_script(manager.user_dir / "ext"),
                   lambda: exposed.install_requirements(manager.user_dir / "ext")):
        with pytest.raises(ExtensionAccessRefused, match="--enable-insecure-extension-access"):
            action()
    assert not (manager.user_dir / "other").exists()
    assert not (manager.user_dir / "ext" / "a.txt").exists()
    # reading is still allowed
    assert exposed.check_updates()["ext"].update_available
    assert "listens beyond localhost" in REFUSAL_MESSAGE


# ---- enable / disable ---------------------------------------------------------------------------------

def test_enable_disable_is_persisted_in_config(manager, tmp_path):
    write(manager.user_dir, {"one/scripts/a.py": "", "two/scripts/a.py": ""})
    assert manager.set_enabled("two", False) == ["two"]
    reloaded = Settings.load(manager.settings.path)
    assert reloaded.get("disabled_extensions") == ["two"]
    fresh = ExtensionManager(manager.user_dir, manager.builtin_dir, reloaded, allow_changes=False)
    assert {e.name: e.enabled for e in fresh.extensions()} == {"one": True, "two": False}
    assert fresh.set_disabled(["one", "two", "not-installed"]) == ["one", "two"]   # allowed when exposed too
    fresh.set_enabled("two", True)
    assert Settings.load(manager.settings.path).get("disabled_extensions") == ["one"]
    with pytest.raises(ExtensionError):
        fresh.set_enabled("ghost", True)


def test_disabled_extensions_setting_validates_a_list_of_names(tmp_path):
    settings = Settings.load(tmp_path / "config.json")
    assert list(settings.get("disabled_extensions")) == []
    with pytest.raises(Exception, match="disabled_extensions"):
        settings.update({"disabled_extensions": "abc"})
    with pytest.raises(Exception, match="disabled_extensions"):
        settings.update({"disabled_extensions": ["a", 3]})


# ---- preload.py ---------------------------------------------------------------------------------------

PRELOAD_GOOD = "def preload(parser):\n    parser.add_argument('--good-flag', type=int, default=7)\n"
PRELOAD_BAD = "import definitely_missing_module_xyz\n"
PRELOAD_EXIT = "import sys\ndef preload(parser):\n    sys.exit(3)\n"
PRELOAD_CLASH = "def preload(parser):\n    parser.add_argument('--port')\n"   # already a core flag


def test_preload_adds_flags_and_reports_broken_ones(tmp_path):
    data = tmp_path / "data"
    write(data / "extensions", {"good/preload.py": PRELOAD_GOOD, "bad/preload.py": PRELOAD_BAD,
                                "exits/preload.py": PRELOAD_EXIT, "clash/preload.py": PRELOAD_CLASH,
                                "off/preload.py": "def preload(parser):\n    parser.add_argument('--off-flag')\n"})
    (data / "config.json").write_text('{"disabled_extensions": ["off"]}')
    argv = ["--data-dir", str(data), "--good-flag", "3"]
    assert data_dir_from_argv(argv) == data.resolve()
    parser = build_parser()
    errors = add_extension_flags(parser, argv, builtin_dir=tmp_path / "no-builtin")
    assert {e.extension for e in errors} == {"bad", "exits", "clash"}
    bad = next(e for e in errors if e.extension == "bad")
    assert "definitely_missing_module_xyz" in bad.traceback and bad.where.endswith("preload.py")
    args = parser.parse_args(argv)
    assert args.good_flag == 3 and args.port is None
    assert getattr(args, ERRORS_ATTRIBUTE) == errors
    with pytest.raises(SystemExit):
        parser.parse_args(["--off-flag", "x"])   # disabled extensions add no flags


def test_cli_main_parses_extension_flags(tmp_path, monkeypatch):
    """`launch.py --my-flag` works because main() runs the preloads before parsing."""
    import webui.cli as cli
    data = tmp_path / "data"
    write(data / "extensions", {"good/preload.py": PRELOAD_GOOD, "bad/preload.py": PRELOAD_BAD})
    seen = {}
    fake_server = SimpleNamespace(serve=lambda args: seen.setdefault("args", args) and 0)
    monkeypatch.setitem(sys.modules, "webui.server", fake_server)   # no real server (and no torch import)
    assert cli.main(["--data-dir", str(data), "--good-flag", "5"]) == 0
    assert seen["args"].good_flag == 5
    assert [e.extension for e in seen["args"].extension_preload_errors] == ["bad"]


# ---- page assets --------------------------------------------------------------------------------------

@pytest.fixture
def asset_client(tmp_path):
    user = tmp_path / "extensions"
    write(user, {"ui-ext/javascript/main.js": "window.uiExt = 1;", "ui-ext/style.css": ".x{color:red}",
                 "ui-ext/scripts/secret.py": "TOKEN = 'x'", "ui-ext/.git/config": "[core]",
                 "ui-ext/images/icon.svg": "<svg/>", "off-ext/javascript/off.js": "window.off = 1;"})
    (tmp_path / "outside.js").write_text("window.outside = 1;")
    (user / "ui-ext" / "javascript" / "link.js").symlink_to(tmp_path / "outside.js")
    assets = ExtensionAssets(discover_extensions([user], {"off-ext"}, builtin_dirs=[]))
    server = FastAPI()
    assets.mount(server)
    return assets, TestClient(server)


def test_head_html_links_enabled_extensions_assets(asset_client):
    assets, client = asset_client
    head = assets.head_html()
    assert f'href="{ROUTE}/ui-ext/style.css?v=' in head
    assert f'src="{ROUTE}/ui-ext/javascript/main.js?v=' in head and "off.js" not in head
    assert "link.js" not in head   # a symlink out of the folder is neither linked nor served
    assert head.index("style.css") < head.index("main.js")
    url = head.split('src="')[1].split('"')[0].replace("&amp;", "&")
    response = client.get(url)
    assert response.status_code == 200 and response.text == "window.uiExt = 1;"
    assert response.headers["content-type"].startswith("text/javascript")
    css = client.get(f"{ROUTE}/ui-ext/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get(f"{ROUTE}/ui-ext/images/icon.svg").status_code == 200


@pytest.mark.parametrize("path", [
    "off-ext/javascript/off.js",            # disabled extension
    "nope/javascript/main.js",              # unknown extension
    "ui-ext/scripts/secret.py",             # not a static web file
    "ui-ext/.git/config",                   # dot folder
    "ui-ext/javascript/link.js",            # symlink out of the folder
    "ui-ext/..%2F..%2Foutside.js",          # encoded traversal
    "ui-ext/%2e%2e/%2e%2e/outside.js",
    "ui-ext/javascript/%2e%2e/%2e%2e/%2e%2e/outside.js",
    "ui-ext/%2Fetc%2Fpasswd",
    "ui-ext/missing.js",
])
def test_asset_route_refuses_anything_outside_enabled_extension_folders(asset_client, path):
    _, client = asset_client
    response = client.get(f"{ROUTE}/{path}")
    assert response.status_code == 404
    assert "outside" not in response.text and "TOKEN" not in response.text


# ---- the tab's handlers (no browser) ------------------------------------------------------------------

def _fake_app(tmp_path, manager, args, errors=()):
    paths = SimpleNamespace(extensions_dir=manager.user_dir, builtin_extensions_dir=manager.builtin_dir)
    return SimpleNamespace(engine=SimpleNamespace(paths=paths), settings=manager.settings, args=args, state={},
                           extensions=SimpleNamespace(errors=list(errors)))


def test_tab_disables_buttons_and_says_why_when_exposed(manager, tmp_path):
    import gradio as gr

    from webui.ui import extensions_tab
    write(manager.user_dir, {"one/scripts/a.py": ""})
    record = SimpleNamespace(extension="one", where="scripts/a.py: process", traceback="Traceback: boom <b>")
    app = _fake_app(tmp_path, manager, build_parser().parse_args(["--listen"]), [record])
    with gr.Blocks() as demo:
        tab = extensions_tab.build(app)
    assert not tab.install.interactive and not tab.update.interactive and not tab.url.interactive
    notices = [c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "extensions_access_refused"]
    assert notices and "--enable-insecure-extension-access" in notices[0].value
    errors = extensions_tab.errors_html(app)
    assert "one" in errors and "Traceback: boom &lt;b&gt;" in errors and "scripts/a.py: process" in errors
    # the handler refuses too, with the plain message
    status, *_ = extensions_tab.install_from_url(app.state["extension_manager"], "file:///x", "", "", {})
    assert "listens beyond localhost" in status


def test_tab_handlers_install_check_and_apply(manager, tmp_path):
    from webui.ui import extensions_tab
    url = make_repo(tmp_path / "remote" / "tabext", {"install.py": INSTALL_PY})
    status, output, table, enabled = extensions_tab.install_from_url(manager, url, "", "", {})
    assert "Installed tabext" in status and "hello from install.py" in output and "tabext" in table
    assert enabled["choices"] == ["tabext"] or enabled.get("value") == ["tabext"]
    status, table = extensions_tab.apply_enabled(manager, [], {})
    assert "restart" in status and "disabled" in table
    assert Settings.load(manager.settings.path).get("disabled_extensions") == ["tabext"]
    status, table, to_update, output, statuses = extensions_tab.check_updates(manager)
    assert "No updates available" in status and statuses["tabext"]["state"] == "latest" and "up to date" in table
    no_errors = extensions_tab.errors_html(SimpleNamespace(args=argparse.Namespace()))
    assert "No extension errors" in no_errors


def test_name_from_url():
    assert name_from_url("https://github.com/a/sd-webui-foo.git") == "sd-webui-foo"
    assert name_from_url("https://github.com/a/bar/") == "bar"
    assert name_from_url("git@github.com:a/baz.git") == "baz"
