"""Send scoring requests to a server and count which model answered: ``python send_traffic.py URL N``.

Each request is one row of the breast-cancer features (scikit-learn's copy) in
the MLflow scoring protocol's ``dataframe_split`` form.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections import Counter

from sklearn.datasets import load_breast_cancer


def main(url: str, n: int) -> None:
    features = load_breast_cancer(as_frame=True).data
    seen: Counter[str] = Counter()
    for i in range(n):
        row = features.iloc[[i % len(features)]]
        body = json.dumps({"dataframe_split": {"columns": list(row.columns), "data": row.values.tolist()}}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            seen[response.headers["X-Mlpipe-Model"]] += 1
    print(", ".join(f"{model}: {count}" for model, count in sorted(seen.items())))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
