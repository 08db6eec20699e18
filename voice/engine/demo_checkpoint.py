"""A tiny random-weight Moshi checkpoint laid out like a Hugging Face Hub repo.

The machines that build and test this project have no GPU and no Hub access, so the server runs
its real loading and inference code on this checkpoint instead. Its output is noise; it exists to
exercise the real path (moshi's loaders, Mimi, LMGen) on the CPU. Files written:

    config.json          LM keyword arguments plus moshi_name / mimi_name / tokenizer_name /
                         mimi_config_name, exactly the keys moshi's CheckpointInfo reads
    model.safetensors    the LM weights
    mimi.safetensors     the Mimi codec weights
    mimi_config.json     the (shrunk) Mimi configuration
    tokenizer.model      a SentencePiece unigram model trained here (pad id 3 = Moshi's text padding)
"""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path

import sentencepiece
import torch
from moshi.models import loaders
from moshi.quantization.core_vq import EuclideanCodebook
from safetensors.torch import save_model

DEMO_NAME = "moshi-demo-random-weights"
DEMO_MARKER = "demo_checkpoint"

# Sentences the tokenizer is trained on; any text works, this keeps it self-contained.
_CORPUS = [
    "Hello there. Can you tell me what the weather will be like in Paris tomorrow?",
    "I would like to book a table for two people at seven thirty this evening.",
    "Bonjour, je voudrais savoir l'heure du prochain train pour Lyon.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Moshi is a speech to speech model that listens and speaks at the same time.",
    "Please wait a moment while I look that up for you.",
    "Sure, I can help you with that. What time would suit you best?",
    "It will be sunny in the morning with a few clouds in the afternoon.",
    "Thank you very much, have a wonderful day and see you soon.",
    "Numbers like one two three four five six seven eight nine ten are common.",
]


def write_demo_checkpoint(dest: Path, *, context: int = 500, seed: int = 1234) -> Path:
    """Write the checkpoint into ``dest`` (created if missing) and return it.

    ``context`` is the LM's context in frames; keep it small to test calls longer than the context.
    """
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    random.seed(seed)

    tokenizer_path = dest / "tokenizer.model"
    vocab_size = _train_tokenizer(tokenizer_path)

    mimi_config = _tiny_mimi_config()
    mimi = loaders.get_mimi(None, mimi_config, device="cpu", num_codebooks=8)
    _spread_codebooks(mimi)
    save_model(mimi, str(dest / "mimi.safetensors"))
    (dest / "mimi_config.json").write_text(json.dumps(mimi_config, indent=2))

    lm_kwargs = _tiny_lm_kwargs(vocab_size=vocab_size, card=mimi_config["quantizer"]["bins"], context=context)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="cpu", dtype=torch.float32)
    save_model(lm, str(dest / "model.safetensors"))

    config = dict(lm_kwargs)
    config.update(
        {
            "moshi_name": "model.safetensors",
            "mimi_name": "mimi.safetensors",
            "mimi_config_name": "mimi_config.json",
            "tokenizer_name": "tokenizer.model",
            "model_type": "moshi",
            "model_id": {"name": DEMO_NAME, DEMO_MARKER: True},
        }
    )
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def is_demo_checkpoint(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("model_id", {}).get(DEMO_MARKER))


def _spread_codebooks(mimi: torch.nn.Module) -> None:
    """Give the quantizer codebooks drawn from what the encoder actually produces.

    Untrained codebooks are all zeros (k-means would fill them on the first training batch), which
    maps every input to code 0: a model deaf to its input. Seeding each codebook, stage by stage,
    with latents the random encoder emits for varied sounds makes the demo model's output depend on
    what it hears, so tests can tell one session's audio from another's.
    """
    codebooks = [m for m in mimi.modules() if isinstance(m, EuclideanCodebook)]
    t = torch.arange(24000 * 4) / 24000
    sounds = torch.stack(
        [
            0.3 * torch.randn(t.shape),
            0.5 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t),
            0.4 * torch.sign(torch.sin(2 * torch.pi * 140 * t)) * (torch.rand(t.shape) > 0.5),
            0.05 * torch.randn(t.shape) + 0.3 * torch.sin(2 * torch.pi * 600 * t * (1 + t)),
        ]
    )[:, None]
    for codebook in codebooks:
        seen: list[torch.Tensor] = []
        original = codebook.encode

        def capture(x: torch.Tensor, _original=original, _seen=seen) -> torch.Tensor:
            _seen.append(x.reshape(-1, x.shape[-1]))
            return _original(x)

        codebook.encode = capture  # type: ignore[method-assign]
        with torch.no_grad():
            mimi.encode(sounds)
        del codebook.encode
        latents = torch.cat(seen)
        picks = latents[torch.randint(len(latents), (codebook.codebook_size,))]
        codebook.embedding_sum.copy_(picks + 0.01 * latents.std() * torch.randn_like(picks))
        codebook.cluster_usage.fill_(1.0)
        codebook._initialized.fill_(1.0)
        codebook._embedding = None


def _train_tokenizer(path: Path) -> int:
    vocab_size = 200
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def _tiny_mimi_config() -> dict:
    config = copy.deepcopy(loaders._mimi_config)
    seanet = config["seanet"]
    seanet["n_filters"] = 4
    seanet["dimension"] = 32
    quantizer = config["quantizer"]
    quantizer.update({"dimension": 16, "n_q": 8, "bins": 256, "input_dimension": 32, "output_dimension": 32})
    transformer = config["transformer"]
    transformer.update(
        {
            "d_model": 32,
            "num_heads": 2,
            "num_layers": 1,
            "dim_feedforward": 64,
            "input_dimension": 32,
            "output_dimensions": [32],
            "context": 50,
        }
    )
    return config


def _tiny_lm_kwargs(*, vocab_size: int, card: int, context: int) -> dict:
    kwargs = copy.deepcopy(loaders._lm_kwargs)
    kwargs.update(
        {
            "dim": 64,
            "text_card": vocab_size,
            "card": card,
            "num_heads": 4,
            "num_layers": 2,
            "context": context,
            "depformer_dim": 64,
            "depformer_dim_feedforward": 256,
            "depformer_num_heads": 4,
            "depformer_num_layers": 2,
        }
    )
    return kwargs
