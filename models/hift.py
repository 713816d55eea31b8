"""HiFT vocoder: 80-bin mel (50 Hz) -> 24 kHz waveform (``hift.pt``).

Neural source filter + iSTFTNet: an F0 predictor reads the mel, a sine source (9 harmonics,
``SineGen2``) is built from F0, and a HiFi-GAN-style generator upsamples the mel by 8*5*3 to
120 frames per mel frame, fuses the STFT of the source at every stage, and predicts log
magnitude and phase of a 16-point STFT (hop 4), inverted to audio: 480 samples per mel frame.

Weight-normed convolutions keep the ``parametrizations.weight.original0/1`` names of the
checkpoint (torch's parametrization); call ``fold_weight_norm`` after loading for inference.

Randomness (initial harmonic phases and additive noise) comes from an explicit
``torch.Generator`` or is injected (``SineDraws``), so a request is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

SNAKE_EPS = 1e-9  # keeps 1/alpha finite
MAGNITUDE_CLIP = 1e2  # upper bound of the predicted STFT magnitude


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return int((kernel_size * dilation - dilation) / 2)


def fold_weight_norm(module: nn.Module) -> None:
    """Replace every weight-norm parametrization under ``module`` by its computed weight (same values)."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)


class Snake(nn.Module):
    """x + sin(alpha x)^2 / alpha, per channel (B, C, T)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + (1.0 / (alpha + SNAKE_EPS)) * torch.pow(torch.sin(x * alpha), 2)


class ResBlock(nn.Module):
    """Snake -> dilated conv -> Snake -> conv, residual, once per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            [
                weight_norm(
                    nn.Conv1d(
                        channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)
                    )
                )
                for d in dilations
            ]
        )
        self.convs2 = nn.ModuleList(
            [
                weight_norm(
                    nn.Conv1d(
                        channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size)
                    )
                )
                for _ in dilations
            ]
        )
        self.activations1 = nn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = nn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for act1, conv1, act2, conv2 in zip(
            self.activations1, self.convs1, self.activations2, self.convs2, strict=True
        ):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


class ConvRNNF0Predictor(nn.Module):
    """mel (B, 80, T) -> F0 in Hz (B, T): five weight-normed k3 convs with ELU, Linear, |.|."""

    def __init__(self, num_class: int = 1, in_channels: int = 80, cond_channels: int = 512):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [
                weight_norm(nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1)),
                nn.ELU(),
            ]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(self.classifier(self.condnet(x).transpose(1, 2)).squeeze(-1))


@dataclass
class SineDraws:
    """The random draws of one source: ``rand_ini`` (B, harmonics+1) uniform [0, 1) initial phases
    (column 0 is zeroed before use) and ``noise`` (B, samples, harmonics+1) standard normal."""

    rand_ini: torch.Tensor
    noise: torch.Tensor

    @classmethod
    def draw(cls, batch: int, samples: int, dim: int, generator: torch.Generator | None) -> SineDraws:
        """Draw in upstream's order (phases, then noise) on the generator's device (CPU by default)."""
        rand_ini = torch.rand(batch, dim, generator=generator)
        noise = torch.randn(batch, samples, dim, generator=generator)
        return cls(rand_ini, noise)


