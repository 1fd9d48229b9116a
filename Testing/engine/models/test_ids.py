"""Model ids are plain, safe names everywhere in the store (issue 14)."""

from __future__ import annotations

import pytest
from hardening_helpers import restore_repux_logger

from repux.cli.main import main
from repux.errors import ConfigError, ModelFileError
from repux.models.ids import check_model_id, is_model_id
from repux.models.store import ModelStore

BAD_IDS = ["../escaped", "..", ".hidden", "a/b", "a\\b", "/abs", "", "-dash", "x" * 65, "con", "NUL.txt", "trailing.", "sp ace", "é"]
GOOD_IDS = ["repux-tiny-phantom", "blob-base", "tiny-test", "repuxnet-flare", "ct-finetuned", "Model_2.1", "a", "x" * 64]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_good_ids(value):
    assert is_model_id(value) and check_model_id(value) == value


@pytest.mark.parametrize("value", BAD_IDS)
def test_bad_ids_name_the_rule(value):
    with pytest.raises(ConfigError, match=r"is not allowed: use 1-64 characters"):
        check_model_id(value)


def test_store_refuses_unsafe_ids_everywhere(tmp_path, tiny_model_dir, _isolated_store):
    store = ModelStore()
    for bad in ("../escaped", "a/../../b", ".x"):
        with pytest.raises(ConfigError, match="not allowed"):
            store.import_model(tiny_model_dir, model_id=bad)
        with pytest.raises(ConfigError, match="not allowed"):
            store.install(bad)
        with pytest.raises(ConfigError, match="not allowed"):
            store.remove(bad)
        with pytest.raises(ConfigError, match="not allowed"):
            store.path(bad)
        with pytest.raises(ConfigError, match="not allowed"):
            store.new_model_dir(bad)
    assert not (_isolated_store / "escaped").exists()
    assert not (_isolated_store / "models").exists() or [p.name for p in (_isolated_store / "models").iterdir()] == []


def test_import_refuses_unsafe_id_inside_model_json(tmp_path, tiny_model_dir):
    import json
    import shutil

    evil = tmp_path / "evil"
    shutil.copytree(tiny_model_dir, evil)
    card = json.loads((evil / "model.json").read_text())
    card["id"] = "../../outside"
    (evil / "model.json").write_text(json.dumps(card))
    store = ModelStore()
    with pytest.raises(ModelFileError, match="not allowed as a store name; import it under another id with --id"):
        store.import_model(evil)
    assert [p.name for p in store.models_dir.iterdir()] == []
    assert store.import_model(evil, model_id="safe-id").id == "safe-id"


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "import", "x.zip", "--id", "../escaped"],
        ["models", "install", "../escaped"],
        ["models", "remove", "a/b"],
        ["models", "path", ".."],
        ["convert-official", "c.pth", "--labels", "flare", "-o", "out", "--id", "../x"],
    ],
)
def test_cli_refuses_unsafe_ids(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repux: error: argument") and "not allowed as a model id" in err[0]


def test_train_output_id_checked(tmp_path, capsys, blob_dataset):
    assert main(["train", "--dataset", str(blob_dataset), "-o", "bad id", "--max-iterations", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("repux: error: --output 'bad id' is not allowed")
