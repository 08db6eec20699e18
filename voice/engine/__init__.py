"""Moshi behind the sessions: loading, the batched engine, its slots, the process-wide manager.

Plain Python and torch, no Django: the model types are named here, once, for the engine and the
settings (voice/environment.py, voice/conf.py) alike.
"""

# The model types a session can pick with ?model_type=, each loaded from its own setting
# (SFT_MODEL, BASE_MODEL, PRETRAIN_MODEL); the first is the default and the only required one.
MODEL_TYPES = ("sft", "base", "pretrain")
DEFAULT_MODEL_TYPE = MODEL_TYPES[0]
