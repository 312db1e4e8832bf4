"""pytest plugin of commlib (registered as ``commlib`` under the ``pytest11`` entry point).

Adds ``--commlib-hypothesis-profile NAME`` to load a hypothesis profile for
packing property tests; the plugin registers three:

* ``commlib-dev``: 200 examples per test, for quick local runs;
* ``commlib-ci``: 1500 examples, derandomized (reproducible in CI);
* ``commlib-thorough``: 20000 examples, for soak runs.

and two fixtures: ``free_datatypes`` (a list; datatypes appended to it are
freed after the test) and ``mpi_reference`` (``.pack`` / ``.unpack``: what
MPI itself produces). Nothing here initializes MPI until a fixture is used.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

PROFILES = {"commlib-dev": 200, "commlib-ci": 1500, "commlib-thorough": 20000}

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is an optional extra: the option then says so
    settings = None
else:
    for _name, _examples in PROFILES.items():
        settings.register_profile(
            _name,
            max_examples=_examples,
            deadline=None,
            derandomize=_name == "commlib-ci",
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("commlib", "commlib packing property tests")
    group.addoption(
        "--commlib-hypothesis-profile",
        metavar="NAME",
        default=None,
        help=f"load this hypothesis profile ({', '.join(PROFILES)}, or any registered one)",
    )


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--commlib-hypothesis-profile")
    if name is None:
        return
    if settings is None:
        raise pytest.UsageError("--commlib-hypothesis-profile needs hypothesis: pip install 'commlib[test]'")
    try:
        settings.load_profile(name)
    except Exception as exc:  # hypothesis raises InvalidArgument for unknown names
        raise pytest.UsageError(f"--commlib-hypothesis-profile: {exc}") from None


@pytest.fixture
def free_datatypes():
    """A list: every MPI datatype appended to it is freed when the test ends."""
    owned: list = []
    yield owned
    for dt in owned:
        if not dt.is_predefined:
            dt.Free()


@pytest.fixture
def mpi_reference():
    """``.pack(buf, count, dt) -> bytes`` and ``.unpack(packed, buf, count, dt)``: MPI's own results."""
    from datatypes.testing import mpi_pack_reference, mpi_unpack_reference

    return SimpleNamespace(pack=mpi_pack_reference, unpack=mpi_unpack_reference)
