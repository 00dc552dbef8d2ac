"""Two processes, one global batch: the campaign as on many hosts.

Each process holds half of the rows of one batch, as a host of a pod or a
cluster would. They meet through `jax.distributed.initialize` (a coordinator
on 127.0.0.1, gloo collectives on CPU), build the global batch with
`jax.make_array_from_process_local_data`, and call the campaign on it, as
docs/scaling.md tells users to. The kernels must equal exactly those of one
process holding every row (whitening's: to rounding, its covariance summed
in another order).
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np

import nc_jax

ROWS = 512
SHAPE = (64, 20)

WORKER = textwrap.dedent("""
    import sys
    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=2, process_id=process_id,
                               initialization_timeout=60)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import nc_jax
    from tests.test_multiprocess import batch, model

    assert jax.process_count() == 2 and jax.device_count() == 2
    x, y = batch()
    half = len(y) // 2
    rows = slice(process_id * half, (process_id + 1) * half)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    gx = jax.make_array_from_process_local_data(sharding, x[rows])
    gy = jax.make_array_from_process_local_data(sharding, y[rows])
    kernel = nc_jax.campaign_init(gx, gy)(jax.random.key(0), SHAPE)
    white = nc_jax.whitening_init(gx)(jax.random.key(0), SHAPE)
    variables = nc_jax.campaign_linen(model(), jax.random.key(1), gx, gy,
                                      progress=False)
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    np.savez(f"{out}/{process_id}.npz", kernel=np.asarray(kernel),
             white=np.asarray(white),
             **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
""").replace("SHAPE", repr(SHAPE))


def batch():
  """`ROWS` real 8x8 digits (scikit-learn's), pixels in [0, 1]."""
  from sklearn.datasets import load_digits
  data = load_digits()
  rows = np.random.default_rng(0).permutation(len(data.target))[:ROWS]
  return ((data.data[rows] / 16.0).astype(np.float32),
          data.target[rows].astype(np.int32))


def model():
  return nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_single_process_kernels(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(root),
                                        os.environ.get("PYTHONPATH", "")])}
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  port = str(_free_port())
  workers = [subprocess.Popen(
      [sys.executable, "-c", WORKER, str(i), port, str(tmp_path)], cwd=root,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  try:
    outputs = [w.communicate(timeout=120)[0] for w in workers]
  finally:  # never leave a process behind, also on a timeout or failure
    for w in workers:
      if w.poll() is None:
        w.kill()
        w.wait()
  for w, output in zip(workers, outputs):
    assert w.returncode == 0, output[-3000:]

  x, y = batch()
  kernel = nc_jax.campaign_init(x, y)(jax.random.key(0), SHAPE)
  white = nc_jax.whitening_init(x)(jax.random.key(0), SHAPE)
  variables = nc_jax.campaign_linen(model(), jax.random.key(1), x, y,
                                    progress=False)
  want = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
  for i in range(2):
    got = dict(np.load(tmp_path / f"{i}.npz"))
    np.testing.assert_array_equal(got.pop("kernel"), kernel)
    # Whitening's covariance, summed across the processes: to rounding.
    np.testing.assert_allclose(got.pop("white"), white, rtol=1e-4, atol=1e-4)
    assert got.keys() == want.keys()
    for name, value in want.items():
      np.testing.assert_array_equal(got[name], value, err_msg=name)
