"""A batch sharded along m over a device mesh: same kernel, one small all-reduce.

Runs in a subprocess with 4 CPU devices (`--xla_force_host_platform_device_count`),
since the device count is fixed when JAX starts.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import nc_jax
    from nc_jax._src import campaign, placement, scores
    from nc_jax._src import conv as conv_lib
    from benchmarks import data

    assert len(jax.devices()) == 4, jax.devices()
    x, y = data.mnist_subset_arrays()
    x, y = x[:2000], y[:2000]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    ys = jax.device_put(jnp.asarray(y), NamedSharding(mesh, P("data")))
    key = jax.random.key(0)
    _, _, first_row, sharding = placement.placement(xs, ys)
    assert sharding == (mesh, "data"), sharding
    for chunk_size in (None, 128):  # local chunks of 128 of each device's 500
      one = nc_jax.campaign_init(x, y, chunk_size=chunk_size)(key, (784, 64))
      for labels in (y, ys):
        sharded = nc_jax.campaign_init(xs, labels, chunk_size=chunk_size)
        np.testing.assert_array_equal(one, sharded(key, (784, 64)))
      hlo = campaign._campaign_kernel.lower(
          key, xs, first_row, ys, jnp.asarray(0.5),
          jnp.asarray(0.0), base_init=jax.nn.initializers.he_normal(),
          shape=(784, 64), dtype=jnp.float32, num_candidates=320,
          options=scores.ScoringOptions(
              activation=jax.nn.relu, class_balanced=True, num_classes=10,
              chunk_size=chunk_size, row_sharding=sharding),
          ).compile().as_text()
      collectives = re.findall(
          r"= (\\S+) (all-gather|all-reduce|all-to-all|reduce-scatter|"
          r"collective-permute|collective-broadcast)(?:-start)?\\(", hlo)
      # One all-reduce of the packed class sums: counts (10) and the sums
      # and sums of squares (10 x 320 each). The scaled second pass, a
      # branch run only when those sums show responses beyond float32's
      # safe range, has two of its own: the max of the candidates' scale
      # exponents (320), then its packed sums. Nothing else crosses devices.
      assert sorted(collectives) == [("f32[6410]{0}", "all-reduce")] * 2 + [
          ("s32[320]{0}", "all-reduce")], collectives

    # A whole model: every layer's input stays sharded, so every layer is
    # scored where its rows lie, and the variables equal one device's.
    import flax.linen as nn
    model = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(32), nn.relu,
                           nn.Dense(10)])
    want = nc_jax.campaign_linen(model, key, x, y, progress=False)
    seen, elect = [], campaign.score_and_elect
    campaign.score_and_elect = (
        lambda checked, *a, **k: seen.append(checked.row_sharding)
        or elect(checked, *a, **k))
    got = nc_jax.campaign_linen(model, key, xs, y, progress=False)
    campaign.score_and_elect = elect
    assert seen == [(mesh, "data")] * 3, seen
    jax.tree.map(np.testing.assert_array_equal, want, got)

    # A convolution's kernel on images sharded along their rows.
    images = jnp.asarray(x).reshape(-1, 28, 28, 1)
    conv = nc_jax.campaign_init(images, y, strides=2, chunk_size=96)
    np.testing.assert_array_equal(
        conv(key, (3, 3, 1, 8)),
        nc_jax.campaign_init(jax.device_put(images, NamedSharding(mesh, P("data"))),
                             ys, strides=2, chunk_size=96)(key, (3, 3, 1, 8)))

    # Meshes as docs/scaling.md builds them: `jax.make_mesh` gives Explicit
    # axes, on which slicing or reducing a sharded axis must name its output
    # sharding. 1-D and 2-D meshes, rows over one axis or two; eager, under
    # jit, and whole models.
    for shape, names, rows in [((4,), ("data",), "data"),
                               ((2, 2), ("data", "model"), "data"),
                               ((2, 2), ("a", "b"), ("a", "b"))]:
      mesh = jax.make_mesh(shape, names)
      assert set(mesh.axis_types) == {jax.sharding.AxisType.Explicit}
      xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P(rows)))
      ys = jax.device_put(jnp.asarray(y), NamedSharding(mesh, P(rows)))
      one = nc_jax.campaign_init(x, y)(key, (784, 64))
      np.testing.assert_array_equal(one, nc_jax.campaign_init(xs, ys)(key, (784, 64)))
      jitted = jax.jit(lambda x, y: nc_jax.campaign_init(x, y, num_classes=10)(
          key, (784, 64)))
      np.testing.assert_array_equal(one, jitted(xs, ys))
      got = nc_jax.campaign_linen(model, key, xs, ys, progress=False)
      jax.tree.map(np.testing.assert_array_equal, want, got)
      # The walk inside the caller's jit: its trace runs on Auto axes.
      walk = jax.jit(lambda x, y: nc_jax.campaign_linen(
          model, key, x, y, num_classes=10, progress=False))
      jax.tree.map(np.testing.assert_array_equal, want, walk(xs, ys))

    # Every walk inside the caller's jit (nnx: nnx.jit) on Explicit axes
    # equals the eager walk on the same sharded batch bit for bit, and the
    # eager walk on one device: the elections bit for bit (the random pick,
    # whose result does not depend on the batch, included), LSUV to
    # rounding (its variance is summed where the rows lie, in another order).
    def same_as_one_device(name, one, got):
      if name == "lsuv":
        np.testing.assert_allclose(got, one, rtol=1e-6, atol=1e-7)
      else:
        np.testing.assert_array_equal(got, one)

    from flax import nnx
    mesh = jax.make_mesh((4,), ("data",))
    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    ys = jax.device_put(jnp.asarray(y), NamedSharding(mesh, P("data")))
    linen_walks = {
        "random": lambda x, y: nc_jax.campaign_linen(
            model, key, x, y, num_classes=10, elect="random", progress=False),
        "lsuv": lambda x, y: nc_jax.lsuv_linen(model, key, x, progress=False),
        "report": lambda x, y: nc_jax.campaign_linen(
            model, key, x, y, num_classes=10, report=True, progress=False)[0],
    }
    for name, walk in linen_walks.items():
      jitted = jax.jit(walk)(xs, ys)
      jax.tree.map(np.testing.assert_array_equal, walk(xs, ys), jitted)
      jax.tree.map(lambda a, b: same_as_one_device(name, a, b), walk(x, y),
                   jitted)
    net = lambda: nnx.Sequential(nnx.Linear(784, 64, rngs=nnx.Rngs(0)),
                                 jax.nn.relu, nnx.Linear(64, 10, rngs=nnx.Rngs(1)))
    nnx_walks = {
        "campaign": lambda m, x, y: nc_jax.campaign_nnx(
            m, x, y, key=key, num_classes=10, progress=False),
        "lsuv": lambda m, x, y: nc_jax.lsuv_nnx(m, x, key=key, progress=False),
    }
    for name, walk in nnx_walks.items():
      one, eager, jitted = net(), net(), net()
      walk(one, x, y)
      walk(eager, xs, ys)
      nnx.jit(walk)(jitted, xs, ys)
      jax.tree.map(np.testing.assert_array_equal, nnx.state(eager, nnx.Param),
                   nnx.state(jitted, nnx.Param))
      jax.tree.map(lambda a, b: same_as_one_device(name, a, b),
                   nnx.state(one, nnx.Param), nnx.state(jitted, nnx.Param))

    # Under `jax.set_mesh` (Explicit axes, the mesh context jax recommends):
    # every entry point eagerly and inside jit; results come back on the
    # context's Explicit axes, and a sharded nnx model stays sharded.
    calls = {
        "campaign_init": lambda x, y: nc_jax.campaign_init(
            x, y, num_classes=10)(key, (784, 64)),
        "neuron_scores": lambda x, y: nc_jax.neuron_scores(
            x[:, :64], y, num_classes=10),
        "campaign_select": lambda x, y: nc_jax.campaign_select(
            x, y, jax.random.normal(key, (784, 96)), 32, num_classes=10),
        "whitening_init": lambda x, y: nc_jax.whitening_init(
            x[:, :32])(key, (32, 16)),
        "campaign_linen": lambda x, y: nc_jax.campaign_linen(
            model, key, x, y, num_classes=10, progress=False),
        "lsuv_linen": lambda x, y: nc_jax.lsuv_linen(model, key, x,
                                                      progress=False),
    }
    wants = {name: call(jnp.asarray(x), jnp.asarray(y))
             for name, call in calls.items()}
    with jax.set_mesh(mesh):
      for name, call in calls.items():
        for how, run in (("eager", call), ("jit", jax.jit(call))):
          got = run(xs, ys)
          for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(wants[name])):
            assert jax.typeof(g).sharding.mesh.axis_types == (
                jax.sharding.AxisType.Explicit,), (name, how)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name} {how}")
      got = nn.Dense(64, kernel_init=nc_jax.campaign_init(xs, ys)).init(
          key, x[:2])["params"]["kernel"]
      sharded = nnx.Linear(784, 64, rngs=nnx.Rngs(0), kernel_metadata={
          "sharding_names": (None, "data")})
      assert sharded.kernel[...].sharding.spec == P(None, "data")
      nc_jax.campaign_nnx(sharded, xs, ys, key=key, progress=False)
      assert sharded.kernel[...].sharding.spec == P(None, "data")
      traced = nnx.Linear(784, 64, rngs=nnx.Rngs(0), kernel_metadata={
          "sharding_names": (None, "data")})
      nnx.jit(lambda m, x, y: nc_jax.campaign_nnx(
          m, x, y, key=key, num_classes=10, progress=False))(traced, xs, ys)
      assert traced.kernel[...].sharding.spec == P(None, "data")
      np.testing.assert_array_equal(traced.kernel[...], sharded.kernel[...])
      plain = nnx.Linear(784, 64, rngs=nnx.Rngs(0))
    nc_jax.campaign_nnx(plain, x, y, key=key, progress=False)
    np.testing.assert_array_equal(sharded.kernel[...], plain.kernel[...])
    np.testing.assert_array_equal(got, nn.Dense(
        64, kernel_init=nc_jax.campaign_init(x, y)).init(
            key, x[:2])["params"]["kernel"])

    # Whitening: the patch covariance summed where the rows lie (one
    # all-reduce of the sums, nothing gathered), the same kernel as one
    # device's to rounding; and a whole model's whitened layer.
    from nc_jax._src import whitening
    mesh = Mesh(np.array(jax.devices()), ("data",))
    images_s = jax.device_put(images, NamedSharding(mesh, P("data")))
    for chunk_size in (None, 96):
      one = nc_jax.whitening_init(images, chunk_size=chunk_size, strides=2)(
          key, (3, 3, 1, 18))
      got = nc_jax.whitening_init(images_s, chunk_size=chunk_size, strides=2)(
          key, (3, 3, 1, 18))
      np.testing.assert_allclose(got, one, rtol=1e-4, atol=1e-4)
      _, _, first_row, sharding = placement.placement(images_s, None)
      hlo = whitening._whitening_kernel.lower(
          key, images_s, first_row, shape=(3, 3, 1, 18), dtype=jnp.float32,
          spec=conv_lib.conv_spec(images.shape, (3, 3, 1, 18), strides=2,
                                  padding="SAME", kernel_dilation=1,
                                  feature_group_count=1),
          options=whitening.WhiteningOptions(), chunk_size=chunk_size,
          row_sharding=sharding).compile().as_text()
      collectives = re.findall(
          r"(all-gather|all-reduce|all-to-all|reduce-scatter|"
          r"collective-permute|collective-broadcast)(?:-start)?\\(", hlo)
      assert collectives and set(collectives) == {"all-reduce"}, collectives
    cnn = nn.Sequential([nn.Conv(18, (3, 3)), nn.relu, lambda h: h.reshape(
        h.shape[0], -1), nn.Dense(10)])
    want = nc_jax.campaign_linen(cnn, key, images, y, whiten=["layers_0"],
                                 progress=False)
    got = nc_jax.campaign_linen(cnn, key, images_s, y, whiten=["layers_0"],
                                progress=False)
    np.testing.assert_allclose(got["params"]["layers_0"]["kernel"],
                               want["params"]["layers_0"]["kernel"],
                               rtol=1e-4, atol=1e-4)
    print("OK")
""")


def test_sharded_batch_gives_the_same_kernel_and_is_never_gathered():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("OK")
