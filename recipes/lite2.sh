#!/usr/bin/env bash
# The larger offline backbone, EfficientNet-Lite2, on CIFAR-10 and UC Merced: how far a
# stronger frozen network moves the Dürr, Hertel and Iorga targets (same protocol as
# durr.sh and iorga.sh; Lite2 at 160 px on CIFAR-10 as Lite0, its own 260 px on UC Merced).
BACKBONE=efficientnet_lite2
TAPS=block6,block7,pool
source "$(dirname "$0")/lib.sh"
cifar=$(features --dataset "$CIFAR10" --res 160 --crops test:10)
ucm=$(features --dataset "$UCMERCED")

fit --cache "$cifar" --model svm --C 0.1 --transform none --train-size 10000
for size in 10000 50000; do
  for layer in pool block6,pool; do
    fit --cache "$cifar" --model logreg --layer "$layer" --train-size "$size"
    fit --cache "$cifar" --model mlp --layer "$layer" --train-size "$size"
  done
done
split=(--resplit 0.1 --val-size 0.1111 --repeats 5)
for layer in pool block6,pool; do
  for head in svm logreg mlp; do
    fit --cache "$ucm" --model "$head" --layer "$layer" "${split[@]}"
  done
done
done_recipe
