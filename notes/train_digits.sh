#!/bin/sh
# Train one model on digits with the deck's recipe scaled to 15 epochs; log under runs/digits/.
# usage: notes/train_digits.sh MODEL [extra memprof train args, e.g. --no-reversible --out runs/digits/MODEL-plain]
# The run's command line goes to OUT/command.txt (memprof report training shows it).
m=$1; shift
. /work/venv/bin/activate
out=runs/digits/$m
prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
mkdir -p "$out"
set -- --dataset digits --model "$m" --epochs 15 --batch-size 64 --lr 0.1 --momentum 0.9 --weight-decay 5e-4 \
  --lr-step 5 --no-progress --out runs/digits/"$m" "$@"
echo "memprof train $*" > "$out/command.txt"
OMP_NUM_THREADS=1 PYTHONPATH=$PWD exec python -m memprof train "$@"
