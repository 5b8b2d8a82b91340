"""A plain PyTorch DDP training script, run by Shardwright as a job's `command`.

Converted from a torchrun script in a handful of lines (marked `# sdk`): `sdk.init()`
instead of `dist.init_process_group`, the loop inside `sdk.checkpoint(...)` starting at
`ckpt.start_step`, and `sdk.report` + `ckpt.maybe_save` once a step. Everything else is
the user's own: the model, the data, the loss (docs/sdk.md shows the diff).

The task: map every token t to (3t + 1) mod VOCAB; a batch is a pure function of
(seed, step, rank), so a resumed run sees exactly the batches an uninterrupted one does.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import shardwright.sdk as sdk  # sdk

VOCAB, SEQ, BATCH = 64, 32, 8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 64)
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, VOCAB))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(tokens))


def batch(seed: int, step: int, rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + rank)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    return tokens.to(device), ((3 * tokens + 1) % VOCAB).to(device)


def main() -> None:
    run = sdk.init()  # sdk: was dist.init_process_group("gloo") and reading RANK/WORLD_SIZE
    torch.manual_seed(run.seed)
    model = DistributedDataParallel(Net().to(run.device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.optim.lr)
    with sdk.checkpoint(model, optimizer) as ckpt:  # sdk: resume from the job's last commit
        for step in range(ckpt.start_step + 1, run.steps + 1):  # sdk: was range(1, STEPS + 1)
            inputs, targets = batch(run.data_seed, step, run.rank, run.device)
            loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sdk.report(step, loss.item(), tokens=inputs.numel())  # sdk: was print(step, loss)
            ckpt.maybe_save(step)  # sdk
            if sdk.should_stop():  # sdk: suspend / graceful restart
                break


if __name__ == "__main__":
    main()
