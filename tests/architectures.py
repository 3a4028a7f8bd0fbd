"""Tiny random sequence classifiers of 14 architectures with tokenizers of their real kind.

Each tokenizer is trained here, offline, with the ``tokenizers`` library on :data:`CORPUS`
(byte-level BPE for RoBERTa / GPT-2 / BART / Qwen2 / ModernBERT, WordPiece for BERT /
DistilBERT / ELECTRA / MPNet, unigram for XLM-R / ALBERT / DeBERTa-v2, sentencepiece-style BPE
with byte fallback for Llama / Mistral) and wrapped in the architecture's own tokenizer class.
Models are built from configs (hidden 16-32, 1-2 layers), seeded: nothing is downloaded.
"""

from __future__ import annotations

import functools

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "the film was a great success from start to finish",
    "a dull movie , badly acted and far too long",
    "I loved the music but the plot fell apart",
    "nothing about this story works ; it is boring",
    "an amazing , moving and funny picture",
    "the actors are wonderful and the script is sharp",
    "terrible pacing ruined what could have been good",
    "she said it was the best film of the year",
    "we left early because it was so bad",
    "a quiet , gentle drama with a warm heart",
    "The director's new work isn't his finest hour.",
    "Über-cool effects; naïve dialogue (sadly)",
]

WORDPIECE = ("bert", "distilbert", "electra", "mpnet")
UNIGRAM = ("xlm-roberta", "albert", "deberta-v2")
BYTE_BPE = ("roberta", "gpt2", "bart", "qwen2", "modernbert")
SPM_BPE = ("llama", "mistral")
ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta-v2", "mpnet",
                 "modernbert", "gpt2", "llama", "qwen2", "mistral", "bart")
DECODERS = ("gpt2", "llama", "qwen2", "mistral")


def _corpus():
    return CORPUS * 4


def _wordpiece(lowercase: bool = True):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=250, special_tokens=specials))
    return tok.get_vocab()


def _byte_bpe(specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    state = tok.to_str()
    import json
    model = json.loads(state)["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def _unigram(specials, unk: str):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=list(specials), unk_token=unk)
    tok.train_from_iterator(_corpus(), trainer)
    import json
    return [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]


def _spm_bpe(specials):
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=450, special_tokens=list(specials) + bytes_)
    tok.train_from_iterator(_corpus(), trainer)
    import json
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


@functools.lru_cache(maxsize=None)
def tokenizer(kind: str, add_prefix_space: bool | None = None):
    """The tokenizer of architecture ``kind`` (its own class), trained on :data:`CORPUS`.

    ``add_prefix_space``: passed on to the byte-level BPE tokenizers (their default: False)."""
    extra = {} if add_prefix_space is None else {"add_prefix_space": add_prefix_space}
    if kind in ("bert", "electra"):
        cls = transformers.BertTokenizer if kind == "bert" else transformers.ElectraTokenizer
        return cls(vocab=_wordpiece())
    if kind == "distilbert":
        return transformers.DistilBertTokenizer(vocab=_wordpiece())
    if kind == "mpnet":
        vocab = _wordpiece()
        return transformers.MPNetTokenizer(vocab=vocab)
    if kind in ("roberta", "bart"):
        vocab, merges = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        cls = transformers.RobertaTokenizer if kind == "roberta" else transformers.BartTokenizer
        return cls(vocab=vocab, merges=merges, **extra)
    if kind == "gpt2":
        vocab, merges = _byte_bpe(["<|endoftext|>"])
        tok = transformers.GPT2Tokenizer(vocab=vocab, merges=merges, **extra)
        tok.pad_token = tok.eos_token  # the usual recipe for a GPT-2 classifier
        return tok
    if kind == "qwen2":
        vocab, merges = _byte_bpe(["<|endoftext|>"])
        return transformers.Qwen2Tokenizer(vocab=vocab, merges=merges, **extra)
    if kind == "modernbert":
        vocab, merges = _byte_bpe(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(add_prefix_space))
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]", model_max_length=64)
    if kind == "xlm-roberta":
        return transformers.XLMRobertaTokenizer(vocab=_unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>"))
    if kind == "albert":
        return transformers.AlbertTokenizer(vocab=_unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>"))
    if kind == "deberta-v2":
        return transformers.DebertaV2Tokenizer(vocab=_unigram(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]"))
    if kind in SPM_BPE:
        vocab, merges = _spm_bpe(["<unk>", "<s>", "</s>"])
        tok = transformers.LlamaTokenizer(vocab=vocab, merges=merges)
        tok.pad_token = tok.unk_token
        return tok
    raise ValueError(f"unknown architecture {kind!r}; use one of {ARCHITECTURES}")


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
             max_position_embeddings=64)


def config(kind: str, tok, num_labels: int = 2, **overrides):
    """A tiny config of architecture ``kind`` for tokenizer ``tok``."""
    vocab = len(tok)
    ids = dict(pad_token_id=tok.pad_token_id, vocab_size=vocab, num_labels=num_labels)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=tok.eos_token_id,
                                      eos_token_id=tok.eos_token_id, **ids)
    elif kind == "bart":
        cfg = transformers.BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                      decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
                                      max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id, **ids)
    elif kind == "distilbert":
        cfg = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
                                            **ids)
    elif kind in ("llama", "qwen2", "mistral"):
        cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "mistral": transformers.MistralConfig}[kind]
        cfg = cls(num_key_value_heads=1, head_dim=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  **SMALL, **ids)
    elif kind == "modernbert":
        cfg = transformers.ModernBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=37, max_position_embeddings=64,
                                            global_attn_every_n_layers=1,
                                            local_attention=16, cls_token_id=tok.cls_token_id,
                                            sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                            eos_token_id=tok.sep_token_id, **ids)
    elif kind == "albert":
        cfg = transformers.AlbertConfig(embedding_size=16, **SMALL, **ids)
    elif kind == "electra":
        cfg = transformers.ElectraConfig(embedding_size=16, **SMALL, **ids)
    else:
        cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
               "xlm-roberta": transformers.XLMRobertaConfig, "deberta-v2": transformers.DebertaV2Config,
               "mpnet": transformers.MPNetConfig}[kind]
        extra = {"max_position_embeddings": 66} if kind in ("roberta", "xlm-roberta", "mpnet") else {}
        cfg = cls(**{**SMALL, **extra}, **ids)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def model(kind: str, tok=None, seed: int = 0, num_labels: int = 2, **overrides):
    """A seeded tiny ``AutoModelForSequenceClassification`` of architecture ``kind``, eval mode."""
    tok = tok or tokenizer(kind)
    torch.manual_seed(seed)
    net = transformers.AutoModelForSequenceClassification.from_config(config(kind, tok, num_labels, **overrides))
    return net.eval()
