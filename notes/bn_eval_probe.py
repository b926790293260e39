"""Why VGG-19 (and Rev-VGG) test accuracy lags early on digits: eval-mode BatchNorm statistics.

Trains MODEL for N steps with the deck's recipe on digits, then evaluates the test set three
ways: eval mode (running statistics, what memprof train reports), train-mode BatchNorm (batch
statistics), and eval mode after re-estimating the running statistics on training batches with
momentum=None (a cumulative average, "precise BN"). Prints the three accuracies.
usage: OMP_NUM_THREADS=1 PYTHONPATH=$PWD python notes/bn_eval_probe.py MODEL STEPS [init|kaiming|warmup]
init: torchvision's VGG initialisation; kaiming: He-normal (fan_in, ReLU gain) for every Linear
but the last, so the classifier keeps the features' scale; warmup: lr rises linearly over STEPS.
"""
import sys

import torch
from torch import nn

from memprof.models import get_model
from memprof.train.data import load_digits

name, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = get_model(name)
if len(sys.argv) > 3 and sys.argv[3] == "init":  # torchvision's VGG initialisation
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01); nn.init.zeros_(m.bias)
if len(sys.argv) > 3 and sys.argv[3] == "kaiming":
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu"); nn.init.zeros_(m.bias)
warmup = len(sys.argv) > 3 and sys.argv[3] == "warmup"
data = load_digits()
loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True)
test = torch.utils.data.DataLoader(data.test, batch_size=120)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
done, correct, seen = 0, 0, 0
while done < steps:
    for x, y in loader:
        if warmup:
            for g in opt.param_groups:
                g["lr"] = 0.1 * (done + 1) / steps
        out = model(x); loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad(); loss.backward(); opt.step()
        correct += int((out.argmax(1) == y).sum()); seen += len(y)
        done += 1
        print(f"step {done} loss {loss.item():.3f}", flush=True)
        if done == steps:
            break


def acc(train_bn: bool) -> float:
    model.eval()
    if train_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    with torch.no_grad():
        c = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
    model.train()
    return c / len(data.test)


print(f"{name} after {steps} steps: train acc (running) {correct / seen:.3f}")
print(f"test acc eval-mode BN (running stats): {acc(False):.3f}")
print(f"test acc train-mode BN (batch stats): {acc(True):.3f}")
for m in model.modules():
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.reset_running_stats(); m.momentum = None
with torch.no_grad():
    for i, (x, _) in enumerate(loader):
        model(x)
print(f"test acc eval-mode BN after re-estimating the statistics: {acc(False):.3f}")
