"""The data stream's batches and held-out split (workers/data.py, docs/data.md)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests.support import corpus
from tests.support.s3 import s3_server
from workers import data as data_mod
from workers.config import DataConfig, ModelConfig
from workers.hf.config import to_hf
from workers.datafiles import DataError
from workers.textdata import tokenized


def test_synthetic_batch_and_heldout_stream():
    cfg = DataConfig(seq_len=16, global_batch=4, micro_batch=2, seed=3)
    train, held = data_mod.dataset(cfg, 64), data_mod.heldout(cfg, 64)
    batch = data_mod.collate(train, range(2, 5))
    assert batch.inputs.shape == batch.targets.shape == batch.positions.shape == (3, 16)
    assert batch.segments is None
    assert torch.equal(batch.positions[1], torch.arange(16))
    assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    # The held-out samples walk the same chain (same task) but are none of training's samples.
    assert held.successors == train.successors
    held_rows = {tuple(held[i].tolist()) for i in range(64)}
    assert not held_rows & {tuple(train[i].tolist()) for i in range(64)}


# --- text and token sources -------------------------------------------------------------

SEQ = 24


@pytest.fixture()
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDWRIGHT_DATA_CACHE", str(tmp_path / "cache"))
    return corpus.save_tokenizer(tmp_path / "model")


def _cfg(path, model_dir, **extra) -> DataConfig:
    return DataConfig(source="text", path=str(path), tokenizer=str(model_dir), seq_len=SEQ, global_batch=6,
                      micro_batch=2, seed=7, **extra)


def _rows(data, count: int) -> list[tuple]:
    return [tuple(t.tolist() for t in data[i]) for i in range(count)]


def test_records_become_the_tokenizers_own_encoding_plus_eos(model_dir, tmp_path):
    from tokenizers import Tokenizer

    docs = corpus.texts()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    eos = tok.token_to_id(corpus.EOS)
    got = tokenized(str(corpus.write_jsonl(tmp_path / "d.jsonl", docs)), "text", str(model_dir))
    want = [tok.encode(t).ids + [eos] for t in docs if t]  # the empty text is no document
    assert [got.tokens(d).tolist() for d in range(len(got))] == want


def test_jsonl_parquet_directory_and_s3_give_the_same_stream(model_dir, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = corpus.texts()
    jsonl = corpus.write_jsonl(tmp_path / "one" / "d.jsonl", docs)
    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet", row_group_size=7)
    corpus.write_jsonl(tmp_path / "dir" / "a.jsonl", docs[:15])
    corpus.write_jsonl(tmp_path / "dir" / "b.jsonl", docs[15:])
    (tmp_path / "dir" / "notes.txt").write_text("not data")
    reference = _rows(data_mod.dataset(_cfg(jsonl, model_dir), 96), 12)
    assert reference == _rows(data_mod.dataset(_cfg(tmp_path / "d.parquet", model_dir, field="body"), 96), 12)
    assert reference == _rows(data_mod.dataset(_cfg(tmp_path / "dir", model_dir), 96), 12)
    with s3_server(tmp_path / "s3") as server:
        monkeypatch.setattr(os, "environ", {**os.environ, **server.env()})
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.put(str(tmp_path / "dir") + "/", f"{server.bucket}/text/", recursive=True)
        fs.put(str(tmp_path / "d.parquet"), f"{server.bucket}/p/d.parquet")
        assert reference == _rows(data_mod.dataset(_cfg(server.uri("text"), model_dir), 96), 12)
        assert reference == _rows(data_mod.dataset(_cfg(server.uri("p/d.parquet"), model_dir, field="body"), 96), 12)
        with pytest.raises(DataError, match=rf"spec.data.path: {server.uri('none')} does not exist"):
            data_mod.dataset(_cfg(server.uri("none"), model_dir), 96)
        shards = tokenized(str(jsonl), "text", str(model_dir)).chunks[0]  # the same tokens as shards
        np.save(tmp_path / "s.npy", np.asarray(shards))
        fs.put(str(tmp_path / "s.npy"), f"{server.bucket}/shards/s.npy")
        tokens = {"source": "tokens", "tokenizer": None, "seq_len": SEQ, "global_batch": 6, "micro_batch": 2}
        assert _rows(data_mod.dataset(DataConfig(path=server.uri("shards"), **tokens), 96), 12) == \
            _rows(data_mod.dataset(DataConfig(path=str(tmp_path / "s.npy"), **tokens), 96), 12)


@pytest.mark.parametrize("dp", [2, 3])
def test_every_step_sees_the_same_global_batch_at_any_world_size(model_dir, tmp_path, dp):
    cfg = _cfg(corpus.write_jsonl(tmp_path / "d.jsonl", corpus.texts()), model_dir)
    data = data_mod.dataset(cfg, 96)

    def global_batch(step: int, ranks: int) -> list[torch.Tensor]:
        parts = [data_mod.collate(data, r) for k in range(ranks)
                 for r in data_mod.rank_slice(step, cfg, k, ranks, None).micro_batches]
        return [torch.cat([getattr(b, f) for b in parts]) for f in ("inputs", "targets", "positions", "segments")]

    for step in range(2 * data.size // cfg.global_batch + 1):  # into the second epoch
        assert all(torch.equal(a, b) for a, b in zip(global_batch(step, 1), global_batch(step, dp)))


def test_the_validation_split_is_disjoint_from_training(model_dir, tmp_path):
    path = corpus.write_jsonl(tmp_path / "d.jsonl", corpus.texts(200))
    cfg = _cfg(path, model_dir, validation_fraction=0.25)
    train, held = data_mod.dataset(cfg, 96), data_mod.heldout(cfg, 96)
    everything = tokenized(str(path), "text", str(model_dir))
    as_lists = lambda docs: [tuple(docs.tokens(d).tolist()) for d in range(len(docs))]  # noqa: E731
    train_docs, held_docs = as_lists(train.docs), as_lists(held.docs)
    assert sorted(train_docs + held_docs) == sorted(as_lists(everything)) and 30 < len(held_docs) < 70
    assert not set(train.docs.start.tolist()) & set(held.docs.start.tolist())  # no document in both
    other = corpus.write_jsonl(tmp_path / "v" / "held.jsonl", corpus.texts(10, seed=9))
    by_path = data_mod.heldout(_cfg(path, model_dir, validation_path=str(other)), 96)
    assert as_lists(by_path.docs) == as_lists(tokenized(str(other), "text", str(model_dir)))
    with pytest.raises(DataError, match="spec.data.validation: source text has no held-out split"):
        data_mod.heldout(_cfg(path, model_dir), 96)


def test_a_second_read_comes_from_the_cache_and_an_edit_tokenizes_again(model_dir, tmp_path):
    path = corpus.write_jsonl(tmp_path / "d.jsonl", corpus.texts())
    first = tokenized(str(path), "text", str(model_dir))
    folders = sorted((tmp_path / "cache").glob("*[!.lock]"))
    stamp = [f.stat().st_mtime_ns for f in folders]
    tokenized(str(path), "text", str(model_dir))
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "cache").glob("*[!.lock]"))] == stamp
    corpus.write_jsonl(path, corpus.texts()[:5])
    assert len(tokenized(str(path), "text", str(model_dir))) == 4 < len(first)


def test_token_shards_split_at_eos_in_npy_and_bin(model_dir, tmp_path):
    stream = np.asarray([5, 6, 2, 7, 8, 9, 2, 10] * 6, dtype=np.uint32)  # "</s>" is id 2
    np.save(tmp_path / "a.npy", stream[:20].astype(np.uint16))
    stream[20:].tofile(tmp_path / "b.bin")
    cfg = DataConfig(source="tokens", path=str(tmp_path), dtype="uint32", tokenizer=str(model_dir),
                     seq_len=8, global_batch=2, micro_batch=1)
    docs = data_mod.dataset(cfg, 96).docs
    pieces = [docs.tokens(d).tolist() for d in range(len(docs))]
    assert sum(pieces, []) == stream.tolist()
    # Documents end at EOS and at each shard's end: shard a stops inside a document ([7] | [8, 9, 2]).
    assert pieces[:7] == [[5, 6, 2], [7, 8, 9, 2], [10, 5, 6, 2], [7, 8, 9, 2], [10, 5, 6, 2], [7], [8, 9, 2]]
    assert pieces[-1] == [10]
    with pytest.raises(DataError, match="spec.data.dtype: .*c.bin is not a whole number of uint32 tokens"):
        (tmp_path / "c.bin").write_bytes(b"\0" * 6)
        data_mod.dataset(cfg, 96)


# --- bad input: named at admission where it can be seen, else at rank start ---------------


def _problems(model_dir, data: dict) -> list[tuple[str, str]]:
    from shardwright.operator.api import validation
    from tests.support.manifests import edited

    spec = {"spec.data": {"seqLen": SEQ, "globalBatch": 4, "microBatch": 2, **data}}
    if model_dir is not None:
        (model_dir / "config.json").write_text(json.dumps(to_hf(ModelConfig(
            vocab_size=96, dim=32, layers=1, heads=4, kv_heads=2, ffn_dim=48, layer_kinds=("softmax",)))))
        spec["spec.model"] = {"from": str(model_dir)}
    _, problems = validation.validate(edited(spec))
    return [(p.path, p.message) for p in problems]


def test_bad_data_is_named_at_admission(model_dir, tmp_path):
    good = corpus.write_jsonl(tmp_path / "d.jsonl", corpus.texts())
    (tmp_path / "empty").mkdir()
    (tmp_path / "e.jsonl").write_text("")
    (tmp_path / "d.csv").write_text("text\nhello\n")
    kinds = "source text reads .jsonl or .parquet files or a directory of them"
    assert _problems(model_dir, {"source": "text", "path": str(good)}) == []
    assert _problems(model_dir, {"source": "text", "path": str(tmp_path / "no.jsonl")}) == [
        ("spec.data.path", f"{tmp_path / 'no.jsonl'} does not exist")]
    assert _problems(model_dir, {"source": "text", "path": str(tmp_path / "empty")}) == [
        ("spec.data.path", f"{tmp_path / 'empty'} holds no .jsonl or .parquet files; {kinds}")]
    assert _problems(model_dir, {"source": "text", "path": str(tmp_path / "e.jsonl")}) == [
        ("spec.data.path", f"{tmp_path / 'e.jsonl'} is empty: its files hold no data")]
    assert _problems(model_dir, {"source": "text", "path": str(tmp_path / "d.csv")}) == [
        ("spec.data.path", f"{tmp_path / 'd.csv'} is not a .jsonl or .parquet file; {kinds}")]
    assert _problems(model_dir, {"source": "tokens", "path": str(good)}) == [
        ("spec.data.path", f"{good} is not a .npy or .bin file; source tokens reads .npy or .bin files or a directory of them")]
    assert _problems(model_dir, {"source": "text", "path": str(good), "field": "body"}) == [
        ("spec.data.field", f"'body' is not in the records of {good} (they hold ['id', 'text'])")]
    assert _problems(None, {"source": "text", "path": str(good)}) == [
        ("spec.data.source", "text is tokenized with the model's tokenizer: set spec.model.from to a Hugging Face "
         "directory with tokenizer.json")]
    assert _problems(model_dir, {"source": "text", "path": str(good), "validation": {"path": str(tmp_path / "v")}}) == [
        ("spec.data.validation.path", f"{tmp_path / 'v'} does not exist")]


def test_bad_data_fails_the_rank_with_the_same_words(model_dir, tmp_path):
    bad_field = corpus.write_jsonl(tmp_path / "d.jsonl", corpus.texts(), field="body")
    with pytest.raises(DataError, match=rf"spec.data.path: {tmp_path / 'none'} does not exist"):
        data_mod.dataset(_cfg(tmp_path / "none", model_dir), 96)
    with pytest.raises(DataError, match=rf"spec.data.field: 'text' is not in the record on line 1 of {bad_field}"):
        data_mod.dataset(_cfg(bad_field, model_dir), 96)
    short = corpus.write_jsonl(tmp_path / "s.jsonl", ["the model"])
    with pytest.raises(ValueError, match=rf"spec.data.path: 1 document holds 3 tokens; seqLen {SEQ} needs at least {SEQ + 1}"):
        data_mod.dataset(_cfg(short, model_dir), 96)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a b", None, "c"]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=rf"spec.data.field: 'text' of record 2 of {tmp_path / 'n.parquet'} is NoneType, not text"):
        data_mod.dataset(_cfg(tmp_path / "n.parquet", model_dir), 96)
    with pytest.raises(DataError, match="spec.data.source: text is tokenized with the model's tokenizer"):
        data_mod.dataset(_cfg(short, model_dir).model_copy(update={"tokenizer": None}), 96)


def test_the_held_out_split_of_a_token_file_is_its_own_file(tmp_path):
    np.save(tmp_path / "train.npy", np.arange(200, dtype=np.uint16))
    np.save(tmp_path / "valid.npy", np.arange(500, 600, dtype=np.uint16))
    cfg = DataConfig(source="file", path=str(tmp_path / "train.npy"), validation_path=str(tmp_path / "valid.npy"),
                     seq_len=8, global_batch=2, micro_batch=1)
    held = data_mod.heldout(cfg, 1000)
    assert {int(t) for i in range(20) for t in held[i]} <= set(range(500, 600))
    with pytest.raises(DataError, match="spec.data.validation: source file has no held-out split: set validation.path$"):
        data_mod.heldout(cfg.model_copy(update={"validation_path": None}), 1000)


def test_validation_settings_that_cannot_apply_are_refused(model_dir, tmp_path):
    good = corpus.write_jsonl(tmp_path / "d.jsonl", corpus.texts())
    assert _problems(None, {"validation": {"fraction": 0.1}}) == [
        ("spec.data.validation", "synthetic data has its own held-out stream; remove it")]
    assert _problems(None, {"source": "file", "path": "/data/t.bin", "validation": {"fraction": 0.1}}) == [
        ("spec.data.validation.fraction", "source file has no documents to hold out; use validation.path")]
    assert _problems(model_dir, {"source": "text", "path": str(good), "validation": {"path": str(good), "fraction": 0.1}}) == [
        ("spec.data.validation", "give path or fraction, not both")]
