"""Hard text inputs: empty training rows, and words that give no token.

1. Empty or whitespace-only training rows (and rows whose every word the tokenizer's normaliser
   deletes) are left out of the Hessian and the candidates, listed with their dataset index and
   reason (``Explainer.skipped_train_rows``, ``meta.json``'s ``skipped_train_rows``), and every
   other number is the same as without them; ``train_index`` stays the dataset row. Errors that
   name a row name the caller's row, not a position in a length-sorted batch.
2. A word that gives no token (a zero-width space, a lone combining accent) is not scored
   (saliency and Eq. 8 null) but not truncated; the other words keep their own scores, equal to
   those of the same text without that word (same tokens, so bit for bit).

Tiny BERT (:func:`hf_pairdots.models.tiny_bert`), exact solver, fixed damping: seconds per test.
"""

import json

import datasets
import pytest
import torch

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.callback import META_NAME, explain_dataset
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.influence import prepare_word_variants, word_influence
from hf_pairdots.loss import make_train_loss, prepare_data
from hf_pairdots.models import tiny_bert
from hf_pairdots.report import JSONL_NAME, REPORT_NAME
from hf_pairdots.saliency import saliency
from hf_pairdots.text import NO_TOKEN_TEXT, encode_words, unscorable_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ZWSP, ACCENT = "\u200b", "\u0301"  # deleted by the BERT normaliser: no token
TRAIN = [("a good film", 1), ("a bad film", 0), ("the plot was fine", 1), ("awful acting here", 0),
         ("a great story", 1), ("boring scene again", 0), ("the actor was great", 1), ("the movie was dull", 0)]
DEV = [("a good story", 1), ("bad plot", 0), ("fine film", 0), ("dull acting", 1)]
FAST = SolverOptions(solver="exact", damping=1.0)
# Dataset rows 2, 5 and 7 cannot be scored; the others are TRAIN in order.
BAD_ROWS = {2: ("", 1), 5: ("   \t ", 0), 7: (f"{ZWSP} {ACCENT}", 1)}


def _args(**kw):
    return ExplainArguments(**{"queries": "all", "top_k": len(TRAIN), "max_length": 16, "solver": FAST, **kw})


def _ds(rows):
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})


def _with_bad_rows():
    """TRAIN with the unscorable rows inserted at their dataset indices; and dataset row -> TRAIN row."""
    rows, to_clean, clean = [], {}, iter(enumerate(TRAIN))
    for i in range(len(TRAIN) + len(BAD_ROWS)):
        if i in BAD_ROWS:
            rows.append(BAD_ROWS[i])
        else:
            j, row = next(clean)
            rows.append(row)
            to_clean[i] = j
    return rows, to_clean


def _records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / JSONL_NAME).read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------
# 1. Unscorable training rows
# --------------------------------------------------------------------------------------------

def test_explain_dataset_skips_unscorable_training_rows(tok, tmp_path):
    rows, to_clean = _with_bad_rows()
    dev = _ds(DEV)
    explain_dataset(tiny_bert(), tok, _ds(TRAIN), dev, _args(), tmp_path / "clean")
    explain_dataset(tiny_bert(), tok, _ds(rows), dev, _args(), tmp_path / "bad")  # old code: ValueError
    meta = json.loads((tmp_path / "bad" / META_NAME).read_text())
    skipped = {row["index"]: row["reason"] for row in meta["skipped_train_rows"]}
    assert set(skipped) == set(BAD_ROWS)
    assert "empty" in skipped[2] and "empty" in skipped[5] and "no token" in skipped[7]
    assert "skipped_train_rows" not in json.loads((tmp_path / "clean" / META_NAME).read_text())
    assert "skipped_train_rows" in (tmp_path / "bad" / REPORT_NAME).read_text()
    clean, bad = _records(tmp_path / "clean"), _records(tmp_path / "bad")
    assert len(bad) == len(clean) == len(DEV)
    for c, b in zip(clean, bad):
        for ce, be in zip(c["labels"], b["labels"]):
            assert len(be["top_train"]) == len(TRAIN)  # top_k = all rows: only the scorable ones
            assert all(t["train_index"] not in BAD_ROWS for t in be["top_train"])
            assert [to_clean[t["train_index"]] for t in be["top_train"]] == [t["train_index"] for t in ce["top_train"]]
            for ct, bt in zip(ce["top_train"], be["top_train"]):
                assert bt["text"] == rows[bt["train_index"]][0] == ct["text"]
                assert bt["influence"] == ct["influence"]
                assert bt["word_influence"] == ct["word_influence"]


def test_explainer_directly_maps_scores_to_dataset_rows(tok):
    rows, to_clean = _with_bad_rows()
    args, model = _args(top_k=3), tiny_bert()
    queries = [Query(i, t, y) for i, (t, y) in enumerate(DEV[:2])]
    clean = Explainer(model, tok, [t for t, _ in TRAIN], [y for _, y in TRAIN], args)
    bad = Explainer(model, tok, [t for t, _ in rows], [y for _, y in rows], args)
    assert [row["index"] for row in bad.skipped_train_rows] == sorted(BAD_ROWS)
    assert bad.train_rows == sorted(to_clean) and bad.data.size == len(TRAIN)
    for c, b in zip(clean.explain(queries), bad.explain(queries)):
        for ce, be in zip(c.labels, b.labels):
            assert [to_clean[t.train_index] for t in be.top_train] == [t.train_index for t in ce.top_train]
            assert [t.influence for t in be.top_train] == [t.influence for t in ce.top_train]


