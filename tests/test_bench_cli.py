"""The entry scripts' command lines (benchmarks/cli.py): a mistake gets
argparse's usage and one error line naming the argument, exit status 2,
before any work; never a traceback."""

import pathlib
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

from benchmarks import ablation
from benchmarks import data as data_lib
from benchmarks import init_speed
from benchmarks import memory as memory_lib
from benchmarks import mnist_cnn
from benchmarks import mnist_mlp
from benchmarks import model_speed
from benchmarks import speed
from benchmarks import training
from benchmarks import whole_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = {"mnist_mlp": mnist_mlp, "ablation": ablation,
           "init_speed": init_speed, "mnist_cnn": mnist_cnn,
           "model_speed": model_speed}
# Stand-ins for paths a test creates under tmp_path.
EMPTY, FILE, UNDER_FILE = "<empty dir>", "<file>", "<file>/out"


def _paths(argv, tmp_path):
  (tmp_path / "empty").mkdir(exist_ok=True)
  (tmp_path / "file").write_text("not a directory")
  names = {EMPTY: tmp_path / "empty", FILE: tmp_path / "file",
           UNDER_FILE: tmp_path / "file" / "out"}
  return [str(names.get(a, a)) for a in argv]


MNIST_LIKE = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "abc"], "--epochs"),
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "1.5"], "--seeds"),
    (["--arch", "bogus"], "--arch"),
    (["--arch", "mlp2", "mlp2"], "--arch"),
    (["--data", "bogus"], "--data"),
    (["--data", "idx"], "--data"),
    (["--data", "idx", "/nonexistent"], "--data"),
    (["--data", "idx", EMPTY], "--data"),
    (["--data", "idx", FILE], "--data"),
    (["--data", "idx", "a", "b"], "--data"),
    (["--data", "tfds", "/nonexistent"], "--data"),
    (["--data", "tfds", EMPTY], "--data"),
    (["--data", "auto", "/nonexistent"], "--data"),
    (["--data", "subset", EMPTY], "--data"),
    (["--data", "digits", "--out", FILE], "--out"),
    (["--data", "digits", "--out", UNDER_FILE], "--out"),
    (["--init-rows", "1"], "--init-rows"),
    (["--init-rows", "abc"], "--init-rows"),
    (["--quick", "--data", "bogus"], "--data"),
    (["--quick", "--epochs", "0"], "--epochs"),
    (["--quick", "--data", "digits", "--out", UNDER_FILE], "--out"),
]
BAD = [
    *(("mnist_mlp", argv, flag) for argv, flag in MNIST_LIKE),
    ("mnist_mlp", ["--init", "bogus"], "--init"),
    ("mnist_mlp", ["--init", "he", "he"], "--init"),
    *(("ablation", argv, flag) for argv, flag in MNIST_LIKE),
    ("ablation", ["--family", "bogus"], "--family"),
    ("ablation", ["--family", "alpha", "alpha"], "--family"),
    *(("mnist_cnn", argv, flag) for argv, flag in MNIST_LIKE),
    ("mnist_cnn", ["--arch", "mlp2"], "--arch"),
    ("mnist_cnn", ["--init", "xavier"], "--init"),
    ("mnist_cnn", ["--init", "he", "he"], "--init"),
    ("init_speed", ["--rows", "0"], "--rows"),
    ("init_speed", ["--rows", "1"], "--rows"),
    ("init_speed", ["--rows", "abc"], "--rows"),
    ("init_speed", ["--shapes", "0x5"], "--shapes"),
    ("init_speed", ["--shapes", "64x0"], "--shapes"),
    ("init_speed", ["--shapes", "abc"], "--shapes"),
    ("init_speed", ["--shapes", "784"], "--shapes"),
    ("init_speed", ["--shapes", "1x2x3"], "--shapes"),
    ("init_speed", ["--shapes", "64x8", "64x8"], "--shapes"),
    ("init_speed", ["--max-flops", "0"], "--max-flops"),
    ("init_speed", ["--max-flops", "-1"], "--max-flops"),
    ("init_speed", ["--max-flops", "nan"], "--max-flops"),
    ("init_speed", ["--max-flops", "abc"], "--max-flops"),
    ("init_speed", ["--max-flops", "1"], "--max-flops"),
    ("init_speed", ["--fan-outs", "0"], "--fan-outs"),
    ("init_speed", ["--fan-outs", "-1"], "--fan-outs"),
    ("init_speed", ["--groups", "0"], "--groups"),
    ("init_speed", ["--memory-rows", "1"], "--memory-rows"),
    ("init_speed", ["--repeats", "0"], "--repeats"),
    ("init_speed", ["--convs", "conv3"], "--convs"),
    ("init_speed", ["--convs", "conv1", "conv1"], "--convs"),
    ("init_speed", ["--conv-rows", "1"], "--conv-rows"),
    ("init_speed", ["--chunk-sizes", "0"], "--chunk-sizes"),
    ("init_speed", ["--chunk-sizes", "64", "64"], "--chunk-sizes"),
    ("init_speed", ["--chunk-rows", "1"], "--chunk-rows"),
    ("init_speed", ["--repeats", "-1"], "--repeats"),
    ("init_speed", ["--out", FILE], "--out"),
    ("init_speed", ["--out", UNDER_FILE], "--out"),
    ("model_speed", ["--models", "vgg"], "--models"),
    ("model_speed", ["--models", "lenet", "lenet"], "--models"),
    ("model_speed", ["--rows", "1"], "--rows"),
    ("model_speed", ["--repeats", "0"], "--repeats"),
    ("model_speed", ["--out", UNDER_FILE], "--out"),
]


