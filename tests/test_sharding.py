"""A batch sharded along m over a device mesh: same kernel, no gather of the batch.

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
    from nc_jax._src import campaign
    from benchmarks import data

    assert len(jax.devices()) == 4, jax.devices()
    x, y = data.mnist_subset_arrays()
    x, y = x[:2000], y[:2000]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    ys = jax.device_put(jnp.asarray(y), NamedSharding(mesh, P("data")))
    key = jax.random.key(0)
    one = nc_jax.campaign_init(x, y)(key, (784, 64))
    sharded = nc_jax.campaign_init(xs, ys)(key, (784, 64))
    np.testing.assert_array_equal(one, sharded)
    hlo = campaign._campaign_kernel.lower(
        key, xs, ys, jnp.asarray(0.5), jnp.asarray(0.0),
        base_init=jax.nn.initializers.he_normal(), shape=(784, 64),
        dtype=jnp.float32, num_candidates=320, activation=jax.nn.relu,
        class_balanced=True, num_classes=10, chunk_size=None).compile().as_text()
    collectives = re.findall(r"(all-gather|all-reduce|all-to-all|reduce-scatter)"
                             r"(?:-start)?\\(", hlo)
    assert "all-gather" not in collectives, collectives
    assert collectives.count("all-reduce") >= 1, collectives
    print("OK", collectives)
""")


def test_sharded_batch_gives_the_same_kernel_without_gathering_it():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("OK")
