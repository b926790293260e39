#!/bin/sh
# Train one model on digits with the deck's recipe scaled to 15 epochs; log under runs/digits/.
# usage: notes/train_digits.sh MODEL [extra memprof train args]
m=$1; shift
. /work/venv/bin/activate
OMP_NUM_THREADS=1 PYTHONPATH=$PWD python -m memprof train --dataset digits --model "$m" --epochs 15 \
  --batch-size 64 --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --lr-step 5 --no-progress \
  --out runs/digits/"$m" "$@"
