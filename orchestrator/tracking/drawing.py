"""A drawing of a searched network: the residual blocks in a row, grouped by stage, each ACLA (or other) module
after its block, and an arc from every reference layer it reads (the head and the earlier stages' outputs)
labelled with how many keys a query keeps there."""
from __future__ import annotations

from search_space.genotype import Genotype, refs_at_position, stage_of_block


def draw_network(genotype: Genotype, path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    blocks, stages = genotype.blocks, genotype.stages
    figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * blocks + 3), 3.2), dpi=110)
    x_of = {"head": 0.0, **{b: 1.2 + b for b in range(blocks)}, "tail": 1.6 + blocks}
    colours = plt.get_cmap("Pastel1")
    axes.add_patch(FancyBboxPatch((x_of["head"] - 0.35, -0.3), 0.7, 0.6, boxstyle="round,pad=0.02", fc="0.85"))
    axes.text(x_of["head"], 0, "head", ha="center", va="center", fontsize=7)
    for b in range(blocks):
        axes.add_patch(FancyBboxPatch((x_of[b] - 0.35, -0.3), 0.7, 0.6, boxstyle="round,pad=0.02",
                                      fc=colours(stage_of_block(b, blocks, stages) % 9)))
        axes.text(x_of[b], 0, str(b), ha="center", va="center", fontsize=7)
    axes.add_patch(FancyBboxPatch((x_of["tail"] - 0.35, -0.3), 0.7, 0.6, boxstyle="round,pad=0.02", fc="0.85"))
    axes.text(x_of["tail"], 0, "tail", ha="center", va="center", fontsize=7)
    axes.plot([x_of["head"] + 0.35, x_of["tail"] - 0.35], [0, 0], color="0.5", lw=0.8, zorder=0)
    per_stage = blocks // stages
    reference_x = [x_of["head"]] + [x_of[(s + 1) * per_stage - 1] for s in range(stages - 1)]
    keys = genotype.keys or [()] * len(genotype.positions)
    lines = plt.get_cmap("tab10")
    for index, (position, position_keys) in enumerate(zip(genotype.positions, keys)):
        x, colour = x_of[position] + 0.5, lines(index % 10)
        axes.scatter([x], [0.75], marker="D", s=70, color=colour, zorder=3)
        for layer in range(refs_at_position(position, blocks, stages)):
            source = reference_x[layer] + 0.06 * index
            height = 0.95 + 0.3 * layer + 0.07 * index
            axes.plot([source, source, x, x], [0.3, height, height, 0.8], color=colour, lw=0.8, alpha=0.8)
            label = str(position_keys[layer]) if position_keys else "all"
            axes.text(x - 0.05, height + 0.02, label, ha="right", va="bottom", fontsize=6, color=colour)
    modules = len(genotype.positions)
    what = f"{modules} {genotype.attention.upper()} module{'s' * (modules != 1)}" if modules else "no attention module"
    axes.set_title(title or f"{genotype.channels}ch x {blocks} blocks, {stages} stages: {what}", fontsize=9)
    if modules:
        axes.text(x_of["head"] - 0.35, -0.5, "diamonds: attention modules; lines: the reference layers each reads, with "
                  "the keys a query keeps there", fontsize=6, color="0.3")
    axes.set_xlim(-0.8, x_of["tail"] + 0.8)
    axes.set_ylim(-0.6, 1.2 + 0.3 * stages + 0.07 * modules)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
