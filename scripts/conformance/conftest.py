"""pytest configuration for running distributed's own test modules (fetched by
fetch_tests.sh) against the installed distributed, as distributed's repository runs them."""

import importlib
import os

import distributed
import distributed.utils_test as _utils_test
import pytest

HERE = os.path.join(os.path.dirname(__file__), "src", "dtests_pkg")

# `distributed.tests`, `distributed.shuffle.tests`, ... resolve to the fetched folders
distributed.__path__.append(HERE)
for sub in [
    "shuffle",
    "diagnostics",
    "http",
    "http.scheduler",
    "http.worker",
    "dashboard",
    "deploy",
    "cli",
    "comm",
    "protocol",
]:
    try:
        module = importlib.import_module("distributed." + sub)
    except ImportError:
        continue
    module.__path__.append(os.path.join(HERE, *sub.split(".")))

# the TLS certificates ship with the tests
_utils_test.get_cert = lambda filename: os.path.join(HERE, "tests", filename)

pytest_plugins = ["distributed.pytest_resourceleaks"]

# Make all fixtures available (as distributed's own conftest does)
from distributed.utils_test import *  # noqa: E402, F403


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run slow tests")


def pytest_configure(config):
    for mark in [
        "slow",
        "avoid_ci",
        "ipython",
        "gpu",
        "leaking",
        "workerstate",
        "ci1",
        "extra_packages",
        "flaky",
    ]:
        config.addinivalue_line("markers", mark)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="need --runslow option to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
