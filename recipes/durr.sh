#!/usr/bin/env bash
# Dürr: Inception-v3 pool_3 features + linear SVM (C = 0.1) trained on 10,000 CIFAR-10
# images, tested on the 10,000 test images: 87.41 %. Then every head, 10,000 and 50,000.
source "$(dirname "$0")/lib.sh"
cifar=$(features --dataset "$CIFAR10" --res 160 --crops test:10)

# The protocol as published: raw features, C fixed, first 10,000-image budget.
fit --cache "$cifar" --model svm --C 0.1 --transform none --train-size 10000
# Every head with its hyperparameters chosen on validation, at both budgets.
for size in 10000 50000; do
  for head in svm logreg mlp knn; do
    fit --cache "$cifar" --model "$head" --train-size "$size"
  done
  # The best tap pair found by the depth recipe, for the linear and MLP heads.
  fit --cache "$cifar" --model logreg --layer block6,pool --train-size "$size"
  fit --cache "$cifar" --model mlp --layer block6,pool --train-size "$size"
done
done_recipe
