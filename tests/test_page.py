"""report.html from a real small sweep, opened in a real headless Chromium (Debian's
chromium and chromium-driver, through selenium): no JavaScript error in the console,
a Pareto point per finished trial, a timeline bar per trial; a screenshot is saved
under the test's tmp dir. Skips, saying why, only where no browser is installed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,2400"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver)
    return webdriver.Chrome(options=opts, service=service)


@pytest.mark.ray
def test_report_html_in_a_real_browser(write_spec, tmp_path):
    spec = write_spec({
        "name": "page",
        "data": {"dataset": "digits", "data_dir": str(tmp_path / "data"), "subset": 512},
        "train": {"model": "mlp", "epochs": 2},
        "search": {"method": "grid", "grid": {"lr": [0.05, 0.1, 0.5]},
                   "objectives": {"test_acc": "max", "train_time_s": "min"}},
        "report": {"target_acc": 80.0},
    })
    res = tmp_path / "res"
    proc = subprocess.run([sys.executable, "experiments/sweep.py", "--config", str(spec),
                           "--storage-path", str(res), "--name", "page"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = res / "page" / "report.html"
    df = pd.read_parquet(res / "page" / "trials.parquet")
    status = df.groupby("trial_index")["status"].first()
    finished = int(status.isin(["COMPLETED", "STOPPED"]).sum())

    driver = browser()
    try:
        driver.get(page.as_uri())
        driver.implicitly_wait(10)
        count = """
            const d = document.getElementById(arguments[0]);
            return d && d.data ? d.data : null;"""
        pareto = driver.execute_script(count, "pareto")
        timeline = driver.execute_script(count, "timeline")
        assert pareto is not None and timeline is not None, "plots not drawn"
        assert sum(len(t.get("x") or []) for t in pareto) == finished
        bars = next(t for t in timeline if t.get("name") == "trial")
        assert len(bars["x"]) == status.size
        # From the command's start: the first trial's bar begins after Ray's start-up.
        assert min(bars["base"]) > 1.0, bars["base"]
        assert len(driver.find_elements("css selector", ".js-plotly-plot")) >= 5
        text = driver.find_element("tag name", "body").text
        assert "What each knob costs" in text and "`lr`" not in text  # code, not backticks
        assert "from the command's start to its trials' end" in text
        driver.save_screenshot(str(tmp_path / "report.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()
    assert (tmp_path / "report.png").stat().st_size > 10_000
