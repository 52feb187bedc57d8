"""Adversarial training of source models (issue 17 item 3: robust sources for transfer).

Perturbations made on a slightly robust model (adversarially trained with a small budget) transfer
to unseen architectures far better than those made on a standard one (Springer et al. 2021, "A
little robustness goes a long way"). ``AdversarialBatch`` is a ``prepare_batch`` for MONAI's
``SupervisedTrainer``: each training batch is replaced by its FGSM examples with a random start
(Wong et al. 2020, "Fast is better than free") within an L-inf budget on the 0-1 image, so the
standard iteration, its events, metrics and handlers stay as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import default_prepare_batch

from monai_medlocker.networks.factory import ModelSpec

__all__ = ["AdversarialBatch", "adversarial_prepare_batch"]


class AdversarialBatch:
    """``prepare_batch`` that returns FGSM-RS adversarial inputs of ``network`` (inputs already normalised).

    Args:
        network: the model being trained (its mode is kept; the attack runs in eval mode so that the
            batch-norm statistics see only the training step).
        epsilon: L-inf budget on the 0-1 image (e.g. 2/255).
        spec: the model's preprocessing contract: the attack works on the 0-1 image behind the
            normalised input, ``x = input * std + mean``, and keeps it inside [0, 1].
        step: the signed step in units of ``epsilon`` (1.25 as Wong et al.).
        loss_function: the loss the attack ascends (default cross-entropy).
    """

    def __init__(self, network: torch.nn.Module, epsilon: float, spec: ModelSpec, step: float = 1.25,
                 loss_function: Any = None) -> None:
        if not 0 < epsilon <= 16 / 255:
            raise ValueError(f"adversarial epsilon must be in (0, 16/255] of the 0-1 image, got {epsilon}.")
        self.network, self.epsilon, self.step = network, float(epsilon), float(step)
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1)
        self.loss_function = loss_function or torch.nn.CrossEntropyLoss()

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        inputs, targets = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        mean, std = self.mean.to(inputs.device), self.std.to(inputs.device)
        x = torch.as_tensor(inputs).detach().float() * std + mean  # the 0-1 image
        delta = (torch.rand_like(x) * 2 - 1) * self.epsilon
        delta = (x + delta).clamp(0, 1) - x
        delta.requires_grad_(True)
        was_training = self.network.training
        self.network.eval()
        try:
            loss = self.loss_function(self.network((x + delta - mean) / std), torch.as_tensor(targets).long())
            (grad,) = torch.autograd.grad(loss, delta)
        finally:
            self.network.train(was_training)
        delta = (delta.detach() + self.step * self.epsilon * grad.sign()).clamp(-self.epsilon, self.epsilon)
        adversarial = ((x + delta).clamp(0, 1) - mean) / std
        return adversarial.to(inputs.dtype), targets


def adversarial_prepare_batch(network: torch.nn.Module, epsilon_255: float, spec: ModelSpec):
    """The trainer's ``prepare_batch``: MONAI's default when ``epsilon_255`` is 0, else :class:`AdversarialBatch`
    with a budget of ``epsilon_255`` grey levels of 255 (the bundle key ``adversarial_epsilon``)."""
    if not epsilon_255:
        return default_prepare_batch
    return AdversarialBatch(network, float(epsilon_255) / 255.0, spec)
