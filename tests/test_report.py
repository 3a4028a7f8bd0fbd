"""hf_pairdots.report: jsonl store (resume, repair), dataset copy, HTML page, real rendering."""

import json
import re
import shutil
import subprocess

import datasets
import pytest

from hf_pairdots.report import (
    PALETTES,
    ExplanationStore,
    atomic_write_text,
    render_html,
    write_dataset,
    write_report,
)


def _train(index, text, label, name, influence, word_influence, responsible):
    return {"train_index": index, "text": text, "label": label, "label_name": name,
            "influence": influence, "words": text.split(), "word_influence": word_influence,
            "responsible_word": responsible}


def _record_best():
    """Table 2 of the paper: negative review predicted positive because of "best"."""
    text = "the best way to hope for any chance of enjoying this film is by lowering your expectations"
    words = text.split()
    pred_sal = [0.01] * len(words)
    pred_sal[1] = 0.9  # best
    pred_sal[9] = -0.3  # enjoying, negative
    gold_sal = [0.02] * len(words)
    gold_sal[14] = 0.7  # lowering
    gold_sal[-1] = None  # past truncation
    return {
        "query_index": 7, "text": text, "gold": 0, "gold_name": "negative",
        "predicted": 1, "predicted_name": "positive", "probabilities": [0.2, 0.8],
        "words": words, "truncated_words": 1,
        "labels": [
            {"label": 1, "label_name": "positive", "role": "predicted", "probability": 0.8,
             "saliency": pred_sal, "salient_word": 1,
             "top_train": [
                 _train(11, "another best of the year selection .", 1, "positive", 0.0123456,
                        [0.0, 0.5, 0.1, 0.0, 0.05, 0.2, 0.0], 1),
                 _train(12, "<script>alert(1)</script> the best", 1, "positive", -0.004,
                        [0.1, 0.0, 0.4], 2),
             ]},
            {"label": 0, "label_name": "negative", "role": "gold", "probability": 0.2,
             "saliency": gold_sal, "salient_word": 14,
             "top_train": [
                 _train(21, "below is well below expectations .", 0, "negative", 2.5e-05,
                        [0.3, 0.0, 0.1, 0.3, 0.6, None], 4),
             ]},
        ],
        "diagnostics": {"solver": "lissa", "damping": 0.01, "scale": 25.0, "depth": 100,
                        "repeat": 2, "relative_residual": 0.031},
    }


def _record_loved():
    text = "i loved it \u2028 !"  # U+2028 must not split a jsonl line
    words = text.split()
    return {
        "query_index": 3, "text": text, "gold": 1, "gold_name": "positive",
        "predicted": 0, "predicted_name": "negative", "probabilities": [0.6, 0.4],
        "words": words, "truncated_words": 0,
        "labels": [
            {"label": 0, "label_name": "negative", "role": "predicted", "probability": 0.6,
             "saliency": [0.1, 0.2, 0.5, 0.0], "salient_word": 2,
             "top_train": [_train(5, "i hated it", 0, "negative", 0.5, [0.0, 0.9, 0.1], 1)]},
            {"label": 1, "label_name": "positive", "role": "gold", "probability": 0.4,
             "saliency": [0.0, 0.8, 0.1, 0.0], "salient_word": 1,
             "top_train": [_train(6, "i loved this film .", 1, "positive", 0.25,
                                  [0.0, 0.7, 0.0, 0.1, 0.0], 1)]},
        ],
        "diagnostics": {"solver": "cg", "damping": 0.01, "scale": 1.0, "depth": 50,
                        "repeat": 1, "relative_residual": 0.002},
    }


META = {"model": "tiny-bert", "dataset": "sst2", "train_subsample": 200, "dev_subsample": 50,
        "solver": {"name": "lissa", "relative_residual": 0.031},
        "timings_s": {"saliency": 1.5, "influence": 12.25},
        "accuracies": {"dev": 0.875}}


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new \u00e9")
    assert path.read_text(encoding="utf-8") == "new \u00e9"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_store_round_trip_sorted(tmp_path):
    store = ExplanationStore(tmp_path)
    store.append(_record_best())
    store.append(_record_loved())
    assert store.done_indices() == {3, 7}
    assert store.records() == [_record_loved(), _record_best()]
    reopened = ExplanationStore(tmp_path)
    assert reopened.records() == [_record_loved(), _record_best()]
    assert len(_lines(tmp_path / "explanations.jsonl")) == 2


def test_store_reappend_keeps_last_without_duplicates(tmp_path):
    store = ExplanationStore(tmp_path)
    store.append(_record_best())
    changed = _record_best()
    changed["probabilities"] = [0.3, 0.7]
    store.append(changed)
    assert [r["probabilities"] for r in store.records()] == [[0.3, 0.7]]
    reopened = ExplanationStore(tmp_path)  # loading compacts the file
    assert reopened.records() == [changed]
    assert _lines(tmp_path / "explanations.jsonl") == [changed]


