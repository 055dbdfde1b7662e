"""A plan as readable text sections (the JSON form is `Plan.to_json`)."""

from __future__ import annotations

import yaml

from meter.plan.make import PathCheck, Plan

GIB = 2**30


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _millions(n: int) -> str:
    return f"{n:>13,}  ({n / 1e6:.2f}M)"


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"== {title} ==", *lines, ""]


def _parameters(plan: Plan) -> list[str]:
    lines = [f"  {part:<12}{_millions(n)}" for part, n in plan.parameters.items() if n or part == "total"]
    vocabulary = plan.vocabulary
    known = "" if vocabulary["known"] else " (assumed: no tokenizer yet)"
    return [*lines, f"  vocabulary: {vocabulary['size']:,} tokens, from {vocabulary['source']}{known}"]


def _heads(plan: Plan) -> list[str]:
    if not plan.heads:
        return ["  none (the model's own decoder writes the output)" if plan.task == "captioning" else "  none"]
    lines = []
    for head in plan.heads:
        outputs = head["outputs"]
        size = f"{outputs:,} outputs" if isinstance(outputs, int) else f"outputs {outputs}"
        extra = f" (+{head['parameters_per_output']:,} per output)" if "parameters_per_output" in head else ""
        lines.append(f"  {head['name']:<9} {size}; {head['parameters']:,} parameters{extra}: {head['meaning']}")
    return lines


def _groups(plan: Plan) -> list[str]:
    lines = [f"  {'group':<22} {'lr':>9}  {'weight decay':>12}  {'parameters':>13}"]
    for g in plan.groups:
        lines.append(f"  {g['name']:<22} {g['lr']:>9.2e}  {g['weight_decay']:>12g}  {g['parameters']:>13,}")
    return lines


def _schedule(plan: Plan) -> list[str]:
    s = plan.schedule
    lines = [
        f"  {s.optimizer_steps:,} optimizer steps: linear warm-up over the first {s.warmup_steps:,}, then linear "
        f"decay to 0 at step {s.optimizer_steps:,}"
    ]
    if s.stop_at != s.optimizer_steps:
        lines.append(f"  train.stop_at: this run stops after step {s.stop_at:,} (resume with --resume latest)")
    best_on, every = plan.config["train"]["best_on"], plan.config["train"]["best_every"]
    if best_on:
        when = f"every {every:,} steps" if every else "after each epoch"
        count = f"{s.best_evaluations:,}" if s.best_evaluations is not None else "unknown until the data is counted"
        lines.append(f"  train.best_on: scores {best_on} {when} and after the last step (evaluations: {count}); the "
                     "run's evaluation scores the best of them")  # fmt: skip
    return lines


def _batching(plan: Plan) -> list[str]:
    b = plan.batching
    epochs = f"{b.epochs:,.2f}" if b.epochs is not None else "unknown until the training data can be counted"
    return [
        f"  global batch {b.global_batch:,} = {b.per_process} per process x {b.processes} processes x "
        f"{b.grad_accum} accumulation steps",
        f"  samples seen over the run: {b.samples:,}",
        f"  training data: {b.data}",
        f"  epochs: {epochs}",
    ]


def _memory(plan: Plan) -> list[str]:
    m = plan.memory
    activations = sum(m.activations.values())
    lines = [f"  activations of one micro-batch ({plan.batching.per_process} samples): {_size(activations)}"]
    lines += [f"    {part:<24}{_size(n):>12}" for part, n in m.activations.items() if n]
    lines.append(f"  weights, gradients, optimizer: {_size(sum(m.state.values()))}")
    lines += [f"    {part:<24}{_size(n):>12}" for part, n in m.state.items()]
    lines.append(f"  total per process: about {_size(m.total)}")
    return lines + ["  assumptions:"] + [f"    - {a}" for a in m.assumptions]


def _path_line(check: PathCheck) -> str:
    """found, MISSING, or UNUSABLE with why: a path that is there but that the run would refuse."""
    if check.problem:
        return f"  {'UNUSABLE':<8} {check.key}: {check.path} ({check.problem})"
    return f"  {'found' if check.found else 'MISSING':<8} {check.key}: {check.path}"


def render(plan: Plan) -> str:
    lines = _section("resolved config (as the run saves it)", [yaml.safe_dump(plan.config, sort_keys=False).rstrip()])
    lines += _section("parameters", _parameters(plan))
    lines += _section("heads", _heads(plan))
    lines += _section("optimizer groups (AdamW)", _groups(plan))
    lines += _section("schedule", _schedule(plan))
    lines += _section("batch", _batching(plan))
    lines += _section("paths", [_path_line(p) for p in plan.paths])
    lines += _section("memory per process (estimate)", _memory(plan))
    if plan.notes:
        lines += _section("notes", [f"  - {note}" for note in plan.notes])
    return "\n".join(lines).rstrip() + "\n"
