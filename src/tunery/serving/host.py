"""A serving host: one process, one loaded GGUF model, one generation at a time.

``python -m tunery.serving.host --model PATH --context N [--threads T]``. It loads the
model with llama.cpp, says ``ready`` (with its resident memory) on stdout, then answers the
requests the API process writes to its stdin (``tunery.serving.protocol``) until stdin
closes. llama.cpp prints to file descriptor 1 on some paths; the protocol therefore gets a
private copy of stdout and descriptor 1 is pointed at stderr, so nothing else can corrupt
it. A reader thread takes cancels while a generation runs.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import traceback
from typing import IO, Any

from tunery.serving.protocol import decode, encode

_CLOSED = object()


def resident_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class Host:
    def __init__(self, output: IO[bytes]) -> None:
        self._output = output
        self._lock = threading.Lock()
        self._requests: queue.Queue[Any] = queue.Queue()
        self._cancelled: set[str] = set()

    def say(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._output.write(encode(message))
            self._output.flush()

    def read_forever(self, source: IO[bytes]) -> None:
        """The reader thread: generations are queued, cancels take effect at once."""
        for line in source:
            message = decode(line)
            if message.get("op") == "cancel":
                self._cancelled.add(message["id"])
            else:
                self._requests.put(message)
        self._requests.put(_CLOSED)

    def serve(self, engine: Any) -> None:
        from tunery.serving.generate import RequestRefused

        while (message := self._requests.get()) is not _CLOSED:
            request_id, request = message["id"], message["request"]

            def cancelled(request_id: str = request_id) -> bool:
                return request_id in self._cancelled

            try:
                if request["stream"]:
                    for chunk in engine.stream(request, cancelled):
                        self.say({"kind": "chunk", "id": request_id, "data": chunk})
                else:
                    answer = engine.complete(request, cancelled)
                    self.say({"kind": "result", "id": request_id, "data": answer})
            except RequestRefused as refused:
                self.say(_error(request_id, 400, refused.message, refused.param, refused.code))
            except Exception as error:
                traceback.print_exc()
                message_text = f"the model failed to answer: {type(error).__name__}: {error}"
                self.say(_error(request_id, 500, message_text, None, "server_error"))
            self._cancelled.discard(request_id)
            self.say({"kind": "end", "id": request_id})


def _error(
    request_id: str, status: int, message: str, param: str | None, code: str | None
) -> dict[str, Any]:
    return {
        "kind": "error",
        "id": request_id,
        "status": status,
        "message": message,
        "param": param,
        "code": code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunery.serving.host")
    parser.add_argument("--model", required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args(argv)
    output = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    host = Host(output)
    try:
        from llama_cpp import Llama

        from tunery.serving.generate import Engine

        llama = Llama(
            model_path=options.model,
            n_ctx=options.context,
            n_threads=options.threads,
            verbose=False,
        )
        engine = Engine(llama)
    except Exception as error:
        host.say({"kind": "failed", "message": f"{type(error).__name__}: {error}"})
        return 1
    host.say({"kind": "ready", "rss_bytes": resident_bytes()})
    threading.Thread(target=host.read_forever, args=(sys.stdin.buffer,), daemon=True).start()
    host.serve(engine)
    llama.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
