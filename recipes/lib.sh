# Sourced by every recipe: where the data is, and three verbs (features, fit, done).
# Each recipe only calls stage one (`python -m featcache.extract run`) and stage two
# (`python -m featcache.classify fit`) with the protocol's options; caches are shared, so a
# recipe whose features exist already re-runs only its heads.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-data}
SHARED=../shared/data
# Real datasets: torchvision downloads MNIST and CIFAR-10 on first use; UC Merced has no
# downloader (fetch UCMerced_LandUse.zip and point UCMERCED at its Images/ folder).
# Where a local copy sits in ../shared/data (this project's machines), it is used instead.
if [[ -d $SHARED/cifar10-jpg ]]; then CIFAR10=${CIFAR10:-$SHARED/cifar10-jpg}; fi
if [[ -d $SHARED/ucmerced-jpg ]]; then UCMERCED=${UCMERCED:-$SHARED/ucmerced-jpg}; fi
if [[ -d $SHARED/MNIST && ! -e $DATA_DIR/downloads/MNIST ]]; then
  mkdir -p "$DATA_DIR/downloads"
  ln -s "$(realpath "$SHARED/MNIST")" "$DATA_DIR/downloads/MNIST"
fi
CIFAR10=${CIFAR10:-cifar10}
MNIST=${MNIST:-mnist}
UCMERCED=${UCMERCED:-data/UCMerced_LandUse/Images}
BACKBONE=${BACKBONE:-efficientnet_lite0}
# Every tap of the default backbone: one forward pass fills them all.
TAPS=${TAPS:-block1,block2,block3,block4,block5,block6,block7,pool}

RECIPE=$(basename "$0" .sh)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
SECONDS=0

features() {  # extract (or find) a cache; prints its path
  "$PY" -m featcache.extract run --data-dir "$DATA_DIR" --backbone "$BACKBONE" --layers "$TAPS" \
    ${ENGINE:+--engine "$ENGINE"} "$@"
}

fit() {  # one head on one cache, its run folder tagged with this recipe's name
  "$PY" -m featcache.classify fit --data-dir "$DATA_DIR" --tag "$RECIPE" ${ENGINE:+--engine "$ENGINE"} "$@"
}

done_recipe() {  # record the recipe's wall time and machine for the results page
  mkdir -p "$DATA_DIR/recipes"
  "$PY" - "$DATA_DIR/recipes/$RECIPE.json" "$RECIPE" "$STARTED" "$SECONDS" <<'PY'
import json, os, platform, sys
import torch
from featcache.files import atomic_write
path, name, started, seconds = sys.argv[1:]
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
record = {"recipe": name, "started": started, "seconds": int(seconds), "gpu": gpu,
          "machine": f"{os.cpu_count()} CPU cores ({cpu})" + (f", {gpu}" if gpu else "")}
atomic_write(path, lambda fh: fh.write(json.dumps(record, indent=2).encode()))
PY
  echo "$RECIPE: done in ${SECONDS} s"
}