def test_store_repairs_truncated_final_line(tmp_path):
    store = ExplanationStore(tmp_path)
    store.append(_record_loved())
    store.append(_record_best())
    path = tmp_path / "explanations.jsonl"
    full_line = json.dumps({**_record_best(), "query_index": 9}) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # an append killed half-way
        f.write(full_line[: len(full_line) // 2])
    resumed = ExplanationStore(tmp_path)
    assert resumed.done_indices() == {3, 7}
    assert _lines(path) == [_record_loved(), _record_best()]  # repaired on disk
    resumed.append({**_record_best(), "query_index": 9})
    assert ExplanationStore(tmp_path).done_indices() == {3, 7, 9}


def test_store_rejects_corrupt_middle_line(tmp_path):
    path = tmp_path / "explanations.jsonl"
    path.write_text('{"query_index": 1}\n{"query_ind\n{"query_index": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="explanations.jsonl:2"):
        ExplanationStore(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_store_rejects_non_finite_with_field_name(tmp_path, bad):
    record = _record_best()
    record["labels"][0]["top_train"][1]["word_influence"][2] = bad
    store = ExplanationStore(tmp_path)
    with pytest.raises(ValueError, match=r"labels\[0\]\.top_train\[1\]\.word_influence\[2\]"):
        store.append(record)
    assert store.done_indices() == set()
    assert not (tmp_path / "explanations.jsonl").exists()


def test_store_requires_int_query_index(tmp_path):
    with pytest.raises(ValueError, match="query_index"):
        ExplanationStore(tmp_path).append({"text": "x"})


def test_dataset_round_trip_keeps_nulls(tmp_path):
    records = [_record_loved(), _record_best()]
    path = tmp_path / "explanations_dataset"
    write_dataset(records, path)
    write_dataset(records, path)  # overwriting an existing copy
    loaded = datasets.load_from_disk(str(path))
    assert loaded.to_list() == records
    assert loaded[1]["labels"][1]["saliency"][-1] is None
    assert loaded[1]["labels"][1]["top_train"][0]["word_influence"][-1] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explanations_dataset"]


def test_dataset_empty(tmp_path):
    write_dataset([], tmp_path / "ds")
    assert len(datasets.load_from_disk(str(tmp_path / "ds"))) == 0


def _word_span(html, word, title):
    """The highlight element of the most salient word, with its hover score."""
    pattern = rf'<span class="w top" style="[^"]*outline[^"]*" title="{re.escape(title)}">{re.escape(word)}</span>'
    return re.findall(pattern, html)


def test_html_marks_salient_words_with_scores():
    html = render_html([_record_best(), _record_loved()], META)
    assert len(_word_span(html, "best", "0.9")) == 1  # test sentence, predicted side
    assert len(_word_span(html, "lowering", "0.7")) == 1  # test sentence, gold side
    assert len(_word_span(html, "best", "0.5")) == 1  # training example, Eq. 8
    assert len(_word_span(html, "loved", "0.8")) == 1
    assert 'style="background:rgba(214,39,40,1.000);color:#fff;outline:2px solid rgb(214,39,40)"' in html
    assert 'title="-0.3">enjoying</span>' in html and "rgba(96,125,160,0.333)" in html
    assert '<span class="w null" style="" title="not scored">expectations</span>' in html
    assert "influence 0.0123" in html and "influence 2.5e-05" in html
    assert 'href="#q7"' in html and 'id="q7"' in html and 'href="#q3"' in html
    assert "negative (0.200)" in html and "positive (0.800)" in html
    assert "tiny-bert" in html and "dev: 0.875" in html and "influence: 12.25" in html
    assert html.index('id="q3"') < html.index('id="q7"')


def test_html_escapes_text():
    html = render_html([_record_best()], {"model": "<b>m</b>"})
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;m&lt;/b&gt;" in html


def test_header_leaves_out_unset_values():
    html = render_html([_record_best()], {"global_step": 0, "best_model_checkpoint": None})
    assert "<th>global_step</th><td>0</td>" in html
    assert "best_model_checkpoint" not in html and "None" not in html


def test_empty_report(tmp_path):
    path = write_report(tmp_path, [], META)
    html = path.read_text(encoding="utf-8")
    assert path.name == "report.html" and html.startswith("<!DOCTYPE html>")
    assert "No misclassified examples" in html and html.rstrip().endswith("</html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_mismatched_scores_raise():
    record = _record_loved()
    record["labels"][0]["saliency"].append(0.1)
    with pytest.raises(ValueError, match="4 words but 5 scores"):
        render_html([record], {})


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium not installed: apt-get install -y chromium (Debian) to run this test")


def _screenshot(browser, html_path, png_path, profile):
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={png_path}", "--window-size=1200,1600",
         html_path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )


def _count_colour(image, rgb, tol=2):
    return sum(n for n, px in image.getcolors(maxcolors=1 << 24)
               if all(abs(a - b) <= tol for a, b in zip(px, rgb)))


def test_highlight_renders_in_headless_browser(tmp_path):
    browser = _browser()
    Image = pytest.importorskip("PIL.Image", reason="Pillow not installed")
    red, green = PALETTES["predicted"][0], PALETTES["gold"][0]
    counts = {}
    for name, records in (("full", [_record_best(), _record_loved()]), ("empty", [])):
        out = tmp_path / name
        html_path = write_report(out, records, META)
        _screenshot(browser, html_path, out / "shot.png", tmp_path / "profile")
        image = Image.open(out / "shot.png").convert("RGB")
        counts[name] = (_count_colour(image, red), _count_colour(image, green))
    # The most salient words are filled and outlined in the full colour; the legend
    # swatches (on both pages) are the only other pixels of it.
    assert counts["full"][0] > counts["empty"][0] + 200, counts
    assert counts["full"][1] > counts["empty"][1] + 200, counts
