"""The local backend on the real embedded model (SmolLM2-135M-Instruct)."""

import time

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage

from luthitune.backends import local_runtime, make_chat_model
from luthitune.backends.local import LocalChatModel
from luthitune.backends.structured import chat, generate_structured
from luthitune.prompts import render
from luthitune.schemas import ScenarioPair


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from luthitune.workspace import init_workspace

    ws, _ = init_workspace(tmp_path_factory.mktemp("ws"))
    return ws


@pytest.fixture(scope="module")
def llm(ws) -> LocalChatModel:
    return make_chat_model(ws)


@pytest.fixture(scope="module")
def fp32(ws):
    """A float32 runtime of its own, for the tests of exact equalities: the shared one's precision is chosen when it
    is first loaded in this process, and ``compute.precision: auto`` takes bf16 where a timing measurement favours
    it, where a batch's kernels round differently from a single sequence's."""
    from luthitune.backends import local_model_dir
    from luthitune.backends.local import LocalRuntime

    return LocalRuntime(local_model_dir(ws), compute=ws.config.compute.model_copy(update={"precision": "fp32"}))


def test_chat_reply(llm):
    reply = chat(llm, [SystemMessage("Answer in one sentence."), HumanMessage("What is consent?")])
    assert isinstance(reply.content, str) and len(reply.content.split()) >= 3
    assert reply.usage_metadata["output_tokens"] > 0


def test_ten_of_ten_structured_scenarios_validate(llm):
    principles = "P1 Honesty: I say what I believe and why.\nP2 Care: I choose not to help cause harm."
    categories = ["clearly harmful", "gray area", "dual-use", "emotional framing", "benign but sensitive"]
    convs = [
        [HumanMessage(render("scenario.md", principles=principles, category=categories[i % 5]).text)] for i in range(10)
    ]
    t0 = time.perf_counter()
    out = generate_structured(llm, convs, ScenarioPair, retries=0)  # no retries: the constraint alone
    elapsed = time.perf_counter() - t0
    valid = [o for o in out if isinstance(o, ScenarioPair)]
    assert len(valid) == 10, [str(o)[:200] for o in out if not isinstance(o, ScenarioPair)]
    for pair in valid:
        assert all(v.strip() for v in pair.model_dump().values())
    print(f"10 structured scenarios in {elapsed:.1f} s")


def test_batch_matches_single_generation_greedy(fp32):
    rt = fp32
    convs = [[{"role": "user", "content": q}] for q in ("Say hello.", "Name a colour and explain why you like it.")]
    single = [rt.generate([c], max_new_tokens=12, temperature=0)[0].text for c in convs]
    batched = [g.text for g in rt.generate(convs, max_new_tokens=12, temperature=0)]
    assert batched == single  # left padding does not change greedy answers


def test_a_follow_up_joins_the_running_batch_and_answers_as_if_asked_alone(fp32):
    """A retry handed back by ``on_done`` runs in the same batch (sharing the cached prefix, joined to other
    sequences' caches) and, greedy, writes what the same conversation writes asked on its own."""
    rt = fp32
    system = {"role": "system", "content": "You are a helpful assistant. Answer briefly and plainly, in English."}
    convs = [[system, {"role": "user", "content": q}] for q in ("Say hello.", "Name a colour and explain why.")]
    follow = [*convs[0], {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Now say goodbye."}]
    seen: list[int] = []

    def on_done(i, g):
        seen.append(i)
        return follow if (i == 0 and seen.count(0) == 1) else None

    out = rt.generate(convs, max_new_tokens=16, temperature=0, on_done=on_done)
    assert sorted(seen) == [0, 0, 1]
    alone = rt.generate([follow, convs[1]], max_new_tokens=16, temperature=0)
    assert out[0].text == alone[0].text and out[1].text == alone[1].text
    assert out[0].prompt_tokens > alone[1].prompt_tokens  # the follow-up's longer prompt, not the first answer


def test_lora_adapter_switches_on_and_off_on_same_weights(ws, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from luthitune.backends.local import column_major_weights

    rt = local_runtime(ws)  # shared in this process: an earlier test may have left adapters loaded
    ids = rt.tokenizer("Consent matters because", return_tensors="pt").input_ids

    # The reference: a separate, freshly loaded copy of the base weights.
    # In the runtime's precision (compute.precision auto may have measured bf16 faster on this machine).
    copy = AutoModelForCausalLM.from_pretrained(str(rt.model_dir), dtype=rt.model.dtype).eval()
    column_major_weights(copy)  # the runtime's memory layout, so both run the same kernels
    with torch.inference_mode():
        base = copy(ids).logits[0, -1].float()
    # An adapter with random (non-zero) LoRA weights, made on that copy.
    peft_model = get_peft_model(copy, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")

    def logits():
        with torch.inference_mode():
            return rt.model(ids).logits[0, -1].float()

    with rt.adapter(None):
        before = logits()  # the runtime's own base answer, on its own kernels
    rt.load_adapter(tmp_path / "adapter", "random")
    with rt.adapter("random"):
        adapted = logits()
        assert rt.active_adapter == "random"
    with rt.adapter(None):
        disabled = logits()
        assert rt.active_adapter is None
    assert not torch.allclose(before, adapted, atol=1e-4)
    assert torch.equal(before, disabled)  # disabling gives back exactly the base weights
    if rt.model.dtype == torch.float32:  # in bf16 the copy's kernels round differently
        assert torch.allclose(base, disabled, atol=1e-5)
