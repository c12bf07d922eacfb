from pathlib import Path

import pytest

from luthitune.config import Config
from luthitune.configfiles import load_model
from luthitune.errors import ConfigError, WorkspaceError
from luthitune.training.hyperparameters import Hyperparameters
from luthitune.workspace import Workspace, init_workspace, resolve_workspace

ORIGINAL_HP = """\
model:
  name: "unsloth/llama-3-8b-bnb-4bit"  # Base model to fine-tune
  max_seq_length: 2048
  load_in_4bit: true

lora:
  r: 16                    # LoRA rank (higher = more expressive)
  lora_alpha: 16
  lora_dropout: 0.0

training:
  learning_rate: 5e-5      # Gentle learning (not shock therapy)
  num_train_epochs: 3
  batch_size: 4
  gradient_accumulation_steps: 4

dpo:
  beta: 0.1                # Preference strength (lower = gentler)
"""


def test_init_creates_workspace(tmp_path: Path):
    ws, _ = init_workspace(tmp_path / "w")
    for name in ("luthitune.yaml", "checkpoints", "data", "models", "config/hyperparameters.yaml"):
        assert (ws.root / name).exists(), name
    assert ws.config == Config()  # the written file round-trips to the defaults
    assert ws.hyperparameters() == Hyperparameters()
    # running init again keeps the user's files
    (ws.root / "luthitune.yaml").write_text("backend: ollama\nchat_model: qwen2.5:7b\n")
    ws2, created2 = init_workspace(tmp_path / "w")
    assert ws2.config.backend == "ollama" and created2 == []


def test_original_hyperparameters_file_reads_learning_rate_as_number(tmp_path: Path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "hyperparameters.yaml").write_text(ORIGINAL_HP)
    (tmp_path / "luthitune.yaml").write_text("")
    hp = Workspace.open(tmp_path).hyperparameters()
    assert isinstance(hp.training.learning_rate, float) and hp.training.learning_rate == 5e-5
    assert hp.model.name == "unsloth/llama-3-8b-bnb-4bit" and hp.model.load_in_4bit is True
    assert hp.lora.r == 16 and hp.dpo.beta == 0.1 and hp.training.gradient_accumulation_steps == 4


def test_invalid_field_names_field_and_file(tmp_path: Path):
    p = tmp_path / "luthitune.yaml"
    p.write_text("sampling:\n  temperature: hot\n")
    with pytest.raises(ConfigError) as e:
        load_model(Config, p)
    assert "sampling.temperature" in str(e.value) and str(p) in str(e.value)


def test_unknown_key_is_an_error_not_ignored(tmp_path: Path):
    p = tmp_path / "hp.yaml"
    p.write_text("training:\n  learning_rat: 1e-4\n")
    with pytest.raises(ConfigError) as e:
        load_model(Hyperparameters, p)
    assert "training.learning_rat" in str(e.value) and "unknown key" in str(e.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("backend: [1, 2\n", "not valid YAML at line"),
        ("- a\n- b\n", "must hold a mapping"),
        ("backend: vllm\n", "field 'backend'"),
        ("ollama:\n  base_url: localhost:11434\n", "ollama.base_url"),
    ],
)
def test_broken_files(tmp_path: Path, text: str, needle: str):
    p = tmp_path / "luthitune.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        Workspace.open(tmp_path)
    assert needle in str(e.value)


def test_missing_workspace_and_config(tmp_path: Path):
    with pytest.raises(WorkspaceError, match="does not exist"):
        Workspace.open(tmp_path / "nope")
    with pytest.raises(WorkspaceError, match="luthitune init"):
        Workspace.open(tmp_path)
    assert Workspace.open(tmp_path, require=False).config == Config()


def test_workspace_resolution_order(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_workspace(None) == tmp_path.resolve()
    monkeypatch.setenv("LUTHITUNE_HOME", str(tmp_path / "home"))
    assert resolve_workspace(None) == (tmp_path / "home").resolve()
    assert resolve_workspace(tmp_path / "flag") == (tmp_path / "flag").resolve()


def test_invitation_prefers_original_dossier(workspace):
    assert "collaboration" in workspace.invitation()
    (workspace.root / "config" / "lyra_dossier.txt").write_text("Dear Lyra, shall we talk?\n")
    assert workspace.invitation() == "Dear Lyra, shall we talk?"
    (workspace.root / "config" / "lyra_dossier.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        workspace.invitation()


def test_paths_relative_to_workspace(tmp_path: Path):
    (tmp_path / "luthitune.yaml").write_text(f"paths:\n  data: store\n  models: {tmp_path / 'm'}\n")
    ws = Workspace.open(tmp_path)
    assert ws.db_path == tmp_path / "store" / "luthitune.db"
    assert ws.models_dir == tmp_path / "m"


def test_a_new_workspace_can_be_given_a_sampling_seed(tmp_path):
    assert init_workspace(tmp_path / "plain")[0].config.sampling.seed is None
    ws, _ = init_workspace(tmp_path / "seeded", seed=5)
    assert ws.config.sampling.seed == 5 and "  seed: 5\n" in (ws.root / "luthitune.yaml").read_text()
    # A seeded workspace's text does not hang on a timing measurement: it computes in float32 on every CPU.
    assert ws.config.compute.precision == "fp32"
    assert init_workspace(tmp_path / "plain")[0].config.compute.precision == "auto"
    again, _ = init_workspace(ws.root, seed=7)  # an existing file is kept, with its seed
    assert again.config.sampling.seed == 5


def test_the_packaged_default_files_hold_the_schemas_own_defaults(monkeypatch):
    """``luthitune init`` writes luthitune/defaults/*.yaml: every value written there is the model's default, so
    the commented file and the schema cannot drift apart."""
    import yaml

    from luthitune.config import default_config_yaml
    from luthitune.training.hyperparameters import default_hyperparameters_yaml

    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    written = yaml.safe_load(default_config_yaml())
    assert Config.model_validate(written) == Config()
    assert set(written) >= {"backend", "sampling", "practice", "evaluation", "paths"}  # the file is not empty
    hp = yaml.safe_load(default_hyperparameters_yaml())
    assert Hyperparameters.model_validate(hp) == Hyperparameters()
    assert set(hp) == {"model", "lora", "training", "dpo"}
