"""The training objective: alignment loss alone, or plus weighted image–text matching."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import expit

from mmalign.errors import UsageError
from mmalign.losses.contrastive import symmetric_infonce
from mmalign.losses.objective import build_objective


def _loss_config(matching_weight=0.0):
  return ml_collections.ConfigDict({"name": "infonce", "kwargs": {},
                                    "matching_weight": matching_weight})


def _outputs(rng, with_matching):
  text = rng.normal(size=(4, 3)).astype(np.float32)
  image = rng.normal(size=(4, 3)).astype(np.float32)
  outputs = {"text_emb": jnp.asarray(text), "image_emb": jnp.asarray(image),
             "scale": jnp.float32(2.0)}
  if with_matching:
    outputs["match_logits"] = jnp.asarray(rng.normal(size=8).astype(np.float32))
    outputs["match_labels"] = jnp.asarray([1.0] * 4 + [0.0] * 4)
  return outputs


def test_alignment_only_equals_the_registered_loss():
  outputs = _outputs(np.random.default_rng(0), with_matching=False)
  loss, metrics = build_objective(_loss_config(), model_fuses=False)(outputs, {})
  expected = symmetric_infonce(outputs["text_emb"], outputs["image_emb"], outputs["scale"])
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert metrics == {}  # One part only: the total says it all.


def test_matching_adds_weighted_binary_cross_entropy():
  outputs = _outputs(np.random.default_rng(1), with_matching=True)
  loss, metrics = build_objective(_loss_config(0.5), model_fuses=True)(outputs, {})
  logits = np.asarray(outputs["match_logits"], np.float64)
  labels = np.asarray(outputs["match_labels"], np.float64)
  p = expit(logits)
  bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  np.testing.assert_allclose(metrics["matching_loss"], bce, rtol=1e-5)
  np.testing.assert_allclose(loss, metrics["alignment_loss"] + 0.5 * bce, rtol=1e-5)
  np.testing.assert_allclose(metrics["matching_accuracy"], np.mean((logits > 0) == labels))


@pytest.mark.parametrize("weight, fuses", [(1.0, False), (0.0, True)])
def test_fusion_and_matching_weight_must_agree(weight, fuses):
  with pytest.raises(UsageError, match="loss.matching_weight"):
    build_objective(_loss_config(weight), model_fuses=fuses)


def _with_kernel(config, impl):
  config.kernel = ml_collections.ConfigDict(
      {"impl": impl, "reference": {}, "xla_chunked": {"block_size": 3}, "pallas": {}})
  return config


@pytest.mark.parametrize("impl", ["auto", "reference", "xla_chunked"])
def test_every_kernel_impl_gives_the_same_loss(impl):
  outputs = _outputs(np.random.default_rng(2), with_matching=False)
  reference, _ = build_objective(_loss_config(), model_fuses=False)(outputs, {})
  loss, _ = build_objective(_with_kernel(_loss_config(), impl), model_fuses=False)(outputs, {})
  np.testing.assert_allclose(loss, reference, rtol=1e-5)


def test_kernel_settings_are_resolved_once_and_reach_only_losses_that_take_them():
  from mmalign.losses import objective as objective_lib  # pylint: disable=import-outside-toplevel
  from mmalign.losses.contrastive import LOSSES  # pylint: disable=import-outside-toplevel
  config = _with_kernel(_loss_config(), "auto")
  resolved = jax.default_backend() == "cpu" and "xla_chunked"
  assert objective_lib._kernel_kwargs(config, LOSSES.get("infonce")) == {  # pylint: disable=protected-access
      "impl": resolved, "block_kwargs": {"block_size": 3}}
  assert objective_lib._kernel_kwargs(config, LOSSES.get("correspondence")) == {  # pylint: disable=protected-access
      "impl": resolved}
  assert objective_lib._kernel_kwargs(config, LOSSES.get("regression")) == {}  # pylint: disable=protected-access


@pytest.mark.parametrize("overrides, named", [
    ({"loss.kernel.impl": "cuda_magic"}, "loss.kernel.impl='cuda_magic'"),
    ({"loss.kernel.impl": "reference", "loss.distributed": "ring"}, "take no loss.kernel"),
    ({"loss.kernel.impl": "reference", "loss.name": "regression"}, "has no kernel"),
])
def test_kernel_settings_a_loss_cannot_take_are_refused_by_name(overrides, named):
  from experiments.configs import tiny  # pylint: disable=import-outside-toplevel
  from mmalign import settings  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  for key, value in overrides.items():
    section, *rest = key.split(".")
    node = config[section]
    for part in rest[:-1]:
      node = node[part]
    with node.ignore_type():
      node[rest[-1]] = value
  with pytest.raises(UsageError, match=named):
    settings.check(config)


def test_sigmoid_loss_uses_the_model_bias():
  outputs = _outputs(np.random.default_rng(3), with_matching=False)
  outputs["bias"] = jnp.float32(-2.0)
  config = _loss_config()
  config.name = "sigmoid"
  loss, _ = build_objective(config, model_fuses=False)(outputs, {})
  t, i = np.asarray(outputs["text_emb"], np.float64), np.asarray(outputs["image_emb"], np.float64)
  logits = 2.0 * t @ i.T - 2.0
  z = 2 * np.eye(4) - 1
  expected = -np.sum(np.log(expit(z * logits))) / 4
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["all_gather", "ring"])
@pytest.mark.parametrize("name", ["infonce", "sigmoid"])
def test_distributed_strategies_match_on_a_one_device_mesh(strategy, name):
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  outputs = _outputs(np.random.default_rng(4), with_matching=False)
  outputs["bias"] = jnp.float32(-1.0)
  config = _loss_config()
  config.name = name
  expected, _ = build_objective(config, model_fuses=False)(outputs, {})
  config.distributed = strategy
  loss, _ = build_objective(config, model_fuses=False, mesh=mesh)(outputs, {})
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_unknown_distributed_strategy_is_named():
  config = _loss_config()
  config.distributed = "telepathy"
  with pytest.raises(UsageError, match="loss.distributed"):
    build_objective(config, model_fuses=False, mesh=object())


def test_task_loss_is_weighted_softmax_cross_entropy():
  rng = np.random.default_rng(4)
  outputs = _outputs(rng, with_matching=False)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 3], np.int32)
  outputs["class_logits"] = jnp.asarray(logits)
  config = _loss_config()
  config.task_weight = 0.25
  loss, metrics = build_objective(config, model_fuses=False, has_task=True)(
      outputs, {"labels": jnp.asarray(labels)})
  shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  ce = -np.mean(log_p[np.arange(4), labels])
  np.testing.assert_allclose(metrics["task_loss"], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics["task_accuracy"], np.mean(logits.argmax(1) == labels))
  alignment = symmetric_infonce(outputs["text_emb"], outputs["image_emb"], outputs["scale"])
  np.testing.assert_allclose(loss, alignment + 0.25 * ce, rtol=1e-5)


@pytest.mark.parametrize("weight, has_task", [(1.0, False), (0.0, True)])
def test_task_label_and_task_weight_must_agree(weight, has_task):
  config = _loss_config()
  config.task_weight = weight
  with pytest.raises(UsageError, match="loss.task_weight"):
    build_objective(config, model_fuses=False, has_task=has_task)


def test_modality_weights_scale_each_towers_gradient_not_the_loss():
  outputs = _outputs(np.random.default_rng(5), with_matching=False)
  plain = build_objective(_loss_config(), model_fuses=False)
  config = _loss_config()
  config.modality_weights = {"text": 0.25, "image": 3.0}
  weighted = build_objective(config, model_fuses=False)

  def grads(objective):
    def loss_of(text, image):
      return objective({**outputs, "text_emb": text, "image_emb": image}, {})[0]
    return jax.value_and_grad(loss_of, argnums=(0, 1))(outputs["text_emb"],
                                                       outputs["image_emb"])

  (plain_loss, (plain_text, plain_image)) = grads(plain)
  (loss, (text, image)) = grads(weighted)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  np.testing.assert_allclose(text, 0.25 * np.asarray(plain_text), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(image, 3.0 * np.asarray(plain_image), rtol=1e-5, atol=1e-7)


def test_unknown_modality_weight_is_named():
  config = _loss_config()
  config.modality_weights = {"audio": 2.0}
  with pytest.raises(UsageError, match="audio"):
    build_objective(config, model_fuses=False)
