"""Why VGG-19 learned slowly on digits: its classifier's ReLUs die while lr is 0.1.

Trains vgg19 on digits with the recipe of reports/training.md (batch 64, SGD lr 0.1, momentum
0.9, weight decay 5e-4, no warm-up, lr / 10 after epochs 5 and 10) for EPOCHS
epochs, with the weight of the last BatchNorm of ``features`` (the classifier's input, after a
ReLU and a max-pool) started at GAIN (memprof's default: CLASSIFIER_INPUT_GAIN; 1 is PyTorch's).
After every epoch it prints the training loss and accuracy (train mode), the test accuracy (eval
mode), the squared norm of the classifier input's batch mean on the epoch's last batch, and the
fraction of the classifier's two hidden ReLU layers that output 0 for every image of that batch.
usage: OMP_NUM_THREADS=1 PYTHONPATH=$PWD python notes/vgg19_classifier_probe.py GAIN SEED EPOCHS
"""
import math
import sys
import time

import torch
from torch import nn

from memprof.models import get_model
from memprof.models.vgg import init_classifier_input_gain
from memprof.train.data import load_digits

gain, seed, epochs = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
torch.manual_seed(seed)
model = get_model("vgg19")
init_classifier_input_gain(model.features, gain)
cls = model.classifier
data = load_digits()
loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True,
                                     generator=torch.Generator().manual_seed(seed))
x_test = torch.stack([data.test[i][0] for i in range(len(data.test))])
y_test = torch.tensor([data.test[i][1] for i in range(len(data.test))])
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
seen: dict[str, torch.Tensor] = {}
hooks = [cls[0].register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0].detach().clone())),
         cls[1].register_forward_hook(lambda m, i, o: seen.__setitem__("h1", o.detach().clone())),
         cls[3].register_forward_hook(lambda m, i, o: seen.__setitem__("h2", o.detach().clone()))]
step, t0 = 0, time.time()
try:
    for epoch in range(epochs):
        model.train()
        lr = 0.1 * 0.1 ** ((epoch >= 5) + (epoch >= 10))
        for group in opt.param_groups:
            group["lr"] = lr
        losses, accs = [], []
        for xb, yb in loader:
            step += 1
            out = model(xb)
            loss = nn.functional.cross_entropy(out, yb)
            if not math.isfinite(loss.item()):
                sys.exit(f"loss {loss.item()} at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            accs.append((out.argmax(1) == yb).float().mean().item())
        mean_sq = seen["x"].mean(0).pow(2).sum().item()
        dead1 = (seen["h1"].amax(0) <= 0).float().mean().item()
        dead2 = (seen["h2"].amax(0) <= 0).float().mean().item()
        model.eval()
        with torch.no_grad():
            test_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"epoch {epoch + 1} lr {lr:.3g} loss {sum(losses) / len(losses):.3f} "
              f"train {sum(accs) / len(accs):.3f} test {test_acc:.3f} |mean(input)|^2 {mean_sq:.0f} "
              f"dead hidden1 {dead1:.2f} hidden2 {dead2:.2f} ({time.time() - t0:.0f} s)", flush=True)
finally:
    for h in hooks:
        h.remove()
