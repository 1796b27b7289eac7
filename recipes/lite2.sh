#!/usr/bin/env bash
# The larger offline backbone, EfficientNet-Lite2, on CIFAR-10: how far a stronger frozen
# network moves the Dürr and Hertel targets (same protocol as durr.sh, one full view per
# test image, so compare with Lite0's centre-view column).
BACKBONE=efficientnet_lite2
TAPS=block6,block7,pool
source "$(dirname "$0")/lib.sh"
cifar=$(features --dataset "$CIFAR10" --res 160)

fit --cache "$cifar" --model svm --C 0.1 --transform none --train-size 10000
fit --cache "$cifar" --model logreg --layer block6,pool --train-size 10000
fit --cache "$cifar" --model logreg --layer block6,pool
done_recipe