class SourceModuleHnNSF2(nn.Module):
    """F0 (B, L, 1) at 24 kHz -> excitation (B, L, 1): harmonic sines + noise merged by tanh(Linear)."""

    def __init__(
        self,
        sampling_rate: int,
        upsample_scale: int,
        harmonic_num: int = 8,
        sine_amp: float = 0.1,
        add_noise_std: float = 0.003,
        voiced_threshod: float = 10,
    ):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.upsample_scale = int(upsample_scale)
        self.dim = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = add_noise_std
        self.voiced_threshold = voiced_threshod
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def harmonic_phase_sines(self, f0_harmonics: torch.Tensor, rand_ini: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) harmonic frequencies in Hz -> sin of the accumulated phase (B, L, dim).

        The phase is accumulated at the frame rate (linear down-sampling by ``upsample_scale``)
        and linearly up-sampled again, as ``SineGen2`` does, which keeps the cumsum short.
        """
        rad = (f0_harmonics / self.sampling_rate) % 1
        rand_ini = rand_ini.to(rad).clone()
        rand_ini[:, 0] = 0  # no initial phase offset for the fundamental
        rad[:, 0, :] = rad[:, 0, :] + rand_ini
        rad = F.interpolate(
            rad.transpose(1, 2), scale_factor=1 / self.upsample_scale, mode="linear"
        ).transpose(1, 2)
        phase = torch.cumsum(rad, dim=1) * 2 * np.pi
        phase = F.interpolate(
            phase.transpose(1, 2) * self.upsample_scale, scale_factor=self.upsample_scale, mode="linear"
        ).transpose(1, 2)
        return torch.sin(phase)

    def forward(self, f0: torch.Tensor, draws: SineDraws) -> torch.Tensor:
        """f0 (B, L, 1) Hz -> source (B, L, 1). Computed in float32 (phase accumulation needs it)."""
        f0 = f0.float()
        harmonics = torch.arange(1, self.dim + 1, dtype=torch.float32, device=f0.device).view(1, 1, -1)
        sines = self.harmonic_phase_sines(f0 * harmonics, draws.rand_ini) * self.sine_amp
        uv = (f0 > self.voiced_threshold).float()
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        sine_waves = sines * uv + noise_amp * draws.noise.to(sines)
        weight, bias = self.l_linear.weight.float(), self.l_linear.bias.float()
        return torch.tanh(F.linear(sine_waves, weight, bias))


class HiFTGenerator(nn.Module):
    """HiFTNet generator: mel (B, 80, T) -> waveform (B, 480*T) at ``sampling_rate``."""

    def __init__(
        self,
        in_channels: int = 80,
        base_channels: int = 512,
        nb_harmonics: int = 8,
        sampling_rate: int = 22050,
        nsf_alpha: float = 0.1,
        nsf_sigma: float = 0.003,
        nsf_voiced_threshold: float = 10,
        upsample_rates: list[int] = (8, 8),
        upsample_kernel_sizes: list[int] = (16, 16),
        istft_params: dict | None = None,
        resblock_kernel_sizes: list[int] = (3, 7, 11),
        resblock_dilation_sizes: list[list[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        source_resblock_kernel_sizes: list[int] = (7, 11),
        source_resblock_dilation_sizes: list[list[int]] = ((1, 3, 5), (1, 3, 5)),
        lrelu_slope: float = 0.1,
        audio_limit: float = 0.99,
        f0_predictor: nn.Module | None = None,
    ):
        super().__init__()
        if f0_predictor is None:
            raise ValueError("HiFTGenerator needs an f0_predictor in cosyvoice.yaml")
        istft_params = dict(istft_params or {"n_fft": 16, "hop_len": 4})
        upsample_rates = list(upsample_rates)
        self.sampling_rate = sampling_rate
        self.n_fft = int(istft_params["n_fft"])
        self.hop_len = int(istft_params["hop_len"])
        self.lrelu_slope = lrelu_slope
        self.audio_limit = audio_limit
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upsample_scale = int(np.prod(upsample_rates)) * self.hop_len  # samples per mel frame
        self.m_source = SourceModuleHnNSF2(
            sampling_rate, self.upsample_scale, nb_harmonics, nsf_alpha, nsf_sigma, nsf_voiced_threshold
        )
        self.conv_pre = weight_norm(nn.Conv1d(in_channels, base_channels, 7, 1, padding=3))
        self.ups = nn.ModuleList(
            [
                weight_norm(
                    nn.ConvTranspose1d(
                        base_channels // 2**i, base_channels // 2 ** (i + 1), k, u, padding=(k - u) // 2
                    )
                )
                for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True))
            ]
        )
        # the source STFT is brought down to each stage's rate by a strided conv
        cum_rates = np.cumprod([1] + upsample_rates[::-1][:-1])[::-1]
        stft_ch = self.n_fft + 2
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(cum_rates, source_resblock_kernel_sizes, source_resblock_dilation_sizes, strict=True)
        ):
            ch = base_channels // 2 ** (i + 1)
            u = int(u)
            self.source_downs.append(
                nn.Conv1d(stft_ch, ch, 1, 1) if u == 1 else nn.Conv1d(stft_ch, ch, u * 2, u, padding=u // 2)
            )
            self.source_resblocks.append(ResBlock(ch, k, list(d)))
        self.resblocks = nn.ModuleList()
        for i in range(self.num_upsamples):
            ch = base_channels // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock(ch, k, list(d)))
        self.conv_post = weight_norm(nn.Conv1d(ch, stft_ch, 7, 1, padding=3))
        self.f0_predictor = f0_predictor

    def stft_window(self, device: torch.device) -> torch.Tensor:
        """Periodic Hann window of n_fft points (scipy ``get_window('hann', n, fftbins=True)``), float32."""
        n = np.arange(self.n_fft)
        return torch.from_numpy((0.5 - 0.5 * np.cos(2 * np.pi * n / self.n_fft)).astype(np.float32)).to(
            device
        )

    def source_stft(self, source: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) -> (B, n_fft + 2, L/hop + 1): real bins then imaginary bins (center, reflect)."""
        spec = torch.stft(
            source.squeeze(1).float(),
            self.n_fft,
            self.hop_len,
            self.n_fft,
            window=self.stft_window(source.device),
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        return torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    def decode_without_stft(self, x: torch.Tensor, s_stft: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T), source STFT (B, 18, F) -> log-magnitude and pre-sin phase (B, 18, F)."""
        x = self.conv_pre(x)
        for i in range(self.num_upsamples):
            x = self.ups[i](F.leaky_relu(x, self.lrelu_slope))
            if i == self.num_upsamples - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = F.leaky_relu(x)  # default slope 0.01 here, not lrelu_slope (as upstream)
        return self.conv_post(x)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T), source (B, 1, 480*T) -> waveform (B, 480*T) float32 in [-limit, limit]."""
        dtype = self.conv_pre.weight.dtype
        s_stft = self.source_stft(source).to(dtype)
        x = self.decode_without_stft(mel.to(dtype), s_stft).float()
        half = self.n_fft // 2 + 1
        magnitude = torch.clip(torch.exp(x[:, :half, :]), max=MAGNITUDE_CLIP)
        phase = torch.sin(x[:, half:, :])  # sin of the predicted phase, as upstream
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        wave = torch.istft(spec, self.n_fft, self.hop_len, self.n_fft, window=self.stft_window(mel.device))
        return torch.clamp(wave, -self.audio_limit, self.audio_limit)

    def f0_to_source(
        self, f0: torch.Tensor, draws: SineDraws, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """F0 (B, T) at the mel rate -> source (B, 1, 480*T): nearest up-sampling, then the NSF source.

        ``prefix`` (B, 1, n) replaces the first n source samples (streaming: the previous chunk's
        last samples, so the excitation carries on across the join, as upstream's ``cache_source``).
        """
        f0_up = F.interpolate(f0[:, None].float(), scale_factor=float(self.upsample_scale), mode="nearest")
        source = self.m_source(f0_up.transpose(1, 2), draws).transpose(1, 2)
        if prefix is not None and prefix.size(-1) > 0:
            source = torch.cat([prefix.to(source), source[:, :, prefix.size(-1) :]], dim=2)
        return source

    @torch.inference_mode()
    def inference(
        self,
        mel: torch.Tensor,
        generator: torch.Generator | None = None,
        draws: SineDraws | None = None,
        source_prefix: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, 80, T) -> (waveform (B, 480*T) float32, source (B, 1, 480*T) float32).

        The source's random draws come from ``draws`` when given (conformance tests), else from
        ``generator`` (a CPU ``torch.Generator``; None means torch's global RNG). ``source_prefix``
        (B, 1, n <= 480*T) overwrites the start of the source (see ``f0_to_source``).
        """
        dtype = self.conv_pre.weight.dtype
        f0 = self.f0_predictor(mel.to(dtype)).float()
        if draws is None:
            draws = SineDraws.draw(f0.size(0), f0.size(1) * self.upsample_scale, self.m_source.dim, generator)
        draws = SineDraws(draws.rand_ini.to(f0.device), draws.noise.to(f0.device))
        source = self.f0_to_source(f0, draws, source_prefix)
        return self.decode(mel, source), source
