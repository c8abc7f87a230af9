"""The Extensions tab end to end, in headless Chromium against the real server (`python launch.py`).

The data folder holds one extension with javascript/*.js and style.css (they must run in the page), one
whose preload.py is broken (the tab must report it and the app must start), and a local git repository that
the test installs from a file:// URL, then updates. Skips like tests/test_ui_browser.py without Chromium.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ui_server import Server, app_page, chromium, write_models

TIMEOUT = 60_000  # ms; the CPU may be shared
GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    write(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ext-ui-data")
    write_models(root / "models" / "Stable-diffusion", ("alpha",))
    write(root / "extensions", {
        "ui-ext/javascript/hello.js": "document.documentElement.dataset.uiExt = 'loaded';\n",
        "ui-ext/style.css": ":root { --ui-ext-marker: 42px; }\n",
        "ui-ext/scripts/secret.py": "TOKEN = 'do-not-serve'\n",
        "broken-preload/preload.py": "raise RuntimeError('preload exploded on purpose')\n",
    })
    return root


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("remotes") / "sd-demo-ext"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"scripts/demo.py": "VERSION = 1\n", "install.py": "print('hello from install.py')\n"}, "first")
    return repo


@pytest.fixture(scope="module")
def server(data_dir):
    srv = Server(data_dir, "alpha").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, server):
    with app_page(browser, server.url, timeout=TIMEOUT) as pg:
        yield pg


def open_extensions(page) -> None:
    page.locator("#tab_extensions-button").click()
    page.wait_for_selector("#extensions_table table", timeout=TIMEOUT)


def wait_text(page, selector: str, needle: str, timeout: int = TIMEOUT) -> str:
    page.wait_for_function("([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
                           arg=[selector, needle], timeout=timeout)
    return page.inner_text(selector)


def text_input(page, elem_id: str):
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


@pytest.mark.browser
def test_extension_javascript_and_css_are_injected(page, server):
    page.wait_for_function("document.documentElement.dataset.uiExt === 'loaded'", timeout=TIMEOUT)
    marker = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--ui-ext-marker').trim()")
    assert marker == "42px"
    # the asset route serves only static files of enabled extensions
    assert page.request.get(server.url + "/extension-assets/ui-ext/scripts/secret.py").status == 404
    assert page.request.get(server.url + "/extension-assets/ui-ext/%2e%2e/%2e%2e/config.json").status == 404
    assert page.errors == []


@pytest.mark.browser
def test_extensions_tab_lists_reports_installs_updates_and_disables(page, data_dir, remote):
    open_extensions(page)
    table = page.inner_text("#extensions_table")
    assert "ui-ext" in table and "broken-preload" in table
    errors = wait_text(page, "#extensions_errors", "broken-preload")
    assert "preload exploded on purpose" in page.inner_html("#extensions_errors")
    assert "error" in errors.lower()

    # install from a file:// URL; install.py's output is shown
    page.locator("#tab_extensions button[role=tab]", has_text="Install from URL").click()
    text_input(page, "extension_to_install").fill(remote.as_uri())
    page.click("#install_extension_button")
    wait_text(page, "#install_extension_status", "Installed sd-demo-ext")
    output = page.locator("#install_extension_output textarea").input_value()
    assert "hello from install.py" in output and "git clone" in output
    assert (data_dir / "extensions" / "sd-demo-ext" / "scripts" / "demo.py").read_text() == "VERSION = 1\n"

    # a new upstream commit is found and applied
    commit(remote, {"scripts/demo.py": "VERSION = 2\n"}, "second")
    page.locator("#tab_extensions button[role=tab]", has_text="Installed").click()
    page.click("#extensions_check")
    wait_text(page, "#extensions_status", "1 update(s) available: sd-demo-ext")
    assert "update available" in page.inner_text("#extensions_table")
    assert page.locator("#extensions_to_update input[type=checkbox]").first.is_checked()
    page.click("#extensions_update")
    wait_text(page, "#extensions_status", "Updated sd-demo-ext")
    assert (data_dir / "extensions" / "sd-demo-ext" / "scripts" / "demo.py").read_text() == "VERSION = 2\n"
    assert "hello from install.py" in page.locator("#extensions_output textarea").input_value()

    # disabling is saved to config.json and takes effect after a restart
    page.locator("#extensions_enabled label", has_text="ui-ext").locator("input").uncheck()
    page.click("#extensions_apply")
    status = wait_text(page, "#extensions_status", "Saved")
    assert "restart" in status
    config = json.loads((data_dir / "config.json").read_text())
    assert config["disabled_extensions"] == ["ui-ext"]
    assert page.errors == []
