"""Build, cache and load ILP-World.

`build_world(size, seed)` generates the world's text (`generate.py`), builds its word-level
tokenizer, pre-trains a tiny Llama on the corpus and stores everything in a cache folder keyed by
(size, seed, version): the base model and tokenizer as a `save_pretrained` folder, every dataset
with `save_to_disk` and as JSONL, and `world.json` with the settings and a checksum of every file.
A cache entry whose files do not match their checksums is rebuilt, never reused.

    >>> world = build_world("small", seed=0)
    >>> model = world.load_base_model()
    >>> trainer = train_stages(model, world.tokenizer, world.train, world.sft_config("out"))

Beyond the agreed names this module adds `complete_knowledge` (the counterfactual world of the
causal checks: the corpus states every fact the SFT set relies on, as the SFT set states it),
`both_right_pairs` (off by default: inconsistent pairs whose two answers the corpus both states),
`World.export(out)` (what `hf-ilp world build --out` writes), `World.load(path)` and `World.spec`.
"""

import contextlib
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hf_ilp.files import atomic_dir, write_json_atomic
from hf_ilp.world._cache import CorruptWorldError, default_cache_dir  # noqa: F401  (public here too)
from hf_ilp.world._cache import build_or_load, checksums, spec_hash, verified_meta, writable_cache_dir
from hf_ilp.world.generate import ILP_STYLE, ROSTER_STYLE, WorldSpec, generate

logger = logging.getLogger(__name__)

WORLD_VERSION = "3"
SPLITS = ("train", "validation", "corpus", "probes")

SIZES = {
    "tiny": WorldSpec(
        entities=24, values_per_relation=12, missing=8, validation_missing=4, conflict=8, inconsistent_pairs=4,
        forgetting=12, retarget=10, profiles=6, normal_stage0=6, normal_stage1=34, validation_normal=10,
        statement_repeats=6, qa_repeats=3, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        pretrain_epochs=20, pretrain_batch_size=32, pretrain_learning_rate=3e-3,
        sft_epochs=3, sft_learning_rate=4e-4, sft_batch_size=16,
    ),
    "small": WorldSpec(
        entities=64, values_per_relation=24, missing=20, validation_missing=10, conflict=20, inconsistent_pairs=10,
        forgetting=20, retarget=24, profiles=16, normal_stage0=30, normal_stage1=80, validation_normal=30,
        statement_repeats=6, qa_repeats=3, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        pretrain_epochs=30, pretrain_batch_size=32, pretrain_learning_rate=2e-3,
        sft_epochs=3, sft_learning_rate=4e-4, sft_batch_size=16,
    ),
    # the second construction (generate.ROSTER_STYLE: other relations, two-word names, other frames),
    # with its own model width and SFT budget: a diagnosis fitted to ILP-World's text shows on it
    "roster-small": WorldSpec(
        entities=56, values_per_relation=20, missing=20, validation_missing=10, conflict=20, inconsistent_pairs=10,
        forgetting=20, retarget=24, profiles=16, normal_stage0=30, normal_stage1=80, validation_normal=30,
        statement_repeats=6, qa_repeats=3, hidden_size=160, num_hidden_layers=2, num_attention_heads=5,
        pretrain_epochs=30, pretrain_batch_size=32, pretrain_learning_rate=2e-3,
        sft_epochs=2, sft_learning_rate=3e-4, sft_batch_size=12,
    ),
}
STYLES = {"roster-small": ROSTER_STYLE}  # every other size: ILP_STYLE


