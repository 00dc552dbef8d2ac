"""The public surface: every exported name resolves, and the package is typed."""

import importlib.resources

import nc_jax


def test_all_names_resolve():
  assert sorted(nc_jax.__all__) == sorted(set(nc_jax.__all__))
  for name in nc_jax.__all__:
    assert getattr(nc_jax, name) is not None, name


def test_ships_py_typed():
  assert importlib.resources.files("nc_jax").joinpath("py.typed").is_file()
