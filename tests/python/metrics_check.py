#!/usr/bin/env python3
"""Fetches a URL of a node's metrics listener and, for /metrics, parses it
with the Prometheus project's own Python parser (prometheus_client's
OpenMetrics parser, which refuses text that breaks the format).

Prints one JSON object on stdout:
  {"status": 200, "content_type": "...", "body": "..."}            (--raw)
  {"status": 200, "families": {name: {"type", "help", "unit",
                                     "samples": [[name, labels, value]]}}}
A response that is not 200 is printed with its body and exit status 0; the
caller decides. A body that does not parse exits 2 with the parser's error.

Used by t64 (tests/t64_metrics.rs); standard library plus prometheus-client.
"""

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def fetch(args):
    request = urllib.request.Request(args.url)
    if args.token:
        request.add_header("Authorization", "Bearer " + args.token)
    context = None
    if args.url.startswith("https://"):
        context = ssl.create_default_context(cafile=args.ca)
        # Node certificates name the node (quorumlock-node-N) and 127.0.0.1.
        context.check_hostname = False
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--raw", action="store_true", help="print the body instead of parsing it")
    parser.add_argument("--token")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    status, content_type, body = fetch(args)
    if args.raw or status != 200:
        json.dump({"status": status, "content_type": content_type, "body": body}, sys.stdout)
        return 0
    try:
        families = {}
        for family in text_string_to_metric_families(body):
            families[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "unit": family.unit,
                "samples": [[sample.name, sample.labels, sample.value] for sample in family.samples],
            }
    except ValueError as error:
        print(f"the metrics do not parse as OpenMetrics: {error}", file=sys.stderr)
        return 2
    json.dump({"status": status, "content_type": content_type, "families": families}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
