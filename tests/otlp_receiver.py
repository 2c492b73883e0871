"""A real OTLP/HTTP trace receiver for the tests: `python -m tests.otlp_receiver PORT FILE`.

It accepts `POST /v1/traces` (protobuf, optionally gzip), decodes each request with
opentelemetry-proto's `ExportTraceServiceRequest` and appends one JSON line per span to FILE.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

_lock = threading.Lock()


def value_of(value: AnyValue) -> Any:
    """Return an OTLP attribute value as plain JSON."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    """Return OTLP key-values as a dict."""
    return {pair.key: value_of(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def records_of(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """Return one JSON-able record per span in an export request."""
    records = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append(
                    {
                        "service": resource.get("service.name"),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "name": span.name,
                        "kind": Span.SpanKind.Name(span.kind),
                        "attributes": attributes_of(span.attributes),
                        "links": [
                            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                            for link in span.links
                        ],
                        "events": [
                            {"name": event.name, "attributes": attributes_of(event.attributes)}
                            for event in span.events
                        ],
                        "status": {"code": span.status.code, "message": span.status.message},
                    }
                )
    return records


def handler_for(out: Path, refusing: threading.Event | None = None) -> type[BaseHTTPRequestHandler]:
    """Return a request handler class that appends received spans to `out`.

    While `refusing` is set it answers 500 and keeps nothing, as a collector in trouble does.
    """

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            if refusing is not None and refusing.is_set():
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_error(500)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            lines = "".join(json.dumps(r) + "\n" for r in records_of(request))
            with _lock, out.open("a", encoding="utf-8") as file:
                file.write(lines)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the file is the record

    return Receiver


def main(argv: list[str]) -> None:
    """Serve on 127.0.0.1:PORT until terminated."""
    port, out = int(argv[0]), Path(argv[1])
    out.touch()
    ThreadingHTTPServer(("127.0.0.1", port), handler_for(out)).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
