#!/usr/bin/env bash
# Accuracy against depth: a linear head on each block of the backbone (the course report
# tapped VGG16 blocks 3/4/5 on Caltech-256: 28.76 / 53.22 / 71.29 %), then concatenations.
# The results page picks the best tap or concatenation by validation accuracy, not test.
source "$(dirname "$0")/lib.sh"
cifar=$(features --dataset "$CIFAR10" --res 160 --crops test:10)
ucm=$(features --dataset "$UCMERCED")

for layer in ${TAPS//,/ } block6,pool block5,block6,block7,pool; do
  fit --cache "$cifar" --model svm --layer "$layer"
  fit --cache "$ucm" --model svm --layer "$layer" --resplit 0.1 --val-size 0.1111 --repeats 5
done
done_recipe
