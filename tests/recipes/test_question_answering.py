"""Question answering: SQuAD readers, windows and their answer positions, the n-best span search over a question's
windows, the official SQuAD scores, and runs on real SQuAD articles (tests/data/squad_small) with a tiny BERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args
from transformers import AutoTokenizer, pipeline

from common.core.errors import RecipeInputError
from recipes import predict
from recipes import question_answering as qa

pytestmark = pytest.mark.usefixtures("one_thread")

# (prediction, references, exact match, F1), worked out by hand from the official v1.1 rules: lower case, drop
# ASCII punctuation and the words a/an/the, split on whitespace; F1 over the common tokens; best reference wins.
TRICKY = [
    ("Denver Broncos", ["Denver Broncos"], 1, 1.0),
    ("the Denver Broncos!", ["Denver Broncos"], 1, 1.0),  # article and punctuation dropped
    ("DENVER   broncos", ["Denver Broncos"], 1, 1.0),  # case and spaces
    ("Broncos", ["Denver Broncos"], 0, 2 / 3),  # precision 1, recall 1/2
    ("the Broncos of Denver", ["Denver Broncos", "Broncos"], 0, 0.8),  # best of two: 2*(2/3*1)/(2/3+1)
    ("Santa Clara, California", ["Levi's Stadium", "Santa Clara"], 0, 0.8),
    ("", ["Denver"], 0, 0.0),
    ("a", ["an"], 1, 0.0),  # both normalise to nothing: equal, but no common token
    ("then", ["the"], 0, 0.0),  # an article only as a whole word
    ("1,000 km", ["1000 km"], 1, 1.0),  # the comma is punctuation
    ("3–4", ["3-4"], 0, 0.0),  # an en dash is not ASCII punctuation; the hyphen is
    ("cat cat dog", ["cat dog dog"], 0, 2 / 3),  # tokens counted with multiplicity
    ("Théâtre", ["théâtre"], 1, 1.0),
]


@pytest.fixture(scope="module")
def squad(test_data) -> Path:
    return test_data / "squad_small"


@pytest.fixture(scope="module")
def tokenizer(minilm):
    return AutoTokenizer.from_pretrained(minilm)


def test_scores_follow_the_official_squad_rules_on_tricky_answers():
    """Exact match and F1 are the official v1.1 ones (normalisation, token F1, best over references), in percent."""
    predictions, references = [p for p, *_ in TRICKY], [r for _, r, *_ in TRICKY]
    exact, f1 = qa.answer_scores(predictions, references)
    assert exact.tolist() == [e for *_, e, _ in TRICKY]
    assert np.allclose(f1, [f for *_, f in TRICKY])
    metrics = qa.squad_metrics(predictions, references)
    assert metrics == pytest.approx({"exact_match": 100 * exact.mean(), "f1": 100 * f1.mean()})


def test_version_2_scores_an_empty_answer_to_a_question_without_one_as_right():
    """SQuAD v2: no answer to an unanswerable question scores 1, any text 0; an empty answer to an answerable one 0."""
    metrics = qa.squad_metrics(["", "Denver", "", "Denver"], [[], [], ["Denver"], ["Denver"]], version_2=True)
    assert metrics["exact_match"] == 50.0 and metrics["f1"] == 50.0
    assert metrics["no_answer_exact_match"] == 50.0 and metrics["has_answer_exact_match"] == 50.0


def test_squad_json_is_read_one_row_per_question(squad):
    """The nested layout becomes rows id/title/context/question/answers, every question kept, answers as given."""
    document = json.loads((squad / "validation.json").read_text(encoding="utf-8"))
    rows = qa.read_squad_json(str(squad / "validation.json"), "--validation_file")
    questions = [(article["title"], paragraph["context"], q) for article in document["data"]
                 for paragraph in article["paragraphs"] for q in paragraph["qas"]]
    assert len(rows) == len(questions) == 44
    for i in (0, 30, 43):
        title, context, question = questions[i]
        assert (rows[i]["id"], rows[i]["title"], rows[i]["context"]) == (question["id"], title, context)
        assert rows[i]["question"] == question["question"]
        assert rows[i]["answers"] == {"text": [a["text"] for a in question["answers"]],
                                      "answer_start": [a["answer_start"] for a in question["answers"]]}
    assert qa.read_squad_json(str(squad / "missing.json"), "--train_file") is None


def test_every_window_points_at_its_answer_or_at_cls(squad, tokenizer):
    """Contexts longer than a window become overlapping windows; a window holding the whole answer trains on the
    sub-words that cover exactly its characters, any other window on position 0 (CLS); every answer is in one."""
    rows = qa.read_squad_json(str(squad / "train.json"), "--train_file")
    encoded = rows.map(lambda b: qa.encode_questions(b, tokenizer, 64, 16), batched=True, remove_columns=rows.column_names)
    windowed = 0
    for row, answers in zip(encoded, rows["answers"]):
        start, text = answers["answer_start"][0], answers["text"][0]
        offsets = np.asarray(row["offset_mapping"]).reshape(-1, 2)
        windowed += len(row["input_ids"]) > 1
        position, hits = 0, 0
        for ids, s, e in zip(row["input_ids"], row["start_positions"], row["end_positions"]):
            spans = offsets[position:position + len(ids)]
            position += len(ids)
            inside = spans[:, 0] >= 0
            holds = spans[inside, 0].min() <= start and spans[inside, 1].max() >= start + len(text)
            if not holds:
                assert (s, e) == (0, 0)
                continue
            hits += 1
            end = start + len(text)
            assert inside[s] and inside[e] and spans[s, 0] <= start and spans[e, 1] >= end  # covers the answer
            assert not (s + 1 <= e and spans[s + 1, 0] <= start)  # and no narrower span of sub-words does
            assert not (e - 1 >= s and spans[e - 1, 1] >= end)
        assert hits >= 1 and row["answer_in_a_window"]
    assert windowed > 30  # the check covered many questions split into several windows


@pytest.mark.parametrize("side", ["right", "left"])
def test_collated_windows_point_at_the_answers_tokens_whichever_side_pads(squad, minilm, side):
    """The collator flattens a batch of questions into their windows; padded on either side, each window's start
    and end positions still point at the answer's first and last sub-words (or at the window's first token), and
    the attention mask picks out every window's own positions."""
    tokenizer = AutoTokenizer.from_pretrained(minilm, padding_side=side)
    rows = qa.read_squad_json(str(squad / "validation.json"), "--validation_file").select(range(8))
    encoded = rows.map(lambda b: qa.encode_questions(b, tokenizer, 64, 16), batched=True, remove_columns=rows.column_names)
    batch = qa.QuestionCollator(tokenizer)([{k: v for k, v in row.items() if k not in (qa.OFFSETS, qa.REACHED)}
                                            for row in encoded])
    windows = [(ids, s, e) for row in encoded for ids, s, e in zip(row["input_ids"], row["start_positions"],
                                                                   row["end_positions"])]
    assert len(batch["input_ids"]) == len(windows) > 8
    for padded, mask, start, end, (ids, s, e) in zip(batch["input_ids"], batch["attention_mask"],
                                                      batch["start_positions"], batch["end_positions"], windows):
        assert padded[mask.bool()].tolist() == ids
        assert (padded[start], padded[end]) == (ids[s], ids[e])


