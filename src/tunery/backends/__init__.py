"""Where attempts run; ``open_backend`` builds the one the settings name."""

from __future__ import annotations

from tunery.backends.base import Backend
from tunery.settings import Settings


def open_backend(settings: Settings) -> Backend:
    """The local node pool, or a Ray cluster for ``cluster.kind: ray`` (ray imported only
    then; connecting may take seconds)."""
    if settings.cluster.kind == "ray":
        from tunery.backends.ray import RayBackend

        cluster = settings.cluster
        assert cluster.address is not None
        return RayBackend(
            address=cluster.address,
            checkpoint_root=cluster.checkpoint_dir,
            gpus={tier.id: tier.gpus_per_attempt for tier in settings.tiers},
            devices={tier.id: tier.devices for tier in settings.tiers},
            accelerators=cluster.accelerators,
        )
    from tunery.backends.local import LocalBackend

    return LocalBackend([(node.name, node.tier) for node in settings.nodes], settings.data_dir)
