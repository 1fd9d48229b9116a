"""RepUX Web end to end in headless Chromium (Playwright client, Debian's chromium) on the real CT.

open -> segment (progress advances, 4 organs) -> paint a stroke on the axial view (voxels grow) -> add the
case twice -> fine-tune a few iterations (the chart gains points) -> the new model is listed ->
re-segment (comparison) -> rank the remaining volume (uncertainty overlay).

Screenshots of every step go to ``Testing/artifacts/web/`` (git-ignored; CI keeps them as artefacts).
Every wait waits for a condition on the page, never a fixed time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, SHARED_DATA

pytestmark = [pytest.mark.web, pytest.mark.realdata, pytest.mark.slicer]

CT_FOLDER = SHARED_DATA / "ct-abdomen"
CT_NAME = "example_ct.nii.gz"
ARTIFACTS = REPO / "Testing" / "artifacts" / "web"
SERVER_START_S = 120
STEP_S = 120


def _chromium() -> str | None:
    return os.environ.get("REPUX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(tmp_path):
    """``repux web`` in a child process (its own process group), on a free port of 127.0.0.1."""
    pytest.importorskip("trame_slicer", reason='trame-slicer is not installed (pip install -e ".[web]")')
    if os.name == "nt":
        pytest.skip("the server's process group is stopped with POSIX signals")
    if not (CT_FOLDER / CT_NAME).is_file():
        pytest.skip(f"real CT not found: {CT_FOLDER / CT_NAME} (../shared/data is absent)")
    env = dict(os.environ, REPUX_HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "server.log", "w+", encoding="utf-8")
    command = [sys.executable, "-m", "repux", "web", "--port", "0", "--root", str(CT_FOLDER), "--no-open", "--dataset", str(tmp_path / "training-set")]
    command += ["--model", "repux-tiny-phantom"]  # the 4-organ phantom model: quick to segment and to fine-tune in a test
    command += ["--max-upload-mb", "2"]  # the real CT (2.2 MB) is then too large to upload: the limit's message is checked
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO, start_new_session=True)
    url = None
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line or "")
        if match:
            url = match.group(1)
            break
    try:
        if url is None:
            log.seek(0)
            pytest.fail(f"repux web did not print its URL within {SERVER_START_S} s (exit code {process.poll()}); log:\n{log.read()[-3000:]}")
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # the server's own group: repux web and its repux children
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


@pytest.fixture
def page(server):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright; used as a client only)")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium, or set REPUX_CHROMIUM to a Chromium binary)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": 1600, "height": 1000})
            pg.set_default_timeout(STEP_S * 1000)
            pg.goto(server)
            yield pg
        finally:
            browser.close()


def wait_until(predicate, what: str, timeout: float = STEP_S, interval: float = 0.25):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as err:
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def frame(pg) -> str:
    """The current image of the axial view (a new frame has a new source)."""
    return pg.locator("img.image-display-area").first.get_attribute("src") or ""


def voxels(pg, organ: str) -> int:
    return int(pg.get_by_test_id(f"segment-voxels-{organ}").inner_text().strip())


def test_web_loop_in_browser(page, tmp_path):
    pg = page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    shots = []

    def shot(name: str) -> None:
        path = ARTIFACTS / f"{len(shots) + 1:02d}-{name}.png"
        pg.screenshot(path=str(path))
        shots.append(path)

    def notice() -> str:
        return pg.get_by_test_id("notice").inner_text()

    # 0. bound to 127.0.0.1 only (the default): the machine's other address refuses the port
    import socket

    port = int(re.search(r":(\d+)/", pg.url).group(1))
    address = non_loopback_address()
    if address is not None:
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
            pass

    # 1. the page is up with the demo phantom ready
    pg.get_by_test_id("segment-start").wait_for()
    wait_until(lambda: pg.locator("img.image-display-area").count() >= 3, "the slice views")
    wait_until(lambda: "demo phantom" in pg.get_by_test_id("volume-select").inner_text(), "the demo phantom")
    shot("start-demo")

    # uploads are checked before loading: not an image, over the limit (--max-upload-mb 2)
    fake = tmp_path / "report.nii.gz"
    fake.write_bytes(b"%PDF-1.7 not an image" * 100)
    upload = pg.get_by_test_id("upload-input").locator("input[type=file]")
    upload.set_input_files(str(fake))
    wait_until(lambda: "report.nii.gz does not look like a .nii.gz image" in notice(), "the refusal of a non-image upload")
    upload.set_input_files(str(CT_FOLDER / CT_NAME))
    wait_until(lambda: f"{CT_NAME} is 2.2 MB; the upload limit is 2 MB" in notice(), "the refusal of an oversized upload")
    assert pg.get_by_test_id("volume-select").inner_text().count(".nii.gz") == 0, "a refused upload must not be loaded"

    # 2. open the real CT from the server-side file browser
    pg.get_by_test_id(f"browser-entry-{CT_NAME}").click()
    wait_until(lambda: "opened" in notice() and "example_ct" in notice(), "the CT to open")
    wait_until(lambda: "example_ct" in pg.get_by_test_id("volume-select").inner_text(), "the CT to be the current volume")
    shot("open-ct")

    # 3. segment: the progress bar advances, 4 organ segments are listed
    pg.get_by_test_id("segment-start").click()
    seen = set()

    def segmented() -> bool:
        seen.add(int(pg.get_by_test_id("segment-progress").get_attribute("data-value") or 0))
        return pg.locator('[data-testid^="segment-row-"]').count() == 4 and "segmented" in notice()

    wait_until(segmented, "4 organ segments", interval=0.1)
    assert max(seen) == 100 and len(seen) >= 2, f"the progress bar did not advance: {sorted(seen)}"
    organs = [pg.locator('[data-testid^="segment-row-"]').nth(i).get_attribute("data-testid")[len("segment-row-") :] for i in range(4)]
    assert organs == ["liver", "kidney", "spleen", "pancreas"]
    assert voxels(pg, "liver") > 1000
    shot("segmented")

    # 4. paint a stroke on the axial view (the first, largest view): the active segment (liver) grows
    before = voxels(pg, "liver")
    pg.get_by_test_id("effect-paint").click()
    axial = pg.locator("img.image-display-area").first
    box = axial.bounding_box()
    x0, y = box["x"] + 0.35 * box["width"], box["y"] + 0.45 * box["height"]
    pg.mouse.move(x0, y)
    pg.mouse.down()
    for i in range(1, 31):
        pg.mouse.move(x0 + 5 * i, y + (i % 4), steps=2)
    pg.mouse.up()
    painted = wait_until(lambda: voxels(pg, "liver") > before and voxels(pg, "liver"), "the painted voxels to be counted")
    assert painted > before
    pg.get_by_test_id("effect-none").click()
    shot("painted")

    # 5. add the case twice: two volumes in the training set
    pg.get_by_test_id("case-add").click()
    wait_until(lambda: pg.get_by_test_id("case-count").inner_text().startswith("1 "), "the first case")
    pg.get_by_test_id("case-add").click()
    wait_until(lambda: pg.get_by_test_id("case-count").inner_text().startswith("2 "), "the second case")
    shot("curated")

    # 6. fine-tune a few iterations with small crops: the chart gains points, the new model is listed
    pg.get_by_test_id("train-iterations").locator("input").fill("4")
    pg.get_by_test_id("train-roi").click()
    pg.locator(".v-overlay-container .v-list-item", has_text=re.compile(r"^\s*32\s*$")).first.click()
    pg.get_by_test_id("train-start").click()
    points = []

    def trained() -> bool:
        points.append(int(pg.get_by_test_id("train-chart-points").inner_text().split()[0]))
        return "succeeded" in pg.get_by_test_id("train-status").inner_text()

    wait_until(trained, "the fine-tuning to finish", timeout=180, interval=0.2)
    final_points = int(pg.get_by_test_id("train-chart-points").inner_text().split()[0])
    assert final_points >= 4 and max(points + [final_points]) > min(points), f"the chart did not gain points: {points} -> {final_points}"
    assert pg.get_by_test_id("train-chart").locator("polyline").count() >= 1
    new_model = re.search(r"succeeded (\S+-ft-\S+)", pg.get_by_test_id("train-status").inner_text()).group(1)
    wait_until(lambda: new_model in notice(), "the new-model notice")
    pg.get_by_test_id("model-select").click()
    wait_until(lambda: pg.locator(".v-overlay-container .v-list-item", has_text=new_model).count() == 1, "the new model in the model list")
    pg.keyboard.press("Escape")
    shot("finetuned")

    # 7. re-segment the CT with the new model (selected) and compare with the old result
    pg.get_by_test_id("segment-start").click()
    wait_until(
        lambda: pg.get_by_test_id("compare-table").is_visible() and pg.get_by_test_id("compare-table").locator("tbody tr").count() == 2, "the comparison"
    )
    assert new_model in pg.get_by_test_id("compare-table").inner_text()
    shot("resegmented")

    # 8. rank the remaining volume (the demo phantom) by uncertainty; its overlay is shown
    before = frame(pg)
    pg.get_by_test_id("rank-start").click()
    wait_until(lambda: pg.get_by_test_id("rank-row-0").is_visible() and "next case" in notice(), "the ranking")
    wait_until(lambda: frame(pg) != before, "the axial view to show the overlay")
    assert re.search(r"0\.\d{4}", pg.get_by_test_id("rank-row-0").inner_text()), pg.get_by_test_id("rank-row-0").inner_text()
    assert "demo phantom" in pg.get_by_test_id("rank-row-0").inner_text()
    shot("ranked")
    assert all(p.stat().st_size > 10_000 for p in shots)
    print(f"RepUX Web loop in the browser: {time.monotonic() - started:.0f} s; screenshots in {ARTIFACTS}")


def test_click_to_segment_in_browser(page):
    """Initialize the click session on the demo phantom, click the liver in the axial view: the liver segment appears; Undo."""
    pg = page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    status = pg.get_by_test_id("click-status")
    wait_until(lambda: pg.locator("img.image-display-area").count() >= 3, "the slice views")
    wait_until(lambda: "demo phantom" in pg.get_by_test_id("volume-select").inner_text(), "the demo phantom")
    pg.get_by_test_id("click-start").click()
    wait_until(lambda: status.get_attribute("data-status") == "ready", "the click session to open", timeout=180)
    assert pg.locator('[data-testid^="segment-row-"]').count() == 0

    # the liver lies on the patient's right: the left of the axial view (radiological display); scan a row of points
    # there until a click answers with the liver (a click on fat between organs answers "no organ here" and changes nothing)
    axial = pg.locator("img.image-display-area").first
    box = axial.bounding_box()
    answers = []
    for fx, fy in [(fx, fy) for fy in (0.45, 0.4, 0.5, 0.35, 0.55) for fx in (0.12, 0.17, 0.22, 0.27, 0.32, 0.37)]:
        before = int(status.get_attribute("data-answers") or 0)
        pg.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        wait_until(lambda: int(status.get_attribute("data-answers") or 0) > before, f"the answer to the click at {fx:.2f}, {fy:.2f} of the view", timeout=120)
        answers.append(status.inner_text())
        if status.inner_text().startswith("liver"):
            break
    assert status.inner_text().startswith("liver"), f"no click found the liver: {answers}"
    assert re.search(r" \d+\.\d\d s$", status.inner_text()), status.inner_text()  # the click's latency
    wait_until(lambda: pg.get_by_test_id("segment-row-liver").is_visible(), "the liver segment in the table")
    assert voxels(pg, "liver") > 1000
    assert pg.locator('[data-testid^="segment-row-"]').count() == 1  # only the clicked organ
    pg.screenshot(path=str(ARTIFACTS / "click-liver.png"))
    pg.get_by_test_id("click-undo").click()
    wait_until(lambda: pg.locator('[data-testid^="segment-row-"]').count() == 0, "Undo to remove the liver segment")
    pg.get_by_test_id("click-stop").click()
    wait_until(lambda: status.get_attribute("data-status") == "off", "the click session to end")