def test_the_answer_is_the_best_span_of_any_window_within_the_limits():
    """Spans pair a start and an end of one window, inside the context, at most --max_answer_length long, ranked by
    start + end logit over all windows; the empty answer wins only with --version_2_with_negative."""
    context = "alpha beta gamma delta"
    # Two windows of 4 positions: [CLS] + 3 context words each ("alpha beta gamma", "beta gamma delta").
    offsets = np.array([[-1, -1], [0, 5], [6, 10], [11, 16], [-1, -1], [6, 10], [11, 16], [17, 22]])
    logits = np.full((8, 2), -5.0)
    logits[[0, 4]] = 9.0  # CLS: a strong "no answer" in both windows
    logits[3, 0], logits[1, 1] = 7.0, 7.0  # window 1: the best start (gamma) after the best end (alpha): no span
    logits[5, 0], logits[7, 1] = 4.0, 4.0  # window 2: "beta gamma delta", 8.0, less than gamma (w1) + delta (w2)
    options = qa.AnswerOptions(n_best_size=20, max_answer_length=30)
    answer = qa.best_answer(logits, offsets, [4, 4], context, options)
    assert (answer.text, answer.start, answer.end, answer.score) == ("beta gamma delta", 6, 22, 8.0)
    assert [c["score"] for c in answer.nbest][:3] == [8.0, 2.0, 2.0]  # then alpha-alpha and gamma-gamma of window 1
    assert all(c["text"] for c in answer.nbest) and sum(c["probability"] for c in answer.nbest) == pytest.approx(1)
    short = qa.best_answer(logits, offsets, [4, 4], context, qa.AnswerOptions(max_answer_length=2))
    assert len(short.text.split()) <= 2
    empty = qa.best_answer(logits, offsets, [4, 4], context, qa.AnswerOptions(version_2_with_negative=True))
    assert (empty.text, empty.score) == ("", 18.0)  # 18 beats 8 by more than the threshold 0
    kept = qa.best_answer(logits, offsets, [4, 4], context,
                          qa.AnswerOptions(version_2_with_negative=True, null_score_diff_threshold=10.0))
    assert kept.text == "beta gamma delta"


