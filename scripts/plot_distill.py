#!/usr/bin/env python3
"""Draws the loss curve of a `swiftkv distill` run from its train_log.jsonl (one JSON object per step:
step, loss, kl, mse, lr, grad_norm, tokens_per_s, mfu, ...).

    python3 scripts/plot_distill.py OUT/train_log.jsonl --out OUT/loss_curve.png

Top panel: the loss (and its KL / hidden-MSE parts when MSE is on) per step with a moving average; bottom
panel: the learning rate and the gradient norm before clipping. Needs matplotlib.
"""
import argparse
import json
import sys


def moving_average(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", help="train_log.jsonl written by swiftkv distill")
    ap.add_argument("--out", default=None, help="PNG to write (default: loss_curve.png next to the log)")
    ap.add_argument("--window", type=int, default=0, help="moving-average window (default: steps/10, steps/50 from 500 steps)")
    args = ap.parse_args()

    rows = []
    with open(args.log) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by an interruption
    if not rows:
        sys.exit(f"{args.log}: no steps logged yet")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    window = args.window or max(1, len(rows) // 10 if len(rows) < 500 else len(rows) // 50)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot(steps, loss, color="#9bbcd9", linewidth=0.8, label="loss")
    ax.plot(steps, moving_average(loss, window), color="#1f5f99", linewidth=1.8, label=f"loss ({window}-step mean)")
    if any(r.get("mse", 0) for r in rows):
        ax.plot(steps, [r["kl"] for r in rows], color="#d98a3a", linewidth=0.8, label="KL * T^2")
        ax.plot(steps, [r["mse"] for r in rows], color="#5a9e5a", linewidth=0.8, label="hidden MSE")
    ax.set_ylabel("distillation loss")
    if max(loss) > 20 * max(min(loss), 1e-12):
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    tps = [r.get("tokens_per_s", 0) for r in rows]
    mfu = [r.get("mfu") for r in rows if r.get("mfu") is not None]
    title = f"swiftkv distill: {len(rows)} steps, loss {loss[0]:.4g} -> {loss[-1]:.4g}, {sum(tps) / len(tps):.0f} tok/s"
    if mfu:
        title += f", MFU {100 * sum(mfu) / len(mfu):.1f}%"
    ax.set_title(title)
    ax2.plot(steps, [r["lr"] for r in rows], color="#444444", label="learning rate")
    ax2.set_ylabel("lr")
    ax2.set_xlabel("step")
    ax2.grid(True, alpha=0.3)
    ax3 = ax2.twinx()
    ax3.plot(steps, [r["grad_norm"] for r in rows], color="#c04040", linewidth=0.8, label="grad norm")
    ax3.set_ylabel("grad norm", color="#c04040")
    fig.tight_layout()
    out = args.out
    if not out:
        out = args.log.rsplit("/", 1)[0] + "/loss_curve.png" if "/" in args.log else "loss_curve.png"
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
