"""Optimizer: warm-up + cosine schedule, decay mask, and frozen parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmalign.train.optimizer import adamw, frozen_labels, learning_rate_schedule, locked_towers


def _params():
  return {"text_tower": {"embed": {"embedding": jnp.ones((4, 3))}},
          "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}


def test_schedule_warms_up_then_decays_to_zero():
  schedule = learning_rate_schedule(peak=1.0, warmup_steps=10, total_steps=110)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 0.5, rtol=1e-5)  # Half-way down the cosine.
  np.testing.assert_allclose(float(schedule(110)), 0.0, atol=1e-7)


def test_frozen_labels_match_paths():
  labels = frozen_labels(_params(), ("text_tower/embed",))
  assert labels["text_tower"]["embed"]["embedding"] == "frozen"
  assert labels["head"]["kernel"] == labels["head"]["bias"] == "trained"


def test_frozen_parameters_do_not_move_even_with_weight_decay():
  params = _params()
  optimizer = adamw(optax.constant_schedule(0.1), weight_decay=0.5, frozen=("text_tower/",))
  state = optimizer.init(params)
  grads = {"text_tower": {"embed": {"embedding": jnp.zeros((4, 3))}},
           "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
  updates, _ = optimizer.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["text_tower"]["embed"]["embedding"], 1.0)
  assert not np.allclose(new["head"]["kernel"], 1.0)
  # Without freezing, the zero-gradient table still shrinks through weight decay.
  plain = adamw(optax.constant_schedule(0.1), weight_decay=0.5)
  updates, _ = plain.update(grads, plain.init(params), params)
  assert np.all(optax.apply_updates(params, updates)["text_tower"]["embed"]["embedding"] < 1.0)


def test_a_tower_is_locked_only_when_every_parameter_of_it_is_frozen():
  params = {"text_tower": {"embed": {"embedding": jnp.ones((4, 3))}},
            "image_tower": {"stem": {"kernel": jnp.ones((3, 3))}, "head": {"bias": jnp.ones(2)}},
            "log_scale": jnp.ones(())}
  assert locked_towers(params, ("image_tower",)) == ("image_tower",)
  assert locked_towers(params, ("image_tower/stem",)) == ()
  assert locked_towers(params, ("tower",)) == ("text_tower", "image_tower")
  assert locked_towers(params, ()) == ()


def test_a_learning_rate_multiplier_is_that_groups_learning_rate_for_several_steps():
  """(("text_tower", 0.1),) at learning rate 0.1 moves the table exactly as AdamW at 0.01
  does (weight decay included), and the head as AdamW at 0.1; the first matching regex
  wins."""
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
                        _params())
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
           for _ in range(3)]

  def run(optimizer):
    state, current = optimizer.init(params), params
    for grad in grads:
      updates, state = optimizer.update(grad, state, current)
      current = optax.apply_updates(current, updates)
    return current
  grouped = run(adamw(optax.constant_schedule(0.1), weight_decay=0.5, grad_clip_norm=None,
                      learning_rate_multipliers=(("text_tower", 0.1), ("text", 7.0))))
  slow = run(adamw(optax.constant_schedule(0.01), weight_decay=0.5, grad_clip_norm=None))
  fast = run(adamw(optax.constant_schedule(0.1), weight_decay=0.5, grad_clip_norm=None))
  np.testing.assert_allclose(grouped["text_tower"]["embed"]["embedding"],
                             slow["text_tower"]["embed"]["embedding"], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(grouped["head"]["kernel"], fast["head"]["kernel"])
