"""Every bad input gets the project's own exception with a message naming file, row and fix."""

import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import (
    ContextError,
    DatasetError,
    InputError,
    NetworkDefinitionError,
    ParameterError,
)
from sgd_influence_plugin.nnabla_adapter import load_model, make_context

NEEDS = {"x": (1, 28, 28), "y": (1,)}


def _copy_dataset(data, tmp_path, n=5):
    folder = tmp_path / "d"
    shutil.copytree(os.path.join(data["folder"], "train"), folder / "train")
    lines = open(data["train"]).read().splitlines()[: n + 1]
    path = folder / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return folder, path, lines


def test_missing_csv(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        load_dataset(str(tmp_path / "nope.csv"), NEEDS)


def test_missing_column(data28, tmp_path):
    folder, path, lines = _copy_dataset(data28, tmp_path)
    path.write_text("\n".join(["x:image,label"] + lines[1:]) + "\n")
    with pytest.raises(
        DatasetError,
        match=r"train\.csv: no column for variable 'y'.*'x:image', "
        r"'label'.*Add a column named 'y'",
    ):
        load_dataset(str(path), NEEDS)


def test_missing_image(data28, tmp_path):
    folder, path, lines = _copy_dataset(data28, tmp_path)
    os.remove(folder / "train" / "000002.png")
    with pytest.raises(
        DatasetError,
        match=r"train\.csv row 3, column 'x:image': file "
        r"'train/000002\.png' not found \(paths are relative "
        r"to the CSV's folder",
    ):
        load_dataset(str(path), NEEDS)


def test_unreadable_image(data28, tmp_path):
    folder, path, _ = _copy_dataset(data28, tmp_path)
    (folder / "train" / "000001.png").write_bytes(b"not a png")
    with pytest.raises(
        DatasetError,
        match=r"row 2, column 'x:image': cannot read "
        r"'train/000001\.png'.*replace or remove",
    ):
        load_dataset(str(path), NEEDS)


@pytest.mark.parametrize("array", [np.full((1, 28, 28), "a"), np.array([{"a": 1}], dtype=object)])
def test_a_npy_of_text_or_objects_is_named(data28, tmp_path, array):
    """A data file of strings or Python objects used to raise numpy's TypeError/ValueError."""
    folder, path, lines = _copy_dataset(data28, tmp_path)
    np.save(folder / "odd.npy", array)
    lines[2] = "odd.npy," + lines[2].split(",")[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError, match=r"row 2, column 'x:image': 'odd\.npy' holds .*, not numbers"
    ):
        load_dataset(str(path), NEEDS)


class _MakesAFolder:
    """Unpickling it calls ``os.mkdir(path)``: a stand-in for a crafted file's code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("kind", ["objects", "a bare pickle"])
def test_a_npy_of_python_objects_is_refused_before_it_is_unpickled(data28, tmp_path, kind):
    """nnabla's loader reads .npy files with allow_pickle=True; a file of objects, or a pickle
    named .npy (which np.load reads as a pickle), is refused from its header, so what it
    carries never runs."""
    import pickle

    folder, path, lines = _copy_dataset(data28, tmp_path)
    ran = tmp_path / "the file's code ran"
    if kind == "objects":
        np.save(folder / "odd.npy", np.array([_MakesAFolder(str(ran))], dtype=object))
        pattern = r"holds Python objects"
    else:
        (folder / "odd.npy").write_bytes(pickle.dumps(_MakesAFolder(str(ran))))
        pattern = r"is not a \.npy array file .*can run code"
    lines[2] = "odd.npy," + lines[2].split(",")[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"row 2, column 'x:image': 'odd\.npy' " + pattern):
        load_dataset(str(path), NEEDS)
    assert not ran.exists()


def test_image_size_mismatch(data28, tmp_path):
    folder, path, _ = _copy_dataset(data28, tmp_path)
    Image.fromarray(np.zeros((14, 14), np.uint8)).save(folder / "train" / "000004.png")
    with pytest.raises(
        DatasetError,
        match=r"row 5: 'train/000004\.png' loads with shape "
        r"\(1, 14, 14\) but the network's input 'x' takes "
        r"\(1, 28, 28\).*resize",
    ):
        load_dataset(str(path), NEEDS)


def test_a_data_csv_of_another_shape_is_not_called_an_image(data28, tmp_path):
    folder, path, lines = _copy_dataset(data28, tmp_path)
    (folder / "wave.csv").write_text("0.5\n" * 28)
    lines[1] = "wave.csv," + lines[1].split(",")[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as e:
        load_dataset(str(path), NEEDS)
    assert "give files that load with shape (1, 28, 28)" in str(e.value)
    assert "resize the images" not in str(e.value)


def test_a_folder_given_as_a_csv_is_called_a_folder(tmp_path):
    with pytest.raises(InputError, match=r": is a folder, not a CSV file"):
        load_dataset(str(tmp_path), NEEDS)


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("x:image,y:label\n")
    with pytest.raises(DatasetError, match=r"empty\.csv: the dataset has a header but no rows"):
        load_dataset(str(path), NEEDS)
    path.write_text("")
    with pytest.raises(DatasetError, match=r"empty\.csv: the file is empty"):
        load_dataset(str(path), NEEDS)


def test_vector_columns_out_of_order(tmp_path):
    """nnabla feeds ``x__1,x__0`` left to right, this tool fed them by index: a silent swap of
    the features; refused."""
    path = tmp_path / "swapped.csv"
    path.write_text("y:label,x__1:b,x__0:a\n0,1,2\n1,3,4\n")
    with pytest.raises(
        DatasetError, match=r"swapped\.csv: column 'x__0:a' comes after 'x__1:b'.*order x__0, "
    ):
        load_dataset(str(path), {"x": (2,), "y": (1,)})
    path.write_text("y:label,x__0:a,x__1:b\n0,1,2\n1,3,4\n")
    assert load_dataset(str(path), {"x": (2,), "y": (1,)}).arrays["x"].tolist() == [[1, 2], [3, 4]]


def test_non_numeric_label(data28, tmp_path):
    folder, path, lines = _copy_dataset(data28, tmp_path)
    lines[3] = lines[3].split(",")[0] + ",shirt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError,
        match=r"row 3, column 'y:label': 'shirt' is neither a "
        r"number nor a file path; labels must be numbers",
    ):
        load_dataset(str(path), NEEDS)


def test_ragged_row(data28, tmp_path):
    folder, path, lines = _copy_dataset(data28, tmp_path)
    lines[2] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"row 2: 3 cells but the header has 2"):
        load_dataset(str(path), NEEDS)


def test_missing_model_files(tmp_path):
    with pytest.raises(NetworkDefinitionError, match=r"results\.nnp: file not found"):
        load_model(model=str(tmp_path / "results.nnp"))
    (tmp_path / "bad.nnp").write_bytes(b"xx")
    with pytest.raises(NetworkDefinitionError, match=r"bad\.nnp: not a valid \.nnp"):
        load_model(model=str(tmp_path / "bad.nnp"))
    with zipfile.ZipFile(tmp_path / "empty.nnp", "w") as z:
        z.writestr("nnp_version.txt", "0.1")
    with pytest.raises(NetworkDefinitionError, match=r"holds no \.nntxt .*; give the results"):
        load_model(model=str(tmp_path / "empty.nnp"))
    with pytest.raises(NetworkDefinitionError, match="no model given"):
        load_model()


def test_garbled_nntxt(tmp_path):
    (tmp_path / "net.nntxt").write_text("network { name: \n")
    with pytest.raises(
        NetworkDefinitionError,
        match=r"net\.nntxt: not a valid network "
        r"definition",
    ):
        load_model(config=str(tmp_path / "net.nntxt"))


def test_unreadable_definition_and_parameters_name_the_fix(results, tmp_path):
    params = os.path.join(results("mlp"), "parameters.h5")
    with pytest.raises(NetworkDefinitionError, match=r"cannot read .*; give the net\.nntxt"):
        load_model(config=params, params=params)  # the .h5 given as the definition
    (tmp_path / "p.h5").write_bytes(open(params, "rb").read()[:3000])
    with pytest.raises(ParameterError, match=r"not a readable .*; give the parameters\.h5"):
        load_model(config=os.path.join(results("mlp"), "net.nntxt"), params=str(tmp_path / "p.h5"))


def _edited_nntxt(results, tmp_path, edit):
    src = open(os.path.join(results("mlp"), "net.nntxt")).read()
    path = tmp_path / "net.nntxt"
    path.write_text(edit(src))
    return str(path)


def test_no_optimizer(results, tmp_path):
    import re

    cfg = _edited_nntxt(
        results, tmp_path, lambda s: re.sub(r"\noptimizer \{.*?\n\}", "", s, flags=re.S)
    )
    with pytest.raises(NetworkDefinitionError, match=r"net\.nntxt.*has no optimizer"):
        load_model(config=cfg, params=os.path.join(results("mlp"), "parameters.h5"))


def test_no_loss(results, tmp_path):
    import re

    cfg = _edited_nntxt(
        results,
        tmp_path,
        lambda s: re.sub(r"\s*loss_variable \{\s*variable_name: \"loss\"\s*\}", "", s),
    )
    with pytest.raises(NetworkDefinitionError, match=r"names no loss variable; add a loss"):
        load_model(config=cfg, params=os.path.join(results("mlp"), "parameters.h5"))


def test_missing_parameter(results, tmp_path):
    params = tmp_path / "p.h5"
    shutil.copy(os.path.join(results("mlp"), "parameters.h5"), params)
    with h5py.File(params, "a") as f:
        del f["Affine_2/affine/W"]
    with pytest.raises(
        ParameterError,
        match=r"parameter 'Affine_2/affine/W' of network 'Main' "
        r"is missing",
    ):
        load_model(config=os.path.join(results("mlp"), "net.nntxt"), params=str(params))


def test_wrong_parameter_shape(results, tmp_path):
    params = tmp_path / "p.h5"
    shutil.copy(os.path.join(results("mlp"), "parameters.h5"), params)
    with h5py.File(params, "a") as f:
        attrs = dict(f["Affine/affine/b"].attrs)
        del f["Affine/affine/b"]
        ds = f.create_dataset("Affine/affine/b", data=np.zeros(5, np.float32))
        ds.attrs.update(attrs)
    with pytest.raises(
        ParameterError,
        match=r"'Affine/affine/b' has shape \(5,\) but network "
        r"'Main' needs \(64,\)",
    ):
        load_model(config=os.path.join(results("mlp"), "net.nntxt"), params=str(params))
    with pytest.raises(ParameterError, match=r"missing\.h5: file not found"):
        load_model(
            config=os.path.join(results("mlp"), "net.nntxt"), params=str(tmp_path / "missing.h5")
        )


def test_cudnn_without_extension_is_clear():
    try:
        import nnabla_ext.cudnn  # noqa: F401

        pytest.skip("the GPU extension is installed here")
    except ImportError:
        pass
    with pytest.raises(ContextError, match=r"needs the nnabla GPU extension.*nnabla-ext-cuda"):
        make_context("cudnn")
    with pytest.raises(ContextError, match="unknown context 'tpu'"):
        make_context("tpu")


@pytest.mark.parametrize(
    "bad",
    [
        {"trials": 0},
        {"trials": 10**6},
        {"batch_size": 0},
        {"epochs": 1.5},
        {"epochs": 10**9},  # fuzz: its sample orders drawn up front took 24 GB, OOM-killed
        {"seed": -1},
        {"weight_decay": -0.1},
        {"jobs": 0},
        {"retries": -1},
        {"replay_step": "loop"},
        {"cache": "some"},
    ],
)
def test_every_settings_rule_has_one_home_whatever_the_interface(bad):
    """The API, the CLI and the console plugin refuse the same values with the same rule
    (InfluenceSettings.validate); only the option's spelling differs."""
    from sgd_influence_plugin.errors import SettingsError
    from sgd_influence_plugin.runner import RunRequest
    from sgd_influence_plugin.settings import InfluenceSettings
    from sgd_influence_plugin.validation import CLI_FLAGS, PLUGIN_FLAGS, check_options

    ((field, value),) = bad.items()
    messages = []
    with pytest.raises(SettingsError) as api:
        InfluenceSettings(**bad).validate()
    messages.append((field, str(api.value)))
    for flags in (CLI_FLAGS, PLUGIN_FLAGS):
        req = RunRequest(output="o.csv", model="m.nnp", settings=InfluenceSettings(**bad))
        with pytest.raises(SettingsError) as cli:
            check_options(req, flags)
        messages.append((flags.for_settings()[field] or field, str(cli.value)))
    rules = {msg.replace(spelled, "OPTION", 1) for spelled, msg in messages}
    assert len(rules) == 1, messages
    assert rules.pop().startswith(f"OPTION {value!r}" if isinstance(value, str) else "OPTION ")
