"""Named registries: lookup, duplicates, and the error a config typo gets."""

import pytest

from mmalign.errors import UsageError
from mmalign.registry import Registry, UnknownNameError


def _registry() -> Registry:
  registry = Registry("widget")

  @registry.register("beta")
  class Beta:  # pylint: disable=unused-variable
    pass

  @registry.register("alpha")
  def alpha():  # pylint: disable=unused-variable
    return "alpha"

  return registry


def test_register_returns_entry_unchanged_and_get_finds_it():
  registry = Registry("widget")

  def factory():
    return 42

  assert registry.register("answer")(factory) is factory
  assert registry.get("answer") is factory
  assert registry.get("answer")() == 42


def test_names_are_sorted_and_membership_works():
  registry = _registry()
  assert registry.names() == ["alpha", "beta"]
  assert "alpha" in registry
  assert "gamma" not in registry


def test_registries_do_not_share_entries():
  first, second = Registry("a"), Registry("b")
  first.register("x")(object)
  assert "x" in first
  assert "x" not in second


def test_duplicate_registration_fails_and_keeps_first():
  registry = _registry()
  original = registry.get("alpha")
  with pytest.raises(ValueError, match="'alpha' is registered twice"):
    registry.register("alpha")(lambda: "other")
  assert registry.get("alpha") is original


def test_unknown_name_lists_registered_names_and_config_key():
  registry = _registry()
  with pytest.raises(UnknownNameError) as info:
    registry.get("gamma", config_key="model.widget")
  message = str(info.value)
  assert "'gamma'" in message
  assert "widget" in message
  assert "'model.widget'" in message
  assert "registered: alpha, beta" in message


def test_unknown_name_without_config_key_omits_it():
  with pytest.raises(UnknownNameError) as info:
    _registry().get("gamma")
  assert "config key" not in str(info.value)
  assert "alpha, beta" in str(info.value)


def test_unknown_name_error_is_a_usage_error_and_a_key_error():
  with pytest.raises(UsageError):
    _registry().get("gamma")
  with pytest.raises(KeyError):
    _registry().get("gamma")
  assert issubclass(UnknownNameError, UsageError)


def test_unknown_name_error_message_is_not_quoted_like_key_error():
  error = UnknownNameError("unknown widget 'x'")
  assert str(error) == "unknown widget 'x'"