@dataclass
class World:
    """A built ILP-World: its base model folder, word-level tokenizer and datasets.

    `train`/`validation` have `id`, `prompt`, `completion`, `stage`, `world_cause` (ground truth:
    one of the planted causes or "" for a normal sample; diagnosis code never reads it);
    `corpus` has `text` (one pre-training epoch); `probes` has `id`, `probe_prompts`,
    `probe_completions` (the prerequisite facts of each train sample, as the sample states them,
    in the corpus's statement form).
    """

    path: Path
    size: str
    seed: int
    spec: WorldSpec
    tokenizer: object
    train: object
    validation: object
    corpus: object
    probes: object

    @property
    def base_model_path(self) -> Path:
        return self.path / "base_model"

    def stopping_validation(self):
        """The validation rows to early-stop on: those about facts the corpus states, without the
        `world_cause` column. (The other rows ask facts absent from the corpus; their loss only
        grows as the model grows surer of its guesses, so any further training would "raise the
        validation loss".)"""
        known = self.validation.filter(lambda c: c != "missing_knowledge", input_columns="world_cause")
        return known.remove_columns("world_cause")

    def knowledge_source(self, complete: bool = True):
        """The world's documents as a lexical `hf_ilp.interventions.BM25KnowledgeSource` (distinct
        lines, in corpus order): what a user's own document collection is to the interventions.

        `complete=True` (default) searches the world's counterfactual corpus, which states every fact
        the SFT set relies on as the SFT set states it: the role of the "authoritative" external
        documents of the paper, since the world's own pre-training corpus (`complete=False`) lacks
        the missing facts by construction. Only the text is generated; no model is trained.
        """
        from hf_ilp.interventions.knowledge import BM25KnowledgeSource

        texts = generate(self.spec, self.seed, complete_knowledge=True).corpus if complete else self.corpus["text"]
        return BM25KnowledgeSource(list(dict.fromkeys(texts)))

    def load_base_model(self, **kwargs):
        """A fresh copy of the pre-trained base model (`AutoModelForCausalLM.from_pretrained`)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.base_model_path, **kwargs)

    def sft_config(self, output_dir, **overrides):
        """The world's default SFT budget as a `trl.SFTConfig`; keyword arguments override any field.

        bf16 only where a CUDA device supports it, activation (gradient) checkpointing off (the
        model is tiny), no checkpoints saved, no experiment trackers.
        """
        import torch
        from trl import SFTConfig

        from hf_ilp.training import no_activation_checkpointing

        settings = dict(
            output_dir=str(output_dir),
            num_train_epochs=self.spec.sft_epochs,
            learning_rate=self.spec.sft_learning_rate,
            per_device_train_batch_size=self.spec.sft_batch_size,
            lr_scheduler_type="constant",
            max_length=64,
            save_strategy="no",
            logging_steps=10,
            report_to="none",
            seed=self.seed,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            **no_activation_checkpointing(),
        )
        settings.update(overrides)
        return SFTConfig(**settings)

    def export(self, out) -> Path:
        """Write the base model, tokenizer, datasets (save_to_disk and JSONL) and `world.json` to `out`, atomically."""
        out = Path(out)
        with atomic_dir(out) as tmp:
            shutil.copytree(self.path, tmp, dirs_exist_ok=True)
        return out

    @classmethod
    def load(cls, path) -> "World":
        """Load a built (or exported) world from its folder, verifying every file against `world.json`."""
        from datasets import load_from_disk
        from transformers import AutoTokenizer

        path = Path(path)
        meta = _verified_meta(path)
        data = {split: load_from_disk(str(path / "data" / split)) for split in SPLITS}
        return cls(
            path=path,
            size=meta["size"],
            seed=meta["seed"],
            spec=WorldSpec(**meta["spec"]),
            tokenizer=AutoTokenizer.from_pretrained(path / "base_model"),
            **data,
        )


def build_world(size: str = "tiny", seed: int = 0, cache_dir=None, rebuild: bool = False, complete_knowledge: bool = False,
                both_right_pairs: int = 0) -> World:
    """Build ILP-World of `size` ("tiny" or "small") and `seed`, or load it from the cache.

    `both_right_pairs=n` adds n inconsistent pairs whose two answers are both right (see
    `generate`); a world of its own, cached apart; 0 (default) is the world without them.

    The cache (`cache_dir`, else `$HF_ILP_CACHE`, else `~/.cache/hf_ilp`) holds one folder per
    (size, seed, version[, counterfactual][, both-right pairs]); `rebuild=True` builds again. Concurrent callers wait
    for one another through a file lock; in a process group (`accelerate launch`) rank 0 builds
    first and the other ranks load what it wrote.
    """
    if size not in SIZES:
        raise ValueError(f"unknown ILP-World size {size!r}; choose one of {sorted(SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"ILP-World seed must be a non-negative integer, got {seed!r}")
    if isinstance(both_right_pairs, bool) or not isinstance(both_right_pairs, int) or both_right_pairs < 0:
        raise ValueError(f"both_right_pairs must be a non-negative integer, got {both_right_pairs!r}")
    root = writable_cache_dir(cache_dir, "ILP-World")
    spec = SIZES[size]
    key = f"ilp-world-v{WORLD_VERSION}-{spec_hash(dataclasses.asdict(spec))}-{size}-seed{seed}"
    key += ("-complete" if complete_knowledge else "") + (f"-bothright{both_right_pairs}" if both_right_pairs else "")
    return build_or_load(root, key, lambda path: _build(spec, size, seed, complete_knowledge, path, both_right_pairs),
                         World.load, rebuild=rebuild, what="ILP-World")


def _build(spec: WorldSpec, size: str, seed: int, complete_knowledge: bool, path: Path, both_right_pairs: int = 0) -> None:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    from hf_ilp.world.evaluate import reproduced
    from hf_ilp.world.model import pretrain, tiny_llama_config
    from hf_ilp.world.tokenizer import build_word_tokenizer

    start = time.perf_counter()
    text = generate(spec, seed, complete_knowledge=complete_knowledge, style=STYLES.get(size, ILP_STYLE),
                    both_right_pairs=both_right_pairs)
    tokenizer = build_word_tokenizer(text.words)
    torch.manual_seed(seed)
    config = tiny_llama_config(
        len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    logger.info(
        "building ILP-World %s (seed %d): %d corpus texts, %d train samples, %.2fM parameters",
        size, seed, len(text.corpus), len(text.train), model.num_parameters() / 1e6,
    )

    def progress(epoch, loss):
        logger.info("pre-training epoch %d/%d: loss %.3f", epoch + 1, spec.pretrain_epochs, loss)

    losses = pretrain(
        model, tokenizer, text.corpus, epochs=spec.pretrain_epochs, batch_size=spec.pretrain_batch_size,
        learning_rate=spec.pretrain_learning_rate, seed=seed, progress=progress,
    )
    data = {
        "train": Dataset.from_list(text.train),
        "validation": Dataset.from_list(text.validation),
        "corpus": Dataset.from_dict({"text": text.corpus}),
        "probes": Dataset.from_list(text.probes),
    }
    normal = [i for i, cause in enumerate(text.train) if cause["world_cause"] == ""]
    base_known = sum(reproduced(model, tokenizer, data["train"].select(normal))) / max(len(normal), 1)
    with atomic_dir(path) as tmp, _quiet_datasets():
        model.save_pretrained(tmp / "base_model")
        tokenizer.save_pretrained(tmp / "base_model")
        for split, dataset in data.items():
            dataset.save_to_disk(str(tmp / "data" / split))
            dataset.to_json(str(tmp / f"{split}.jsonl"), lines=True)
        meta = {
            "name": "ILP-World",
            "version": WORLD_VERSION,
            "size": size,
            "seed": seed,
            "complete_knowledge": complete_knowledge,
            **({"both_right_pairs": both_right_pairs} if both_right_pairs else {}),
            "spec": dataclasses.asdict(spec),
            "counts": {split: len(dataset) for split, dataset in data.items()},
            "pretraining_loss": losses,
            "base_reproduces_normal_train": base_known,
            "build_seconds": time.perf_counter() - start,
        }
        meta["files"] = checksums(tmp, "world.json")
        write_json_atomic(tmp / "world.json", meta)
    logger.info("ILP-World %s (seed %d) built in %.1f s: %s", size, seed, meta["build_seconds"], path)


@contextlib.contextmanager
def _quiet_datasets():
    """No `datasets` progress bars while the world writes its small files."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _verified_meta(path: Path) -> dict:
    meta = verified_meta(path, "world.json")
    try:
        WorldSpec(**meta["spec"]), int(meta["seed"]), str(meta["size"])
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptWorldError(f"{path / 'world.json'} is missing or unreadable: {err}") from err
    return meta
