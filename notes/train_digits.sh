#!/bin/sh
# Train one model on digits with the deck's recipe scaled to the run; log under runs/digits/.
# usage: [EPOCHS=15 LR_STEP=5] notes/train_digits.sh MODEL [extra memprof train args, e.g. --no-reversible --out runs/digits/MODEL-plain]
# The deck's lr 0.1 (momentum 0.9, weight decay 5e-4) for LR_STEP epochs, then / 10 every LR_STEP epochs:
# the first three phases of its 300-epoch schedule scaled to EPOCHS. One thread (OMP_NUM_THREADS=1).
# The run's command line goes to OUT/command.txt (memprof report training shows it).
m=$1; shift
. /work/venv/bin/activate
out=runs/digits/$m
extra=""
prev=""
for a in "$@"; do  # the caller's --out replaces the default one (given once on the command line)
  if [ "$a" = "--out" ]; then prev=$a; continue; fi
  if [ "$prev" = "--out" ]; then out=$a; prev=""; continue; fi
  extra="$extra $a"
done
mkdir -p "$out"
set -- --dataset digits --model "$m" --epochs "${EPOCHS:-15}" --batch-size 64 --lr 0.1 --momentum 0.9 \
  --weight-decay 5e-4 --lr-step "${LR_STEP:-5}" --no-progress $extra --out "$out"
echo "memprof train $*" > "$out/command.txt"
OMP_NUM_THREADS=1 PYTHONPATH=$PWD exec python -m memprof train "$@"
