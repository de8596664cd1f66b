"""Issue 24: how Horovod's Python files are fixed for Keras 3
(``scripts/patch_horovod.py --python``), and Keras 2 usage that Keras 3 removed
named in one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hvdtrain.core import versions
from tests.launch import REPO, own_lines

SCRIPT = REPO / "scripts" / "patch_horovod.py"


def _patcher():
    spec = importlib.util.spec_from_file_location("patch_horovod", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_fixes_never_change_the_compiled_wheels_cache_key():
    patcher = _patcher()
    before = patcher.fingerprint(False), patcher.fingerprint(True), patcher.python_fingerprint()
    patcher.PYTHON_FIXES = patcher.PYTHON_FIXES[:-1]
    after = patcher.fingerprint(False), patcher.fingerprint(True), patcher.python_fingerprint()
    assert after[:2] == before[:2] and after[2] != before[2]


def _cached_wheel() -> Path:
    cache = Path(
        os.environ.get(
            "HVDTRAIN_CACHE",
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hvdtrain",
        )
    )
    key = (Path(sys.prefix) / versions.KEY_FILE).read_text().strip()
    found = sorted((cache / "wheels" / key).glob("horovod-*.whl"))
    assert found, f"no cached Horovod wheel for {key} under {cache}: run make install"
    return found[0]


@pytest.mark.slow
def test_installed_horovod_is_the_cached_wheel_plus_the_python_fixes(tmp_path):
    patcher = _patcher()
    targets = sorted({rel for rel, _, _ in patcher.PYTHON_FIXES})
    with zipfile.ZipFile(_cached_wheel()) as wheel:
        for rel in targets:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(wheel.read(rel))
    run = [sys.executable, str(SCRIPT), "--python", str(tmp_path)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    site = Path(importlib.util.find_spec("horovod").submodule_search_locations[0]).parent
    for rel in targets:
        assert (tmp_path / rel).read_text() == (site / rel).read_text(), rel
    assert (
        Path(sys.prefix) / versions.PYTHON_FIXES_FILE
    ).read_text().strip() == patcher.python_fingerprint()
    again = subprocess.run(run, capture_output=True, text=True)
    assert (again.returncode, again.stdout) == (0, "")  # applied already: nothing written
    # A Horovod whose text differs: one line naming the file, nothing written.
    util = tmp_path / "horovod/tensorflow/util.py"
    util.write_text(util.read_text().replace("_ref(vars)", "vars.reference()"))
    other = tmp_path / "horovod/tensorflow/__init__.py"
    other.write_text(other.read_text().replace("_ref(source)", "source.ref()"))
    before = other.read_text()
    proc = subprocess.run(run, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith(
        f"patch_horovod: expected text once in {util}"
    )
    assert other.read_text() == before


@pytest.mark.slow
def test_keras_2_arguments_keras_3_removed_are_named_in_one_line(tmp_path):
    script = tmp_path / "keras2_script.py"
    script.write_text(
        "import keras\nimport horovod.tensorflow.keras as hvd\nhvd.init()\n"
        "model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])\n"
        "opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.1 * hvd.size()))\n"
        "model.compile(loss='mse', optimizer=opt, experimental_run_tf_function=False)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert (proc.returncode, own_lines(proc.stderr)) == (
        1,
        [
            "hvdtrain: compile(experimental_run_tf_function=...) was removed in Keras 3: delete "
            "the argument (Keras 3 always runs the train step as a tf.function, and Horovod's "
            "DistributedOptimizer works inside it)"
        ],
    )


def test_optimizer_variables_called_as_in_keras_2_is_named():
    import keras

    from hvdtrain.core import keras3

    opt = keras.optimizers.SGD(0.1)
    with pytest.raises(TypeError) as raised:
        opt.variables()
    assert keras3.explain(raised.value) == (
        "optimizer.variables() became a property in Keras 3: write optimizer.variables (no call)"
    )
    optimizers = [opt]
    with pytest.raises(TypeError) as raised:
        optimizers()  # the same error from another line: not Keras 2 usage
    assert keras3.explain(raised.value) is None


def test_an_install_without_the_python_fixes_is_named(tmp_path, monkeypatch):
    (tmp_path / versions.KEY_FILE).write_text((Path(sys.prefix) / versions.KEY_FILE).read_text())
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    want = "Horovod's TensorFlow and Keras files lack hvdtrain's Keras 3 fixes"
    assert versions.mismatches("keras") == [want] and versions.mismatches("torch") == []
    (tmp_path / versions.PYTHON_FIXES_FILE).write_text("1ac0baf5ff220995\n")
    assert versions.mismatches("keras") == []


def test_horovodruns_build_probe_asks_torch_first_and_stops_there():
    """Plain ``horovodrun`` probes the build before every launch: with torch's extension asked
    first it never imports TensorFlow (seconds per launch, docs/build.md)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from horovod.common import util; print(util.gloo_built(True))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout.splitlines()) == (
        0,
        [
            "Checking whether extension torch was built with Gloo.",
            "Extension torch was built with Gloo.",
            "True",
        ],
    )
