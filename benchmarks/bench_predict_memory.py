"""Does ``skanomaly predict`` hold memory flat over a large folder?

Fits default PatchCore on bottle's ``train/good`` (image paths), saves it,
then runs ``skanomaly predict MODEL FOLDER --out DIR`` in a fresh process on
folders of 200 and 2,000 images (bottle's test images linked again and
again, so the work per image is real: 900 px decoding, maps, masks,
overlays, boxes) plus one truncated PNG, and reports each run's peak RSS,
wall time and exit status (1: the bad file was reported, the rest scored)::

    python benchmarks/bench_predict_memory.py
    python benchmarks/bench_predict_memory.py --counts 200,2000 --data ../shared/data

Writes ``benchmarks/results/predict_memory.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import PANEL_DATA, save_json

HERE = Path(__file__).resolve().parent

_CHILD = """
import resource, sys
from skanomaly.cli import main
code = main(["predict", sys.argv[1], sys.argv[2], "--out", sys.argv[3]])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--set", default="mvtec_bottle")
    parser.add_argument("--counts", default="200,2000")
    parser.add_argument("--out", default=str(HERE / "results" / "predict_memory.json"))
    args = parser.parse_args(argv)

    from skanomaly import make_patchcore
    from skanomaly.datasets import load_mvtec
    from skanomaly.persistence import save_model

    root = Path(args.data) / args.set
    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_model(make_patchcore(random_state=0).fit(train.images), tmp / "model.joblib")
        for count in map(int, args.counts.split(",")):
            folder = tmp / f"images_{count}"
            folder.mkdir()
            for i in range(count - 1):
                os.symlink(Path(test.images[i % len(test.images)]).resolve(),
                           folder / f"{i:05d}.png")
            (folder / "truncated.png").write_bytes(Path(test.images[0]).read_bytes()[:500])
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(folder),
                                   str(tmp / f"out_{count}")], capture_output=True, text=True)
            wall = time.perf_counter() - start
            words = done.stdout.split()
            peak = int(words[words.index("PEAK_KB") + 1]) / 1024
            row = {"images": count, "peak_rss_mb": peak, "wall_s": wall,
                   "ms_per_image": 1000 * wall / count, "exit_status": done.returncode,
                   "summary": done.stdout.splitlines()[0],
                   "stderr_lines": [l for l in done.stderr.splitlines() if "skipped" in l]}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
            save_json({"rows": rows}, args.out)
    print("| images | peak RSS MB | s | ms/image | exit |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']:,} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} | "
              f"{r['ms_per_image']:.0f} | {r['exit_status']} |")


if __name__ == "__main__":
    main()
