"""report.html opened in headless Chromium, hostile data shown as text, and `finetune-recipes predict` on the demo."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, subprocess_env
from PIL import Image

from common.training.html_report import write_html_report
from recipes import sentiment

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
CSP = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?')
# Injected into a copy of the page: records what the browser made of it once loaded. The copy drops the page's
# Content-Security-Policy, which would block this script too; so hostile data is shown inert by escaping alone.
CHECKER = """<script>
window.alerts = 0; window.alert = function () { window.alerts += 1; };
window.addEventListener("load", function () {
  var out = document.createElement("pre"); out.id = "browser-check";
  out.textContent = JSON.stringify({
    images: Array.from(document.images).map(function (i) { return {alt: i.alt, width: i.naturalWidth}; }),
    scripts: document.scripts.length, alerts: window.alerts, text: document.body.innerText,
    cells: Array.from(document.querySelectorAll("table")).map(function (t) {
      return Array.from(t.rows).map(function (r) { return Array.from(r.cells).map(function (c) { return c.textContent; }); });
    })});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> list[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("Chromium is not installed: `make install` installs it (Debian package chromium).")
    return [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]


def browse(chromium: list[str], report: Path, screenshot: Path | None = None) -> dict:
    """What Chromium shows of the page: its text, tables, images (decoded width) and scripts run."""
    checked = report.with_name("checked-" + report.name)
    checked.write_text(CSP.sub("", report.read_text(encoding="utf-8")).replace("<head>", "<head>" + CHECKER, 1),
                       encoding="utf-8")
    dom = subprocess.run([*chromium, "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    checked.unlink()
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    assert found, f"the page never finished loading: {dom[:500]}"
    if screenshot is not None:
        subprocess.run([*chromium, "--window-size=1200,3000", f"--screenshot={screenshot}", report.as_uri()],
                       capture_output=True, timeout=120, check=True)
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    """The demo as `make demo` runs it (its bundled data and model), for 2 epochs."""
    out = tmp_path_factory.mktemp("demo") / "sentiment-demo"
    results = sentiment.main(["--output_dir", str(out), "--num_train_epochs", "2", "--disable_tqdm", "true"])
    return out, results


@pytest.mark.slow
def test_demo_report_opens_in_chromium_with_metrics_curves_and_confusion_matrix(demo, chromium, tmp_path):
    out, results = demo
    page = out / "report.html"
    assert CSP.search(page.read_text()), "the report forbids scripts and remote loads"
    shot = tmp_path / "report.png"
    seen = browse(chromium, page, shot)

    images = {image["alt"]: image["width"] for image in seen["images"]}
    assert {"Training curves", "Confusion matrix (validation)"} <= set(images)
    assert all(width > 0 for width in images.values()), images  # every data-URI image decoded
    text = seen["text"]
    for heading in ("Settings", "Metrics", "Error analysis", "before fine-tuning", "constant baseline"):
        assert heading in text
    metrics = next(t for t in seen["cells"] if t[0][:2] == ["metric", "before fine-tuning"])
    row = {r[0]: r[1:] for r in metrics}["accuracy"]
    assert float(row[1]) == pytest.approx(results["eval_accuracy"], abs=1e-4)  # validation, after fine-tuning
    assert float(row[0]) == pytest.approx(results["before_accuracy"], abs=1e-4)
    assert "majority class" in text and str(ROOT / "recipes/data/sentiment_demo/train.csv") in text
    errors = next(t for t in seen["cells"] if t[0][:3] == ["text", "true_label", "predicted_label"])
    assert len(errors) == 1 + len(pd.read_csv(out / "errors.csv"))
    assert seen["scripts"] == 1 and seen["alerts"] == 0  # the checker alone: the page has no script

    width, height = Image.open(shot).size
    assert (width, height) == (1200, 3000)
    colours = Image.open(shot).convert("RGB").resize((60, 150)).getcolors(60 * 150)
    assert len(colours) > 50  # rendered plots and tables, not a blank page


def test_hostile_strings_in_the_data_show_as_text_and_never_run(chromium, tmp_path):
    hostile = ["<script>alert(1)</script>", "</td></tr></table><img src=x onerror=alert(2)>", "a & b \"quoted\" 'x'"]
    out = tmp_path / "run"
    out.mkdir()
    pd.DataFrame({"text": hostile, "true_label": ["</td>", "<b>bold</b>", "ok"],
                  "predicted_label": ["ok", "</td>", "ok"], "confidence": [0.9, 0.8, 0.7],
                  "loss": [2.0, 1.5, 0.1]}).to_csv(out / "errors.csv", index=False)
    pd.DataFrame({"true_label": ["</td>"], "predicted_label": ["<script>alert(3)</script>"],
                  "count": [4]}).to_csv(out / "confused_pairs.csv", index=False)
    (out / "all_results.json").write_text(json.dumps({
        "eval_accuracy": 0.5, "baseline_description": "majority class '<script>alert(4)</script>'",
        "error_analysis": "rows <i>x</i>"}))
    (out / "run_config.json").write_text(json.dumps({
        "recipe": "text_classification", "model_name_or_path": "<script>alert(5)</script>",
        "options": {"train_file": "/data/</td><script>alert(6)</script>.csv"}}))
    seen = browse(chromium, write_html_report(out))

    assert seen["alerts"] == 0 and seen["scripts"] == 1 and seen["images"] == []
    for text in [*hostile, "</td>", "<b>bold</b>", "majority class '<script>alert(4)</script>'",
                 "/data/</td><script>alert(6)</script>.csv"]:
        assert text in seen["text"], text
    errors = next(t for t in seen["cells"] if t[0][:2] == ["text", "true_label"])
    assert [row[:2] for row in errors[1:]] == [[hostile[0], "</td>"], [hostile[1], "<b>bold</b>"], [hostile[2], "ok"]]
    assert all(len(row) == 5 for row in errors)  # a "</td>" in a cell stays in its cell


@pytest.mark.slow
def test_predict_on_the_demo_writes_one_row_per_input_with_a_progress_bar(demo, tmp_path):
    out, _ = demo
    texts = ["I loved every minute of it.", "Terrible, it broke on day one.", "Calm, friendly, spotless.",
             "Never again: cold food and rude staff."] * 10
    reviews = tmp_path / "reviews.csv"
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(reviews, index=False)
    command = [sys.executable, "-m", "common.cli", "predict", str(out), "--input", str(reviews), "--output"]
    done = subprocess.run([*command, str(tmp_path / "preds.csv"), "--batch_size", "8"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"predict \(texts\): 100%.*40/40", done.stderr)  # tqdm's bar, counting rows
    predictions = pd.read_csv(tmp_path / "preds.csv")
    assert list(predictions.columns) == ["text", "prediction", "score", "score_negative", "score_positive"]
    assert list(predictions["text"]) == texts
    assert list(predictions["prediction"][:4]) == ["positive", "negative", "positive", "negative"]

    # An existing output is never overwritten; an empty text fails with its row, or is skipped when asked.
    again = subprocess.run([*command, str(tmp_path / "preds.csv")], cwd=ROOT, env=subprocess_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr
    pd.DataFrame({"text": ["Great value.", None, "Awful."]}).to_csv(reviews, index=False)
    bad = subprocess.run([*command, str(tmp_path / "bad.csv")], cwd=ROOT, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "row 2: empty 'text'" in bad.stderr and "--skip_bad_examples" in bad.stderr
    skipped = subprocess.run([*command, str(tmp_path / "skipped.csv"), "--skip_bad_examples", "true"], cwd=ROOT,
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and list(pd.read_csv(tmp_path / "skipped.csv")["text"]) == ["Great value.", "Awful."]
