"""Parses the Prometheus text format on standard input with prometheus_client's parser
(the reference one, as Prometheus' Python client ships it) and prints, as JSON, every
sample: {"metric name": {"label=value,...": value}}, plus {"_types": {family: type}}.
Fails (exit 1) on anything the parser refuses."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    samples = {}
    types = {}
    try:
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples.setdefault(sample.name, {})[labels] = sample.value
    except Exception as error:  # the parser's own errors are plain exceptions
        print(f"not Prometheus text: {error}", file=sys.stderr)
        return 1
    samples["_types"] = types
    print(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
