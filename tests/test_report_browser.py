"""The report of a real (tiny) run, opened in headless Chromium: every image loads, no console error, text stays text.

Chromium comes from Debian (`apt-get install chromium`, done by .ci/run). The screenshot is kept in
pytest's temporary folder, and copied to $MEDAD_TEST_ARTIFACTS when that is set.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from medad.cli import main
from tests.conftest import write_config
from tests.support.chromium import Chromium, find_chromium

CHROMIUM = find_chromium()
EVIL_LABEL = "<script>alert(1)</script>"

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; "
                                                           ".ci/run installs it so CI runs this test)"),
              pytest.mark.xdist_group("test_report_browser")]  # one worker builds the module's run and report


@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> tuple[int, str, Path]:
    """``medad run`` of the ae detector (plus a failing one whose label is markup) on a tiny synthetic subset."""
    root = tmp_path_factory.mktemp("browser")
    config = write_config(root / "tiny.yaml", name="browser", dataset_params={"n_train": 32, "n_val": 8, "n_test": 16},
                          detectors=[{"name": "ae", "params": {"epochs": 2, "batch_size": 16, "width": 8, "latent": 16}},
                                     {"name": "tests.support.detectors:FailingDetector", "label": EVIL_LABEL}])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["run", "--config", str(config), "--results", str(root / "results"), "--reports",
                       str(root / "reports"), "--run-id", "browser", "--quiet"])
    return status, printed.getvalue(), root / "reports" / "browser" / "index.html"


def test_every_run_ends_with_its_report(run_report):
    status, printed, index = run_report
    assert status == 1  # the failing detector's job failed; the run and its report are complete anyway
    assert f"report: {index}" in printed and index.is_file()


def test_report_loads_in_headless_chromium(run_report, tmp_path):
    index = run_report[2]
    with Chromium(CHROMIUM) as browser:
        browser.load(index)
        assert browser.evaluate("document.body.getAttribute('data-report-ready')") == "yes"
        images = browser.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert len(images) >= 5, images  # ROC/PR, training curves, heatmap, sens/spec, examples
        assert [src for src, complete, width in images if not (complete and width > 0)] == []
        assert browser.evaluate("document.body.getAttribute('data-images-broken')") == "0"
        text = browser.evaluate("document.body.innerText")
        assert EVIL_LABEL in text  # the markup label is shown as text ...
        assert browser.evaluate("document.querySelectorAll('main script').length") == 0  # ... and never became a tag
        assert "deliberate failure inside fit" in text
        # sortable tables: a click on a header orders the rows
        order = browser.evaluate("""(() => { const t = document.getElementById('table-jobs'); const h = t.tHead.rows[0].cells[1];
            h.click(); const first = Array.from(t.tBodies[0].rows).map(r => r.cells[1].textContent);
            h.click(); const second = Array.from(t.tBodies[0].rows).map(r => r.cells[1].textContent);
            return [h.getAttribute('aria-sort'), first, second]; })()""")
        assert order[0] == "descending" and order[1] == sorted(order[1]) and order[2] == sorted(order[2], reverse=True)
        browser.evaluate("window.scrollTo(0, 0)")
        shot = browser.screenshot(tmp_path / "report.png")
        dialogs = [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
        errors = browser.errors()
        # the checks can fail: a page with a missing image and a console error is caught by both
        control = tmp_path / "control.html"
        control.write_text('<img src="missing.png"><script>console.error("boom")</script>')
        browser.load(control)
        assert browser.evaluate("document.images[0].naturalWidth") == 0
        caught = browser.errors()[len(errors):]
        assert any("boom" in e for e in caught) and any("missing.png" in e for e in caught), caught
    assert dialogs == [] and errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    artefacts = os.environ.get("MEDAD_TEST_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artefacts) / "report-screenshot.png")
