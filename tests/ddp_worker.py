"""Run by tests/test_distributed.py under `torchrun --standalone --nproc-per-node 2` (gloo, CPU).

Checks, on the real process group, that the ranks together see one process's views and end a DDP training
with the same weights; rank 0 writes what it found as JSON to the path given as the first argument.
"""

import json
import sys
from dataclasses import replace

import torch
import torch.distributed as dist

from kdcompress.core.reporter import NullReporter
from kdcompress.train.config import CompressConfig
from kdcompress.train.fair import fair_start, prepare
from kdcompress.train.loop import fit
from kdcompress.train.models import create_model
from kdcompress.train.views import ViewStream


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


config = CompressConfig(
    teacher="test_efficientnet", student="test_resnet", image_size=16, epochs=1, device="cpu", batch_size=64,
    mixup=0.4, augment="rrc",
)  # fmt: skip
run = prepare(config, NullReporter())
found = {"world_size": run.world.size, "per_rank_batch": None, "views_equal": True, "labels_equal": True}
solo = ViewStream(run.data, run.prep, replace(run.settings, world_size=1, rank=0)).epoch()
for (images, labels), (one_images, one_labels) in zip(ViewStream(run.data, run.prep, run.settings).epoch(), solo):
    found["per_rank_batch"] = images.shape[0]
    found["views_equal"] &= torch.allclose(gathered(images), one_images.contiguous(), atol=1e-6)
    found["labels_equal"] &= torch.allclose(gathered(labels), one_labels)

torch.manual_seed(0)
teacher = create_model("test_efficientnet", len(run.data.classes), run.data.channels)
objective = fair_start(run, 0, teacher).distilled(teacher, 4.0, 0.5, 0.3)  # DDP over student and projection
initial = torch.cat([p.detach().flatten() for p in objective.trainable.parameters()])
fit(objective, run.data, run.prep, run.settings, NullReporter(), "ddp")
state = torch.cat([v.detach().float().flatten() for v in objective.trainable.state_dict().values()])
everyone = gathered(state).view(dist.get_world_size(), -1)
found["weights_identical"] = bool((everyone == everyone[0]).all())
params = gathered(torch.cat([p.detach().flatten() for p in objective.trainable.parameters()])).view(dist.get_world_size(), -1)
found["params_identical"] = bool((params == params[0]).all())
found["weights_moved"] = not torch.equal(torch.cat([p.detach().flatten() for p in objective.trainable.parameters()]), initial)
found["student_is_plain"] = type(objective.student).__name__
if run.world.main:
    with open(sys.argv[1], "w") as handle:
        json.dump(found, handle)
