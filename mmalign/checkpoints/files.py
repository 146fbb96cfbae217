"""Reading checkpoint files into numpy, with one-line errors."""

from __future__ import annotations

import numpy as np

from mmalign.errors import UsageError

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# PyTorch's own files are pickles: mmalign never unpickles them, so they are converted once.
CONVERT = ("python -c \"import sys, torch, safetensors.torch as st; "
           "st.save_file({k: v.contiguous() for k, v in torch.load(sys.argv[1], "
           "weights_only=True, map_location='cpu').items()}, sys.argv[2])\" IN.pt OUT.safetensors")


def torch_file_error(path: str) -> UsageError:
  """The one-line refusal of a PyTorch pickle, with the command that converts it."""
  return UsageError(f"init.checkpoint {path!r} is a PyTorch file; convert it to safetensors "
                    f"first (with torch installed): {CONVERT}")


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """A PyTorch conv weight [out, in, kh, kw] as a flax kernel [kh, kw, in, out]."""
  return np.transpose(weight, (2, 3, 1, 0))


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{tensor name: array} of a `.safetensors` file; UsageError if it is not one."""
  from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  if path.endswith(TORCH_SUFFIXES):
    raise torch_file_error(path)
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError) as error:
    raise UsageError(f"init.checkpoint {path!r} is not a readable .safetensors file: "
                     f"{str(error).splitlines()[0]}") from None


def tensor_names(path: str) -> list[str]:
  """The tensor names of a `.safetensors` file, from its header only."""
  from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
  try:
    with safe_open(path, framework="numpy") as f:
      return list(f.keys())
  except (SafetensorError, OSError, ValueError) as error:
    raise UsageError(f"init.checkpoint {path!r} is not a readable .safetensors file: "
                     f"{str(error).splitlines()[0]}") from None
