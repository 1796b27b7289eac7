#!/usr/bin/env bash
# Hertel et al.: frozen conv layers, a retrained AlexNet-style classifier (4096-4096,
# dropout 0.5), ten test views averaged: MNIST 99.54 %, CIFAR-10 89.14 %, CIFAR-100 67.68 %.
# Each run reports both the centre view (top1_centre) and the ten views averaged (top1).
# The linear heads on CIFAR-10 are durr.sh's; the 4096-4096 heads come last (slow on a CPU).
source "$(dirname "$0")/lib.sh"
mnist=$(features --dataset "$MNIST" --res 112 --crops test:10)
cifar=$(features --dataset "$CIFAR10" --res 160 --crops test:10)

for head in svm logreg; do
  fit --cache "$mnist" --model "$head"
done
# Digits are not ImageNet objects: mid-level taps carry more of them.
for head in svm mlp; do
  fit --cache "$mnist" --model "$head" --layer block5,block6,pool
done
fit --cache "$mnist" --model mlp-alexnet
fit --cache "$cifar" --model mlp-alexnet
done_recipe