@pytest.fixture
def no_work(monkeypatch):
  """Fails any test that gets as far as loading data, training or timing."""

  def fail(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")

  for module, name in ((data_lib, "load"), (training, "run_comparison"),
                       (speed, "run_benchmark"), (speed, "run_elections"),
                       (memory_lib, "memory_scaling"), (speed, "run_chunk_sizes"),
                       (whole_model, "bench_model")):
    monkeypatch.setattr(module, name, fail)


def assert_usage_error(run, flag, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run()
  captured = capsys.readouterr()
  assert exit_info.value.code == 2
  assert "Traceback" not in captured.out + captured.err
  assert captured.err.startswith("usage: ")
  error_lines = [line for line in captured.err.splitlines()
                 if ": error: " in line]
  assert len(error_lines) == 1, captured.err
  assert f": error: argument {flag}: " in error_lines[0]
  assert captured.err.rstrip("\n").endswith(error_lines[0])
  return error_lines[0]


@pytest.mark.parametrize("script,argv,flag", BAD,
                         ids=[f"{s} {' '.join(a)}" for s, a, _ in BAD])
def test_a_mistake_is_one_usage_error_before_any_work(
    script, argv, flag, tmp_path, capsys, no_work):
  argv = _paths(argv, tmp_path)
  if "--out" not in argv:
    argv += ["--out", str(tmp_path / "out")]
  assert_usage_error(lambda: SCRIPTS[script].main(argv), flag, capsys)


@pytest.mark.skipif(not pathlib.Path("/proc/self").is_dir(),
                    reason="needs /proc")
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_out_under_proc_even_as_root(script, capsys, no_work):
  argv = [] if script in ("init_speed", "model_speed") else ["--data",
                                                              "digits"]
  assert_usage_error(
      lambda: SCRIPTS[script].main(argv + ["--out", "/proc/nc_jax_bench"]),
      "--out", capsys)


def test_results_that_cannot_be_replaced(tmp_path, capsys, no_work):
  (tmp_path / "mnist_mlp_epochs.csv").mkdir()
  line = assert_usage_error(lambda: mnist_mlp.main(
      ["--data", "digits", "--out", str(tmp_path)]), "--out", capsys)
  assert "mnist_mlp_epochs.csv" in line


def test_missing_tfds_is_told_in_seconds(tmp_path, capsys, no_work):
  start = time.perf_counter()
  line = assert_usage_error(lambda: mnist_mlp.main(
      ["--data", "tfds", str(tmp_path), "--out", str(tmp_path / "out")]),
      "--data", capsys)
  assert time.perf_counter() - start < 5.0
  assert "not prepared" in line


def test_bad_idx_files_are_told_before_any_work(tmp_path, capsys, no_work):
  for stem in data_lib.IDX_STEMS:
    (tmp_path / stem).write_bytes(b"not an IDX file")
  line = assert_usage_error(lambda: ablation.main(
      ["--data", "idx", str(tmp_path), "--out", str(tmp_path / "out")]),
      "--data", capsys)
  assert "train-images-idx3-ubyte" in line


def test_valid_arguments_pass_and_leave_no_probe_file(tmp_path):
  out = tmp_path / "new" / "results"
  args = mnist_mlp.parse_args(["--data", "subset", "--out", str(out)])
  assert args.data == ["subset"] and args.out == out
  assert out.is_dir() and not list(out.iterdir())
  args = init_speed.parse_args(["--rows", "2", "--shapes", "1x1",
                                "--fan-outs", "--memory-rows", "--max-flops",
                                "inf", "--out", str(out)])
  assert (args.rows, args.shapes, args.fan_outs) == ([2], [(1, 1)], [])
  assert not list(out.iterdir())
  with tfds.testing.mock_data(num_examples=4):
    assert ablation.parse_args(
        ["--data", "tfds", "--out", str(out)]).data == ["tfds"]


@pytest.mark.parametrize("script,argv", [
    ("mnist_mlp.py", ["--data", "tfds", "<empty dir>"]),
    ("ablation.py", ["--data", "idx"]),
    ("mnist_cnn.py", ["--seeds", "0"]),
    ("init_speed.py", ["--rows", "50", "--shapes", "64x8", "--fan-outs",
                       "--memory-rows", "--repeats", "1", "--out",
                       "<file>/out"]),
])
def test_as_a_script(script, argv, tmp_path):
  result = subprocess.run(
      [sys.executable, f"benchmarks/{script}", *_paths(argv, tmp_path)],
      cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr and not result.stdout
  assert result.stderr.splitlines()[-1].startswith(f"{script}: error: ")


def test_data_is_shown_as_one_source_and_one_directory(capsys):
  with pytest.raises(SystemExit):
    mnist_mlp.parse_args(["--help"])
  out = capsys.readouterr().out
  assert "--data SOURCE [DIR]" in out and "SOURCE [DIR] ..." not in out
