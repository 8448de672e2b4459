"""Shared fixtures: one local Ray instance per session, a throwaway PostgreSQL database, tiny models.

Ray costs ~10 s and ~1 GB per ``ray.init`` here, so every test that needs it shares one instance.
The PostgreSQL server on 127.0.0.1:5432 (trust auth) gets a fresh database per session, dropped
at the end; tests marked ``postgres`` are skipped only when no server answers there.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PG_ADMIN_URL = os.environ.get("MPSEARCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_THREADS: list[int] = []  # torch's intra-op thread count as the first module found it


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_per_module():
    """Every test module starts on torch's thread count as the session found it, as when it runs
    alone. A module that sets it (a worker with ``threads: 1``, a latency table measured on one
    thread) changed it for every module after: their in-process scores then summed in another
    order than the fresh processes they are compared with (which start on the machine's
    count), and a KL of 3e-6 between nearly equal models moved 3e-3 relative."""
    torch = sys.modules.get("torch")
    if torch is not None and not _THREADS:
        _THREADS.append(torch.get_num_threads())
    yield
    torch = sys.modules.get("torch")
    if torch is not None and _THREADS and torch.get_num_threads() != _THREADS[0]:
        torch.set_num_threads(_THREADS[0])



@pytest.fixture(scope="session")
def ray_session():
    """The shared local Ray instance (token authentication on, as Ray 2.60 defaults)."""
    import ray

    from mpsearch.cluster.ray_runtime import connect

    connect(None, num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def pg_url():
    """URL of a fresh PostgreSQL database for this test session."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"mpsearch_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN_URL}: {exc.orig}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """Each store contract test runs on a SQLite file and on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    base = request.getfixturevalue("pg_url")
    # a schema-free reset: a new database per test would be slow, so drop the tables instead
    from sqlalchemy import create_engine

    from mpsearch.storage.models import Base

    engine = create_engine(base)
    Base.metadata.drop_all(engine)
    engine.dispose()
    return base


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from mpsearch.workers.model_loading import resolve_model_path

    return resolve_model_path("minilm")


def _save_tiny(kind: str, out: Path, minilm: str) -> str:
    """A tiny causal LM built from a config (random weights), with MiniLM's tokenizer files."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = 30522  # MiniLM's WordPiece vocabulary, so the tokenizer needs no download
    if kind == "mixtral":
        model = tiny_mixtral(vocab)
    elif kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, pad_token_id=0)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                            pad_token_id=0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(minilm) / f, out / f)
    return str(out)


def tiny_mixtral(vocab: int = 30522, experts: int = 4, top_k: int = 2):
    """A tiny Mixtral (fused 3-D experts: gate_up_proj [E, 2I, H], down_proj [E, H, I]),
    random weights from a config."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=experts, num_experts_per_tok=top_k,
                           max_position_embeddings=256, pad_token_id=0)
    return MixtralForCausalLM(config).eval()


@pytest.fixture(scope="session")
def mixtral():
    """:func:`tiny_mixtral`, for tests (importlib mode cannot import a conftest directly)."""
    return tiny_mixtral


@pytest.fixture(scope="session")
def tiny_mixtral_path(tmp_path_factory, minilm_path) -> str:
    return _save_tiny("mixtral", tmp_path_factory.mktemp("tiny-mixtral"), minilm_path)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory, minilm_path) -> str:
    return _save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"), minilm_path)


@pytest.fixture(scope="session")
def tiny_gpt2_path(tmp_path_factory, minilm_path) -> str:
    return _save_tiny("gpt2", tmp_path_factory.mktemp("tiny-gpt2"), minilm_path)
