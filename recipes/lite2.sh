#!/usr/bin/env bash
# The larger offline backbone, EfficientNet-Lite2, on CIFAR-10: how far a stronger frozen
# network moves the Dürr target (same protocol as durr.sh at 10,000 training images, one
# full view per test image, so compare with Lite0's centre-view column). A stratified
# 15,000-image subset of the training set (--limit; the whole test set) holds the
# 10,000 training images and the validation split, at a third of the CPU time.
BACKBONE=efficientnet_lite2
TAPS=block6,block7,pool
source "$(dirname "$0")/lib.sh"
cifar=$(features --dataset "$CIFAR10" --res 160 --limit 15000)

fit --cache "$cifar" --model svm --C 0.1 --transform none --train-size 10000
fit --cache "$cifar" --model svm --train-size 10000
fit --cache "$cifar" --model logreg --layer block6,pool --train-size 10000
done_recipe
