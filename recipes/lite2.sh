#!/usr/bin/env bash
# The larger offline backbone, EfficientNet-Lite2, on CIFAR-10 and UC Merced: how far a
# stronger frozen network moves the Dürr and Iorga targets (same protocols as durr.sh and
# iorga.sh; one full view per image, so compare with Lite0's centre-view column).
BACKBONE=efficientnet_lite2
TAPS=block6,block7,pool
source "$(dirname "$0")/lib.sh"
cifar=$(features --dataset "$CIFAR10" --res 160)
ucm=$(features --dataset "$UCMERCED")

fit --cache "$cifar" --model svm --C 0.1 --transform none --train-size 10000
fit --cache "$cifar" --model logreg --layer block6,pool --train-size 10000
fit --cache "$cifar" --model logreg --layer block6,pool
fit --cache "$cifar" --model mlp --layer block6,pool
split=(--resplit 0.1 --val-size 0.1111 --repeats 5)
for layer in pool block6,pool; do
  for head in svm logreg; do
    fit --cache "$ucm" --model "$head" --layer "$layer" "${split[@]}"
  done
done
done_recipe
