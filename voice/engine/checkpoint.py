"""Loading a Moshi checkpoint through moshi's own loaders, from the Hub or a local folder.

A model reference is either a Hugging Face Hub repo id (``kyutai/moshiko-pytorch-bf16``) or a local
folder with the same layout (config.json naming the weight, Mimi and tokenizer files). The demo
checkpoint is such a folder, so it goes through exactly this code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import sentencepiece
import torch
from moshi.models import LMModel, MimiModel, loaders

from .demo_checkpoint import DEMO_NAME, is_demo_checkpoint

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A configured model could not be loaded; start-up stops with this message."""


@dataclass
class LoadedModel:
    name: str
    is_demo: bool
    info: loaders.CheckpointInfo
    mimi: MimiModel
    lm: LMModel
    tokenizer: sentencepiece.SentencePieceProcessor


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks cuda when a GPU is visible, else cpu; anything else is taken as given."""
    if setting in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def checkpoint_info(reference: str) -> loaders.CheckpointInfo:
    """CheckpointInfo for a Hub repo id or a local folder laid out like one."""
    path = Path(reference).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ModelLoadError(f"{path} has no config.json; a local model folder must be laid out like a Hub repo")
        config = json.loads(config_path.read_text())
        mimi_config = config.get("mimi_config_name")
        return loaders.CheckpointInfo.from_hf_repo(
            str(path),
            moshi_weights=path / config.get("moshi_name", loaders.MOSHI_NAME),
            mimi_weights=path / config.get("mimi_name", loaders.MIMI_NAME),
            tokenizer=path / config.get("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
            config_path=config_path,
            mimi_config_path=path / mimi_config if mimi_config else None,
        )
    if path.is_absolute() or reference.startswith("."):
        raise ModelLoadError(f"model folder {reference} does not exist")
    return loaders.CheckpointInfo.from_hf_repo(reference)


def load_model(reference: str, device: torch.device) -> LoadedModel:
    """Load Mimi, the LM and the tokenizer, logging each step as moshi's server does."""
    try:
        log.info("loading checkpoint info for %s", reference)
        info = checkpoint_info(reference)
        log.info("loading Mimi from %s", info.mimi_weights)
        mimi = info.get_mimi(device=device)
        log.info("loading the text tokenizer from %s", info.tokenizer)
        tokenizer = info.get_text_tokenizer()
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        log.info("loading the LM from %s on %s (%s)", info.moshi_weights, device, dtype)
        lm = info.get_moshi(device=device, dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure must stop start-up with its cause
        raise ModelLoadError(f"could not load Moshi model {reference!r}: {type(exc).__name__}: {exc}") from exc
    folder = Path(reference).expanduser()
    demo = folder.is_dir() and is_demo_checkpoint(folder)
    name = DEMO_NAME if demo else reference
    return LoadedModel(name=name, is_demo=demo, info=info, mimi=mimi, lm=lm, tokenizer=tokenizer)