@pytest.fixture(scope="module")
def run(tiny_bert, squad, tmp_path_factory) -> Path:
    """One tiny run on the real SQuAD subset, windows of 96 sub-words, which most contexts overflow."""
    out = tmp_path_factory.mktemp("qa") / "run"
    qa.main(["--model_name_or_path", tiny_bert, "--train_file", str(squad / "train.json"),
             "--validation_file", str(squad / "validation.json"), "--max_seq_length", "96", "--doc_stride", "32",
             "--error_examples", "5", *fast_args(out, learning_rate=1e-3)])
    return out


def test_a_run_writes_predictions_whose_scores_are_the_reported_ones(run, squad):
    """predictions.json holds an answer for every validation question, each a span of its context; re-scored
    against the file's references they give the reported eval_exact_match and eval_f1; nbest_predictions.json,
    errors.csv and the first-sentence baseline are written beside them."""
    results = json.loads((run / "all_results.json").read_text())
    predictions = json.loads((run / "predictions.json").read_text())
    rows = qa.read_squad_json(str(squad / "validation.json"), "--validation_file")
    assert list(predictions) == rows["id"]
    assert all(predictions[key] in context for key, context in zip(rows["id"], rows["context"]))
    rescored = qa.squad_metrics([predictions[key] for key in rows["id"]], [a["text"] for a in rows["answers"]])
    assert results["eval_f1"] == pytest.approx(rescored["f1"], abs=1e-9)
    assert results["eval_exact_match"] == pytest.approx(rescored["exact_match"], abs=1e-9)
    assert results["windowed_questions_validation"] > 10 and results["answers_in_no_window_train"] == 0
    baseline = qa.squad_metrics([qa.first_sentence(c) for c in rows["context"]], [a["text"] for a in rows["answers"]])
    assert results["baseline_eval_f1"] == pytest.approx(baseline["f1"])
    nbest = json.loads((run / "nbest_predictions.json").read_text())
    assert all(nbest[key][0]["text"] == predictions[key] for key in rows["id"] if predictions[key])
    errors = pd.read_csv(run / "errors.csv", keep_default_na=False)
    assert len(errors) == 5 and errors["f1"].is_monotonic_increasing
    assert all("[[" in c for c in errors["reference_in_context"])
    asked = dict(zip(rows["id"], rows["question"]))
    assert all(asked[key] == question for key, question in zip(errors["id"], errors["question"]))


def test_the_saved_model_answers_through_the_pipeline_and_predict_as_the_run_did(run, squad, tmp_path):
    """pipeline("question-answering", model=OUTPUT_DIR, trust_remote_code=True) loads the run's model with the
    pipeline file saved beside it (transformers 5 has none of its own) and, with the run's settings from the saved
    config, gives the answers of predictions.json; so does `finetune-recipes predict` on the SQuAD file."""
    rows = qa.read_squad_json(str(squad / "validation.json"), "--validation_file")
    predictions = json.loads((run / "predictions.json").read_text())
    pipe = pipeline("question-answering", model=str(run), trust_remote_code=True)
    for i in (0, 21, 43):
        answer = pipe(question=rows[i]["question"], context=rows[i]["context"])
        assert answer["answer"] == predictions[rows[i]["id"]] == rows[i]["context"][answer["start"]:answer["end"]]
        assert 0 < answer["score"] <= 1
    output = tmp_path / "answers.csv"
    assert predict(str(run), str(squad / "validation.json"), str(output)) == len(rows)
    written = pd.read_csv(output, dtype=str, keep_default_na=False)
    assert written["id"].tolist() == rows["id"]
    assert written["answer"].tolist() == [predictions[key] for key in rows["id"]]
    assert written["score"].astype(float).between(0, 1).all()


