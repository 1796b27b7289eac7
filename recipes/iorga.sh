#!/usr/bin/env bash
# Iorga & Neagoe: UC Merced Land Use, 80/10/10 split, frozen VGG16 + a 3-layer MLP
# (84-63-42, dropout, Adam, 15 epochs): 86.61 % test. Ours: five random 80/10/10 splits
# (10 % test, a ninth of the rest for validation), mean and spread; confusion matrix.
source "$(dirname "$0")/lib.sh"
ucm=$(features --dataset "$UCMERCED")

split=(--resplit 0.1 --val-size 0.1111 --repeats 5)
for head in mlp-ucmerced svm logreg mlp; do
  fit --cache "$ucm" --model "$head" "${split[@]}"
done
fit --cache "$ucm" --model logreg --layer block6,pool "${split[@]}"
fit --cache "$ucm" --model mlp --layer block6,pool "${split[@]}"
done_recipe
