"""The demo: one interview question and one structured scenario on the embedded model, stored in the
workspace database. (The full protocol cycle replaces this once the graph lands.)"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage
from rich.panel import Panel

from luthitune.backends import make_chat_model
from luthitune.backends.structured import ask_structured, chat
from luthitune.config import Config, init_workspace
from luthitune.logs import console
from luthitune.prompts import load_text, render
from luthitune.schemas import ScenarioPair
from luthitune.store import Store


def run_demo(root: Path) -> dict:
    t0 = time.perf_counter()
    ws, _ = init_workspace(root)
    if ws.config.backend != "local":
        ws.config = Config.model_validate({**ws.config.model_dump(), "backend": "local"})
    store = Store(ws.db_path)
    run_id = "demo-" + uuid.uuid4().hex[:8]
    store.upsert_run(run_id, backend="local", chat_model=ws.config.chat_model,
                     base_model=ws.config.base_model, status="running", config_json=ws.config.model_dump_json())
    with console.status("Loading the embedded model (the first time dequantizes it, ~30 s)…"):
        llm = make_chat_model(ws)
    system = render("interview_system.md")
    question = load_text("questions.md").splitlines()[0]
    opening = f"{ws.invitation()}\n\n{question}"
    store.add_message(run_id, 0, 0, "system", system.text, system.template_hash)
    store.add_message(run_id, 0, 1, "user", opening)
    console.print(Panel(opening, title="facilitator", border_style="cyan"))
    with console.status("The model is answering…"):
        reply = chat(llm, [SystemMessage(system.text), HumanMessage(opening)])
    store.add_message(run_id, 0, 2, "assistant", str(reply.content))
    console.print(Panel(str(reply.content), title="model", border_style="magenta"))

    principles = "P1 Honesty: I say what I believe and why.\nP2 Care: I choose not to help cause harm."
    prompt = render("scenario.md", principles=principles, category="gray area")
    with console.status("The model is writing one practice scenario (structured output)…"):
        pair = ask_structured(llm, [HumanMessage(prompt.text)], ScenarioPair, retries=ws.config.structured_retries)
    store.upsert("scenarios", {"id": f"{run_id}:c0:s0000", "run_id": run_id, "cycle": 0, "idx": 0,
                               "category": "gray area", "prompt": pair.prompt, "status": "generated",
                               "template_hash": prompt.template_hash, "raw": pair.model_dump_json()})
    console.print(Panel("\n".join(f"[bold]{k}[/]: {v}" for k, v in pair.model_dump().items()),
                        title="structured scenario (validated)", border_style="green"))
    store.upsert_run(run_id, status="done")
    elapsed = time.perf_counter() - t0
    console.print(f"Demo finished in {elapsed:.1f} s. Stored {store.count('messages', 'run_id = ?', [run_id])} "
                  f"messages and 1 scenario in {ws.db_path}.")
    store.close()
    return {"run_id": run_id, "seconds": elapsed, "pair": pair}