def _flat_table(path: Path, rows, every: int = 4) -> str:
    """SQuAD rows as a csv with flat answer_text / answer_start columns; every `every`-th question unanswered."""
    table = pd.DataFrame({"question": rows["question"], "context": rows["context"],
                          "answer_text": [a["text"][0] if i % every else "" for i, a in enumerate(rows["answers"])],
                          "answer_start": [a["answer_start"][0] if i % every else None
                                           for i, a in enumerate(rows["answers"])]})
    table.to_csv(path, index=False)
    return str(path)


def test_flat_tables_with_unanswerable_questions_train_with_version_2(tiny_bert, squad, tmp_path):
    """A csv with answer_text / answer_start columns reads as answers; questions without one need
    --version_2_with_negative, which trains them on CLS and scores them apart."""
    train = _flat_table(tmp_path / "train.csv", qa.read_squad_json(str(squad / "train.json"), "--train_file"))
    validation = _flat_table(tmp_path / "validation.csv",
                             qa.read_squad_json(str(squad / "validation.json"), "--validation_file"))
    argv = ["--model_name_or_path", tiny_bert, "--train_file", train, "--validation_file", validation,
            "--max_seq_length", "128", "--doc_stride", "32"]
    with pytest.raises(RecipeInputError, match="no answer: questions without one need --version_2_with_negative"):
        qa.main([*argv, *fast_args(tmp_path / "v1")])
    results = qa.main([*argv, "--version_2_with_negative", "true", *fast_args(tmp_path / "v2")])
    assert {"eval_has_answer_f1", "eval_no_answer_f1", "eval_f1"} <= set(results)
    predictions = json.loads((tmp_path / "v2" / "predictions.json").read_text())
    assert len(predictions) == 44 and list(predictions) == [str(i + 1) for i in range(44)]


@pytest.mark.slow
def test_cross_validation_keeps_each_articles_questions_in_one_fold(tiny_bert, squad, tmp_path):
    """--cv_folds 2 --cv_group_column title, with the validation split held out of train by the same groups: an
    article's questions stay on one side of every split, and each fold's held-out questions are scored (found
    by their index, whatever rows a fold holds)."""
    articles = {"Super_Bowl_50": 30, "Warsaw": 20, "Teacher": 23}  # tests/data/squad_small/train.json
    qa.main(["--model_name_or_path", tiny_bert, "--train_file", str(squad / "train.json"), "--validation_split", "0.3",
             "--max_seq_length", "96", "--doc_stride", "32", "--cv_folds", "2", "--cv_group_column", "title",
             *fast_args(tmp_path / "cv")])
    folds = json.loads((tmp_path / "cv" / "cv_results.json").read_text())["folds"]
    assert len(folds) == 2 and all(f["heldout_rows"] in articles.values() for f in folds)
    assert 73 - sum(f["heldout_rows"] for f in folds) in articles.values()  # the validation split: one article
    assert all(0 <= f["heldout"]["f1"] <= 100 and "f1" in f["eval"] for f in folds)


@pytest.mark.slow
def test_an_ensemble_soft_votes_each_questions_start_and_end_distributions(run, tiny_bert, squad, tmp_path):
    """--ensemble soft_vote over two copies of one model answers every question as that model did, with its
    scores (members' distributions averaged, not their positions mixed up); `finetune-recipes predict` on the
    saved ensemble gives the same answers."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    out = tmp_path / "ensemble"
    results = qa.main(["--model_name_or_path", tiny_bert, "--train_file", str(squad / "train.json"),
                       "--validation_file", str(squad / "validation.json"), "--test_file", str(squad / "validation.json"),
                       "--max_seq_length", "96", "--doc_stride", "32", "--ensemble", "soft_vote",
                       "--ensemble_models", str(run), str(copy), *fast_args(out)])
    member = json.loads((run / "all_results.json").read_text())
    assert results["ensemble_eval_f1"] == pytest.approx(member["eval_f1"])
    assert results["ensemble_eval_exact_match"] == pytest.approx(member["eval_exact_match"])
    predictions = json.loads((run / "predictions.json").read_text())
    assert json.loads((out / "predictions.json").read_text()) == predictions
    assert predict(str(out), str(squad / "validation.json"), str(tmp_path / "answers.json")) == len(predictions)
    assert json.loads((tmp_path / "answers.json").read_text()) == predictions
