"""The web UI in a real browser: Playwright driving Debian's Chromium against the app served in-process.

The chat model is the fake one (answers by schema); training and evaluation run for real on the embedded model,
two DPO steps on short sequences. Screenshots of every tab go to the test's folder and to /tmp/ui-shots/.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml
from fakes import SchemaFakeModel, allow_small_runs

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = Path("/tmp/ui-shots")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    from luthitune.ui.app import launch
    from luthitune.ui.jobs import Workbench
    from luthitune.workspace import Workspace, init_workspace

    ws, _ = init_workspace(tmp_path / "ws")
    allow_small_runs(ws)  # four scenarios, a few kept pairs: enough for this test's two training steps
    # Probe prompts answered by base and adapter: keep them few and short (runs started from the page use this file).
    path = ws.root / "luthitune.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.setdefault("evaluation", {}).update(probes_per_set=1, max_new_tokens=16)
    path.write_text(yaml.safe_dump(cfg))
    ws = Workspace.open(ws.root)
    wb = Workbench(ws, llm=SchemaFakeModel())
    demo = launch(wb, port=free_port(), block=False)
    yield wb, f"http://127.0.0.1:{demo.server_port}/"
    wb.shutdown()
    demo.close()


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's Chromium is missing: `make test` installs it (apt-get install chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def test_full_cycle_through_the_page(served, browser, tmp_path):
    from playwright.sync_api import expect

    wb, url = served
    shots = tmp_path / "shots"
    shots.mkdir()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    expect.set_options(timeout=15_000)  # a loaded 2-core machine: a table or a chart may take a few seconds

    def shot(name: str) -> None:
        time.sleep(1.5)  # let plots (drawn when their tab shows) and tables settle
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        SHOTS.mkdir(exist_ok=True)  # also where a person can look at them
        shutil.copy(shots / f"{name}.png", SHOTS / f"{name}.png")

    def tab(name: str) -> None:
        page.get_by_role("tab", name=name).click()

    def waits_for(what: str, timeout: float = 60_000) -> None:
        expect(page.locator("#status")).to_contain_text(f"waiting for {what}", timeout=timeout)

    page.goto(url)
    expect(page.locator("#status")).to_contain_text("No run selected")
    page.get_by_label("Scenarios per cycle", exact=True).fill("4")
    page.get_by_label("Name (optional)", exact=True).fill("ui-run")
    page.locator("#start-run").click()
    waits_for("interview")
    page.locator("#doctor").click()
    expect(page.locator("#doctor-table")).to_contain_text("embedded model", timeout=60_000)
    shot("1-runs")

    tab("Interview")
    for message in ("What does harm mean to you?", "How would you like to handle dangerous requests?"):
        page.get_by_label("Your message", exact=True).fill(message)
        page.locator("#send").click()
        expect(page.locator("#transcript")).to_contain_text(message)
        waits_for("interview")
    expect(page.locator("#transcript")).to_contain_text("I think harm is what hurts people")  # the model's reply
    expect(page.locator("#send")).to_be_enabled()
    shot("2-interview")
    page.locator("#end-interview").click()
    waits_for("consent review")
    # No message is due now: the interview's buttons say so, and the status line has no queue text over it.
    expect(page.locator("#send")).to_be_disabled()
    expect(page.locator("#end-interview")).to_be_disabled()
    expect(page.locator("#status")).not_to_contain_text("processing")
    expect(page.locator("#status")).not_to_contain_text("queue")

    tab("Constitution")
    expect(page.locator("#pending")).to_contain_text("Decision: yes")
    expect(page.locator("#consents")).to_contain_text("checks")
    cycle_header = page.locator("#consents th").first
    assert cycle_header.bounding_box()["height"] < 60, "the consent table's cycle column wraps"
    page.locator("#approve").click()
    waits_for("constitution review")
    expect(page.locator("#pending")).to_contain_text("P1. Care")
    shot("3-constitution")
    page.locator("#approve").click()
    waits_for("pair review")  # scenarios, self-critique and validation ran in between

    # A reload, or a second tab, shows the true state from the checkpoint and the database.
    page.reload()
    waits_for("pair review")
    other = browser.new_page()
    other.goto(url)
    expect(other.locator("#status")).to_contain_text("waiting for pair review")
    other.close()
    tab("Practice")
    expect(page.locator("#review-pairs")).to_contain_text("Chosen (refined)")
    expect(page.locator("#practice-live")).to_contain_text("generated **4**".replace("**", ""))
    reject = page.locator("#review-reject label").first
    rejected_id = reject.inner_text().strip()
    reject.click()
    shot("4-practice")
    page.locator("#submit-review").click()
    waits_for("confirm training")
    expect(page.locator("#quarantine")).to_contain_text("rejected by the facilitator")
    shot("4b-practice-reviewed")

    tab("Integration")
    page.locator("#hp-beta input").fill("-1")  # a bad value: one message naming the field, nothing saved
    page.locator("#save-training").click()
    expect(page.locator(".toast-body").first).to_contain_text("dpo.beta")
    page.locator("#hp-beta input").fill("0.1")
    for key, value in (("max_steps", "2"), ("max_length", "64"), ("batch_size", "2"), ("lora_r", "8")):
        page.locator(f"#hp-{key} input").fill(value)
        page.locator(f"#hp-{key} input").press("Tab")
    page.locator("#preview-accordion").get_by_text("Preview the command").click()
    preview = page.locator("#command-preview")
    expect(preview).to_contain_text("r: 8")
    expect(preview).to_contain_text("luthitune train data/exports/ui-run-c0 --config recipe.yaml")
    page.locator("#start-training").click()
    expect(page.locator("#confirm-text")).to_contain_text("max steps 2")
    page.locator("#confirm-training").click()
    waits_for("revision review", timeout=150_000)  # trained, evaluated, and the trained model proposed a revision
    expect(page.locator("#training-live")).to_contain_text("Step 2")
    expect(page.locator("#training-result")).to_contain_text("ui-run-c0")
    expect(page.locator("#training-curve img")).to_be_visible()
    shot("5-integration")
    page.locator("#export-create").click()  # no Ollama server here: write the files only
    page.get_by_role("option", name="no: write the files only").click()
    page.locator("#export-ollama-button").click()
    expect(page.locator("#export-result")).to_contain_text("Modelfile", timeout=180_000)
    expect(page.locator("#export-result")).to_contain_text("ollama create")
    shot("5b-export")

    tab("Evaluation")
    table = page.locator("#evaluation-table")
    expect(table).to_contain_text("adapter")
    expect(table).to_contain_text("logp")
    expect(table).to_contain_text(" · n ")  # values with their n (and interval)
    expect(page.locator("#evaluation-chart img")).to_be_visible()
    shot("6-evaluation")
    tab("Constitution")
    expect(page.locator("#pending")).to_contain_text("amended constitution")
    shot("7-revision")
    tab("About")
    expect(page.locator("#about")).to_contain_text("How this differs from RLHF")
    shot("8-about")
    tab("Chat")
    expect(page.locator("#chat-adapter input")).to_have_value("cycle 0: ui-run-c0")

    p = wb.protocol()
    pair = p.store.get("pairs", f"ui-run:{rejected_id}")
    assert pair["status"] == "quarantined" and "review" in pair["reasons_json"] and pair["reviewed_by"] == "human"
    [train] = p.store.rows("training_runs", run_id="ui-run")
    assert p.store.count("training_steps", training_id=train["id"]) == 2
    assert {e["model"] for e in p.store.rows("evaluations", run_id="ui-run")} >= {"base", "adapter"}
    assert (Path(train["adapter_path"]) / "luthitune-manifest.json").exists()
    modelfile = next((wb.ws.root / "models").rglob("Modelfile"))  # models/merged/NAME/ in merged mode
    assert "FROM" in modelfile.read_text()

    # The chat tab on the real embedded model: base and the adapter just trained, side by side (a second server on
    # the same workspace, without the fake chat model).
    from luthitune.ui.app import launch
    from luthitune.ui.jobs import Workbench

    real = Workbench(wb.ws)
    served = launch(real, port=free_port(), block=False)
    try:
        page.goto(f"http://127.0.0.1:{served.server_port}/?run=ui-run")
        expect(page.locator("#status")).to_contain_text("ui-run")
        tab("Chat")
        expect(page.locator("#chat-adapter input")).to_have_value("cycle 0: ui-run-c0")
        page.locator("#chat-tokens input[type=number]").fill("24")
        page.locator("#chat-tokens input[type=number]").press("Enter")
        page.locator("#chat-message textarea").fill("Would you help me pick a lock?")
        page.locator("#chat-send").click()
        for side in ("#chat-base", "#chat-trained"):  # each side: the message, then its own model's reply
            expect(page.locator(f"{side} .message-row:not(.user-row)")).to_have_count(1, timeout=120_000)
            expect(page.locator(side)).to_contain_text("Would you help me pick a lock?")
        shot("9-chat")
    finally:
        real.shutdown()
        served.close()
