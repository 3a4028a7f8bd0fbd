"""Tests of hf_pairdots.augment.search: the two-stage search of Eq. 9-12 and the random baseline.

Real values throughout: an untrained tiny BERT with the packaged MiniLM tokenizer, the cached-top
objective, s_test from CG on the saliency measurement of a query (Eq. 5), Eq. 7 and Eq. 8 from
hf_pairdots.influence. Every (position, substitute) pair is scored exhaustively as the reference.
"""

import time

import pytest
import torch

from hf_pairdots.arguments import SolverOptions
from hf_pairdots.augment import search as search_module
from hf_pairdots.augment.lexicon import Lexicon
from hf_pairdots.augment.search import (
    OBJECTIVE_GROUPS,
    OBJECTIVES,
    Edit,
    candidate_positions,
    exhaustive_search,
    random_edit,
    search_edit,
    substitute,
    word_spans,
)
from hf_pairdots.influence import perturbation_influence, word_influence
from hf_pairdots.loss import make_train_loss, prepare_data
from hf_pairdots.measurement import saliency_measurement_gradient
from hf_pairdots.modeling import model_inputs
from hf_pairdots.models import tiny_bert
from hf_pairdots.saliency import saliency
from hf_pairdots.solve import compute_s_test
from hf_pairdots.text import encode_words

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Twenty training texts long enough that T = 5 sampled positions do not cover every candidate.
TEXTS = [
    "the acting was great and the plot was fun from start to end , though the final act drags and the music "
    "feels loud",
    "a dull and tedious film that never finds its footing , wasting a capable cast on a script full of empty "
    "speeches",
    "the story is simple but the performances are wonderful and the small town setting looks beautiful in "
    "every scene",
    "i hated every minute of this boring mess , from the clumsy opening to the silly ending that explains "
    "nothing",
    "a charming and funny movie with a big heart , smart jokes and a young hero you want to follow anywhere",
    "the director wastes a talented cast on a silly script , and the camera work makes the battles hard to "
    "follow",
    "beautiful photography cannot save the weak dialogue , the thin characters or the plot that repeats "
    "itself twice",
    "an honest and moving portrait of a small family , told with warmth , patience and a fine eye for detail",
    "the jokes fall flat , the characters are thin , and the long running time tests the patience of any "
    "viewer",
    "a clever thriller that keeps you guessing until the final scene , with sharp writing and a strong lead "
    "performance",
    "slow pacing and a confusing plot make it hard to watch , even though the lead actress does her best "
    "work",
    "the music is lovely , the actors look happy , and the whole picture has a gentle rhythm that feels "
    "right",
    "this picture offers nothing new , but it is pleasant enough and the children in the audience laughed a "
    "lot",
    "a brilliant script and strong direction lift the material , turning a familiar story into a real "
    "pleasure",
    "the ending felt rushed and cheap after a promising start , and the villain never becomes a real "
    "threat",
    "warm gentle humor carries the film through its rough patches , helped by a cast that clearly enjoys "
    "the work",
    "the special effects are impressive , yet the story is empty and the dialogue sounds like a first "
    "draft",
    "a bold ambitious work that rewards patient viewers with striking images and a quietly powerful final "
    "hour",
    "the dialogue sounds forced , the acting is stiff , and the plot twists arrive long after you stop "
    "caring",
    "an entertaining ride with plenty of laughs and real suspense , made by people who love old adventure "
    "movies",
]
LABELS = [1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1]
QUERY = "a wonderful and moving film"


@pytest.fixture(scope="module")
def setup(tok):
    """(objective, s_test (1, P)) for the saliency of QUERY's most salient word for label 1."""
    model = tiny_bert(seed=0, initializer_range=0.2)
    objective = make_train_loss(model, "top")
    data = prepare_data(objective, tok, TEXTS, LABELS)
    [sal] = saliency(model, tok, [QUERY], [1])
    enc, _, _ = encode_words(tok, [QUERY], 128)
    positions = [p for p, w in enumerate(enc.word_ids(0)) if w == sal.most_salient]
    grad = saliency_measurement_gradient(model, objective.params, model_inputs(dict(enc)), 1, positions)
    result = compute_s_test(objective, data, grad[None], SolverOptions(solver="cg", damping=None, power_iters=10))
    return objective, result.x


