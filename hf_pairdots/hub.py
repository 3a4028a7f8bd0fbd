"""Augmented datasets on disk and on the Hugging Face Hub, with a dataset card.

:func:`save_augmented` writes one folder, atomically (built next to it, then swapped in with
:func:`hf_pairdots.io.atomic_replace_dir`)::

    <out_dir>/
      dataset_info.json, state.json, data-*.arrow    datasets.Dataset.save_to_disk (load_from_disk(out_dir))
      data.parquet                                   the same rows; the label ClassLabel is kept
                                                     in the schema metadata (Dataset.from_parquet)
      README.md                                      the dataset card

:func:`push_augmented` uploads a dataset and its card with ``datasets.Dataset.push_to_hub`` and
``huggingface_hub``. Without a network (``HF_HUB_OFFLINE=1`` or a connection error) it raises
:class:`HubUnavailable`, which says that the local copy is complete; it never touches the local
copy, so saving first and pushing second loses nothing.

**The card** is rendered from the jinja2 template ``hf_pairdots/templates/dataset_card.md.j2``,
package data read through ``importlib.resources`` (:func:`card_template_path`), so a checkout and
an installed wheel render the same card. The card has a YAML header (license,
``task_categories: text-classification``, ``language: en``, tags, size, source data set), how
the data was made (paper method, objective, parameters, seed, model), counts per objective,
relation and stage, the columns, and citations of Meng et al. (2020), of the source data set
(SST: Socher et al. 2013; IMDB: Maas et al. 2011; AG News: Zhang et al. 2015; GLUE when the
spec says so) and of WordNet. When the data spec is a local folder with a ``PROVENANCE.md``
(the project's offline data), its title and license paragraphs are quoted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
from jinja2 import Environment, StrictUndefined

from .augment.dataset import check_labels, edit_counts
from .augment.goals import GOAL_GROUPS, GOALS, goal_group
from .errors import HubUnavailable
from .io import atomic_replace_dir

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "CARD_TEMPLATE",
    "PAPER_BIBTEX",
    "CardInfo",
    "HubUnavailable",
    "card_template_path",
    "push_augmented",
    "render_card",
    "save_augmented",
    "source_info",
]

CARD_TEMPLATE = "dataset_card.md.j2"
PARQUET_NAME = "data.parquet"
CARD_NAME = "README.md"

PAPER_BIBTEX = """@article{meng2020pairthedots,
  title   = {Pair the Dots: Jointly Examining Training History and Test Stimuli for Model Interpretability},
  author  = {Meng, Yuxian and Fan, Chun and Sun, Zijun and Hovy, Eduard and Wu, Fei and Li, Jiwei},
  journal = {arXiv preprint arXiv:2010.06943},
  year    = {2020},
  url     = {https://arxiv.org/abs/2010.06943}
}"""

WORDNET_BIBTEX = """@article{miller1995wordnet,
  title   = {WordNet: A Lexical Database for English},
  author  = {Miller, George A.},
  journal = {Communications of the ACM},
  volume  = {38},
  number  = {11},
  pages   = {39--41},
  year    = {1995}
}"""

SOURCES = {
    "sst": {
        "name": "Stanford Sentiment Treebank (Socher et al., 2013)",
        "hub": "stanfordnlp/sst2",
        "terms": "Stanford SST: no explicit license, research use; cite Socher et al. 2013",
        "bibtex": """@inproceedings{socher2013recursive,
  title     = {Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank},
  author    = {Socher, Richard and Perelygin, Alex and Wu, Jean and Chuang, Jason and Manning, Christopher D. and Ng, Andrew and Potts, Christopher},
  booktitle = {Proceedings of the 2013 Conference on Empirical Methods in Natural Language Processing},
  pages     = {1631--1642},
  year      = {2013}
}""",
    },
    "glue": {
        "name": "GLUE (Wang et al., 2019)",
        "hub": "nyu-mll/glue",
        "terms": "GLUE: cite Wang et al. 2019 with the underlying data set",
        "bibtex": """@inproceedings{wang2019glue,
  title     = {{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author    = {Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle = {International Conference on Learning Representations},
  year      = {2019}
}""",
    },
    "imdb": {
        "name": "IMDB Large Movie Review Dataset (Maas et al., 2011)",
        "hub": "stanfordnlp/imdb",
        "terms": "distributed by Stanford for research; cite Maas et al. 2011",
        "bibtex": """@inproceedings{maas2011learning,
  title     = {Learning Word Vectors for Sentiment Analysis},
  author    = {Maas, Andrew L. and Daly, Raymond E. and Pham, Peter T. and Huang, Dan and Ng, Andrew Y. and Potts, Christopher},
  booktitle = {Proceedings of the 49th Annual Meeting of the Association for Computational Linguistics: Human Language Technologies},
  pages     = {142--150},
  year      = {2011}
}""",
    },
    "ag_news": {
        "name": "AG News (Zhang et al., 2015)",
        "hub": "fancyzhx/ag_news",
        "terms": "AG's corpus: academic research and other non-commercial use",
        "bibtex": """@inproceedings{zhang2015character,
  title     = {Character-level Convolutional Networks for Text Classification},
  author    = {Zhang, Xiang and Zhao, Junbo and LeCun, Yann},
  booktitle = {Advances in Neural Information Processing Systems 28},
  pages     = {649--657},
  year      = {2015}
}""",
    },
}
"""Known source data sets: display name, Hub id, terms of use, BibTeX."""

COLUMN_MEANINGS = {
    "text": "the text; in edited rows, the training text with one word substituted",
    "label": "the training label (kept on edits, as in the paper, unless `label_flipped`)",
    "index": "row of the full source split (the training set was a seeded subsample)",
    "edited": "True for rows made by the search, False for untouched training rows",
    "source_train_index": "row of the training set (as subsampled, when it was) that was edited",
    "query_index": "row of the query split whose explanation asked for the edit",
    "objective": f"search objective: {', '.join(list(GOALS)[:-1])} or {list(GOALS)[-1]}",
    "position": "index of the substituted whitespace word",
    "char_start": "start of the substituted word in the original text (characters)",
    "char_end": "end of the substituted word in the original text (characters)",
    "original_word": "the word that was replaced",
    "replacement": "its WordNet substitute",
    "relation": "synonym or antonym",
    "predicted_influence_change": "I(z, z̃, m) of Eq. 7: predicted change of the saliency m per unit weight "
                                  "when the example is swapped for its edit (null for the random baseline)",
    "stage": "two-stage (Eq. 11-12), sampled (one of the T random positions) or random (baseline)",
    "label_flipped": "True when an antonym edit was given the other label (antonym_label='flip')",
    "seed": "seed of the search",
}


@dataclass
class CardInfo:
    """What the dataset card says about how the data was made.

    Attributes:
        source: the data spec the training set came from (Hub id or local path, see
            :mod:`hf_pairdots.data`).
        model: the classifier whose explanations guided the edits (folder or Hub id).
        objective: a key of :data:`~hf_pairdots.augment.goals.GOAL_GROUPS`.
        seed: the search seed.
        parameters: further settings shown in the card's table (T, max_candidates, top_k,
            per_query, solver, damping, antonym_label, ...).
        query_split, train_split: the explained split and the edited split.
        license: the card's license id (default ``"other"``: the source's terms apply).
        pretty_name: title (default from the source and objective).
        tags: extra tags.
        baseline: the rows are the random-substitution baseline.
    """

    source: str
    model: str
    objective: str
    seed: int = 0
    parameters: dict = field(default_factory=dict)
    query_split: str = "validation"
    train_split: str = "train"
    license: str = "other"
    pretty_name: str | None = None
    tags: list[str] = field(default_factory=list)
    baseline: bool = False

    def __post_init__(self):
        if self.objective not in GOAL_GROUPS:
            raise ValueError(f"CardInfo.objective={self.objective!r}: use one of {list(GOAL_GROUPS)}")

    @classmethod
    def from_dict(cls, data: dict) -> CardInfo:
        return cls(**data)


def card_template_path() -> Traversable:
    """The dataset card template, ``templates/dataset_card.md.j2`` of the installed package
    (``importlib.resources``; a ``pathlib.Path`` for a package on disk).

    Raises:
        FileNotFoundError: the template is missing (a broken install).
    """
    template = files("hf_pairdots") / "templates" / CARD_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"{CARD_TEMPLATE} is missing from the hf_pairdots package data; reinstall hf_pairdots")
    return template


# --------------------------------------------------------------------------- source data


def _provenance_file(spec: str) -> Path | None:
    path = Path(re.sub(r":[A-Za-z_]+$", "", spec))
    for folder in (path, path.parent):
        if (folder / "PROVENANCE.md").is_file():
            return folder / "PROVENANCE.md"
    return None


def source_info(spec: str) -> dict:
    """What the card says about a data spec: ``name``, ``keys`` (known data sets it involves),
    ``bibtex``, ``terms``, ``hub_ids``, and ``provenance`` (``{"title", "lines"}`` from a local
    ``PROVENANCE.md``: its title and its license paragraphs, or ``None``)."""
    provenance = None
    file = _provenance_file(str(spec))
    if file is not None:
        text = file.read_text(encoding="utf-8")
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), file.parent.name)
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
        lines = [p for p in paragraphs if p.lower().startswith("license")]
        provenance = {"title": title, "lines": lines}
    haystack = f"{spec} {provenance['title'] if provenance else ''}".lower()
    keys = [key for key, pattern in (("sst", r"sst|sentiment treebank"), ("glue", r"glue"), ("imdb", r"imdb"),
                                     ("ag_news", r"ag_?news|ag's news|ag news"))
            if re.search(pattern, haystack)]
    if not keys:
        return {"name": str(spec), "keys": [], "hub_ids": [], "terms": None, "provenance": provenance,
                "bibtex": f"% no citation known for {spec}: cite the source data set here"}
    main = [k for k in keys if k != "glue"] or keys
    name = " / ".join(SOURCES[k]["name"] for k in main)
    if "glue" in keys and main != keys:
        name += ", as distributed in GLUE (Wang et al., 2019)"
    return {"name": name, "keys": keys, "hub_ids": [SOURCES[k]["hub"] for k in main],
            "terms": "; ".join(SOURCES[k]["terms"] for k in keys), "provenance": provenance,
            "bibtex": "\n\n".join(SOURCES[k]["bibtex"] for k in keys)}


# --------------------------------------------------------------------------- card


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return name
    return "10M<n<100M"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hf_pairdots")
    except PackageNotFoundError:
        return "(not installed)"


def render_card(dataset: datasets.Dataset, card_info: CardInfo | dict) -> str:
    """The dataset card (Markdown with a YAML header) for ``dataset``.

    Raises:
        ValueError: bad labels (see :func:`~hf_pairdots.augment.dataset.check_labels`) or an
            unknown objective.
        jinja2.UndefinedError: the template uses a field this function does not provide.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    info = card_info if isinstance(card_info, CardInfo) else CardInfo.from_dict(card_info)
    labels = check_labels(dataset)
    source = source_info(info.source)
    counts = edit_counts(dataset)
    edited = sum(counts["objective"].values())
    group = goal_group(info.objective)
    replace = group.replace
    untouched = len(dataset) - edited
    pretty_name = info.pretty_name or (
        f"{source['name'].split(' (')[0]}: Pair-the-Dots {info.objective} edits"
        + (" (random baseline)" if info.baseline else ""))
    tags = list(dict.fromkeys(["pair-the-dots", "influence-functions", "wordnet", "data-augmentation",
                               "adversarial" if replace else "model-fixing", "synthetic", *info.tags]))
    card_data = DatasetCardData(
        license=info.license, language=["en"], task_categories=["text-classification"], tags=tags,
        pretty_name=pretty_name, size_categories=[_size_category(len(dataset))],
        source_datasets=[f"extended|{hub}" for hub in source["hub_ids"]] or None,
    )
    if replace:
        mode = ("Attack (Sec. 4.2): each edit *replaces* its source training row; a training row is replaced "
                "at most once. Retraining on the training set with these rows replaced is the attack.")
    else:
        mode = ("Fixing (Sec. 4.3): each edit is *added* to the training set; retraining on the training set "
                "plus these rows is the fix.")
    if untouched:
        mode += f" This dataset is the training set with the edits applied ({untouched} rows untouched)."
    else:
        mode += " This dataset holds only the edited rows (`hf_pairdots.augment.dataset.apply_edits` applies them)."
    antonym_rule = info.parameters.get("antonym_label", "keep")
    label_rule = ("every edited example keeps its training label, as in the paper (z̃ = (x̃, y)); "
                  + ("antonym substitutions can make that label wrong." if antonym_rule == "keep" else
                     "except that antonym edits were given the other label (`label_flipped`); their predicted "
                     "influence change was computed with the kept label."))
    if replace:
        label_rule += " Attacks use synonyms only."
    parameters = [("objective", info.objective), ("seed", info.seed), ("model", f"`{info.model}`"),
                  *((k, v) for k, v in info.parameters.items())]
    columns = [(name, str(dataset.features[name].dtype if hasattr(dataset.features[name], "dtype")
                          else type(dataset.features[name]).__name__),
                COLUMN_MEANINGS.get(name, "from the source data set")) for name in dataset.column_names]
    columns = [(n, "ClassLabel" if isinstance(dataset.features[n], datasets.ClassLabel) else t, m)
               for n, t, m in columns]
    env = Environment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    template = env.from_string(card_template_path().read_text(encoding="utf-8"))
    text = template.render(
        card_data=card_data.to_yaml(), pretty_name=pretty_name,
        summary=(f"Training examples of {source['name']} edited by one WordNet word substitution each, chosen "
                 f"with influence functions on saliency (Meng et al., 2020) to "
                 f"{'attack' if replace else 'fix'} the predictions of `{info.model}`."
                 if not info.baseline else
                 f"Random one-word WordNet substitutions of {source['name']} training examples, with the same "
                 f"budget as the Pair-the-Dots `{info.objective}` edits (a control)."),
        source=info.source, source_name=source["name"], train_split=info.train_split,
        query_split=info.query_split, model=info.model, objective=info.objective,
        objective_description=group.description, num_rows=len(dataset),
        num_edited=edited, num_untouched=untouched, version=_version(), baseline=info.baseline,
        num_sampled=info.parameters.get("num_sampled", 5), mode_description=mode, label_rule=label_rule,
        parameters=parameters, counts=counts, columns=columns, label_names=labels.names,
        provenance=source["provenance"], license=info.license, license_note=source["terms"],
        paper_bibtex=PAPER_BIBTEX, source_bibtex=source["bibtex"], wordnet_bibtex=WORDNET_BIBTEX,
    )
    DatasetCard(text)  # parses the YAML header: a broken card fails here, not on the Hub
    return text


# --------------------------------------------------------------------------- local copy


def _looks_like_ours(folder: Path) -> bool:
    return (folder / "state.json").is_file() and (folder / CARD_NAME).is_file()


def save_augmented(dataset: datasets.Dataset, out_dir: str | os.PathLike, card_info: CardInfo | dict) -> Path:
    """Write ``dataset`` to ``out_dir``: ``save_to_disk`` files, ``data.parquet`` and the
    ``README.md`` card, atomically (built in a sibling temp folder, then swapped in with rollback:
    :func:`hf_pairdots.io.atomic_replace_dir`).

    Args:
        dataset: an edits dataset or a training set with edits applied
            (:mod:`hf_pairdots.augment.dataset`), ``label`` a ``ClassLabel``.
        out_dir: the folder; replaced when it holds a previous output of this function.
        card_info: :class:`CardInfo` (or its dict).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: a label id outside the ``ClassLabel`` (checked before anything is written).
        FileExistsError: ``out_dir`` exists, is not empty and is not a previous output.
    """
    check_labels(dataset)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not _looks_like_ours(out):
        raise FileExistsError(f"{out} exists and is not an augmented dataset folder; choose another folder")
    text = render_card(dataset, card_info)
    with atomic_replace_dir(out) as tmp:
        dataset.save_to_disk(str(tmp))
        dataset.to_parquet(str(tmp / PARQUET_NAME))
        (tmp / CARD_NAME).write_text(text, encoding="utf-8")
    return out


# --------------------------------------------------------------------------- Hub


def _offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in ("1", "ON", "YES", "TRUE")


_NETWORK_ERRORS = {"ConnectionError", "OfflineModeIsEnabled", "TransportError", "NetworkError", "ConnectError",
                   "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutException", "MaxRetryError",
                   "NewConnectionError", "TimeoutError", "gaierror"}


def _is_network_error(err: BaseException | None) -> bool:
    """Whether ``err`` (or an exception it was raised from) means the Hub could not be reached."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(cls.__name__ in _NETWORK_ERRORS for cls in type(err).__mro__):
            return True
        err = err.__cause__ or err.__context__
    return False


def _card_text(card, local_dir: Path | None) -> tuple[str, Path | None]:
    """The card's Markdown and the local folder it belongs to (``None`` if unknown)."""
    from huggingface_hub import RepoCard

    if isinstance(card, RepoCard):
        return str(card), local_dir
    if isinstance(card, os.PathLike) or (isinstance(card, str) and "\n" not in card and len(card) < 4096
                                         and Path(card).exists()):
        path = Path(card)
        if path.is_dir():
            path = path / CARD_NAME
        return path.read_text(encoding="utf-8"), local_dir or path.parent
    return str(card), local_dir


def push_augmented(dataset: datasets.Dataset, repo_id: str, card, token: str | None = None, *,
                   local_dir: str | os.PathLike | None = None, private: bool | None = None) -> str:
    """Upload ``dataset`` and its card to the dataset repo ``repo_id``.

    The card goes first (``huggingface_hub``: the repo is created if needed), then the data
    with ``datasets.Dataset.push_to_hub``, which keeps the card's text and adds its own
    ``configs``/``dataset_info`` metadata to it.

    Args:
        dataset: what :func:`save_augmented` saved.
        repo_id: ``"user/name"``.
        card: the card's Markdown, a ``huggingface_hub.DatasetCard``, or the path of a
            ``README.md`` or of a folder written by :func:`save_augmented` (which is then the
            local copy named in errors).
        token: a Hub token (default: the logged-in one).
        local_dir: the complete local copy, for error messages (default: from ``card``).
        private: create the repo private.

    Returns:
        The dataset's URL on the Hub.

    Raises:
        HubUnavailable: offline (``HF_HUB_OFFLINE=1``) or the Hub cannot be reached; the
            message names the complete local copy. Nothing local is changed.
        ValueError: bad labels (checked before any upload).
    """
    from huggingface_hub import DatasetCard, HfApi

    check_labels(dataset)
    text, local = _card_text(card, None if local_dir is None else Path(local_dir))
    if local is not None:
        where = (f"The local copy at {local} is complete (load it with datasets.load_from_disk('{local}')); "
                 f"push it later with hf_pairdots.hub.push_augmented(datasets.load_from_disk('{local}'), "
                 f"'{repo_id}', '{local}').")
    else:
        where = "Nothing local was changed; save the dataset first with hf_pairdots.hub.save_augmented(...)."
    if _offline():
        raise HubUnavailable(f"cannot push {repo_id!r} to the Hugging Face Hub: offline mode is on "
                             f"(HF_HUB_OFFLINE). {where}")
    pushed_card = False
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        DatasetCard(text).push_to_hub(repo_id, token=token, repo_type="dataset",
                                      commit_message="Add dataset card (hf_pairdots)")
        pushed_card = True
        dataset.push_to_hub(repo_id, token=token, private=private,
                            commit_message="Add data (hf_pairdots augmented dataset)")
    except Exception as err:
        if not _is_network_error(err):
            err.add_note(where)
            raise
        partial = " The card was uploaded but the data was not." if pushed_card else ""
        raise HubUnavailable(f"cannot reach the Hugging Face Hub to push {repo_id!r} "
                             f"({type(err).__name__}: {err}).{partial} {where}") from err
    return f"https://huggingface.co/datasets/{repo_id}"

