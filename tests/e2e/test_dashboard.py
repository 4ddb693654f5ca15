"""The dashboard in headless Chromium (Debian's package) against `fdamerge up`: enter the key, submit an
FDA merge from the form, watch it finish, see the construction-cosine plot; a screenshot is kept."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_embedded_stack import start_up, stop_group
from tests.support.services import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A slow network: the jobs list answers 1.5 s late, so it arrives after the user has moved on to the
# submit form. A page that rendered stale data would replace the form (seen in CI, where the test then
# submitted the form's placeholder config).
SLOW_JOBS_LIST = """
const realFetch = window.fetch;
window.fetch = async (url, options) => {
  const response = await realFetch(url, options);
  if (String(url).startsWith("/v1/merge-jobs?limit")) {
    await new Promise((done) => setTimeout(done, 1500));
    window.lateListsDelivered = (window.lateListsDelivered || 0) + 1;
  }
  return response;
};
"""
SHOTS = Path(os.environ.get("FDA_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "var" / "test-artifacts"))


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll from Python: the page's CSP forbids eval, which page.wait_for_function needs."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the page never got there"
        time.sleep(0.1)


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),  # in CI a missing browser is a failure, not a skip
    reason="chromium not installed (scripts/setup.sh test installs it)",
)
def test_submit_watch_and_plot_a_job_in_the_browser(llama, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a loaded 2-core machine, and a jobs list slowed on purpose

    base, experts = llama
    config = {
        "method": "fda", "base_model": str(base), "models": [{"model": str(e)} for e in experts],
        "parameters": {"anchors": 4, "construction_steps": 20, "adaptation_epochs": 3},
    }  # fmt: skip
    port = free_port()
    process, key = start_up(tmp_path, port, allow=[base.parent])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.add_init_script(SLOW_JOBS_LIST)
            errors: list[str] = []
            refused = ("Refused to", "Content Security Policy")
            page.on(
                "console",
                lambda message: errors.append(message.text) if any(r in message.text for r in refused) else None,
            )
            page.on("pageerror", lambda error: errors.append(str(error)))
            answer = page.goto(f"http://127.0.0.1:{port}/dashboard")
            assert answer is not None and "script-src 'self'" in answer.headers["content-security-policy"]
            assert answer.headers["x-frame-options"] == "DENY"
            expect(page.locator("#need-key")).to_be_visible()
            page.fill("#key", key)
            page.click("#save-key")
            page.goto(f"http://127.0.0.1:{port}/dashboard#/submit")
            page.fill("#config", json.dumps(config, indent=2))
            wait_until(lambda: page.evaluate("window.lateListsDelivered || 0") >= 1)  # it must not replace the form …
            page.wait_for_timeout(500)  # … once parsed and rendered (microseconds after delivery)
            assert json.loads(page.input_value("#config")) == config
            page.click("#submit")
            page.wait_for_url("**/dashboard#/jobs/mj_*")
            expect(page.locator("h2 .status")).to_have_text("succeeded", timeout=120_000)
            expect(page.locator("svg.plot").first).to_be_visible()
            assert page.locator("svg.plot polyline.series").count() == 2 + 2  # a line per task, first/last loss
            assert page.locator("#artifacts a").filter(has_text="model.safetensors").count() == 1
            assert "construct" in page.inner_text("#events") or "running" in page.inner_text("#events")
            SHOTS.mkdir(parents=True, exist_ok=True)
            shot = SHOTS / "dashboard-job.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\ndashboard screenshot: {shot}")
            page.goto(f"http://127.0.0.1:{port}/dashboard#/jobs")
            expect(page.locator("#jobs .succeeded")).to_have_count(1)
            # the form's own example runs on the stack that serves it (the demo checkpoints fdamerge up built)
            page.goto(f"http://127.0.0.1:{port}/dashboard#/submit")
            expect(page.locator("#config")).to_have_value(re.compile(r"demo/models/base"))
            page.click("#submit")
            page.wait_for_url("**/dashboard#/jobs/mj_*")
            expect(page.locator("h2 .status")).to_have_text("succeeded", timeout=120_000)
            assert errors == []  # nothing the page's CSP refused, no script error
            browser.close()
    finally:
        stop_group(process)
