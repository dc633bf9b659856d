"""Speech model pieces: text normalisation, WER and CER, and the CTC vocabulary built from transcripts."""

from __future__ import annotations

import pytest

from common.data.audio import normalize_text
from common.training.speech import build_ctc_vocab, ctc_tokenizer, error_rates, missing_characters

pytestmark = pytest.mark.usefixtures("one_thread")


def test_text_normalisation_and_error_rates():
    assert normalize_text("  Hello, World!  It's  FINE.") == "hello world it's fine"
    assert normalize_text("a-b c", chars_to_ignore=r"[-]") == "ab c"
    assert normalize_text(None) == ""
    rates = error_rates(["hello world", "a b c d"], ["hello word", "a b c d"])
    assert rates["wer"] == pytest.approx(1 / 6)  # one substituted word out of six
    assert rates["cer"] == pytest.approx(1 / 18)  # one deleted character out of 11 + 7


def test_ctc_vocabulary_from_transcripts():
    vocab = build_ctc_vocab(["zero one", "two"])
    assert list(vocab) == ["e", "n", "o", "r", "t", "w", "z", "|", "[UNK]", "[PAD]"]
    assert list(vocab.values()) == list(range(10))
    tokenizer = ctc_tokenizer(vocab)
    ids = tokenizer("zero one").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == list("zero") + ["|"] + list("one")
    assert tokenizer.decode(ids, group_tokens=False) == "zero one"
    assert tokenizer.pad_token_id == vocab["[PAD]"] and tokenizer.unk_token_id == vocab["[UNK]"]
    assert missing_characters(["zeta one"], vocab) == ["a"]
