"""The reference models genq's families are measured against: pytorch/examples re-implemented for 28x28.

- `MnistCnn`: examples/mnist (two 3x3 convs, max-pool, dropout, two linear layers; Adadelta, StepLR 0.7).
- `MlpVae`: examples/vae (784-400-20 MLP, Bernoulli likelihood on [0, 1] intensities, Adam 1e-3).
- `DcganGenerator` / `DcganDiscriminator`: examples/dcgan with the 64x64 stack cut to 28x28 (ConvTranspose
  7 -> 14 -> 28, BatchNorm, BCE loss, Adam 2e-4 (0.5, 0.999)) and none of genq's improvements (no spectral
  norm, no hinge loss, no EMA, no conditioning).

Each `train_*` takes uint8 images (N, 1, 28, 28) and a budget, and is deterministic for a seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class MnistCnn(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) in [-1, 1]
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


class MlpVae(nn.Module):
    def __init__(self, latent_dim: int = 20) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, latent_dim)
        self.fc22 = nn.Linear(400, latent_dim)
        self.fc3 = nn.Linear(latent_dim, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x.view(-1, 784)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # logits (B, 784)
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator)
        return self.decode(mu + eps * torch.exp(0.5 * logvar)), mu, logvar


def mlp_vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """examples/vae's loss: summed BCE + KL, here averaged per image (nats per image)."""
    bce = F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / x.shape[0]


class DcganGenerator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64) -> None:
        super().__init__()
        self.nz = nz
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 7, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),  # 14x14
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, 1, 4, 2, 1, bias=False),  # 28x28
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(-1, self.nz, 1, 1))


class DcganDiscriminator(nn.Module):
    def __init__(self, ndf: int = 64) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1, bias=False),  # 14x14
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),  # 7x7
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 7, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits (B,)
        return self.main(x).view(-1)


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def _batches(n: int, batch_size: int, generator: torch.Generator):  # type: ignore[no-untyped-def]
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def train_mnist_cnn(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 14,
    seed: int = 0,
    batch_size: int = 64,
    seconds: float | None = None,
) -> MnistCnn:
    """examples/mnist's schedule for `epochs`, cut short when `seconds` of wall time are spent."""
    deadline = time.monotonic() + seconds if seconds is not None else float("inf")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MnistCnn(int(labels.max()) + 1)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    x_all = _unit(images)
    steps_per_epoch = len(images) // batch_size
    batches = _batches(len(images), batch_size, generator)
    model.train()
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            if time.monotonic() >= deadline:
                return model.eval()
            index = next(batches)
            loss = F.cross_entropy(model(x_all[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


@torch.inference_mode()
def mnist_cnn_accuracy(model: MnistCnn, images: torch.Tensor, labels: torch.Tensor) -> float:
    predictions = torch.cat([model(_unit(chunk)).argmax(1) for chunk in images.split(1000)])
    return (predictions == labels).float().mean().item()


def train_mlp_vae(
    images: torch.Tensor, epochs: int = 10, seed: int = 0, batch_size: int = 128
) -> tuple[MlpVae, list[float]]:
    """Returns the model and its mean training loss per epoch (nats per image)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MlpVae()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = images.float().div(255.0)
    batches = _batches(len(images), batch_size, generator)
    history = []
    for _ in range(epochs):
        total = 0.0
        steps = len(images) // batch_size
        for _ in range(steps):
            x = x_all[next(batches)]
            logits, mu, logvar = model(x, generator)
            loss = mlp_vae_loss(logits, x, mu, logvar)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append(total / steps)
    return model.eval(), history


@torch.inference_mode()
def mlp_vae_test_loss(model: MlpVae, images: torch.Tensor, seed: int = 0) -> float:
    """Negative ELBO, nats per image, under examples/vae's Bernoulli likelihood on [0, 1] intensities."""
    generator = torch.Generator().manual_seed(seed)
    x = images.float().div(255.0)
    total = 0.0
    for start in range(0, len(x), 1000):
        chunk = x[start : start + 1000]
        logits, mu, logvar = model(chunk, generator)
        total += mlp_vae_loss(logits, chunk, mu, logvar).item() * len(chunk)
    return total / len(x)


@torch.inference_mode()
def sample_mlp_vae(model: MlpVae, count: int, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 1, 28, 28): decoded means of prior samples, as examples/vae saves them."""
    z = torch.randn(count, model.latent_dim, generator=torch.Generator().manual_seed(seed))
    probs = torch.sigmoid(model.decode(z)).view(-1, 1, 28, 28)
    return probs.mul(255).round().to(torch.uint8)


def train_dcgan(
    images: torch.Tensor,
    seconds: float,
    seed: int = 0,
    batch_size: int = 64,
    on_step: Callable[[int], None] | None = None,
) -> tuple[DcganGenerator, int]:
    """examples/dcgan's loop for a wall-clock budget; returns the generator and the steps taken."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net_g, net_d = DcganGenerator(), DcganDiscriminator()
    for net in (net_g, net_d):
        net.apply(_dcgan_init)
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x_all = _unit(images)
    batches = _batches(len(images), batch_size, generator)
    ones, zeros = torch.ones(batch_size), torch.zeros(batch_size)
    deadline = time.monotonic() + seconds
    steps = 0
    while time.monotonic() < deadline:
        real = x_all[next(batches)]
        fake = net_g(torch.randn(batch_size, net_g.nz, generator=generator))
        loss_d = F.binary_cross_entropy_with_logits(net_d(real), ones) + F.binary_cross_entropy_with_logits(
            net_d(fake.detach()), zeros
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(net_d(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        steps += 1
        if on_step is not None:
            on_step(steps)
    return net_g.eval(), steps


def _dcgan_init(module: nn.Module) -> None:
    name = type(module).__name__
    if "Conv" in name:
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@torch.inference_mode()
def sample_dcgan(net_g: DcganGenerator, count: int, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 1, 28, 28)."""
    z = torch.randn(count, net_g.nz, generator=torch.Generator().manual_seed(seed))
    out = torch.cat([net_g(z[i : i + 1000]) for i in range(0, count, 1000)])
    return out.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
