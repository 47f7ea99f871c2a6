"""``deepalign world``: generate the embedded safety world."""

from deepalign.world.generator import WorldConfig, WorldOptions, build_world

OPTIONS = (WorldOptions, WorldConfig)


def run(options: WorldOptions, config: WorldConfig) -> int:
    build_world(options, config)
    return 0