def test_errors_name_the_callers_row(tok):
    objective = make_train_loss(tiny_bert(), "head")
    texts = ["a good film", "the plot was fine", "", "bad"]
    # The length sort puts "" first: the old message said "text 0".
    with pytest.raises(ValueError, match=r"text 2 is empty"):
        prepare_data(objective, tok, texts, [1, 1, 0, 0], batch_size=2)
    with pytest.raises(ValueError, match=r"text 9 is empty"):
        encode_words(tok, ["fine", " "], rows=[4, 9])
    with pytest.raises(ValueError, match=r"labels \[5\] of rows \[3\]"):
        prepare_data(objective, tok, texts[:2] + ["ok", "bad"], [1, 1, 0, 5])
    with pytest.raises(ValueError, match=r"no training row can be scored.*row 0: empty"):
        Explainer(tiny_bert(), tok, ["", ZWSP], [0, 1], _args())
    explainer = Explainer(tiny_bert(), tok, [t for t, _ in TRAIN], [y for _, y in TRAIN], _args(top_k=2))
    with pytest.raises(ValueError, match=r"query row 7.*no token"):
        explainer.explain([Query(3, "a good story", 1), Query(7, f"{ZWSP}", 0)])


# --------------------------------------------------------------------------------------------
# 2. Words that give no token
# --------------------------------------------------------------------------------------------

def test_zero_token_words_are_not_truncated(tok):
    _, _, truncated = encode_words(tok, [f"a {ZWSP} good film", f"a {ACCENT} b {ZWSP}", "a good film"], 16)
    assert truncated == [0, 0, 0]  # old code: [1, 2, 0]
    words = " ".join(f"w{i}" for i in range(20))  # "w12" -> 2 pieces: count words, not pieces
    n_pieces = [len(tok.tokenize(w)) for w in words.split()]
    enc, _, [cut] = encode_words(tok, [f"{words} {ZWSP}"], 8)
    kept = {w for w in enc.word_ids(0) if w is not None}
    assert cut == 20 - len(kept) and sum(n_pieces[:len(kept)]) >= 6  # the trailing ZWSP is not counted
    assert unscorable_texts(tok, ["ok", "", f"{ZWSP} {ACCENT}", "  "]) == {
        1: "empty or whitespace-only text", 3: "empty or whitespace-only text",
        2: NO_TOKEN_TEXT}


@pytest.mark.parametrize("eraser", ["unk", "zero"])
def test_eq8_scores_stay_on_their_words(tok, eraser):
    objective = make_train_loss(tiny_bert(), "top")
    s = torch.randn(2, objective.params.numel, generator=torch.Generator().manual_seed(3))
    plain = word_influence(objective, tok, "the plot was fine", 1, s, eraser=eraser)
    got = word_influence(objective, tok, f"the {ZWSP} plot was {ACCENT} fine", 1, s, eraser=eraser)
    assert got.shape == (2, 6)
    assert torch.equal(got[:, [0, 2, 3, 5]], plain)  # old code: "fine" 0, ZWSP and ACCENT scored
    assert torch.all(got[:, [1, 4]] == 0)
    assert prepare_word_variants(objective, tok, f"the {ZWSP} plot", 1, eraser=eraser)["word_index"] == [0, 2]


def test_zero_token_word_in_query_and_training_text(tok, tmp_path):
    with_zwsp = f"the {ZWSP} plot was fine"
    dev = _ds([(f"a {ZWSP} good story", 1), (f" {ZWSP} ", 0)])  # row 1: nothing the model sees
    plain_dev = _ds([("a good story", 1)])
    train = TRAIN[:2] + [(with_zwsp, 1)] + TRAIN[3:]  # row 2 is "the plot was fine" with a ZWSP
    explain_dataset(tiny_bert(), tok, _ds(train), dev, _args(), tmp_path / "zwsp")
    explain_dataset(tiny_bert(), tok, _ds(TRAIN), plain_dev, _args(), tmp_path / "plain")
    [got], [want] = _records(tmp_path / "zwsp"), _records(tmp_path / "plain")
    meta = json.loads((tmp_path / "zwsp" / META_NAME).read_text())
    assert meta["skipped_rows"] == [{"index": 1, "reason": NO_TOKEN_TEXT}]
    assert got["truncated_words"] == 0  # old code: 1
    for g, w in zip(got["labels"], want["labels"]):
        assert g["saliency"][1] is None and g["saliency"][:1] + g["saliency"][2:] == w["saliency"]
        assert g["salient_word"] == w["salient_word"] + (w["salient_word"] >= 1)
        [entry] = [t for t in g["top_train"] if t["train_index"] == 2]
        [plain] = [t for t in w["top_train"] if t["train_index"] == 2]
        # The same numbers up to the solve's rounding (bit for bit on some CPUs, 1e-7 apart on others)
        assert entry["influence"] == pytest.approx(plain["influence"], rel=1e-5)
        scores = entry["word_influence"]
        assert scores[1] is None  # old code: "fine" None
        largest = max(abs(x) for x in plain["word_influence"] if x is not None)
        assert scores[:1] + scores[2:] == pytest.approx(plain["word_influence"], rel=1e-5, abs=1e-4 * largest)
        assert entry["responsible_word"] == plain["responsible_word"] + (plain["responsible_word"] >= 1)
    sal = saliency(tiny_bert(), tok, [f"a {ACCENT} good"], [1])[0]
    assert sal.scores[1] is None and sal.rank()[0] != 1
