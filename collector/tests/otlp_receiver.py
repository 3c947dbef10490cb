"""A minimal OTLP/HTTP metrics receiver for collector/tests/otlp.rs.

Decodes each POST to /v1/metrics with the `opentelemetry-proto` package from
PyPI (OpenTelemetry's own generated code, not Tributary's) and appends one
JSON line per exponential-histogram data point to the file given as the
second argument. Usage: otlp_receiver.py PORT OUT_FILE
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

OUT = sys.argv[2]


def attrs(kvs):
    return {kv.key: kv.value.string_value for kv in kvs}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/metrics":
            self.send_error(404)
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(415)
            return
        req = ExportMetricsServiceRequest()
        req.ParseFromString(body)
        lines = []
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    h = m.exponential_histogram
                    for p in h.data_points:
                        lines.append(json.dumps({
                            "resource": attrs(rm.resource.attributes),
                            "scope": sm.scope.name,
                            "metric": m.name,
                            "data": m.WhichOneof("data"),
                            "temporality": h.aggregation_temporality,
                            "attributes": attrs(p.attributes),
                            "start_ns": p.start_time_unix_nano,
                            "time_ns": p.time_unix_nano,
                            "count": p.count,
                            "sum": p.sum if p.HasField("sum") else None,
                            "min": p.min if p.HasField("min") else None,
                            "max": p.max if p.HasField("max") else None,
                            "scale": p.scale,
                            "zero_count": p.zero_count,
                            "zero_threshold": p.zero_threshold,
                            "positive": [p.positive.offset, list(p.positive.bucket_counts)],
                            "negative": [p.negative.offset, list(p.negative.bucket_counts)],
                        }))
        with open(OUT, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        out = ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
