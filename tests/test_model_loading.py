"""Loading Moshi through moshi's own loaders: the demo checkpoint, local folders, failures, start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from moshi.models import LMModel, MimiModel, loaders

from voice.apps import process_serves
from voice.engine.checkpoint import ModelLoadError, checkpoint_info, load_model, resolve_device
from voice.engine.demo_checkpoint import DEMO_NAME
from voice.engine.manager import ManagerConfig, ModelManager

from .conftest import TIMEOUT

REPO = Path(__file__).resolve().parent.parent


def test_demo_checkpoint_has_the_layout_and_keys_of_a_hub_repo(demo_checkpoint: Path) -> None:
    config = json.loads((demo_checkpoint / "config.json").read_text())
    for key in ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name"):
        assert (demo_checkpoint / config[key]).is_file(), key
    for key in ("dim", "text_card", "n_q", "dep_q", "card", "delays", "context", "depformer_dim"):
        assert key in config, key
    assert set(config) - set(loaders._lm_kwargs) <= {
        "moshi_name",
        "mimi_name",
        "tokenizer_name",
        "mimi_config_name",
        "model_type",
        "model_id",
    }


def test_demo_checkpoint_loads_through_moshis_checkpoint_info(demo_checkpoint: Path) -> None:
    info = checkpoint_info(str(demo_checkpoint))
    assert isinstance(info, loaders.CheckpointInfo)
    model = load_model(str(demo_checkpoint), torch.device("cpu"))
    assert isinstance(model.mimi, MimiModel) and isinstance(model.lm, LMModel)
    assert model.is_demo and model.name == DEMO_NAME
    assert model.tokenizer.pad_id() == 3, "Moshi's text padding token is id 3"
    assert model.lm.text_card == model.tokenizer.get_piece_size()
    assert model.mimi.frame_size == 1920 and model.lm.dep_q == 8


def test_a_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"), torch.device("cpu"))


def test_a_folder_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), torch.device("cpu"))


def test_broken_weights_are_a_clear_error(demo_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in demo_checkpoint.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="could not load Moshi model"):
        load_model(str(broken), torch.device("cpu"))


def test_an_unreachable_hub_repo_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no network in tests
    with pytest.raises(ModelLoadError, match="kyutai/not-a-real-repo"):
        load_model("kyutai/not-a-real-repo", torch.device("cpu"))


def test_device_comes_from_the_setting() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_optional_model_types_load_beside_the_sft_model(demo_checkpoint: Path) -> None:
    manager = ModelManager(
        ManagerConfig(
            models={"sft": "", "base": str(demo_checkpoint)}, demo_dir=demo_checkpoint, max_sessions=1, tick_ms=0
        )
    )
    manager.load()
    try:
        assert sorted(manager.engines) == ["base", "sft"]
        assert manager.engines["base"].lm_gen is not manager.engines["sft"].lm_gen
    finally:
        manager.stop()


def test_only_serving_processes_load_the_model() -> None:
    assert process_serves(["/venv/bin/daphne", "realtime_project.asgi:application"])
    assert process_serves(["manage.py", "runserver"])
    assert not process_serves(["manage.py", "migrate"])
    assert not process_serves(["manage.py", "makemigrations"])
    assert not process_serves(["/venv/bin/pytest"])


def test_daphne_refuses_to_start_when_the_configured_model_fails(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SFT_MODEL": str(tmp_path / "missing-model"),
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
    daphne = Path(sys.executable).with_name("daphne")
    result = subprocess.run(
        [str(daphne), "-b", "127.0.0.1", "-p", "0", "realtime_project.asgi:application"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
    )
    assert result.returncode != 0
    assert "Moshi model failed to load, not starting" in result.stderr
    assert "missing-model" in result.stderr
