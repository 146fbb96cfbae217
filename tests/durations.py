"""Turns `pytest --durations=0` output into tests/durations.txt, which marks tests slow.

  python -m pytest -q -p no:cacheprovider --durations=0 --durations-min=0.1 \
      | python tests/durations.py > tests/durations.txt

Each line of durations.txt is "<seconds> <test id>": setup, call and teardown summed.
conftest.py marks every test listed at SLOW_SECONDS or more as `slow`, so the inner
loop (`pytest -m "not slow"`) follows measurements rather than guesses; rerun the
command above when tests are added or get slower.
"""

import collections
import re
import sys

LINE = re.compile(r"^\s*([0-9.]+)s (setup|call|teardown)\s+(\S.*)$")


def main() -> None:
  seconds = collections.defaultdict(float)
  for line in sys.stdin:
    match = LINE.match(line)
    if match:
      seconds[match.group(3).strip()] += float(match.group(1))
  for test, total in sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0])):
    print(f"{total:.2f} {test}")


if __name__ == "__main__":
  main()
