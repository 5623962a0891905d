import pytest

from tests.fusion._models import perturbed, tiny_llama


@pytest.fixture
def saved_models(tmp_path):
    """A base and two task models saved in 3 safetensors shards each."""
    base = tiny_llama()
    paths = {}
    for name, model in {"base": base, "alpha": perturbed(base, 1), "beta": perturbed(base, 2)}.items():
        model.save_pretrained(tmp_path / name, max_shard_size="8KB")
        paths[name] = tmp_path / name
    return paths
