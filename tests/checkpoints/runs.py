"""The LiT resume check the pretrained-weight tests share."""

from mmalign import experiment as experiment_lib
from mmalign.train import trainer
from tests.trees import assert_trees_bitwise_equal


def train_resumed_bitwise(config, tmp_path, capsys) -> tuple[dict, str]:
  """(final state, first run's stdout) of an uninterrupted run, after asserting that a run
  stopped after step 3 and resumed ends bitwise equal and does not reload `init`."""
  whole = trainer.train(experiment_lib.for_training(config, str(tmp_path / "whole")))
  printed = capsys.readouterr().out
  split = str(tmp_path / "split")
  trainer.train(experiment_lib.for_training(config, split), stop_after=3)
  resumed = trainer.train(experiment_lib.for_training(config, split))
  assert "init from" not in capsys.readouterr().out.split("resumed from")[1]
  assert_trees_bitwise_equal(whole, resumed)
  return whole, printed
