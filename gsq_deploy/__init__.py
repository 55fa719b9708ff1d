"""gsq-deploy's installed namespace: `gsq_deploy.runtimes`, `gsq_deploy.exporters`, `gsq_deploy.train`.

The wheel installs the repository's runtimes/, exporters/ and train/ folders under this package
(pyproject.toml; README, "Installed names"), so a user's own `train.py` or `runtimes/` can neither
shadow them nor be shadowed by them. The code imports them by these names only.

In a checkout the folders stay at the top level, beside this one, and `gsq_deploy.runtimes` *is*
the checkout's `runtimes` package (gsq_deploy.checkout): one module under two names, so the code,
`python -m runtimes.onnx`, the tests and mutmut (which names a module by its file's path) all use
the same module objects.
"""

from __future__ import annotations

from pathlib import Path

# The repository folders the wheel installs under gsq_deploy (pyproject.toml's package-dir).
SUBPACKAGES = ("runtimes", "exporters", "train")

if not (Path(__file__).parent / SUBPACKAGES[0]).is_dir():  # a checkout, not an installed wheel
    from gsq_deploy.checkout import install_aliases

    install_aliases(Path(__file__).resolve().parent.parent, SUBPACKAGES)
