"""The compiled whole-model walk: the caller's jit, compile counts, the
report, and the layer kinds users put in models (lifted transforms,
attention dropout, subclassed layers, convs on extra batch axes)."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nc_jax
import models
from helpers import stratified

SIZES = (784, 32, 10)


@pytest.fixture(scope="module")
def data(mnist):
  x, y = stratified(*mnist, 400, seed=5)
  return jnp.asarray(x), jnp.asarray(y)


def _equal(a, b):
  def values(v):  # PRNG keys as their data
    return (jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key)
            else v)
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(values(u), values(v)),
               a, b)


# The caller's jit -------------------------------------------------------------


@pytest.mark.parametrize("walk", [
    lambda m, k, x, y: nc_jax.campaign_linen(m, k, x, y, num_classes=10,
                                             progress=False),
    lambda m, k, x, y: nc_jax.campaign_linen(m, k, x, y, num_classes=10,
                                             elect="random", progress=False),
    lambda m, k, x, y: nc_jax.lsuv_linen(m, k, x, progress=False),
], ids=["campaign", "random", "lsuv"])
def test_linen_walks_under_the_callers_jit_equal_the_eager_call(data, walk):
  x, y = data
  model = models.SmallCNN()
  eager = walk(model, jax.random.key(3), x, y)
  jitted = jax.jit(lambda k, x, y: walk(model, k, x, y))(
      jax.random.key(3), x, y)
  _equal(eager, jitted)


def test_lsuv_from_given_variables_under_the_callers_jit(data):
  x, y = data
  model = models.MLP(SIZES[1:])
  start = nc_jax.campaign_linen(model, 1, x, y, progress=False)
  eager = nc_jax.lsuv_linen(model, 2, x, variables=start, progress=False)
  jitted = jax.jit(lambda v, x: nc_jax.lsuv_linen(
      model, 2, x, variables=v, progress=False))(start, x)
  _equal(eager, jitted)


@pytest.mark.parametrize("walk", [
    lambda m, x, y: nc_jax.campaign_nnx(m, x, y, key=4, num_classes=10,
                                        progress=False),
    lambda m, x, y: nc_jax.lsuv_nnx(m, x, key=4, progress=False),
], ids=["campaign", "lsuv"])
def test_nnx_walks_under_nnx_jit_equal_the_eager_call(data, walk):
  x, y = data
  eager = models.NnxMLP(SIZES, rngs=nnx.Rngs(0))
  walk(eager, x, y)
  jitted = models.NnxMLP(SIZES, rngs=nnx.Rngs(0))
  nnx.jit(walk)(jitted, x, y)
  _equal(nnx.state(eager), nnx.state(jitted))


def test_traced_labels_need_num_classes(data):
  x, y = data
  with pytest.raises(ValueError, match="num_classes"):
    jax.jit(lambda x, y: nc_jax.campaign_linen(
        models.MLP((8, 10)), 0, x, y, progress=False))(x, y)


class _Compiles:
  """Counts XLA compilations (jax's backend-compile event)."""

  def __enter__(self):
    self.count = 0

    def listener(event, duration, **_):
      del duration
      if event == "/jax/core/compile/backend_compile_duration":
        self.count += 1

    self._listener = listener
    jax.monitoring.register_event_duration_secs_listener(listener)
    return self

  def __exit__(self, *_):
    jax.monitoring.unregister_event_duration_listener(self._listener)


@pytest.mark.parametrize("walk", [
    lambda m, k, x, y: nc_jax.campaign_linen(m, k, x, y, progress=False),
    lambda m, k, x, y: nc_jax.lsuv_linen(m, k, x, progress=False),
], ids=["campaign", "lsuv"])
def test_a_walk_compiles_a_handful_of_programs_then_none(data, walk):
  x, y = data
  model = models.ResidualMLP()  # three layers, one program
  x = x[:, :64]
  other_x, other_y = jax.block_until_ready((x[::-1] + 1, y[::-1]))
  jax.clear_caches()
  with _Compiles() as first:
    jax.block_until_ready(walk(model, jax.random.key(0), x, y))
  with _Compiles() as new_key:
    jax.block_until_ready(walk(model, jax.random.key(1), x, y))
  with _Compiles() as new_batch:
    jax.block_until_ready(walk(model, jax.random.key(1), other_x, other_y))
  # The walk itself is one program; the rest are the batch's eager checks
  # (x finite, class ids) and the key's split, each compiled once.
  assert 1 <= first.count <= 7
  assert new_key.count == 0
  assert new_batch.count == 0


def test_nnx_warm_walk_compiles_nothing(data):
  x, y = data
  model = models.NnxMLP(SIZES, rngs=nnx.Rngs(0))
  nc_jax.campaign_nnx(model, x, y, progress=False)
  other_x = jax.block_until_ready(x + 1)
  with _Compiles() as warm:
    nc_jax.campaign_nnx(model, other_x, y, key=9, progress=False)
  assert warm.count == 0


# The report -------------------------------------------------------------------


def test_campaign_report_rows_table_and_values(data):
  x, y = data
  model = models.MLP(SIZES[1:])
  variables, report = nc_jax.campaign_linen(model, 0, x, y, report=True,
                                            progress=False)
  _equal(variables, nc_jax.campaign_linen(model, 0, x, y, progress=False))
  rows = report.rows()
  assert [r["path"] for r in rows] == ["Dense_0", "Dense_1"]
  assert [r["kernel_shape"] for r in rows] == [(784, 32), (32, 10)]
  assert [(r["candidates"], r["elected"]) for r in rows] == [(160, 32),
                                                             (50, 10)]
  for row in rows:
    assert row["dropped"] == ""
    assert row["seconds"] >= 0
    assert np.isfinite([row["score_elected"], row["score_all"],
                        row["std_before"], row["std_after"]]).all()
  # The outputs' std before and after the walk, measured independently.
  init = model.init(jax.random.split(jax.random.key(0))[0], x[:2])["params"]
  params = variables["params"]
  h = jax.nn.relu(x @ params["Dense_0"]["kernel"])
  for row, got in ((rows[0]["std_before"], x @ init["Dense_0"]["kernel"]),
                   (rows[0]["std_after"], x @ params["Dense_0"]["kernel"]),
                   (rows[1]["std_before"], h @ init["Dense_1"]["kernel"]),
                   (rows[1]["std_after"], h @ params["Dense_1"]["kernel"])):
    np.testing.assert_allclose(row, jnp.std(got), rtol=1e-4)
  text = str(report)
  assert "Dense_0" in text and "784x32" in text and "median score" in text


def test_lsuv_report_and_a_warning_for_a_layer_short_of_tol(data):
  x, _ = data
  model = models.MLP(SIZES[1:])
  _, report = nc_jax.lsuv_linen(model, 0, x, report=True, progress=False)
  assert all(r["converged"] for r in report.rows())
  # Biases that differ per unit: one rescaling by 1/std cannot land on 1.
  variables = model.init(jax.random.key(0), x[:2])
  biased = jax.tree.map_with_path(
      lambda path, a: a + 3.0 * jnp.arange(a.size).reshape(a.shape)
      if "bias" in jax.tree_util.keystr(path) else a, variables)
  with pytest.warns(UserWarning, match=r"not within") as caught:
    _, report = nc_jax.lsuv_linen(model, 0, x, tol=1e-3, max_iters=1,
                                  variables=biased, report=True,
                                  progress=False)
  assert [str(w.message).split(":")[1] for w in caught] == [
      " layer 'Dense_0'", " layer 'Dense_1'"]
  assert [r["lsuv_iterations"] for r in report.rows()] == [1, 1]
  assert [r["converged"] for r in report.rows()] == [False, False]


def test_report_leaves_the_callers_jit_as_a_pytree(data):
  x, y = data
  model = models.MLP(SIZES[1:])
  _, inside = jax.jit(lambda x: nc_jax.campaign_linen(
      model, 0, x, y, report=True, progress=False))(x)
  _, eager = nc_jax.campaign_linen(model, 0, x, y, report=True,
                                   progress=False)
  for a, b in zip(inside.rows(), eager.rows(), strict=True):
    assert np.isnan(a.pop("seconds"))
    b.pop("seconds")
    assert a == b


def test_criteria_dropped_warn_naming_the_layer(data):
  x, y = data
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _, report = nc_jax.campaign_linen(models.MLP(SIZES[1:]), 0, x,
                                      jnp.zeros_like(y), report=True,
                                      progress=False)
  assert [str(w.message).split(" (")[0] for w in caught] == [
      f"layer '{path}': The label-information criterion"
      for path in ("Dense_0", "Dense_1")]
  assert all(w.category is nc_jax.CriterionDroppedWarning for w in caught)
  assert {w.filename for w in caught} == {__file__}  # the user's call
  assert [r["dropped"] for r in report.rows()] == ["label", "label"]


# Layer kinds (issue 24) --------------------------------------------------------


class _Block(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(16, 16, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.linear(x))


class _ScanStack(nnx.Module):
  """The idiomatic nnx layer stack: blocks made by nnx.vmap, run by
  nnx.scan."""

  def __init__(self, rngs):
    self.embed = nnx.Linear(784, 16, rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return _Block(rngs)

    self.blocks = make(rngs)
    self.head = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def step(h, block):
      return block(h)

    return self.head(step(jax.nn.relu(self.embed(x)), self.blocks))


@pytest.mark.parametrize("walk", [
    lambda m, x, y, **kw: nc_jax.campaign_nnx(m, x, y, progress=False, **kw),
    lambda m, x, y, **kw: nc_jax.lsuv_nnx(m, x, progress=False, **kw),
], ids=["campaign", "lsuv"])
def test_nnx_layers_in_lifted_transforms_are_refused_by_name(data, walk):
  x, y = data
  model = _ScanStack(nnx.Rngs(0))
  before = nnx.clone(nnx.state(model))
  with pytest.raises(ValueError, match=r"\['blocks/linear'\].*lifted"):
    walk(model, x, y)
  _equal(nnx.state(model), before)  # refused before any work
  walk(model, x, y, layers=["embed", "head"])  # left out: they keep init
  _equal(nnx.state(model)["blocks"], before["blocks"])
  assert not np.array_equal(model.head.kernel[...], before["head"]["kernel"])


class _AttentionDropout(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.Dense(16)(x.reshape(x.shape[0], 4, -1))
    h = nn.MultiHeadDotProductAttention(num_heads=2, dropout_rate=0.5,
                                        deterministic=False)(h)
    h = nn.Dropout(0.5)(h, deterministic=False)
    return nn.Dense(10)(h.mean(1))


class _NoDropout(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.Dense(16)(x.reshape(x.shape[0], 4, -1))
    h = nn.MultiHeadDotProductAttention(num_heads=2)(h)
    return nn.Dense(10)(h.mean(1))


def test_linen_attention_dropout_is_off_during_the_walk(data):
  x, y = data
  for walk in (lambda m: nc_jax.campaign_linen(m, 0, x, y, progress=False),
               lambda m: nc_jax.lsuv_linen(m, 0, x, progress=False)):
    _equal(walk(_AttentionDropout()), walk(_NoDropout()))


class _NnxAttention(nnx.Module):
  def __init__(self, rate, rngs):
    self.embed = nnx.Linear(196, 16, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        2, 16, dropout_rate=rate, deterministic=False, decode=False,
        rngs=rngs)
    self.head = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x):
    h = self.embed(x.reshape(x.shape[0], 4, -1))
    return self.head(self.attention(h).mean(1))


def test_nnx_attention_dropout_is_off_during_the_walk(data):
  x, y = data
  noisy, clean = _NnxAttention(0.5, nnx.Rngs(0)), _NnxAttention(0.0,
                                                                nnx.Rngs(0))
  rng_state = nnx.clone(nnx.state(noisy, nnx.RngState))
  for model in (noisy, clean):
    nc_jax.campaign_nnx(model, x, y, progress=False)
  _equal(nnx.state(noisy, nnx.Param), nnx.state(clean, nnx.Param))
  _equal(nnx.state(noisy, nnx.RngState), rng_state)  # no draw was made


class _Doubled(nn.Dense):
  """A wrapper that transforms its input before flax's own call."""

  def __call__(self, x):
    return super().__call__(2.0 * x)


class _WithDoubled(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _Doubled(10)(nn.relu(nn.Dense(32)(x)))


def test_every_walk_warning_points_at_the_users_line(data):
  x, y = data
  calls = {  # plan-time warnings, eager and traced by the caller's jit
      "eager": lambda x, y: nc_jax.campaign_linen(
          models.SharedDense(), 0, x, y, progress=False),
      "jit": jax.jit(lambda x, y: nc_jax.campaign_linen(
          models.SharedDense(), 0, x, y, num_classes=10, progress=False)),
      "lsuv": lambda x, y: nc_jax.lsuv_linen(  # after the compiled walk
          models.MLP(SIZES[1:]), 0, x, tol=1e-12, max_iters=1,
          progress=False),
  }
  for name, call in calls.items():
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      call(x, y)
    assert caught, name
    assert {w.filename for w in caught} == {__file__}, name


class _NnxDoubled(nnx.Linear):
  def __call__(self, x):
    return super().__call__(2.0 * x)


def test_subclassed_layers_are_scored_on_what_their_kernel_multiplies(data):
  x, y = data
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no false "called 2 times" warning
    got = nc_jax.campaign_linen(_WithDoubled(), 0, x, y, progress=False)
  first = got["params"]["Dense_0"]["kernel"]
  hidden = jax.nn.relu(x @ first)
  expected = nc_jax.campaign_init(
      2.0 * hidden, y, alpha=0.0, activation=lambda z: z,
      base_init=nn.initializers.lecun_normal())(
          jax.random.fold_in(jax.random.split(jax.random.key(0))[1], 1),
          (32, 10))
  np.testing.assert_array_equal(got["params"]["_Doubled_0"]["kernel"],
                                expected)
  model = nnx.Sequential(nnx.Linear(784, 32, rngs=nnx.Rngs(0)), jax.nn.relu,
                         _NnxDoubled(32, 10, rngs=nnx.Rngs(1)))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    nc_jax.campaign_nnx(model, x, y, key=jax.random.split(
        jax.random.key(0))[1], progress=False)
  np.testing.assert_array_equal(model.layers[2].kernel[...], expected)


class _Frames(nn.Module):
  """A conv applied to (examples, frames, height, width, channels)."""

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], 4, 14, 14, 1)
    h = nn.relu(nn.Conv(6, (3, 3), strides=2)(h))
    return nn.Dense(10)(h.reshape(h.shape[0], -1))


def test_lsuv_conv_on_two_batch_axes_draws_orthogonal_filters(data):
  x, _ = data
  kernel = nc_jax.lsuv_linen(_Frames(), 0, x, progress=False)[
      "params"]["Conv_0"]["kernel"].reshape(9, 6)
  gram = np.asarray(kernel.T @ kernel)
  np.testing.assert_allclose(gram, gram[0, 0] * np.eye(6), atol=1e-5)


def test_campaign_conv_on_two_batch_axes_uses_every_frame(data):
  x, y = data
  got = nc_jax.campaign_linen(_Frames(), 0, x, y, progress=False)
  frames = x.reshape(-1, 14, 14, 1)  # each example's 4 frames, its label
  expected = nc_jax.campaign_init(
      frames, jnp.repeat(y, 4), alpha=1.0, strides=2,
      base_init=nn.initializers.lecun_normal())(
          jax.random.fold_in(jax.random.split(jax.random.key(0))[1], 0),
          (3, 3, 1, 6))
  np.testing.assert_array_equal(got["params"]["Conv_0"]["kernel"], expected)


class _ConvOptions(nn.Module):
  """An int kernel_size and None strides and dilation: flax takes them."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, 3, strides=None, kernel_dilation=None)(
        x.reshape(x.shape[0], 784, 1)))
    return nn.Dense(10)(h.reshape(h.shape[0], -1))


def test_conv_options_flax_accepts_work_in_both_walks(data):
  x, y = data
  for walk in (lambda: nc_jax.campaign_linen(_ConvOptions(), 0, x, y,
                                             progress=False),
               lambda: nc_jax.lsuv_linen(_ConvOptions(), 0, x,
                                         progress=False)):
    assert walk()["params"]["Conv_0"]["kernel"].shape == (3, 1, 4)


class _Refused(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], 28, 28, 1)
    h = nn.relu(nn.Conv(4, (3, 3))(h))
    h = nn.relu(nn.Conv(4, (3, 3), feature_group_count=2)(h))
    h = nn.relu(nn.Conv(4, (3, 3), padding="CIRCULAR")(h))
    return nn.Dense(10)(h.reshape(h.shape[0], -1))


def test_refusals_name_every_layer_before_any_work(data, monkeypatch):
  x, y = data
  from nc_jax._src import campaign

  def no_work(*args, **kwargs):
    raise AssertionError("a layer was elected before the refusal")

  monkeypatch.setattr(campaign, "score_and_elect", no_work)
  with pytest.raises(ValueError, match=r"'Conv_1': `feature_group_count` is "
                     r"2.*'Conv_2': `padding` 'CIRCULAR'.*layers="):
    nc_jax.campaign_linen(_Refused(), 0, x, y, progress=False)


class _BatchNormMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))
    return nn.Dense(10)(nn.relu(h))


@pytest.mark.parametrize("call, error, match", [
    (lambda x, y: nc_jax.lsuv_linen(
        _BatchNormMLP(), 0, x, variables={"params": _BatchNormMLP().init(
            jax.random.key(0), x)["params"]}), ValueError,
     r"lacks the collections \['batch_stats'\]"),
    (lambda x, y: nc_jax.lsuv_linen(
        _BatchNormMLP(), 0, x, variables=_BatchNormMLP().init(
            jax.random.key(0), x[:, :5])), ValueError,
     r"`variables\['params'\]\['Dense_0'\]\['kernel'\]` has shape \(5, 16\)"),
    (lambda x, y: nc_jax.lsuv_linen(_BatchNormMLP(), 0, x, variables=[1]),
     TypeError, "variables dict"),
    (lambda x, y: nc_jax.campaign_linen(_BatchNormMLP(), 0, x, y, layers=0),
     TypeError, "`layers` must be None"),
    (lambda x, y: nc_jax.campaign_linen(_BatchNormMLP(), 0, x, y,
                                        model_kwargs="train"),
     TypeError, "`model_kwargs` must be a mapping"),
    (lambda x, y: nc_jax.lsuv_nnx(nnx.Linear(784, 4, rngs=nnx.Rngs(0)), x,
                                  orthogonal="False"),
     TypeError, "`orthogonal` must be True or False"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), 0, x, y,
                                        elect=["random"]),
     ValueError, "`elect` must be one of"),
])
def test_walk_argument_errors(data, call, error, match):
  x, y = data
  with pytest.raises(error, match=match):
    call(x, y)


@pytest.mark.parametrize("walk", [
    lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), 0, x, y),
    lambda x, y: nc_jax.lsuv_linen(models.MLP((8, 10)), 0, x),
    lambda x, y: nc_jax.campaign_nnx(models.NnxMLP(SIZES, rngs=nnx.Rngs(0)),
                                     x, y),
], ids=["campaign_linen", "lsuv_linen", "campaign_nnx"])
def test_a_batch_the_walks_cannot_take_is_refused_before_any_work(data, walk):
  x, y = data
  with pytest.raises(ValueError, match=r"`x` has 2 NaN or infinite entries"):
    walk(x.at[3, 2].set(jnp.nan).at[5, 0].set(-jnp.inf), y)
  for inputs in ({"pixels": x}, (x, x)):  # a tuple is never stacked
    with pytest.raises(TypeError, match="through `model_kwargs`"):
      walk(inputs, y)


class _Overflows(nn.Module):
  """Finite inputs, infinite activations by the third layer."""

  @nn.compact
  def __call__(self, x):
    huge = nn.initializers.constant(1e30)
    h = nn.Dense(16, kernel_init=huge)(nn.Dense(16, kernel_init=huge)(x))
    return nn.Dense(10)(nn.relu(h))


@pytest.mark.parametrize("options", [{}, {"whiten": ["Dense_2"]}],
                         ids=["campaign", "whitened"])
def test_a_layer_whose_input_overflowed_is_refused_by_name(data, options):
  x, y = data
  walk = lambda x, y: nc_jax.campaign_linen(
      _Overflows(), 0, x, y, layers=["Dense_2"], num_classes=10,
      progress=False, **options)
  with pytest.raises(ValueError, match="layer 'Dense_2' receives NaN or inf"):
    walk(x, y)
  # Inside the caller's jit nothing can raise: the kernel is NaN, never
  # plausible.
  kernel = jax.jit(walk)(x, y)["params"]["Dense_2"]["kernel"]
  assert bool(jnp.isnan(kernel).all())
  with pytest.warns(UserWarning, match="'Dense_2': has output variance nan "
                    r"on the batch \(NaN or infinite values"):
    nc_jax.lsuv_linen(_Overflows(), 0, x, layers=["Dense_2"], progress=False)


def test_model_kwargs_with_arrays_are_traced_not_static(data):
  x, y = data

  class Masked(nn.Module):
    @nn.compact
    def __call__(self, x, mask):
      return nn.Dense(10)(nn.relu(nn.Dense(16)(x * mask)))

  mask = jnp.ones((1, 784)).at[:, :100].set(0.0)
  got = nc_jax.campaign_linen(Masked(), 0, x, y, progress=False,
                              model_kwargs={"mask": mask})
  expected = nc_jax.campaign_init(
      x * mask, y, alpha=1.0, base_init=nn.initializers.lecun_normal())(
          jax.random.fold_in(jax.random.split(jax.random.key(0))[1], 0),
          (784, 16))
  # Dense_1 is the first layer called (Dense_0 is constructed first).
  np.testing.assert_array_equal(got["params"]["Dense_1"]["kernel"], expected)


def test_default_chunk_size_checks_the_platform():
  assert nc_jax.default_chunk_size(60_000, 500, platform="CPU") == 1017
  for bad in ("", "cpus", "metal"):
    with pytest.raises(ValueError, match="`platform` must be one of"):
      nc_jax.default_chunk_size(60_000, 500, platform=bad)
