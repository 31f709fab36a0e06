"""`pip install .` is the light client: in a fresh virtual environment it gives the HTTP client,
the file-batch command and the `zsc` CLI, without torch, Ray or transformers; the server-side
commands (`zsc export`, `zsc bulk`) say what to install instead."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # No pip in it (bootstrapping one costs seconds): this venv's pip installs into it through
    # `--python`. Not system-site-packages either, so nothing of the dev install leaks in.
    env = tmp_path_factory.mktemp("light") / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    # A copy of the tree, so the build writes nothing into the checkout.
    src = tmp_path_factory.mktemp("src")
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(src / "t.tar"), "HEAD"],
        check=True,
    )
    subprocess.run(["tar", "-xf", str(src / "t.tar"), "-C", str(src)], check=True)
    # The working tree's own files, in case they are newer than HEAD (the package and its metadata).
    subprocess.run(
        ["cp", "-r", str(ROOT / "serve_app"), str(ROOT / "pyproject.toml"), str(src)], check=True
    )
    # The wheel is built with this venv's setuptools (no isolated build env to fetch), then
    # installed with its dependencies as `pip install .` would.
    wheels = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip"]
    _run_ok([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)])
    (wheel,) = wheels.glob("*.whl")
    _run_ok([*pip, "--python", str(env / "bin" / "python"), "install", "-q", str(wheel)])
    return env


def _run_ok(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def run(env: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=120
    )


def test_the_client_and_the_cli_work_without_torch_or_ray(light_env: Path) -> None:
    code = (
        "import importlib.util as u, sys\n"
        "import serve_app.client as c\n"
        "from serve_app.client.batch import read_rows\n"
        "assert c.ZeroShotClient and c.AsyncZeroShotClient\n"
        "missing = [m for m in ('torch', 'ray', 'transformers', 'numpy', 'fastapi') if u.find_spec(m)]\n"
        "print('installed:', missing)\n"
        "assert not missing, missing\n"
    )
    done = run(light_env, "python", "-c", code)
    assert done.returncode == 0, done.stdout + done.stderr
    help_text = run(light_env, "zsc", "--help")
    assert help_text.returncode == 0, help_text.stderr
    for command in ("classify", "batch", "job", "export", "hash-key"):
        assert command in help_text.stdout
    assert run(light_env, "zsc", "hash-key", "k").stdout.startswith("sha256:")


def test_the_handle_helpers_say_they_need_the_serve_extra(light_env: Path) -> None:
    done = run(light_env, "python", "-c", "from serve_app.client import submit")
    assert done.returncode != 0
    assert "needs Ray" in done.stderr and 'pip install "zsc[serve]"' in done.stderr
    # A server-side command says what to install instead of a traceback.
    exported = run(light_env, "zsc", "export", "onnx", str(ROOT))
    assert exported.returncode == 1
    assert "zsc[serve,onnx]" in exported.stderr and "Traceback" not in exported.stderr


def test_bulk_in_the_light_install_says_how_to_get_it(light_env: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "the match ended in a draw"}\n')
    done = run(light_env, "zsc", "bulk", str(source), str(tmp_path / "out"), "--labels", "a,b")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'zsc[serve]'" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_the_dev_environment_has_the_extras() -> None:
    # The full install the Makefile makes (serve, onnx, prefilter): the other tests rely on it.
    import onnxruntime  # noqa: F401
    import sentence_transformers  # noqa: F401

    assert sys.version_info >= (3, 10)
