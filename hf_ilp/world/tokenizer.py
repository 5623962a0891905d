"""Word-level tokenizer for small synthetic worlds: one token per word, nothing learned.

ILP-World (and the multi-task world) speak a closed vocabulary of made-up words, so a word-level
model from `tokenizers` is exact: every entity and value is one token, and a completion's tokens
are its words. The result is a `PreTrainedTokenizerFast`, so TRL, `save_pretrained` and
`AutoTokenizer.from_pretrained` treat it like any Hub tokenizer.

    >>> tok = build_word_tokenizer(["what", "is", "blue"])
    >>> tok("what is blue").input_ids  # BOS first, one id per word
    [2, 4, 5, 6]
"""

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


def build_word_tokenizer(words) -> PreTrainedTokenizerFast:
    """Build a whitespace-split word-level tokenizer over `words` (order kept, duplicates dropped).

    Ids 0-3 are `<pad>`, `<unk>`, `<s>` (BOS, prepended to every encoded text like Llama does) and
    `</s>` (EOS, which TRL appends to completions; special tokens are split out of text before
    whitespace splitting, so "blue</s>" encodes as two tokens). Unknown words map to `<unk>`.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        if not isinstance(word, str) or not word or any(ch.isspace() for ch in word):
            raise ValueError(f"build_word_tokenizer: every word must be a non-empty string without whitespace, got {word!r}")
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )
    return tokenizer
