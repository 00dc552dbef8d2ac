"""The ablation study (benchmarks/study.py, benchmarks/ablation.py):
pairing, selection, output."""

import csv

import numpy as np
import pytest

from benchmarks import ablation
from benchmarks import ablation_study as study
from benchmarks import training

SEEDS = (0, 1, 2)


def fake_run(name, test=5.0, val=5.0, arch="mlp2", epochs=12, seed=0):
  """A run with noisy flat curves around the given test and validation error."""
  rng = np.random.default_rng(seed)
  noise = lambda: rng.normal(0, 0.1, (len(SEEDS), epochs))
  return training.Run(arch, name, SEEDS, np.ones(len(SEEDS)), {
      "train_loss": 0.5 + noise() ** 2, "test_error": test + noise(),
      "val_error": val + noise()})


def test_every_campaign_is_paired_with_the_control_drawing_its_candidates():
  names = [s.name for s in study.ablation_inits()]
  assert len(names) == len(set(names)) == 15
  assert names[0] == "he"
  control, default, draw = study.ablation_pairs().values()
  cpn = lambda name: (name.split("candidates_per_neuron=")[1]
                      if "candidates_per_neuron=" in name else "5")
  assert len(control) == len(study.CAMPAIGNS)
  for ours, theirs in control:
    assert ours.startswith("he+campaign") and theirs.startswith("he+random")
    assert cpn(ours) == cpn(theirs) and theirs in names
  assert ("he+campaign candidates_per_neuron=20",
          "he+random candidates_per_neuron=20") in control
  assert ("he+campaign y=None", "he+random") in control
  assert ("he+campaign rows=500", "he+random") in control
  assert default == [(s.name, "he+campaign") for s in study.CAMPAIGNS[1:]]
  assert sorted(draw) == sorted(
      (n, "he") for n in names if n.startswith("he+random"))


def test_the_random_control_keeps_only_the_candidates_per_neuron():
  spec = training.Init("xavier+campaign",
                       {"alpha": 0.5, "candidates_per_neuron": 10},
                       score_rows=500, labels=False)
  assert study.random_control(spec) == training.Init(
      "xavier+random", {"candidates_per_neuron": 10})


def test_settings_are_chosen_on_validation_not_test():
  runs = [fake_run(s.name, seed=i)
          for i, s in enumerate(study.ablation_inits())]
  by_name = {r.init: r for r in runs}
  # alpha=0.0 is best on validation, alpha=1.0 on test; he is better still
  # but is not a campaign setting.
  by_name["he+campaign alpha=0.0"].curves["val_error"] -= 1.0
  by_name["he+campaign alpha=1.0"].curves["test_error"] -= 2.0
  by_name["he"].curves["val_error"] -= 3.0
  for metric in ("epoch10_val_error", "min_val_error"):
    assert study.choose(runs, metric)["mlp2"].init == "he+campaign alpha=0.0"
  with pytest.raises(ValueError, match="validation metric"):
    study.choose(runs, "min_test_error")
  table, rows = study.selection_table(runs, epochs=12)
  assert [r["test_metric"] for r in rows] == ["epoch10_test_error",
                                              "test_error_at_best_val"]
  assert table.count("| mlp2 | ") == 2 and "alpha=1.0" not in table
  # A run shorter than 10 epochs is judged at its last early epoch.
  assert study.selection_rules(5)["early"] == ("epoch3_val_error",
                                               "epoch3_test_error")


def test_write_results_has_every_comparison(tmp_path):
  runs = [fake_run(s.name, seed=i)
          for i, s in enumerate(study.ablation_inits())]
  text = study.write_results(runs, {"epochs": 12}, tmp_path)
  assert (tmp_path / "ablation.md").read_text() == text
  for pairs in study.ablation_pairs().values():
    for ours, theirs in pairs:
      assert text.count(f"| mlp2 | {ours} - {theirs} |") == 2  # early, final
  assert "## Settings chosen on the validation split" in text
  assert (tmp_path / "ablation.png").stat().st_size > 50_000
  assert (tmp_path / "ablation.json").stat().st_size > 10_000


def test_main_smoke_writes_tables_csv_and_plot(tmp_path):
  text = ablation.main(["--quick", "--epochs", "1", "--seeds", "2", "--arch",
                        "mlp2", "--data", "digits", "--family", "alpha",
                        "--out", str(tmp_path)])
  assert (tmp_path / "ablation.md").read_text() == text
  for pair in ("he+campaign - he+random", "he+campaign alpha=0.5 - he+random",
               "he+campaign alpha=0.5 - he+campaign", "he+random - he"):
    assert f"| mlp2 | {pair} |" in text
  assert "250 validation / 360 test" in text
  with open(tmp_path / "ablation_epochs.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6 * 2  # runs x seeds, one epoch
  assert set(rows[0]) == {"arch", "init", "seed", "epoch", "train_loss",
                          "test_error", "val_error"}
  assert (tmp_path / "ablation.png").stat().st_size > 10_000
