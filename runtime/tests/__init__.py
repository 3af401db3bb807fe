"""A package, so pytest imports this suite's conftest as `tests.conftest`: under the plain name `conftest`
it would replace tests/conftest.py, which the generator's tests import, when both folders run together."""
