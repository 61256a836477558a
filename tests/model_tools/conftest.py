"""Real zoo models, prepared once into the user cache folder (ToolsSettings().cache_dir) and reused."""

from __future__ import annotations

import pytest

from model_tools.zoo.base import prepare


@pytest.fixture(scope="session")
def digits():
    return prepare("digits")


@pytest.fixture(scope="session")
def blazeface():
    return prepare("blazeface")


@pytest.fixture(scope="session")
def ppocr_rec():
    return prepare("ppocr-rec")


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from model_tools.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err
