"""What tunery knows of tiers without settings: cards by nvidia-smi name, their facts."""

from __future__ import annotations

import pytest

from tunery.tiers import KNOWN_TIERS, TierSettings, tier_name, tier_of_card


@pytest.mark.parametrize(
    ("card", "tier"),
    [
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("Tesla T4", "t4"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA GeForce RTX 4090", "cpu"),
        ("", "cpu"),
    ],
)
def test_a_card_is_its_tier_by_the_name_nvidia_smi_prints(card: str, tier: str) -> None:
    assert tier_of_card(card) == tier


def test_known_tiers_fill_in_what_settings_leave_out() -> None:
    t4 = TierSettings(id="t4", name="T4", credits_per_minute=1)
    assert (t4.memory_gib, t4.assumed_tflops) == (15.0, 20.0)
    assert (
        TierSettings(id="t4", name="T4", credits_per_minute=1, gpu_memory_gib=14).memory_gib == 14
    )
    custom = TierSettings(id="mine", name="Mine", credits_per_minute=1)
    assert (custom.memory_gib, custom.assumed_tflops) == (None, None)
    assert (tier_name("h100"), tier_name("mine")) == ("NVIDIA H100", "MINE")
    assert KNOWN_TIERS["cpu"].memory_gib is None
