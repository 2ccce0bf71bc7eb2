"""The first load begins before the server's imports; later loads (a swap) are loads of their own."""

from __future__ import annotations

import threading

import pytest

from app.errors import ModelLoadError
from app.service.head_start import HeadStart
from app.settings import load_settings


def test_the_first_load_is_the_one_begun_early_and_later_ones_load_anew():
    began = threading.Event()
    loads: list[str] = []

    def loader(settings):
        loads.append(settings.model_path)
        began.set()
        return f"engine for {settings.model_path}"

    settings = load_settings(model_path="demo")
    head_start = HeadStart(settings, loader)
    assert began.wait(5)  # loading before anyone asked
    assert head_start(settings) == "engine for demo"
    other = settings.model_copy(update={"model_path": "elsewhere"})
    assert head_start(other) == "engine for elsewhere"
    assert head_start(settings) == "engine for demo"  # a second time: loaded again
    assert loads == ["demo", "elsewhere", "demo"]


def test_an_early_load_failure_reaches_the_caller():
    def loader(settings):
        raise ModelLoadError("no weights")

    settings = load_settings(model_path="demo")
    with pytest.raises(ModelLoadError, match="no weights"):
        HeadStart(settings, loader)(settings)
