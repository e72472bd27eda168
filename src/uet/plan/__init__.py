"""The framework's master plan (`uet plan`): one JSON document — phases → workstreams → tasks,
`/meta`, `/implementation`, `/validation` — changed only by RFC 6902 patch files.

    from uet.plan import load_plan, load_patch, apply_patches, plan_problems
    plan = load_plan("plan.json")
    result = apply_patches(plan, [load_patch("patches/006-core-state.json")])
    result.plan             # the patched plan (the input is not changed)
    plan_problems(result.plan)   # [] for a valid plan

`document` reads, checks and writes plans; `patching` applies patches; `workstreams` maps a
workstream of the plan onto a workstream file for the orchestrator (`uet run --plan`).
"""

from uet.plan.document import (
    PlanError, dump_plan, load_plan, nodes, plan_problems, plan_schema, write_atomically)
from uet.plan.patching import (
    ApplyResult, Patch, PatchOutcome, apply_patches, load_patch, parse_patch, patch_hash)

PATCH_APPLIED = "plan.patch_applied"   # the event each applied patch writes to the ledger

__all__ = ["PATCH_APPLIED", "ApplyResult", "Patch", "PatchOutcome", "PlanError", "apply_patches",
           "dump_plan", "load_patch", "load_plan", "nodes", "parse_patch", "patch_hash",
           "plan_problems", "plan_schema", "write_atomically"]
