#!/usr/bin/env bash
# Dürr's t-SNE map of CIFAR-10 test features, and the course report's pictures: the first
# conv layer's filters and activation maps of the first and last blocks for one image.
source "$(dirname "$0")/lib.sh"
cifar=$(features --dataset "$CIFAR10" --res 160 --crops test:10)
out=$DATA_DIR/pictures
mkdir -p "$out"
tsne=$("$PY" -m featcache.classify tsne --data-dir "$DATA_DIR" --cache "$cifar" --layer pool --points 2000)
cp "$tsne" "$out/tsne-cifar10.png"
image=$(find "$UCMERCED" -name '*.jpg' | sort | sed -n 1p)
"$PY" -m featcache.extract show --backbone "$BACKBONE" --image "$image" --layers block1,block7 \
  --out "$out"
done_recipe