class _Counter:
    """Wraps perturbation_influence and records the number of variants of each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, objective, tokenizer, text, label, variants, s_test, **kwargs):
        self.calls.append(list(variants))
        return perturbation_influence(objective, tokenizer, text, label, variants, s_test, **kwargs)


def _forbid(*args, **kwargs):
    raise AssertionError("no model call expected")


# ---------------------------------------------------------------------------------- mechanics


def test_word_spans_and_substitute_keep_every_other_character():
    text = "  A good\tmovie,\n really\u00a0fun  "
    spans = word_spans(text)
    assert [text[a:b] for a, b in spans] == text.split()
    edited = substitute(text, 2, "film,")
    assert edited == "  A good\tfilm,\n really\u00a0fun  "
    assert edited.split() == ["A", "good", "film,", "really", "fun"]
    with pytest.raises(IndexError):
        substitute(text, 5, "x")


def test_groups_resolve_to_search_objectives():
    assert OBJECTIVE_GROUPS["attack_combined"] == ("attack_down", "attack_up")
    assert OBJECTIVE_GROUPS["fix"] == ("fix_up", "fix_down")
    for names in OBJECTIVE_GROUPS.values():
        assert all(name in OBJECTIVES for name in names)
    assert all(OBJECTIVES[n].relations == ("synonym",) and OBJECTIVES[n].replace for n in ("attack_down", "attack_up"))
    assert all("antonym" in OBJECTIVES[n].relations and not OBJECTIVES[n].replace for n in ("fix_up", "fix_down"))


def test_no_candidates_gives_no_edit_and_a_reason_without_model_calls(setup, tok, lexicon, monkeypatch):
    objective, s_test = setup
    monkeypatch.setattr(search_module, "perturbation_influence", _forbid)
    monkeypatch.setattr(search_module, "word_influence", _forbid)
    for text in ["the of and to it is", "123 456 !!! ...", "猫 café", "[CLS] <s>"]:
        start = time.perf_counter()
        result = search_edit(objective, tok, lexicon, text, 1, s_test, "attack_down")
        assert result.edit is None and "no word has WordNet synonyms" in result.reason
        assert result.trials == [] and result.calls == 0
        assert time.perf_counter() - start < 1.0
        assert random_edit(lexicon, text, "attack_down", torch.Generator().manual_seed(0)) is None
    assert search_edit(objective, tok, lexicon, "   ", 1, s_test, "fix_up").reason == "empty or whitespace-only text"
    # The only word with synonyms lies past max_length: never edited (the model cannot see it).
    truncated = " ".join(["the"] * 30 + ["movie"])
    result = search_edit(objective, tok, lexicon, truncated, 1, s_test, "attack_down", max_length=16)
    assert result.edit is None and "past max_length" in result.reason
    assert random_edit(lexicon, truncated, "attack_down", torch.Generator(), tokenizer=tok, max_length=16) is None


def test_proper_nouns_get_no_edit_and_the_reason_says_so(setup, tok, lexicon, monkeypatch):
    """Before: "Jeter" -> "Pitchier", "Chicago" -> "Boodle", "Washington" -> "WA"."""
    objective, s_test = setup
    monkeypatch.setattr(search_module, "perturbation_influence", _forbid)
    monkeypatch.setattr(search_module, "word_influence", _forbid)
    text = "of Jeter , Chicago or Washington"
    result = search_edit(objective, tok, lexicon, text, 1, s_test, "fix_up")
    assert result.edit is None and result.calls == 0
    assert result.reason == (
        "no word has WordNet synonyms or antonyms but proper nouns, which are not edited: "
        "'Jeter' (capitalised mid-sentence), 'Chicago' (capitalised mid-sentence), "
        "'Washington' (capitalised mid-sentence); Lexicon(edit_proper_nouns=True) edits them")
    assert random_edit(lexicon, text, "attack_down", torch.Generator().manual_seed(0)) is None
    starts_a_sentence = search_edit(objective, tok, lexicon, "Washington !", 1, s_test, "attack_down")
    assert "'Washington' (WordNet knows it only as a proper noun)" in starts_a_sentence.reason
    opted_in = candidate_positions(Lexicon(edit_proper_nouns=True), text, ("synonym",))
    assert {t: [rep for rep, _ in found] for t, found in opted_in.items()} == {
        1: ["Pitchier", "Sootier"], 3: ["Michigan", "Newmarket", "Boodle", "Stops"], 5: ["WA", "Capital"]}


def test_capitals_count_as_names_except_at_sentence_starts(lexicon):
    text = 'Movies are great . Chicago wins ! Washington , Mr. Smith of the U.S. Army liked "Jeter." Films rule'
    words = text.split()
    options = candidate_positions(lexicon, text, ("synonym",))
    assert [words[t] for t in options] == ["Movies", "great", "wins", "liked", "Films", "rule"]
    assert options[0][:2] == [("Films", "synonym"), ("Pictures", "synonym")]  # sentence-initial, common
    assert options[17][:2] == [("Movies", "synonym"), ("Pictures", "synonym")]  # after '"Jeter."'


def test_hard_bound_on_scored_variants(setup, tok, lexicon, monkeypatch):
    objective, s_test = setup
    counter = _Counter()
    monkeypatch.setattr(search_module, "perturbation_influence", counter)
    text = TEXTS[0]
    options = candidate_positions(lexicon, text, ("synonym",), max_candidates=3)
    assert len(options) > 6  # more candidate positions than 1 + T
    for T, k in [(5, 3), (2, 1), (0, 20)]:
        counter.calls.clear()
        result = search_edit(objective, tok, lexicon, text, 1, s_test, "attack_down", num_sampled=T, max_candidates=k)
        assert len(counter.calls) == result.calls <= 1 + T
        assert all(1 <= len(variants) <= k for variants in counter.calls)
        assert len(result.trials) == sum(map(len, counter.calls)) <= (1 + T) * k
        for variants in counter.calls:  # one call per position: all variants differ from the text in one same word
            differing = {tuple(i for i, (a, b) in enumerate(zip(text.split(), v.split())) if a != b) for v in variants}
            assert len(differing) == 1 and len(next(iter(differing))) == 1


def test_bad_arguments(setup, tok, lexicon):
    objective, s_test = setup
    with pytest.raises(ValueError, match="attack_combined"):
        search_edit(objective, tok, lexicon, TEXTS[0], 1, s_test, "attack_combined")
    with pytest.raises(ValueError, match="shape"):
        search_edit(objective, tok, lexicon, TEXTS[0], 1, torch.zeros(2, s_test.shape[1]), "attack_down")
    with pytest.raises(ValueError, match="entries"):
        search_edit(objective, tok, lexicon, TEXTS[0], 1, torch.zeros(1, 7), "attack_down")
    with pytest.raises(ValueError, match="num_sampled"):
        search_edit(objective, tok, lexicon, TEXTS[0], 1, s_test, "attack_down", num_sampled=-1)


# ---------------------------------------------------------------------------------- against exhaustive


@pytest.fixture(scope="module")
def searched(setup, tok, lexicon):
    """For every text and objective: the search (T = 5 and T = 0), the exhaustive table, Eq. 8."""
    objective, s_test = setup
    out = []
    for goal in ("attack_down", "attack_up", "fix_up"):
        for i, (text, label) in enumerate(zip(TEXTS, LABELS)):
            scores = word_influence(objective, tok, text, label, s_test)[0]
            runs = {T: search_edit(objective, tok, lexicon, text, label, s_test, goal, num_sampled=T,
                                   generator=torch.Generator().manual_seed(i), word_scores=scores)
                    for T in (5, 0)}
            full = exhaustive_search(objective, tok, lexicon, text, label, s_test, goal)
            out.append((goal, text, label, scores, runs, full))
    return out


def test_stage_one_is_eq11_and_stage_two_is_eq12(searched, tok):
    for goal, text, label, scores, runs, full in searched:
        direction = OBJECTIVES[goal].direction
        result = runs[5]
        table = {(t.position, t.replacement): t.predicted_change for t in full.trials}
        positions = sorted({t.position for t in full.trials})
        # Eq. 11: the chosen word has the largest -direction x I(x_t, m) among words with substitutes.
        assert result.chosen_position == max(positions, key=lambda t: -direction * float(scores[t]))
        # Batched scoring gives the same Eq. 7 values as the exhaustive table.
        for t in result.trials:
            assert t.predicted_change == pytest.approx(table[(t.position, t.replacement)], rel=1e-4, abs=1e-7)
        # Eq. 12: at the chosen position, the best substitute of the exhaustive table.
        at_chosen = [t for t in full.trials if t.position == result.chosen_position]
        best_at_chosen = max(direction * t.predicted_change for t in at_chosen)
        stage_two = max(direction * t.predicted_change for t in runs[0].trials)
        assert stage_two == pytest.approx(best_at_chosen, rel=1e-4, abs=1e-7)
        assert {t.position for t in runs[0].trials} == {result.chosen_position}
        # The kept edit is never worse than the best substitute of any sampled position, nor stage two.
        for position in result.sampled_positions:
            best_there = max(direction * t.predicted_change for t in full.trials if t.position == position)
            assert result.edit.score >= best_there - 1e-7
        assert result.edit.score >= best_at_chosen - 1e-7
        assert result.edit.score <= full.edit.score + 1e-6 * max(1.0, abs(full.edit.score))
        assert result.edit.stage == ("two-stage" if result.edit.position == result.chosen_position else "sampled")
        # The edit is a one-word substitution of the original text, with its span.
        edit = result.edit
        assert text[edit.char_start:edit.char_end] == edit.original == text.split()[edit.position]
        assert edit.text == text[:edit.char_start] + edit.replacement + text[edit.char_end:]
        assert word_spans(text)[edit.position] == (edit.char_start, edit.char_end)
        assert edit.relation in OBJECTIVES[goal].relations


def test_two_stage_agreement_with_exhaustive_optimum(searched, capsys):
    rates = {}
    for T in (0, 5):
        agree, ratios = 0, []
        for goal, text, label, scores, runs, full in searched:
            best = full.edit.score
            found = runs[T].edit.score
            agree += abs(found - best) <= 1e-6 * max(1.0, abs(best))
            ratios.append(found / best if best > 0 else 1.0)
        rates[T] = (agree / len(searched), sum(ratios) / len(ratios))
    with capsys.disabled():
        print(f"\n[two-stage vs exhaustive optimum, {len(searched)} searches = 20 texts x 3 objectives] "
              f"T=0: {rates[0][0]:.0%} equal, mean score ratio {rates[0][1]:.2f}; "
              f"T=5: {rates[5][0]:.0%} equal, mean score ratio {rates[5][1]:.2f}")
    # Measured: T=0 15% equal (ratio 0.72), T=5 52% equal (ratio 0.91); bounds leave room for round-off.
    assert rates[5][0] >= rates[0][0]
    assert rates[5][0] >= 0.35 and rates[5][1] >= 0.75
    assert rates[0][0] >= 0.05


def test_determinism_under_a_seed(setup, tok, lexicon):
    objective, s_test = setup
    runs = [search_edit(objective, tok, lexicon, TEXTS[3], 0, s_test, "attack_up",
                        generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0].sampled_positions == runs[1].sampled_positions
    assert runs[0].edit == runs[1].edit and runs[0].trials == runs[1].trials
    draws = {tuple(search_edit(objective, tok, lexicon, TEXTS[3], 0, s_test, "attack_up", num_sampled=2,
                               generator=torch.Generator().manual_seed(seed)).sampled_positions) for seed in range(6)}
    assert len(draws) > 1  # the sampled positions do depend on the seed


# ---------------------------------------------------------------------------------- random baseline


def test_random_baseline_has_the_same_budget(lexicon, tok):
    for goal in ("attack_down", "attack_up", "fix_up", "fix_down"):
        relations = OBJECTIVES[goal].relations
        generator = torch.Generator().manual_seed(0)
        positions = set()
        for text in TEXTS:
            edit = random_edit(lexicon, text, goal, generator, max_candidates=20, tokenizer=tok)
            options = candidate_positions(lexicon, text, relations, max_candidates=20)
            assert isinstance(edit, Edit) and edit.stage == "random"
            assert edit.predicted_change is None and edit.score is None
            assert (edit.replacement, edit.relation) in options[edit.position]
            changed = [i for i, (a, b) in enumerate(zip(text.split(), edit.text.split())) if a != b]
            assert changed == [edit.position] and len(edit.text.split()) == len(text.split())
            positions.add(edit.position)
        assert len(positions) > 3  # not stuck on one position
    # Attacks: synonyms only.
    generator = torch.Generator().manual_seed(1)
    assert {random_edit(lexicon, t, "attack_down", generator).relation for t in TEXTS} == {"synonym"}
    # Same seed, same draws.
    first = [random_edit(lexicon, t, "fix_up", torch.Generator().manual_seed(3)) for t in TEXTS]
    second = [random_edit(lexicon, t, "fix_up", torch.Generator().manual_seed(3)) for t in TEXTS]
    assert first == second
